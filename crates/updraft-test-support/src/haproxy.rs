//! HAProxy (Debian's package) in front of test replicas, run on the repository's own
//! `deploy/haproxy.cfg` with the addresses in its environment variables. It is started in daemon
//! mode, which returns once it listens (nothing to poll for), under a shell that stops it when
//! the test process's end closes its standard input.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

/// The configuration the deployment guide gives.
pub fn deploy_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/haproxy.cfg")
}

/// The `haproxy` binary, if installed.
pub fn binary() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("haproxy"))
        .find(|path| path.is_file())
}

/// One replica's listeners as HAProxy reaches them (`host:port`).
#[derive(Debug, Clone)]
pub struct Backend {
    pub http: String,
    pub mqtt: String,
}

/// A running HAProxy.
pub struct Haproxy {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `127.0.0.1:PORT` of the MQTT frontend.
    pub mqtt: String,
    _watchdog: Child,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Haproxy {
    /// HAProxy on `deploy/haproxy.cfg` in front of replicas `a` and `b`; `None` (said loudly; a
    /// failure under CI) when it is not installed.
    pub fn start(a: &Backend, b: &Backend) -> Result<Option<Self>> {
        let Some(haproxy) = binary() else {
            crate::missing("haproxy", "install Debian's haproxy package");
            return Ok(None);
        };
        let dir = tempfile::Builder::new()
            .prefix("updraft-haproxy-")
            .tempdir()?
            .keep();
        let (http, mqtt) = (free_port()?, free_port()?);
        let port = |addr: &str| addr.rsplit_once(':').map(|(_, p)| p.to_owned());
        let pid = dir.join("haproxy.pid");
        let script = format!(
            "{haproxy} -D -p {pid} -f {config} || exit 1\n\
             echo listening\n\
             cat >/dev/null\n\
             kill $(cat {pid}) 2>/dev/null; rm -rf {dir}\n",
            haproxy = quote(&haproxy),
            pid = quote(&pid),
            config = quote(&deploy_config()),
            dir = quote(&dir),
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("UPDRAFT_LB_HTTP", format!("127.0.0.1:{http}"))
            .env("UPDRAFT_LB_MQTT", format!("127.0.0.1:{mqtt}"))
            .env("UPDRAFT_A_HTTP", &a.http)
            .env("UPDRAFT_A_MQTT", &a.mqtt)
            .env("UPDRAFT_A_HTTP_PORT", port(&a.http).context("a's port")?)
            .env("UPDRAFT_B_HTTP", &b.http)
            .env("UPDRAFT_B_MQTT", &b.mqtt)
            .env("UPDRAFT_B_HTTP_PORT", port(&b.http).context("b's port")?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting haproxy")?;
        if let Some(stdin) = child.stdin.as_mut() {
            stdin.flush().ok();
        }
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "listening" {
            bail!("haproxy did not start on {}", deploy_config().display());
        }
        Ok(Some(Self {
            url: format!("http://127.0.0.1:{http}"),
            mqtt: format!("127.0.0.1:{mqtt}"),
            _watchdog: child,
        }))
    }
}

fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}
