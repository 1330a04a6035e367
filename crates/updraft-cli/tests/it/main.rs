//! End-to-end tests of the `updraft` binary: a real `updraft serve` process and the CLI as a
//! user runs it.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha256};
use updraft_test_support::server::ServerProcess;

mod readme;
mod replicas;
mod sim;

pub(crate) fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_updraft"))
}

pub(crate) struct Cli<'a> {
    pub(crate) server: &'a ServerProcess,
    pub(crate) token: String,
    pub(crate) cwd: PathBuf,
}

/// A server on a fresh data directory under `dir`.
pub(crate) fn serve(dir: &Path) -> ServerProcess {
    ServerProcess::start(&binary(), &dir.join("data"), &[]).unwrap()
}

impl<'a> Cli<'a> {
    /// The CLI with the server admin key, working in `dir`.
    pub(crate) fn admin(server: &'a ServerProcess, dir: &Path) -> Self {
        Cli {
            server,
            token: server.admin_token().unwrap(),
            cwd: dir.to_path_buf(),
        }
    }

    /// Uploads `len` bytes of firmware as `title`@`version` (and any more upload options).
    pub(crate) fn upload(&self, len: usize, title: &str, version: &str, more: &[&str]) {
        let file = self.cwd.join(format!("{title}-{version}.bin"));
        std::fs::write(&file, firmware(len)).unwrap();
        let mut args = vec![
            "artifact",
            "upload",
            file.to_str().unwrap(),
            "--title",
            title,
            "--version",
            version,
        ];
        args.extend(more);
        self.ok(&args);
    }
}

impl Cli<'_> {
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(args)
            .current_dir(&self.cwd)
            .env("UPDRAFT_SERVER", &self.server.url)
            .env("UPDRAFT_TOKEN", &self.token)
            .output()
            .unwrap()
    }

    /// Runs and expects success; returns standard output.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "updraft {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        serde_json::from_str(&self.ok(&with_json)).unwrap()
    }
}

