//! Simulated DDI devices: real `updraft-agent` agents on hash-only flash, sharing one HTTP client.

use super::*;

/// The DDI client, measured and with this device's faults.
pub(super) struct SimServer {
    inner: DdiClient,
    faults: Faults,
    dropped: std::sync::atomic::AtomicBool,
    stats: Arc<Stats>,
}

#[async_trait]
impl UpdateServer for SimServer {
    async fn poll(&self) -> Result<PollAnswer, AgentError> {
        let start = Instant::now();
        let answer = self.inner.poll().await;
        if let Ok(mut latencies) = self.stats.poll_latencies.lock() {
            latencies.push(start.elapsed());
        }
        answer
    }

    async fn deployment(&self, url: &str) -> Result<Offer, AgentError> {
        self.inner.deployment(url).await
    }

    async fn download(&self, url: &str, offset: u64) -> Result<Download, AgentError> {
        let mut download = self.inner.download(url, offset).await?;
        let stats = self.stats.clone();
        let drop_now = self.faults.drop_download && !self.dropped.swap(true, Ordering::SeqCst);
        let corrupt = self.faults.corrupt;
        let mut seen = 0u64;
        let bytes = download.bytes.map(move |chunk| {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            stats.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if drop_now && seen > 1024 {
                return Err(AgentError::Network("simulated connection drop".into()));
            }
            if corrupt && !chunk.is_empty() {
                let mut bytes = chunk.to_vec();
                bytes[0] ^= 0xff;
                return Ok(Bytes::from(bytes));
            }
            Ok(chunk)
        });
        download.bytes = Box::pin(bytes);
        Ok(download)
    }

    async fn feedback(&self, url: &str, feedback: &Feedback) -> Result<Delivery, AgentError> {
        self.inner.feedback(url, feedback).await
    }

    async fn cancel_target(&self, url: &str) -> Result<String, AgentError> {
        self.inner.cancel_target(url).await
    }

    async fn cancel_answer(&self, url: &str, stop: &str, accepted: bool) -> Result<(), AgentError> {
        self.inner.cancel_answer(url, stop, accepted).await
    }
}

#[async_trait]
impl UpdateServer for ArcServer {
    async fn poll(&self) -> Result<PollAnswer, AgentError> {
        self.0.poll().await
    }
    async fn deployment(&self, url: &str) -> Result<Offer, AgentError> {
        self.0.deployment(url).await
    }
    async fn download(&self, url: &str, offset: u64) -> Result<Download, AgentError> {
        self.0.download(url, offset).await
    }
    async fn feedback(&self, url: &str, feedback: &Feedback) -> Result<Delivery, AgentError> {
        self.0.feedback(url, feedback).await
    }
    async fn cancel_target(&self, url: &str) -> Result<String, AgentError> {
        self.0.cancel_target(url).await
    }
    async fn cancel_answer(&self, url: &str, stop: &str, accepted: bool) -> Result<(), AgentError> {
        self.0.cancel_answer(url, stop, accepted).await
    }
}

pub(super) async fn ddi_device(
    server: String,
    http: reqwest::Client,
    spec: DeviceSpec,
    stats: Arc<Stats>,
    started: Instant,
) {
    // One flash for the device's whole life (hashes, not bytes), shared by its boots.
    let flash = Arc::new(tokio::sync::Mutex::new(HashFlash::default()));
    let config = AgentConfig {
        factory_release: Some(Release {
            title: "factory".into(),
            version: "0".into(),
        }),
        ..AgentConfig::default()
    };
    let faults = spec.faults;
    let client = Arc::new(SimServer {
        inner: DdiClient::with_http(http, &server, "DEFAULT", &spec.id, &spec.token),
        faults,
        dropped: std::sync::atomic::AtomicBool::new(false),
        stats: stats.clone(),
    });
    let mut last_running = None;
    loop {
        let hooks = Hooks {
            health: Box::new(move |_| !faults.fail_health),
            ..Hooks::default()
        };
        let started_agent = Agent::start(
            SharedFlash(flash.clone()),
            ArcServer(client.clone()),
            config.clone(),
            hooks,
        )
        .await;
        let (mut agent, outcome) = match started_agent {
            Ok(started) => started,
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(spec.sleep).await;
                continue;
            }
        };
        if last_running.is_some()
            && agent.state().running != last_running
            && let Ok(mut times) = stats.time_to_updated.lock()
        {
            times.push(started.elapsed());
        }
        last_running = agent.state().running.clone();
        if outcome == Some(Outcome::Reboot) {
            continue;
        }
        loop {
            match agent.cycle().await {
                Ok(Outcome::Reboot) => break,
                Ok(Outcome::Idle { sleep }) => {
                    let wait = if sleep.is_zero() {
                        Duration::ZERO
                    } else {
                        spec.sleep
                    };
                    tokio::time::sleep(wait).await;
                }
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(spec.sleep).await;
                }
            }
        }
    }
}

/// A device's flash shared across its boots (the agent owns its flash while it runs).
pub(super) struct SharedFlash(Arc<tokio::sync::Mutex<HashFlash>>);

impl SharedFlash {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut HashFlash) -> Result<T, AgentError>,
    ) -> Result<T, AgentError> {
        // Only this device's tasks use the lock, one at a time: it is never contended.
        let mut flash = self
            .0
            .try_lock()
            .map_err(|_| AgentError::State("flash busy".into()))?;
        f(&mut flash)
    }
}

impl Flash for SharedFlash {
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        self.with(|f| f.load_state())
    }
    fn store_state(&mut self, bytes: &[u8]) -> Result<(), AgentError> {
        self.with(|f| f.store_state(bytes))
    }
    fn slot_len(&mut self, slot: Slot) -> Result<u64, AgentError> {
        self.with(|f| f.slot_len(slot))
    }
    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), AgentError> {
        self.with(|f| f.write_slot(slot, offset, data))
    }
    fn truncate_slot(&mut self, slot: Slot) -> Result<(), AgentError> {
        self.with(|f| f.truncate_slot(slot))
    }
    fn slot_sha256(&mut self, slot: Slot, len: u64) -> Result<String, AgentError> {
        self.with(|f| f.slot_sha256(slot, len))
    }
    fn slot_path(&self, _slot: Slot) -> Option<std::path::PathBuf> {
        None
    }
}

/// `Arc<SimServer>` as an `UpdateServer`, so that every boot of a device shares its faults.
pub(super) struct ArcServer(Arc<SimServer>);
