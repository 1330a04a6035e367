//! The agent as a Drogue DFU (`embedded-update`) device: every round sends a Status (running
//! version, MTU, and the image being written with the next offset it needs) and carries out the
//! one Command it gets back. Writes go into the inactive slot at exactly the offset the slot has
//! reached, so a power loss resumes where the slot ends; a Swap is checked against the slot's
//! SHA-256 before the trial boot; the result is told by the next Status's running version (the new
//! one after a confirmed trial, the old one after a rollback).

use std::time::Duration;

use base64::Engine;
use updraft_wire::dfu::{self, Command, Status, UpdateStatus};

use crate::AgentError;
use crate::agent::{Agent, Outcome};
use crate::flash::Flash;
use crate::state::{self, Job, Release, Stage};

/// Seconds to wait when the server says Sync or Wait without a poll interval.
const DEFAULT_POLL_SECS: u64 = 300;

/// Drogue DFU over HTTP: `POST {server}/v1/dfu` with packed CBOR and Basic authentication.
pub struct DfuClient {
    http: reqwest::Client,
    url: String,
    auth: String,
    /// Largest block the device takes in one Write.
    pub mtu: u32,
}

impl DfuClient {
    /// `server` is the base URL (`http://host:8080`); the device authenticates as
    /// `{device}@{tenant}` with its token.
    pub fn new(
        server: &str,
        tenant: &str,
        device: &str,
        token: &str,
        mtu: u32,
    ) -> Result<Self, AgentError> {
        let http = crate::server::http_client()
            .build()
            .map_err(|e| AgentError::Network(e.to_string()))?;
        Ok(Self::with_http(http, server, tenant, device, token, mtu))
    }

