//! Hot views: what an idle check-in reads — a tenant by name, a device by its id or credential,
//! the device's poll view and status, its Frugal membership, an artifact — kept in memory so that
//! a device asking "anything for me?" costs no database round trip.
//!
//! Coherence comes from the store's own writes, through one rule: **every method that writes holds
//! a [`Writing`] guard until it returns** (after its commit). Dropping the guard invalidates what
//! the write may have changed: one device's entries when the write is known to touch only that
//! device (a report, a device's attributes, an initiation), or everything otherwise (a new
//! assignment, a tenant's settings, a rollout step). A read takes a [`Ticket`] before it goes to
//! the database and may fill the cache only if no invalidation that could concern its entry
//! happened meanwhile — so a read that raced a write never leaves the old value behind.
//!
//! Other processes writing the same database (replicas on one PostgreSQL) are heard through
//! `feed.rs`: each process publishes what its writes invalidated (`NOTIFY`) and applies what the
//! others publish; while its listener is not connected the views are bypassed (every read goes to
//! the database). `last_seen` writes caused by check-ins are batched: [`Views::seen`] records them
//! and a flusher writes them once a second.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use updraft_core::DeviceKey;

use super::reconcile::LoadedAssignment;
use crate::rows::{Artifact, Device, DeviceStatus, FrugalNode, Millis, PollView, Tenant};

/// Entries a map holds at most; past it an arbitrary entry makes room.
const CAPACITY: usize = 250_000;
/// Entries the map of unknown credentials holds at most: a hostile network chooses them, so they
/// are bounded tighter than what the store itself names.
const UNKNOWN_CAPACITY: usize = 65_536;
/// Devices are invalidated by shard: a read refuses to fill when its device's shard was
/// invalidated after it started. Many shards, so that a fleet's reports (each invalidating its
/// device's shard) rarely refuse another device's fill.
const SHARDS: usize = 4096;

/// What a read saw before it went to the database: the global epoch and the sequence number of
/// the last device invalidation.
pub(crate) struct Ticket {
    global: u64,
    seq: u64,
}

