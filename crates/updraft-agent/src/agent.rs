//! The driver: one IO operation at a time, every state change persisted before it is acted on.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;

use crate::AgentError;
use crate::flash::Flash;
use crate::server::{Feedback, UpdateServer};
use crate::state::{self, AgentState, Boot, Job, Release, Slot, Stage};

/// How the agent behaves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Boots a new image may take to pass its health check before the agent rolls back.
    pub max_boots: u32,
    /// Bytes between two progress reports while downloading.
    pub progress_every: u64,
    /// What the factory image in slot A is, for a device that has no state file yet.
    pub factory_release: Option<Release>,
    /// Largest single write to a slot (a flash page or erase block on real hardware).
    pub write_block: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            max_boots: 3,
            progress_every: 256 * 1024,
            factory_release: None,
            write_block: 64 * 1024,
        }
    }
}

/// Installs a release; gets the slot file holding the image on a file-backed flash.
pub type InstallHook = Box<dyn FnMut(&Release, Option<PathBuf>) -> Result<(), String> + Send>;

/// What the device does beyond downloading: check the new image's health after booting it, and
/// install it where it belongs before the reboot.
pub struct Hooks {
    pub health: Box<dyn FnMut(&Release) -> bool + Send>,
    /// Gets the release and, on a file-backed flash, the slot file holding the image.
    pub install: InstallHook,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            health: Box::new(|_| true),
            install: Box::new(|_, _| Ok(())),
        }
    }
}

/// What the device should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do until the next poll.
    Idle { sleep: Duration },
    /// Restart the device: a new image waits for its trial boot, or a trial failed its health
    /// check.
    Reboot,
}

/// Counters for tests and the simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Artifact bytes received from the server (resumed downloads count only what was re-sent).
    pub bytes_received: u64,
    pub downloads_started: u64,
}

pub struct Agent<F: Flash, S> {
    pub flash: F,
    pub server: S,
    pub config: AgentConfig,
    pub hooks: Hooks,
    pub stats: Stats,
    pub(crate) state: AgentState,
    pub(crate) booted: Slot,
}

impl<F: Flash, S> Agent<F, S> {
    /// Power-on: reads the state file (or starts from the factory state), lets the "bootloader"
    /// pick a slot, and for a trial boot runs the health check. Returns [`Outcome::Reboot`] when
    /// the trial failed its check and the device must restart.
    pub async fn start(
        mut flash: F,
        server: S,
        config: AgentConfig,
        mut hooks: Hooks,
    ) -> Result<(Self, Option<Outcome>), AgentError> {
        let state = match flash.load_state()? {
            Some(bytes) => AgentState::decode(&bytes).map_err(AgentError::State)?,
            None => {
                let state = AgentState::factory(config.factory_release.clone());
                flash.store_state(&state.encode())?;
                state
            }
        };
        let (state, booted, outcome) = match state::boot(&state, config.max_boots) {
            Boot::Active(slot) => (state, slot, None),
            Boot::RollBack { slot, next } => {
                flash.store_state(&next.encode())?;
                (next, slot, None)
            }
            Boot::Trial { slot, next } => {
                flash.store_state(&next.encode())?;
                let release = next.job.as_ref().map(|job| job.release.clone());
                let healthy = release
                    .as_ref()
                    .is_some_and(|release| (hooks.health)(release));
                if healthy {
                    let confirmed = state::confirm(&next);
                    flash.store_state(&confirmed.encode())?;
                    (confirmed, slot, None)
                } else {
                    (next, slot, Some(Outcome::Reboot))
                }
            }
        };
        let agent = Agent {
            flash,
            server,
            config,
            hooks,
            stats: Stats::default(),
            state,
            booted,
        };
        Ok((agent, outcome))
    }

    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// The slot the device is running from.
    pub fn booted(&self) -> Slot {
        self.booted
    }

    pub(crate) fn persist(&mut self, next: AgentState) -> Result<(), AgentError> {
        self.flash.store_state(&next.encode())?;
        self.state = next;
        Ok(())
    }
}

impl<F: Flash, S: UpdateServer> Agent<F, S> {
    /// One round: deliver a pending result, poll, honour a cancellation, take a new update, and
    /// carry the current one as far as it goes.
    pub async fn cycle(&mut self) -> Result<Outcome, AgentError> {
        self.deliver_result().await?;
        let poll = self.server.poll().await?;
        if let Some(url) = poll.cancel {
            self.cancel(&url).await?;
            return Ok(Outcome::Idle {
                sleep: Duration::ZERO,
            });
        }
        if self.state.job.is_none() {
            let Some(url) = poll.deployment else {
                return Ok(Outcome::Idle { sleep: poll.sleep });
            };
            let offer = self.server.deployment(&url).await?;
            if self.state.running.as_ref() == Some(&offer.release) {
                let already = Feedback::closed(
                    true,
                    format!(
                        "already running {} {}",
                        offer.release.title, offer.release.version
                    ),
                );
                self.server.feedback(&offer.feedback_url, &already).await?;
                return Ok(Outcome::Idle { sleep: poll.sleep });
            }
            let target = self.booted.other();
            // Empty the slot before the job exists, so that a resumed download never continues
            // another image's bytes.
            self.flash.truncate_slot(target)?;
            let job = Job {
                action: offer.action,
                feedback_url: offer.feedback_url,
                download_url: offer.download_url,
                release: offer.release,
                sha256: offer.sha256,
                size: offer.size,
                target,
                stage: Stage::Downloading,
            };
            self.persist(AgentState {
                job: Some(job),
                ..self.state.clone()
            })?;
        }
        self.advance().await
    }

