//! A real `updraft serve` process for end-to-end tests, on a free port (it binds port 0 and
//! announces the address on standard output, which is awaited, never slept for).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};

pub struct ServerProcess {
    child: Child,
    /// What the server prints after it listens (see [`ServerProcess::await_line`]).
    rest: std::sync::Mutex<std::sync::mpsc::Receiver<std::io::Result<String>>>,
    /// Lines printed and not awaited yet.
    early: std::sync::Mutex<Vec<String>>,
    pub url: String,
    /// `host:port` of the device MQTT listener.
    pub mqtt: Option<String>,
    /// `host:port` of the CoAP listener.
    pub coap: Option<String>,
    /// `host:port` of the LwM2M listener.
    pub lwm2m: Option<String>,
    pub data_dir: PathBuf,
}

impl ServerProcess {
    /// Starts `binary serve --data-dir DIR --http 127.0.0.1:0 EXTRA…` and waits until it listens.
    pub fn start(binary: &Path, data_dir: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_with_env(binary, data_dir, extra, &[])
    }

    /// [`ServerProcess::start`] with more environment variables.
    pub fn start_with_env(
        binary: &Path,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--http",
                "127.0.0.1:0",
                "--mqtt",
                "127.0.0.1:0",
                "--coap",
                "127.0.0.1:0",
                "--lwm2m",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("UPDRAFT_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        // Lines are read on a thread of their own, so that a server that never listens is a
        // failure after a while, not a hang.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Once the server listens nobody reads these any more; draining goes on, so that
            // the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let _ = tx.send(line);
            }
        });
        let mut lines = std::iter::from_fn(|| match rx.recv_timeout(crate::NETWORK_WAIT) {
            Ok(line) => Some(line),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Some(Err(std::io::Error::other(
                "the server printed nothing for a while: it hangs",
            ))),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
        });
        let mut mqtt = None;
        let mut coap = None;
        let mut lwm2m = None;
        let mut early = Vec::new();
        let url = loop {
            let Some(line) = lines.next() else {
                let status = child.wait()?;
                bail!("the server exited ({status}) before it listened");
            };
            let line = line?;
            early.push(line.clone());
            if let Some(addr) = line.strip_prefix("updraft mqtt on ") {
                mqtt = Some(addr.trim().to_owned());
            }
            if let Some(addr) = line.strip_prefix("updraft coap on ") {
                coap = Some(addr.trim().to_owned());
            }
            if let Some(addr) = line.strip_prefix("updraft lwm2m on ") {
                lwm2m = Some(addr.trim().to_owned());
            }
            if let Some(url) = line.strip_prefix("updraft listening on ") {
                break url.trim().to_owned();
            }
        };
        Ok(Self {
            child,
            rest: std::sync::Mutex::new(rx),
            early: std::sync::Mutex::new(early),
            url,
            mqtt,
            coap,
            lwm2m,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Waits (at most [`crate::NETWORK_WAIT`]) until the server prints a line containing
    /// `needle` on its standard output, and returns it.
    pub fn await_line(&self, needle: &str) -> Result<String> {
        {
            let mut early = self
                .early
                .lock()
                .map_err(|_| anyhow::anyhow!("lines poisoned"))?;
            if let Some(i) = early.iter().position(|line| line.contains(needle)) {
                return Ok(early.remove(i));
            }
        }
        let rx = self
            .rest
            .lock()
            .map_err(|_| anyhow::anyhow!("lines poisoned"))?;
        let deadline = std::time::Instant::now() + crate::NETWORK_WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(line)) if line.contains(needle) => return Ok(line),
                // Kept for a later wait on another line.
                Ok(Ok(line)) => self
                    .early
                    .lock()
                    .map_err(|_| anyhow::anyhow!("lines poisoned"))?
                    .push(line),
                Ok(Err(err)) => return Err(err.into()),
                Err(_) => bail!("the server did not print {needle:?}"),
            }
        }
    }

    /// The server admin key from the data directory.
    pub fn admin_token(&self) -> Result<String> {
        let token = std::fs::read_to_string(self.data_dir.join("admin.token"))
            .context("reading admin.token")?;
        Ok(token.trim().to_owned())
    }

    /// `host:port` of the HTTP listener.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// SIGKILL: no chance to clean up, as in a crash or power loss.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for the process to exit by itself.
    pub fn terminate(mut self) -> Result<ExitStatus> {
        self.send_term()?;
        Ok(self.child.wait()?)
    }

    /// SIGTERM, without waiting.
    pub fn send_term(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        Ok(())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit.
    pub fn wait(mut self) -> Result<ExitStatus> {
        Ok(self.child.wait()?)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