pub(crate) fn firmware(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

fn round_trip(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&binary(), &dir.path().join("data"), extra).unwrap();
    let token_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("data/admin.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        token_mode & 0o777,
        0o600,
        "the admin key is readable by its owner only"
    );
    let cli = Cli {
        server: &server,
        token: server.admin_token().unwrap(),
        cwd: dir.path().to_path_buf(),
    };
    let data = firmware(1_500_000);
    let file = dir.path().join("fw.bin");
    std::fs::write(&file, &data).unwrap();
    let sha = hex::encode(Sha256::digest(&data));

    cli.ok(&["profile", "create", "esp32"]);
    let nrf = cli.json(&["profile", "create", "nrf52", "--drogue-dfu"]);
    assert_eq!(nrf["drogue_dfu"], true);
    let nrf = cli.json(&["profile", "set", "nrf52", "--drogue-dfu", "false"]);
    assert_eq!(nrf["drogue_dfu"], false);
    let nrf = cli.json(&["profile", "set", "nrf52", "--lwm2m-delivery", "coap"]);
    assert_eq!(nrf["lwm2m_delivery"], "coap");
    let nrf = cli.json(&["profile", "set", "nrf52", "--aws-http-delivery", "true"]);
    assert_eq!(
        (
            nrf["aws_http_delivery"].as_bool(),
            nrf["drogue_dfu"].as_bool()
        ),
        (Some(true), Some(false))
    );
    let nrf = cli.json(&["profile", "set", "nrf52", "--aws-http-delivery", "true"]);
    assert_eq!(
        (
            nrf["aws_http_delivery"].as_bool(),
            nrf["drogue_dfu"].as_bool()
        ),
        (Some(true), Some(false))
    );
    let uploaded = cli.json(&[
        "artifact",
        "upload",
        file.to_str().unwrap(),
        "--title",
        "fw",
        "--version",
        "1.0",
        "--profile",
        "esp32",
        "--checksum-algorithm",
        "SHA256",
        "--checksum",
        &sha,
    ]);
    assert_eq!(uploaded["checksums"]["sha256"], sha);
    assert_eq!(uploaded["size"], data.len());
    assert_eq!(uploaded["filename"], "fw.bin");

    let refused = cli.run(&[
        "artifact",
        "upload",
        file.to_str().unwrap(),
        "--title",
        "fw",
        "--version",
        "1.1",
        "--checksum",
        "00",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("checksum_mismatch"),
        "{stderr}"
    );

    let listed = cli.json(&["artifact", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(cli.ok(&["artifact", "list"]).contains("fw     1.0"));

    let out = dir.path().join("out.bin");
    cli.ok(&[
        "artifact",
        "download",
        "fw@1.0",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), data);

    let device = cli.json(&["device", "create", "dev-1", "--profile", "esp32"]);
    assert_eq!(device["id"], "dev-1");
    assert_eq!(device["token"].as_str().unwrap().len(), 32);
    cli.ok(&["assign", "--device", "dev-1", "--artifact", "fw@1.0"]);
    let shown = cli.json(&["device", "show", "dev-1"]);
    assert_eq!(shown["desired_firmware"]["title"], "fw");
    assert_eq!(shown["desired_firmware"]["version"], "1.0");
    assert_eq!(shown["desired_firmware"]["level"], "device");
    assert!(
        cli.ok(&["device", "show", "dev-1"])
            .contains("desired firmware  fw@1.0 (device level)")
    );
    let status = cli.json(&["status"]);
    assert_eq!(
        (status["devices"].as_u64(), status["artifacts"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(status["actions"]["QUEUED"], 1);
    let gateway = cli.json(&["device", "create", "gw", "--gateway"]);
    assert!(gateway["token"].is_string());
    let esp32 = cli.json(&["device", "list", "--filter", "profile==esp32"]);
    assert_eq!(esp32["total"], 1);
    assert_eq!(esp32["items"][0]["id"], "dev-1");
    let bad = cli.run(&["device", "list", "--filter", "profile=esp32"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("column 8"));

    let settings = cli.json(&[
        "tenant",
        "set",
        "--poll-interval",
        "60",
        "--auto-register",
        "true",
    ]);
    assert_eq!(
        (
            settings["poll_interval_secs"].as_u64(),
            settings["auto_register"].as_bool()
        ),
        (Some(60), Some(true))
    );
    let gateway = cli.json(&["tenant", "gateway-token"]);
    assert!(gateway["token"].as_str().unwrap().starts_with("gw_"));
    assert_eq!(cli.json(&["tenant", "show"])["poll_interval_secs"], 60);

    let missing = cli.run(&["device", "show", "nosuch"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("device_not_found"));

    let exit = server.terminate().unwrap();
    assert!(exit.success(), "graceful shutdown exits cleanly: {exit}");
}

#[test]
fn cli_round_trip_against_a_real_server_on_sqlite() {
    round_trip(&[]);
}

#[test]
fn cli_round_trip_against_a_real_server_on_postgres() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = runtime.block_on(updraft_test_support::postgres::fresh_database()) else {
        return;
    };
    round_trip(&["--database-url", &url]);
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            n += count_files(&entry.path());
        } else {
            n += 1;
        }
    }
    n
}

#[test]
fn a_server_killed_during_an_upload_restarts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&binary(), &data_dir, &[]).unwrap();
    let token = server.admin_token().unwrap();
    let cli = Cli {
        server: &server,
        token: token.clone(),
        cwd: dir.path().to_path_buf(),
    };
    let kept = dir.path().join("kept.bin");
    std::fs::write(&kept, firmware(10_000)).unwrap();
    cli.ok(&[
        "artifact",
        "upload",
        kept.to_str().unwrap(),
        "--title",
        "kept",
        "--version",
        "1",
    ]);

    // An upload that announces 50 MB and sends 2 MB of them, then the server dies.
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    write!(
        stream,
        "POST /api/v1/artifacts?title=partial&version=1 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 50000000\r\n\r\n",
        server.addr()
    )
    .unwrap();
    stream.write_all(&firmware(2_000_000)).unwrap();
    stream.flush().unwrap();
    server.kill().unwrap();
    drop(stream);

    // What a crash between "blob committed" and "artifact row written" would leave, too.
    let blobs = data_dir.join("blobs");
    let orphan = "ab".repeat(32);
    std::fs::create_dir_all(blobs.join("sha256/ab")).unwrap();
    std::fs::write(blobs.join("sha256/ab").join(&orphan), b"orphan").unwrap();
    std::fs::write(blobs.join("staging/interrupted"), b"half").unwrap();

    let server = ServerProcess::start(&binary(), &data_dir, &[]).unwrap();
    let cli = Cli {
        server: &server,
        token,
        cwd: dir.path().to_path_buf(),
    };
    let listed = cli.json(&["artifact", "list"]);
    let titles: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["kept"], "no partial artifact is visible");
    assert_eq!(
        count_files(&blobs.join("staging")),
        0,
        "staging is empty after the cleanup pass"
    );
    assert_eq!(
        count_files(&blobs.join("sha256")),
        1,
        "only the kept artifact's blob is left"
    );
    let out = dir.path().join("out.bin");
    cli.ok(&[
        "artifact",
        "download",
        "kept@1",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&kept).unwrap());
}

#[test]
fn errors_are_one_line_and_exit_non_zero_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .args(["status"])
        .current_dir(dir.path())
        .env("UPDRAFT_SERVER", "http://127.0.0.1:9")
        .env("UPDRAFT_TOKEN", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot reach the server"), "{stderr}");
    let no_token = Command::new(binary())
        .args(["status"])
        .current_dir(dir.path())
        .env_remove("UPDRAFT_TOKEN")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("no API key"));
}

/// A check-in as an ESP8266 sends it; returns the status code and the `x-MD5` header.
fn esp_check_in(server: &ServerProcess, path: &str, running_md5: &str) -> (u16, Option<String>) {
    use std::io::Read;
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ESP8266-http-Update\r\nx-ESP8266-sketch-md5: {running_md5}\r\n\
         x-ESP8266-free-space: 1000000\r\nx-ESP8266-mode: sketch\r\nConnection: close\r\n\r\n",
        server.addr()
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let md5 = text.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("x-md5: ")
            .map(|v| v.trim().to_owned())
    });
    (status, md5)
}