    /// Carries the job through its stages until it needs a reboot or is done.
    async fn advance(&mut self) -> Result<Outcome, AgentError> {
        loop {
            let Some(job) = self.state.job.clone() else {
                return Ok(Outcome::Idle {
                    sleep: Duration::ZERO,
                });
            };
            match job.stage {
                Stage::Downloading => self.download(&job).await?,
                Stage::Verified => {
                    let path = self.flash.slot_path(job.target);
                    if let Err(reason) = (self.hooks.install)(&job.release, path) {
                        self.persist(state::advance(
                            &self.state,
                            Stage::Failed {
                                reason: format!("install failed: {reason}"),
                            },
                        ))?;
                        continue;
                    }
                    let installing = Feedback::progress(
                        "proceeding",
                        None,
                        format!(
                            "Installing {} {} into slot {:?}",
                            job.release.title, job.release.version, job.target
                        ),
                    );
                    self.server.feedback(&job.feedback_url, &installing).await?;
                    self.persist(state::advance(&self.state, Stage::Trial { boots: 0 }))?;
                    return Ok(Outcome::Reboot);
                }
                // A trial is decided at power-on; reaching it here means the reboot is still due.
                Stage::Trial { .. } => return Ok(Outcome::Reboot),
                Stage::Confirmed | Stage::Failed { .. } => {
                    self.deliver_result().await?;
                }
            }
        }
    }

    /// Downloads the rest of the image into the target slot, then verifies it.
    async fn download(&mut self, job: &Job) -> Result<(), AgentError> {
        let mut offset = self.flash.slot_len(job.target)?;
        if offset > job.size {
            self.flash.truncate_slot(job.target)?;
            offset = 0;
        }
        if offset < job.size {
            if offset == 0 {
                let starting = Feedback::progress("download", Some((0, job.size)), "Downloading");
                self.server.feedback(&job.feedback_url, &starting).await?;
            }
            let mut download = self.server.download(&job.download_url, offset).await?;
            self.stats.downloads_started += 1;
            if download.from != offset {
                // The server ignored the range: start over.
                self.flash.truncate_slot(job.target)?;
                offset = 0;
            }
            let mut reported = offset;
            while let Some(chunk) = download.bytes.next().await {
                let chunk = chunk?;
                self.stats.bytes_received += chunk.len() as u64;
                if offset + chunk.len() as u64 > job.size {
                    break;
                }
                for block in chunk.chunks(self.config.write_block.max(1)) {
                    self.flash.write_slot(job.target, offset, block)?;
                    offset += block.len() as u64;
                }
                if offset - reported >= self.config.progress_every && offset < job.size {
                    reported = offset;
                    let progress = Feedback::progress(
                        "proceeding",
                        Some((offset, job.size)),
                        format!("Downloading {}%", offset * 100 / job.size.max(1)),
                    );
                    self.server.feedback(&job.feedback_url, &progress).await?;
                }
            }
            if offset < job.size {
                return Err(AgentError::Network(format!(
                    "the download ended after {offset} of {} bytes",
                    job.size
                )));
            }
        }
        let sha256 = self.flash.slot_sha256(job.target, job.size)?;
        let length = self.flash.slot_len(job.target)?;
        if sha256 != job.sha256 || length != job.size {
            let reason = format!(
                "integrity check failed: sha256 of the download is {sha256}, expected {}",
                job.sha256
            );
            self.persist(state::advance(&self.state, Stage::Failed { reason }))?;
            return Ok(());
        }
        self.persist(state::advance(&self.state, Stage::Verified))?;
        let downloaded = Feedback::progress("downloaded", Some((job.size, job.size)), "Downloaded");
        self.server.feedback(&job.feedback_url, &downloaded).await?;
        let verified = Feedback::progress("proceeding", None, format!("Verified sha256 {sha256}"));
        self.server.feedback(&job.feedback_url, &verified).await?;
        Ok(())
    }

    /// Sends the job's final result, if it has one, and forgets the job.
    async fn deliver_result(&mut self) -> Result<(), AgentError> {
        let Some(job) = self.state.job.clone() else {
            return Ok(());
        };
        let feedback = match &job.stage {
            Stage::Confirmed => Feedback::closed(
                true,
                format!("Updated to {} {}", job.release.title, job.release.version),
            ),
            Stage::Failed { reason } => Feedback::closed(false, reason.clone()),
            _ => return Ok(()),
        };
        // Delivered or already closed on the server: either way the job is over.
        self.server.feedback(&job.feedback_url, &feedback).await?;
        self.persist(state::finish(&self.state))
    }

    async fn cancel(&mut self, url: &str) -> Result<(), AgentError> {
        let stop = self.server.cancel_target(url).await?;
        let ours = self.state.job.as_ref().filter(|job| job.action == stop);
        let stoppable = match ours {
            Some(job) => matches!(job.stage, Stage::Downloading | Stage::Verified),
            None => true,
        };
        if ours.is_some() && stoppable {
            self.persist(state::finish(&self.state))?;
        }
        self.server.cancel_answer(url, &stop, stoppable).await
    }
}
