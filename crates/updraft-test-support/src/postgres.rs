//! A PostgreSQL server for tests. `DATABASE_URL` wins when set; otherwise one server per test
//! process is started from the system's `initdb`/`postgres` on a free loopback port, as the
//! `postgres` user when we run as root. Each test gets a fresh database in it.
//!
//! The server is tied to the test process without any unsafe code: it runs under a small shell
//! that waits for its standard input to close (which happens when the test process exits, however
//! it exits) and then stops the server and removes its directory.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};
use sqlx::Connection;

struct Server {
    base_url: String,
    /// The CA that signed the server's certificate (for `localhost` and 127.0.0.1).
    ca_pem: PathBuf,
    // Held so that the watchdog's standard input stays open until the process exits.
    _watchdog: Mutex<Child>,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// A URL to a new, empty database on the harness's own server, whose TLS certificate is signed
/// by the CA in the returned file; `None` when `DATABASE_URL` names another server (said loudly)
/// or there is none.
pub async fn fresh_tls_database() -> Option<(String, PathBuf)> {
    if std::env::var("DATABASE_URL").is_ok_and(|url| url.starts_with("postgres")) {
        eprintln!(
            "note: DATABASE_URL is set; the TLS test needs the harness's own PostgreSQL and does not run"
        );
        return None;
    }
    let url = fresh_database().await?;
    let server = SERVER.get()?.as_ref().ok()?;
    Some((url, server.ca_pem.clone()))
}

/// A URL to a new, empty database, or `None` (after a loud warning) when no PostgreSQL can be had
/// outside CI. Under `CI=true` a missing PostgreSQL panics.
pub async fn fresh_database() -> Option<String> {
    let base = match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => url,
        _ => match SERVER.get_or_init(|| start().map_err(|e| format!("{e:#}"))) {
            Ok(server) => server.base_url.clone(),
            Err(why) => {
                crate::missing(
                    "PostgreSQL",
                    &format!("{why}; install Debian's postgresql package or set DATABASE_URL"),
                );
                return None;
            }
        },
    };
    match create_database(&base).await {
        Ok(url) => Some(url),
        Err(err) => panic!("cannot create a test database on {base}: {err:#}"),
    }
}

async fn create_database(base: &str) -> Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let name = format!("updraft_test_{}", hex::encode(bytes));
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .context("connecting")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .context("create database")?;
    conn.close().await.ok();
    let (prefix, query) = match base.split_once('?') {
        Some((prefix, query)) => (prefix, format!("?{query}")),
        None => (base, String::new()),
    };
    // Replace the database part of the URL (everything after the authority's last '/').
    let authority_end = prefix.find("://").map(|i| i + 3).unwrap_or(0);
    let without_db = match prefix[authority_end..].find('/') {
        Some(slash) => &prefix[..authority_end + slash],
        None => prefix,
    };
    Ok(format!("{without_db}/{name}{query}"))
}

fn find_bin_dir() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!("no initdb/postgres on PATH or under /usr/lib/postgresql"),
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// The command prefix that runs a program as the `postgres` user when we are root.
fn as_postgres(root: bool) -> Vec<String> {
    if root {
        [
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ]
        .map(String::from)
        .to_vec()
    } else {
        Vec::new()
    }
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn start() -> Result<Server> {
    let bin = find_bin_dir()?;
    let root = running_as_root();
    let dir = tempfile::Builder::new()
        .prefix("updraft-pg-")
        .tempdir()?
        .keep();
    let data = dir.join("data");
    if root {
        let status = Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(&dir)
            .status()?;
        if !status.success() {
            bail!(
                "chown of {} to postgres failed (is the postgres user there?)",
                dir.display()
            );
        }
    }
    let prefix = as_postgres(root);
    let mut initdb = Command::new(prefix.first().map(String::as_str).unwrap_or("env"));
    initdb.args(prefix.iter().skip(1));
    initdb
        .arg(bin.join("initdb"))
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
            "-D",
        ])
        .arg(&data)
        .env("LC_ALL", "C");
    let out = initdb.output().context("running initdb")?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (ca_pem, cert, key) = tls_files(&dir, root)?;
    let port = free_port()?;
    let server = format!(
        "{prefix} {postgres} -D {data} -p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c max_connections=1000 \
         -c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key}",
        prefix = prefix.join(" "),
        postgres = quote(&bin.join("postgres")),
        data = quote(&data),
        dir = quote(&dir),
        cert = quote(&cert),
        key = quote(&key),
    );
    let script = format!(
        "LC_ALL=C {server} 2>&1 & pid=$!\n\
         cat >/dev/null\n\
         kill -INT $pid 2>/dev/null; wait $pid; rm -rf {dir}\n",
        dir = quote(&dir)
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting postgres")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut log = String::new();
    loop {
        let Some(line) = lines.next() else {
            bail!("postgres exited before it was ready:\n{log}");
        };
        let line = line?;
        log.push_str(&line);
        log.push('\n');
        if line.contains("database system is ready to accept connections") {
            break;
        }
    }
    // Keep draining the log so that the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    if let Some(stdin) = child.stdin.as_mut() {
        stdin.flush().ok();
    }
    Ok(Server {
        ca_pem,
        base_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        _watchdog: Mutex::new(child),
    })
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it, written into
/// `dir` (the key readable by the server's user only): (CA, certificate, key).
fn tls_files(dir: &Path, root: bool) -> Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "updraft test postgres ca");
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
        .signed_by(&key, &ca, &ca_key)?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem())?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&paths.2, std::fs::Permissions::from_mode(0o600))?;
    }
    if root {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&paths.1)
            .arg(&paths.2)
            .status()?;
        if !status.success() {
            bail!("chown of the test server's key to postgres failed");
        }
    }
    Ok(paths)
}

fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}
