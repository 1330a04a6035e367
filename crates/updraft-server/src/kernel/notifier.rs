//! The notification queue: moves QUEUED actions of devices the server can reach (through any
//! adapter's [`DeviceChannel`]) to INITIATED and tells them, at most `per_second` a second across
//! every replica (each takes its share of one budget a second from the store), woken at once when
//! an assignment changes. Devices that cannot be reached learn of their update when
//! they next ask.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use updraft_core::{ActionKey, ArtifactKey, DeviceKey, RolloutKey};
use updraft_store::{Artifact, Queued};

use crate::kernel::channel::{DeviceChannel, ProfileMap, Tell};
use crate::kernel::clock::now_millis;
use crate::kernel::error::ApiError;
use crate::kernel::state::AppState;
use crate::kernel::terms::Terms;

/// Runs the queue until the process ends.
pub async fn notifier(state: AppState, per_second: u32, wake: Arc<tokio::sync::Notify>) {
    let mut queue = NotifyQueue::default();
    loop {
        let notified = queue.round(&state, u64::from(per_second.max(1))).await;
        if notified > 0 {
            tracing::debug!(notified, "told devices of their updates");
        }
        // A second between rounds keeps the rate; an assignment wakes the queue early.
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = wake.notified() => {}
        }
    }
}

/// Where the notification queue stands: it walks the QUEUED actions in key order.
#[derive(Debug)]
pub struct NotifyQueue {
    after: ActionKey,
}

impl Default for NotifyQueue {
    fn default() -> Self {
        Self {
            after: ActionKey(0),
        }
    }
}

impl NotifyQueue {
    /// One round: tells up to `budget` reachable devices with a QUEUED action of their new
    /// artifact and marks those actions INITIATED (recording the protocol that told them);
    /// returns how many. Unreachable devices keep their place; the walk starts over when it
    /// reaches the end.
    pub async fn round(&mut self, state: &AppState, budget: u64) -> u64 {
        self.round_at(state, budget, now_millis().div_euclid(1000))
            .await
    }

    /// [`NotifyQueue::round`] in the given second (epoch seconds) of the shared budget.
    pub async fn round_at(&mut self, state: &AppState, budget: u64, second: i64) -> u64 {
        match self.try_round(state, budget, second).await {
            Ok(told) => told,
            Err(err) => {
                tracing::warn!(error = %err.message, "notification round failed");
                0
            }
        }
    }

    async fn try_round(
        &mut self,
        state: &AppState,
        budget: u64,
        second: i64,
    ) -> Result<u64, ApiError> {
        let channels = state.adapters.channels();
        let reachable: Vec<HashSet<DeviceKey>> = channels
            .iter()
            .map(|c| c.reachable().into_iter().collect())
            .collect();
        let any: HashSet<DeviceKey> = reachable.iter().flatten().copied().collect();
        // Devices a channel reaches that can download without installing: a maintenance window
        // never holds their offer back.
        let separating: HashSet<DeviceKey> = channels
            .iter()
            .zip(&reachable)
            .filter(|(c, _)| c.separates_install())
            .flat_map(|(_, r)| r.iter().copied())
            .collect();
        let from = self.after;
        let mut chosen = self.choose(state, &any, &separating, budget).await?;
        if chosen.is_empty() {
            return Ok(0);
        }
        // The rate is the fleet's: every replica's queue takes its share of one budget a second.
        let wanted = chosen.len() as u64;
        let granted = state
            .store
            .take_budget("notify", second, budget, wanted)
            .await?;
        if granted < wanted {
            chosen.truncate(usize::try_from(granted).unwrap_or(0));
            // Those left out are the first the walk comes to next time.
            self.after = chosen.last().map_or(from, |q| q.action);
            if chosen.is_empty() {
                return Ok(0);
            }
        }
        // Each action is initiated in the name of the protocol the device speaks.
        let mut by_source: HashMap<&'static str, Vec<ActionKey>> = HashMap::new();
        for queued in &chosen {
            let source = source_of(channels, &reachable, queued.device);
            by_source.entry(source).or_default().push(queued.action);
        }
        let mut initiated = HashSet::new();
        for (source, keys) in by_source {
            initiated.extend(state.store.initiate(&keys, source).await?);
        }
        let mut artifacts: HashMap<ArtifactKey, Artifact> = HashMap::new();
        let mut profiles = ProfileMap::new();
        let mut listed = HashSet::new();
        let mut told = 0;
        for queued in chosen.iter().filter(|q| initiated.contains(&q.action)) {
            if queued.profile.is_some() && listed.insert(queued.tenant) {
                for p in state.store.list_profiles(queued.tenant).await? {
                    profiles.insert(p.key, p);
                }
            }
            let Some(key) = queued.artifact else { continue };
            if !artifacts.contains_key(&key)
                && let Some(artifact) = state.store.artifact(queued.tenant, key).await?
            {
                artifacts.insert(key, artifact);
            }
            let Some(artifact) = artifacts.get(&key) else {
                continue;
            };
            let tell = Tell {
                queued,
                artifact,
                profile: queued.profile.and_then(|p| profiles.get(&p)),
            };
            for (channel, devices) in channels.iter().zip(&reachable) {
                if devices.contains(&queued.device) {
                    channel.tell(state, &tell).await;
                }
            }
            told += 1;
        }
        Ok(told)
    }

    /// Up to `budget` QUEUED actions of reachable devices, from where the walk stands; an
    /// action whose rollout's maintenance window is closed waits (unless its device can download
    /// without installing), and is told on a later round inside the window.
    async fn choose(
        &mut self,
        state: &AppState,
        reachable: &HashSet<DeviceKey>,
        separating: &HashSet<DeviceKey>,
        budget: u64,
    ) -> Result<Vec<Queued>, ApiError> {
        let mut chosen = Vec::new();
        let mut terms: HashMap<RolloutKey, Terms> = HashMap::new();
        let now = now_millis();
        if reachable.is_empty() {
            return Ok(chosen);
        }
        while (chosen.len() as u64) < budget {
            let page = state.store.queued_actions(self.after, 1000).await?;
            let Some(last) = page.last().map(|q| q.action) else {
                self.after = ActionKey(0);
                break;
            };
            for queued in page {
                if chosen.len() as u64 >= budget {
                    break;
                }
                self.after = queued.action;
                if !reachable.contains(&queued.device) {
                    continue;
                }
                if let Some(rollout) = queued.rollout
                    && !separating.contains(&queued.device)
                {
                    let known = match terms.entry(rollout) {
                        std::collections::hash_map::Entry::Occupied(known) => *known.get(),
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            let found = state.store.rollout_by_key(rollout).await?;
                            *slot.insert(Terms::of(found.as_ref(), now))
                        }
                    };
                    if !known.may_offer() {
                        continue;
                    }
                }
                chosen.push(queued);
            }
            if chosen.len() as u64 >= budget {
                break;
            }
            self.after = last;
        }
        Ok(chosen)
    }
}

/// The protocol a device is told through: the first channel it speaks, else the first that
/// reaches it.
fn source_of(
    channels: &[Arc<dyn DeviceChannel>],
    reachable: &[HashSet<DeviceKey>],
    device: DeviceKey,
) -> &'static str {
    let speaking = channels
        .iter()
        .zip(reachable)
        .find(|(c, r)| r.contains(&device) && c.speaks(device));
    let reaching = || {
        channels
            .iter()
            .zip(reachable)
            .find(|(_, r)| r.contains(&device))
    };
    speaking
        .or_else(reaching)
        .map_or("server", |(channel, _)| channel.source())
}