pub(crate) struct Memo<K, V> {
    map: Mutex<HashMap<K, (V, u64)>>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Memo<K, V> {
    fn new() -> Self {
        Self::bounded(CAPACITY)
    }

    fn bounded(capacity: usize) -> Self {
        Memo {
            map: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, u64)>> {
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, key: &K, global: u64) -> Option<V> {
        self.lock()
            .get(key)
            .filter(|(_, epoch)| *epoch == global)
            .map(|(value, _)| value.clone())
    }

    /// Inserts unless `still` says an invalidation happened since the ticket was taken (checked
    /// under the map's lock, which invalidations take after moving their counter).
    fn put(&self, key: K, value: V, ticket: &Ticket, still: impl FnOnce() -> bool) {
        let mut map = self.lock();
        if !still() {
            return;
        }
        if map.len() >= self.capacity
            && !map.contains_key(&key)
            && let Some(evicted) = map.keys().next().cloned()
        {
            map.remove(&evicted);
        }
        map.insert(key, (value, ticket.global));
    }

    fn remove(&self, key: &K) {
        self.lock().remove(key);
    }

    fn update(&self, key: &K, change: impl FnOnce(&mut V)) {
        if let Some((value, _)) = self.lock().get_mut(key) {
            change(value);
        }
    }
}

/// Lookup keys of devices: by (tenant, id) and by credential (tenant or any, kind, secret hash).
pub(crate) type IdKey = (i64, String);
pub(crate) type CredentialKey = (Option<i64>, &'static str, String);

/// The in-memory views of one store (shared by its clones).
pub struct Views {
    global: AtomicU64,
    /// Device invalidations so far.
    seq: AtomicU64,
    /// Per shard, the `seq` of its last invalidation.
    shards: Box<[AtomicU64]>,
    pub(crate) tenants: Memo<String, Tenant>,
    pub(crate) ids: Memo<IdKey, DeviceKey>,
    pub(crate) credentials: Memo<CredentialKey, DeviceKey>,
    pub(crate) artifacts: Memo<(i64, i64), Artifact>,
    pub(crate) devices: Memo<DeviceKey, Device>,
    pub(crate) polls: Memo<DeviceKey, PollView>,
    pub(crate) statuses: Memo<DeviceKey, DeviceStatus>,
    pub(crate) frugal: Memo<DeviceKey, Option<FrugalNode>>,
    /// A tenant's assignments as resolution reads them (every status the views miss needs them).
    assignments: Memo<i64, Arc<Vec<LoadedAssignment>>>,
    /// Credentials known to name no device: a device unknown by one credential is looked up by
    /// another (an LwM2M endpoint name, then the device id) without a round trip each time.
    unknown_credentials: Memo<CredentialKey, ()>,
    /// A device's LwM2M PSK identity, or none (a device with one registers over DTLS only).
    psk_identities: Memo<DeviceKey, Option<String>>,
    seen: Mutex<HashMap<DeviceKey, Millis>>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Whether the views may be used: always for a database only this process writes; for a
    /// shared one, while the change feed listens.
    live: std::sync::atomic::AtomicBool,
    /// Other processes write the database: this process's invalidations are published.
    pub(crate) shared: bool,
    /// Names this store's notifications, so that it skips its own.
    pub(crate) origin: u64,
    pub(crate) outbox: Mutex<super::feed::Outbox>,
    pub(crate) outbox_ready: tokio::sync::Notify,
    heard: AtomicU64,
    heard_notify: tokio::sync::Notify,
    /// Other processes' news (see `feed.rs`).
    pub(crate) news: tokio::sync::broadcast::Sender<String>,
}

fn shard(device: DeviceKey) -> usize {
    usize::try_from(device.0.rem_euclid(SHARDS as i64)).unwrap_or(0)
}

impl Views {
    /// Views for a database that only this process writes (`shared` false), or that other
    /// processes write too (then unused until the change feed listens).
    pub(crate) fn new(shared: bool) -> Arc<Self> {
        Arc::new(Views {
            live: std::sync::atomic::AtomicBool::new(!shared),
            shared,
            origin: {
                let mut bytes = [0u8; 8];
                // Without OS randomness, the address and the time tell stores apart well enough.
                if getrandom::fill(&mut bytes).is_err() {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(0);
                    bytes = (now ^ (&bytes as *const _ as u64)).to_le_bytes();
                }
                u64::from_le_bytes(bytes)
            },
            outbox: Mutex::default(),
            outbox_ready: tokio::sync::Notify::new(),
            heard: AtomicU64::new(0),
            heard_notify: tokio::sync::Notify::new(),
            news: tokio::sync::broadcast::channel(1024).0,
            global: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            tenants: Memo::new(),
            ids: Memo::new(),
            credentials: Memo::new(),
            artifacts: Memo::new(),
            devices: Memo::new(),
            polls: Memo::new(),
            statuses: Memo::new(),
            frugal: Memo::new(),
            assignments: Memo::new(),
            unknown_credentials: Memo::bounded(UNKNOWN_CAPACITY),
            psk_identities: Memo::new(),
            seen: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// Take before reading the database for a fill.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket {
            global: self.global.load(SeqCst),
            seq: self.seq.load(SeqCst),
        }
    }

    fn unchanged(&self, ticket: &Ticket) -> bool {
        self.live() && self.global.load(SeqCst) == ticket.global
    }

    fn live(&self) -> bool {
        self.live.load(SeqCst)
    }

    /// The change feed started or stopped listening: either way everything is forgotten (what
    /// others wrote meanwhile was not heard).
    pub(crate) fn set_live(&self, live: bool) {
        self.invalidate_all();
        self.live.store(live, SeqCst);
        self.heard_notify.notify_waiters();
    }

    /// Waits until the views are in use (at once unless a change feed is still connecting).
    pub async fn until_live(&self) {
        loop {
            let notified = self.heard_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live() {
                return;
            }
            notified.await;
        }
    }

    /// Another process's invalidation arrived and was applied.
    pub(crate) fn heard_one(&self) {
        self.heard.fetch_add(1, SeqCst);
        self.heard_notify.notify_waiters();
    }

    /// How many invalidations from other processes were applied.
    pub fn heard(&self) -> u64 {
        self.heard.load(SeqCst)
    }

    /// Waits until more than `seen` invalidations from other processes were applied.
    pub async fn heard_after(&self, seen: u64) {
        loop {
            let notified = self.heard_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.heard() > seen {
                return;
            }
            notified.await;
        }
    }

    /// Whether no invalidation that could concern `device` happened since `ticket` was taken.
    /// (An invalidation whose number the ticket already saw came after its write committed, so
    /// before the read the ticket guards.)
    fn device_unchanged(&self, ticket: &Ticket, device: DeviceKey) -> bool {
        self.unchanged(ticket) && self.shards[shard(device)].load(SeqCst) <= ticket.seq
    }

    /// Numbers an invalidation of `device`'s shard (before its entries are removed).
    fn invalidate_shard(&self, device: DeviceKey) {
        let seq = self.seq.fetch_add(1, SeqCst) + 1;
        self.shards[shard(device)].fetch_max(seq, SeqCst);
    }

    fn epoch(&self) -> u64 {
        self.global.load(SeqCst)
    }

    fn counted<V>(&self, found: Option<V>) -> Option<V> {
        let found = found.filter(|_| self.live());
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, SeqCst);
        found
    }

    /// (hits, misses) since the store opened.
    pub fn hit_counts(&self) -> (u64, u64) {
        (self.hits.load(SeqCst), self.misses.load(SeqCst))
    }

    // Reads of the global maps (invalidated by any write that is not a single device's).
    pub(crate) fn tenant(&self, name: &str) -> Option<Tenant> {
        self.counted(self.tenants.get(&name.to_ascii_lowercase(), self.epoch()))
    }
    pub(crate) fn put_tenant(&self, tenant: &Tenant, ticket: &Ticket) {
        let key = tenant.name.as_str().to_ascii_lowercase();
        self.tenants
            .put(key, tenant.clone(), ticket, || self.unchanged(ticket));
    }
    pub(crate) fn artifact(&self, key: (i64, i64)) -> Option<Artifact> {
        self.counted(self.artifacts.get(&key, self.epoch()))
    }
    pub(crate) fn put_artifact(&self, artifact: &Artifact, tenant: i64, ticket: &Ticket) {
        let key = (tenant, artifact.key.0);
        self.artifacts
            .put(key, artifact.clone(), ticket, || self.unchanged(ticket));
    }

    /// A tenant's assignments (changed only by writes that invalidate everything).
    pub(super) fn assignments(&self, tenant: i64) -> Option<Arc<Vec<LoadedAssignment>>> {
        self.counted(self.assignments.get(&tenant, self.epoch()))
    }
    pub(super) fn put_assignments(
        &self,
        tenant: i64,
        found: &Arc<Vec<LoadedAssignment>>,
        t: &Ticket,
    ) {
        self.assignments
            .put(tenant, found.clone(), t, || self.unchanged(t));
    }
    /// Whether `credential` is known to name no device (credentials are added and removed only by
    /// writes that invalidate everything). Counted only when it answers.
    pub(crate) fn credential_unknown(&self, credential: &CredentialKey) -> bool {
        let unknown = self.live()
            && self
                .unknown_credentials
                .get(credential, self.epoch())
                .is_some();
        if unknown {
            self.hits.fetch_add(1, SeqCst);
        }
        unknown
    }
    pub(crate) fn put_unknown_credential(&self, credential: CredentialKey, ticket: &Ticket) {
        self.unknown_credentials
            .put(credential, (), ticket, || self.unchanged(ticket));
    }
    /// A device's PSK identity (set only by writes that invalidate everything).
    pub(crate) fn psk_identity(&self, device: DeviceKey) -> Option<Option<String>> {
        self.counted(self.psk_identities.get(&device, self.epoch()))
    }
    pub(crate) fn put_psk_identity(&self, d: DeviceKey, identity: &Option<String>, t: &Ticket) {
        self.psk_identities
            .put(d, identity.clone(), t, || self.unchanged(t));
    }

    /// A device found by (tenant, id).
    pub(crate) fn device_by_id(&self, key: &IdKey) -> Option<Device> {
        let found = self
            .ids
            .get(key, self.epoch())
            .and_then(|device| self.devices.get(&device, self.epoch()));
        self.counted(found)
    }
    /// A device found by a credential.
    pub(crate) fn device_by_credential(&self, key: &CredentialKey) -> Option<Device> {
        let found = self
            .credentials
            .get(key, self.epoch())
            .and_then(|device| self.devices.get(&device, self.epoch()));
        self.counted(found)
    }
    pub(crate) fn device(&self, key: DeviceKey) -> Option<Device> {
        self.counted(self.devices.get(&key, self.epoch()))
    }
    pub(crate) fn put_device(&self, device: &Device, ticket: &Ticket) {
        let key = device.key;
        let id = (device.tenant.0, device.id.as_str().to_owned());
        self.ids.put(id, key, ticket, || self.unchanged(ticket));
        self.devices.put(key, device.clone(), ticket, || {
            self.device_unchanged(ticket, key)
        });
    }
    pub(crate) fn put_credential(&self, credential: CredentialKey, device: &Device, t: &Ticket) {
        self.credentials
            .put(credential, device.key, t, || self.unchanged(t));
        self.put_device(device, t);
    }

    // Reads of one device's derived views.
    pub(crate) fn poll(&self, device: DeviceKey) -> Option<PollView> {
        self.counted(self.polls.get(&device, self.epoch()))
    }
    pub(crate) fn put_poll(&self, device: DeviceKey, view: &PollView, ticket: &Ticket) {
        self.polls.put(device, view.clone(), ticket, || {
            self.device_unchanged(ticket, device)
        });
    }
    pub(crate) fn status(&self, key: &IdKey) -> Option<DeviceStatus> {
        let found = self
            .ids
            .get(key, self.epoch())
            .and_then(|device| self.statuses.get(&device, self.epoch()));
        self.counted(found)
    }
    pub(crate) fn put_status(&self, status: &DeviceStatus, ticket: &Ticket) {
        let device = status.device.key;
        self.put_device(&status.device, ticket);
        self.statuses.put(device, status.clone(), ticket, || {
            self.device_unchanged(ticket, device)
        });
    }
    pub(crate) fn frugal_node(&self, device: DeviceKey) -> Option<Option<FrugalNode>> {
        self.counted(self.frugal.get(&device, self.epoch()))
    }
    pub(crate) fn put_frugal_node(&self, d: DeviceKey, n: &Option<FrugalNode>, t: &Ticket) {
        self.frugal
            .put(d, n.clone(), t, || self.device_unchanged(t, d));
    }

    /// Forget everything one device's views hold (its lookup keys stay: they change only with
    /// writes that invalidate everything).
    pub fn invalidate_device(&self, device: DeviceKey) {
        self.invalidate_shard(device);
        self.devices.remove(&device);
        self.polls.remove(&device);
        self.statuses.remove(&device);
        self.frugal.remove(&device);
    }

    /// Forget what one device's actions make of its views: everything but the device itself.
    fn invalidate_actions_of(&self, device: DeviceKey) {
        self.invalidate_shard(device);
        self.polls.remove(&device);
        self.statuses.remove(&device);
        self.frugal.remove(&device);
    }

    /// Forget everything.
    pub fn invalidate_all(&self) {
        self.global.fetch_add(1, SeqCst);
    }

    /// Whether a check-in's `last_seen` can be batched: the device has been seen before (its
    /// first sighting is written at once, since it may join dynamic rollouts).
    pub(crate) fn seen(&self, device: DeviceKey, now: Millis) -> bool {
        let known = self.live()
            && self
                .devices
                .get(&device, self.epoch())
                .is_some_and(|d| d.last_seen.is_some());
        if !known {
            return false;
        }
        self.devices.update(&device, |d| d.last_seen = Some(now));
        self.statuses
            .update(&device, |s| s.device.last_seen = Some(now));
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(device, now);
        true
    }

    /// The batched `last_seen` values, taken out to be written.
    pub(crate) fn take_seen(&self) -> HashMap<DeviceKey, Millis> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Writes the batched `last_seen` values once a second while the store is alive.
    pub(crate) fn spawn_flusher(views: &Arc<Views>, pool: sqlx::AnyPool) {
        let weak: Weak<Views> = Arc::downgrade(views);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(views) = weak.upgrade() else { return };
                let seen = views.take_seen();
                drop(views);
                if pool.is_closed() {
                    return;
                }
                if let Err(err) = write_seen(&pool, &seen).await {
                    tracing::warn!("writing {} devices' last_seen: {err}", seen.len());
                }
            }
        });
    }