#[test]
fn frugal_push_and_promote_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let admin = Cli::admin(&server, dir.path());
    admin.ok(&["tenant", "create", "dev"]);
    admin.ok(&["tenant", "create", "other"]);
    let key = admin.json(&[
        "key",
        "create",
        "dev-ci",
        "--role",
        "maintainer",
        "--tenant",
        "dev",
    ]);
    let dev = Cli {
        server: &server,
        token: key["token"].as_str().unwrap().to_owned(),
        cwd: dir.path().to_path_buf(),
    };
    let build = dir.path().join("build.bin");
    std::fs::write(&build, firmware(300_000)).unwrap();
    let md5 = {
        let out = Command::new("md5sum").arg(&build).output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    // The nodes' OTA key is a project key, made by an admin of the org.
    let dev_admin = admin.json(&[
        "key",
        "create",
        "dev-admin",
        "--role",
        "admin",
        "--tenant",
        "dev",
    ]);
    let dev_admin = Cli {
        server: &server,
        token: dev_admin["token"].as_str().unwrap().to_owned(),
        cwd: dir.path().to_path_buf(),
    };
    let ota_key = dev_admin.ok(&[
        "frugal",
        "key",
        "--project",
        "lotus",
        "--profile",
        "sonoff-r2",
    ]);
    let ota_key = ota_key.trim();
    assert!(ota_key.starts_with("fk_"), "{ota_key}");
    let node_a = &format!("/ota_update/dev/lotus/esp8266-95a754/{ota_key}");
    let node_b = &format!("/ota_update/dev/lotus/esp8266-000001/{ota_key}");
    assert_eq!(esp_check_in(&server, node_a, "0").0, 304);
    assert_eq!(esp_check_in(&server, node_b, "0").0, 304);

    let pushed = dev.ok(&[
        "frugal",
        "push",
        build.to_str().unwrap(),
        "--org",
        "dev",
        "--project",
        "lotus",
        "--node",
        "esp8266-95a754",
    ]);
    assert!(pushed.contains("for node esp8266-95a754"), "{pushed}");
    assert_eq!(esp_check_in(&server, node_a, "0"), (200, Some(md5.clone())));
    assert_eq!(esp_check_in(&server, node_b, "0").0, 304, "only that node");

    let refused = dev.run(&[
        "frugal",
        "push",
        build.to_str().unwrap(),
        "--org",
        "other",
        "--ota-key",
        "sonoff-r2",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("tenant_not_found"));

    dev.ok(&[
        "frugal",
        "promote",
        "--org",
        "dev",
        "--project",
        "lotus",
        "--node",
        "esp8266-95a754",
        "--ota-key",
        "sonoff-r2",
    ]);
    assert_eq!(esp_check_in(&server, node_a, &md5).0, 304, "no update loop");
    assert_eq!(esp_check_in(&server, node_b, "0"), (200, Some(md5.clone())));
    assert_eq!(esp_check_in(&server, node_b, &md5).0, 304);
    let history = dev.json(&["device", "history", "esp8266-000001"]);
    assert_eq!(history[0]["state"], "UPDATED");
}

/// Code signing as its users do it: OpenSSL makes the key, the certificate and the signature; the
/// CLI registers the certificate with a profile and uploads the signed file; a file signed by
/// another key is refused.
#[test]
fn openssl_signed_uploads_are_checked_against_the_profiles_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
    };
    match openssl(&["version"]) {
        Ok(out) if out.status.success() => {}
        _ => {
            updraft_test_support::missing("openssl", "apt-get install openssl");
            return;
        }
    }
    let firmware_bytes = firmware(50_000);
    std::fs::write(dir.path().join("fw.bin"), &firmware_bytes).unwrap();
    for args in [
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "key.pem",
        ][..],
        &[
            "req",
            "-new",
            "-x509",
            "-key",
            "key.pem",
            "-subj",
            "/CN=signer",
            "-days",
            "2",
            "-out",
            "cert.pem",
        ],
        &[
            "dgst", "-sha256", "-sign", "key.pem", "-out", "fw.sig", "fw.bin",
        ],
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "other.pem",
        ],
        &[
            "dgst",
            "-sha256",
            "-sign",
            "other.pem",
            "-out",
            "other.sig",
            "fw.bin",
        ],
    ] {
        let out = openssl(args).unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let server = serve(dir.path());
    let cli = Cli::admin(&server, dir.path());
    let profile = cli.json(&[
        "profile",
        "create",
        "esp32-c3",
        "--signing-cert",
        "cert.pem",
        "--signing-cert-name",
        "code-sign.crt",
    ]);
    assert_eq!(profile["signing_cert_name"], "code-sign.crt");
    let uploaded = cli.json(&[
        "artifact",
        "upload",
        "fw.bin",
        "--title",
        "ota",
        "--version",
        "1.0.1",
        "--profile",
        "esp32-c3",
        "--signature-file",
        "fw.sig",
        "--signature-algorithm",
        "ecdsa-p256-sha256",
    ]);
    assert_eq!(uploaded["size"], 50_000);
    let refused = cli.run(&[
        "artifact",
        "upload",
        "fw.bin",
        "--title",
        "ota",
        "--version",
        "1.0.2",
        "--profile",
        "esp32-c3",
        "--signature-file",
        "other.sig",
    ]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("invalid_signature") || message.contains("does not verify"),
        "{message}"
    );
    let listed = cli.json(&["artifact", "list"]);
    assert_eq!(
        listed["items"]
            .as_array()
            .map(Vec::len)
            .or(listed.as_array().map(Vec::len)),
        Some(1)
    );
    let removed = cli.json(&["profile", "set", "esp32-c3", "--no-signing-cert"]);
    assert!(removed["signing_cert_name"].is_null());
}