    /// The same over a shared HTTP client.
    pub fn with_http(
        http: reqwest::Client,
        server: &str,
        tenant: &str,
        device: &str,
        token: &str,
        mtu: u32,
    ) -> Self {
        let user = format!("{device}@{tenant}:{token}");
        Self {
            http,
            url: format!("{}/v1/dfu?ct=30", server.trim_end_matches('/')),
            auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user)
            ),
            mtu,
        }
    }

    /// Sends one Status and reads the Command that answers it.
    pub async fn exchange(&self, status: &Status) -> Result<Command, AgentError> {
        let response = self
            .http
            .post(&self.url)
            .header("authorization", &self.auth)
            .header("content-type", "application/cbor")
            .body(dfu::encode_status(status))
            .send()
            .await
            .map_err(|e| AgentError::Network(e.to_string()))?;
        let code = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| AgentError::Network(e.to_string()))?;
        if code.is_server_error() {
            return Err(AgentError::Network(format!("the server answered {code}")));
        }
        if !code.is_success() {
            return Err(AgentError::Protocol(format!(
                "the server answered {code}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        dfu::decode_command(&body).map_err(|e| AgentError::Protocol(e.0))
    }
}

impl<F: Flash> Agent<F, DfuClient> {
    /// One round of Status → Command until the device must wait, sleep or reboot.
    pub async fn dfu_cycle(&mut self) -> Result<Outcome, AgentError> {
        // A confirmed or rolled-back job needs no report of its own: the next Status's running
        // version tells the server.
        if let Some(job) = &self.state.job {
            match job.stage {
                Stage::Confirmed | Stage::Failed { .. } => {
                    self.persist(state::finish(&self.state))?
                }
                Stage::Verified => return self.dfu_install(),
                Stage::Trial { .. } => return Ok(Outcome::Reboot),
                Stage::Downloading => {}
            }
        }
        loop {
            let status = self.dfu_status()?;
            match self.server.exchange(&status).await? {
                Command::Write {
                    version,
                    offset,
                    data,
                    ..
                } => self.dfu_write(&version, offset, &data)?,
                Command::Swap {
                    version, checksum, ..
                } => {
                    if let Some(outcome) = self.dfu_swap(&version, &checksum)? {
                        return Ok(outcome);
                    }
                }
                Command::Sync { poll, .. } => {
                    // Up to date as far as the server is concerned: an image half written is
                    // no longer wanted.
                    if self.state.job.is_some() {
                        self.persist(state::finish(&self.state))?;
                    }
                    return Ok(Outcome::Idle {
                        sleep: Duration::from_secs(poll.map_or(DEFAULT_POLL_SECS, u64::from)),
                    });
                }
                Command::Wait { poll, .. } => {
                    return Ok(Outcome::Idle {
                        sleep: Duration::from_secs(poll.map_or(DEFAULT_POLL_SECS, u64::from)),
                    });
                }
            }
        }
    }

    fn dfu_status(&mut self) -> Result<Status, AgentError> {
        let update = match self.state.job.clone() {
            Some(job) if job.stage == Stage::Downloading => Some(UpdateStatus {
                version: job.release.version.into_bytes(),
                offset: u32::try_from(self.flash.slot_len(job.target)?).unwrap_or(u32::MAX),
            }),
            _ => None,
        };
        Ok(Status {
            version: self
                .state
                .running
                .as_ref()
                .map(|r| r.version.clone().into_bytes())
                .unwrap_or_default(),
            mtu: Some(self.server.mtu),
            correlation_id: None,
            update,
        })
    }

    /// Writes a block where the slot ends; a block at 0 starts a new image. Any other offset is
    /// refused (as drogue-device does): the next Status names the offset the slot needs.
    fn dfu_write(&mut self, version: &[u8], offset: u32, data: &[u8]) -> Result<(), AgentError> {
        let version = String::from_utf8_lossy(version).into_owned();
        let same =
            self.state.job.as_ref().is_some_and(|job| {
                job.release.version == version && job.stage == Stage::Downloading
            });
        if !same || offset == 0 {
            if offset != 0 {
                return Ok(());
            }
            let target = self.booted.other();
            // Empty the slot before the job exists, so that no image continues another's bytes.
            self.flash.truncate_slot(target)?;
            let title = self
                .state
                .running
                .as_ref()
                .map_or_else(|| "firmware".to_owned(), |r| r.title.clone());
            let job = Job {
                action: version.clone(),
                feedback_url: String::new(),
                download_url: String::new(),
                release: Release { title, version },
                sha256: String::new(),
                size: 0,
                target,
                stage: Stage::Downloading,
            };
            self.persist(state::AgentState {
                job: Some(job),
                ..self.state.clone()
            })?;
            self.stats.downloads_started += 1;
        }
        let Some(target) = self.state.job.as_ref().map(|job| job.target) else {
            return Ok(());
        };
        if self.flash.slot_len(target)? != u64::from(offset) {
            return Ok(());
        }
        let mut at = u64::from(offset);
        for block in data.chunks(self.config.write_block.max(1)) {
            self.flash.write_slot(target, at, block)?;
            at += block.len() as u64;
        }
        self.stats.bytes_received += data.len() as u64;
        Ok(())
    }

    /// Checks the written image against the Swap's SHA-256 and arms its trial boot. A mismatch
    /// refuses the Swap (the server gives up after three) and keeps the running image.
    fn dfu_swap(&mut self, version: &[u8], checksum: &[u8]) -> Result<Option<Outcome>, AgentError> {
        let Some(job) = self.state.job.clone() else {
            return Ok(None);
        };
        if job.release.version.as_bytes() != version || job.stage != Stage::Downloading {
            return Ok(None);
        }
        let size = self.flash.slot_len(job.target)?;
        let sha256 = self.flash.slot_sha256(job.target, size)?;
        if sha256 != hex::encode(checksum) {
            return Ok(None);
        }
        let mut next = state::advance(&self.state, Stage::Verified);
        if let Some(job) = next.job.as_mut() {
            job.sha256 = sha256;
            job.size = size;
        }
        self.persist(next)?;
        self.dfu_install().map(Some)
    }

    fn dfu_install(&mut self) -> Result<Outcome, AgentError> {
        let Some(job) = self.state.job.clone() else {
            return Ok(Outcome::Idle {
                sleep: Duration::ZERO,
            });
        };
        let path = self.flash.slot_path(job.target);
        if let Err(reason) = (self.hooks.install)(&job.release, path) {
            // The server sees the old version come back after its Swap and records the failure.
            self.persist(state::advance(
                &self.state,
                Stage::Failed {
                    reason: format!("install failed: {reason}"),
                },
            ))?;
            return Ok(Outcome::Idle {
                sleep: Duration::ZERO,
            });
        }
        self.persist(state::advance(&self.state, Stage::Trial { boots: 0 }))?;
        Ok(Outcome::Reboot)
    }
}