    /// Hold while writing; see the module's rule.
    pub(crate) fn writing(&self) -> Writing<'_> {
        Writing {
            views: self,
            scope: Scope::All,
        }
    }
}

/// Writes `last_seen` values in one transaction.
pub(crate) async fn write_seen(
    pool: &sqlx::AnyPool,
    seen: &HashMap<DeviceKey, Millis>,
) -> Result<(), sqlx::Error> {
    if seen.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for (device, at) in seen {
        sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2 AND last_seen < $1")
            .bind(*at)
            .bind(device.0)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

enum Scope {
    All,
    /// These devices: each whole (`true`) or only what its actions make of its views (`false`).
    Devices(Vec<(DeviceKey, bool)>),
    Nothing,
}

/// Held by a writing method until it returns; dropping it invalidates what the write touched.
/// It starts as "everything" and is narrowed by a method that knows better.
#[must_use = "hold the guard until the write has committed"]
pub(crate) struct Writing<'a> {
    views: &'a Views,
    scope: Scope,
}

impl Writing<'_> {
    /// The write touched only this device's rows (may be called for several devices).
    pub(crate) fn device(&mut self, device: DeviceKey) {
        self.touch(device, true);
    }

    /// The write touched only this device's actions (a report that did not end in UPDATED):
    /// the device's own row, which its check-ins look up, stays in memory.
    pub(crate) fn actions_of(&mut self, device: DeviceKey) {
        self.touch(device, false);
    }

    fn touch(&mut self, device: DeviceKey, whole: bool) {
        match &mut self.scope {
            Scope::Devices(devices) => devices.push((device, whole)),
            Scope::All | Scope::Nothing => self.scope = Scope::Devices(vec![(device, whole)]),
        }
    }

    /// The write changed nothing a view holds.
    pub(crate) fn nothing_cached(&mut self) {
        self.scope = Scope::Nothing;
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        match &self.scope {
            Scope::All => {
                self.views.invalidate_all();
                self.views.publish(None);
            }
            Scope::Devices(devices) => {
                for &(device, whole) in devices {
                    if whole {
                        self.views.invalidate_device(device);
                    } else {
                        self.views.invalidate_actions_of(device);
                    }
                    // Other processes forget the whole device: more than needed, never less.
                    self.views.publish(Some(device));
                }
            }
            Scope::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests;
