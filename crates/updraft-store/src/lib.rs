//! Updraft's storage. [`Store`] is the one narrow interface to the fleet and artifact metadata,
//! implemented by [`SqlStore`] over SQLite (the embedded default) and PostgreSQL (scale-out); one
//! conformance suite (`tests/it`) runs against both. [`BlobStore`] keeps artifact bytes,
//! content-addressed by SHA-256; [`LocalBlobStore`] keeps them on disk.
//!
//! Invariants kept here, whatever the caller: every query is scoped by tenant; a device has at
//! most one active update action (a unique index says so too); an action's state only moves
//! forward and every change, applied or refused, is a history event.

mod blob;
mod error;
mod mapped;
mod migrations;
mod rollout_rows;
mod rows;
mod s3;
mod sql;

pub use blob::{
    BlobReader, BlobStore, BlobWriter, GcReport, ListedBlob, LocalBlobStore, collect_garbage,
};
pub use error::{StoreError, StoreResult};
pub use mapped::Mapped;
pub use rollout_rows::*;
pub use rows::*;
pub use s3::{PART_SIZE, S3BlobStore, S3Config};
pub use sql::{Dialect, Lease, SqlStore};

use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use updraft_core::rollout::Lifecycle;
use updraft_core::{
    ActionKey, ArtifactKey, ArtifactKind, DeviceId, DeviceKey, Name, ProfileKey, ProjectKey,
    Report, RolloutKey, Scope, TenantKey,
};

/// Tenants, their settings and gateway token, and API keys.
#[async_trait]
pub trait Tenants: Send + Sync {
    async fn create_tenant(&self, name: &Name) -> StoreResult<Tenant>;
    /// Case-insensitive, as hawkBit matches tenant names.
    async fn tenant_by_name(&self, name: &str) -> StoreResult<Option<Tenant>>;
    async fn tenant_by_key(&self, key: TenantKey) -> StoreResult<Option<Tenant>>;
    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>>;
    async fn update_tenant_settings(
        &self,
        tenant: TenantKey,
        settings: TenantSettings,
    ) -> StoreResult<()>;
    /// Sets (or, with `None`, revokes) the tenant's gateway token hash.
    async fn set_gateway_token(
        &self,
        tenant: TenantKey,
        secret_hash: Option<&str>,
    ) -> StoreResult<()>;
    async fn tenant_by_gateway_token(&self, secret_hash: &str) -> StoreResult<Option<Tenant>>;
    async fn create_api_key(&self, tenant: TenantKey, new: &NewApiKey) -> StoreResult<ApiKey>;
    async fn api_key_by_hash(&self, secret_hash: &str) -> StoreResult<Option<ApiKey>>;
    async fn list_api_keys(&self, tenant: TenantKey) -> StoreResult<Vec<ApiKey>>;
    /// Deletes a key of the tenant; never the server admin key (false).
    async fn delete_api_key(&self, tenant: TenantKey, id: i64) -> StoreResult<bool>;
}

/// Projects, profiles and devices with their credentials.
#[async_trait]
pub trait Fleet: Send + Sync {
    async fn create_project(&self, tenant: TenantKey, name: &Name) -> StoreResult<Project>;
    async fn project_by_name(&self, tenant: TenantKey, name: &Name)
    -> StoreResult<Option<Project>>;
    async fn list_projects(&self, tenant: TenantKey) -> StoreResult<Vec<Project>>;
    async fn create_profile(
        &self,
        tenant: TenantKey,
        name: &Name,
        description: &str,
    ) -> StoreResult<Profile>;
    async fn profile_by_name(&self, tenant: TenantKey, name: &Name)
    -> StoreResult<Option<Profile>>;
    async fn list_profiles(&self, tenant: TenantKey) -> StoreResult<Vec<Profile>>;
    /// Sets or removes the profile's code-signing certificate; false when there is no such
    /// profile.
    async fn set_profile_signing_cert(
        &self,
        tenant: TenantKey,
        profile: ProfileKey,
        cert: Option<&SigningCert>,
    ) -> StoreResult<bool>;
    /// Replaces the profile's settings; false when the tenant has no such profile.
    async fn set_profile_settings(
        &self,
        tenant: TenantKey,
        profile: ProfileKey,
        settings: ProfileSettings,
    ) -> StoreResult<bool>;
    /// Creates the device with its first credential, if any, and queues its update if an
    /// assignment already covers it.
    async fn create_device(
        &self,
        tenant: TenantKey,
        new: &NewDevice,
        credentials: &[NewCredential],
    ) -> StoreResult<Device>;
    /// Moves the device to another project and/or profile (as a device reports them), then
    /// brings its update in line with what it should run there.
    async fn place_device(
        &self,
        tenant: TenantKey,
        device: DeviceKey,
        project: Option<ProjectKey>,
        profile: Option<ProfileKey>,
    ) -> StoreResult<()>;
    /// Records that the device was heard from now; at its first check-in it joins the dynamic
    /// rollouts and rules it now matches.
    async fn touch_device(&self, device: DeviceKey) -> StoreResult<()>;
    /// Records what the device says it runs (title and version of one artifact kind), without
    /// touching its update actions.
    async fn set_running(
        &self,
        device: DeviceKey,
        kind: ArtifactKind,
        title: &str,
        version: &str,
    ) -> StoreResult<()>;
    /// Changes the device's attributes as the device reported them.
    async fn update_attributes(
        &self,
        device: DeviceKey,
        mode: AttributeMode,
        data: &std::collections::BTreeMap<String, String>,
    ) -> StoreResult<()>;
    async fn device(&self, tenant: TenantKey, id: &DeviceId) -> StoreResult<Option<Device>>;
    /// The device with this row key, whatever its tenant (for server-side workers).
    async fn device_by_key(&self, key: DeviceKey) -> StoreResult<Option<Device>>;
    async fn list_devices(&self, tenant: TenantKey, page: Page) -> StoreResult<Paged<Device>>;
    /// Up to `limit` devices of a tenant after `after` in id order (keyset paging: a scan of the
    /// whole fleet costs the same per batch at its end as at its start).
    async fn devices_after(
        &self,
        tenant: TenantKey,
        after: Option<&DeviceId>,
        limit: u64,
    ) -> StoreResult<Vec<Device>>;
    /// The tenant's devices matching `filter` at `now`, in key order: one pass in keyset batches
    /// reading only the columns the filter looks at. More than `at_most` matches is an error
    /// (`target_too_large`).
    async fn matching_devices(
        &self,
        tenant: TenantKey,
        filter: &updraft_core::Filter,
        now: Millis,
        at_most: usize,
    ) -> StoreResult<Vec<DeviceMatch>>;
    async fn delete_device(&self, tenant: TenantKey, id: &DeviceId) -> StoreResult<bool>;
    /// For each of the tenant's `devices` (at most a page of them): the protocol of its last
    /// report and the state of its latest update, one seek per device.
    async fn device_summaries(
        &self,
        tenant: TenantKey,
        devices: &[DeviceKey],
    ) -> StoreResult<HashMap<DeviceKey, DeviceSummary>>;
    /// What credentials a device of the tenant has (kinds and dates, never the secrets' hashes;
    /// a certificate's fingerprint, which is no secret).
    async fn device_credentials(
        &self,
        tenant: TenantKey,
        device: DeviceKey,
    ) -> StoreResult<Vec<CredentialInfo>>;
    /// The device a credential belongs to when the caller names no tenant (a bare token, a
    /// certificate). Credentials are unique per tenant only: one held in several tenants names
    /// no device here (`None`), so that no tenant's credential opens another's device.
    async fn device_by_credential(
        &self,
        kind: CredentialKind,
        secret_hash: &str,
    ) -> StoreResult<Option<Device>>;
    /// The device of `tenant` a credential belongs to.
    async fn device_by_credential_in(
        &self,
        tenant: TenantKey,
        kind: CredentialKind,
        secret_hash: &str,
    ) -> StoreResult<Option<Device>>;
    /// The device of `tenant` a credential belongs to when it is marked as a gateway's.
    async fn gateway_by_credential(
        &self,
        tenant: TenantKey,
        kind: CredentialKind,
        secret_hash: &str,
    ) -> StoreResult<Option<Device>>;
}

/// Artifact metadata (the bytes are in the blob store).
#[async_trait]
pub trait Artifacts: Send + Sync {
    /// Fails with [`StoreError::Conflict`] when the title + version exists in the tenant.
    async fn insert_artifact(&self, tenant: TenantKey, new: &NewArtifact) -> StoreResult<Artifact>;
    async fn artifact(&self, tenant: TenantKey, key: ArtifactKey) -> StoreResult<Option<Artifact>>;
    async fn artifact_by_release(
        &self,
        tenant: TenantKey,
        title: &str,
        version: &str,
    ) -> StoreResult<Option<Artifact>>;
    async fn list_artifacts(
        &self,
        tenant: TenantKey,
        filter: &ArtifactFilter,
        page: Page,
    ) -> StoreResult<Paged<Artifact>>;
    /// Deletes an artifact that nothing is assigned to and no active action installs. Says
    /// whether its blob is now referenced by no artifact at all (so the caller may delete it).
    async fn delete_artifact(
        &self,
        tenant: TenantKey,
        key: ArtifactKey,
    ) -> StoreResult<DeletedArtifact>;
    /// The SHA-256 of every blob an artifact refers to, in every tenant.
    async fn blob_references(&self) -> StoreResult<HashSet<String>>;
}

/// What should run where: assigning reconciles every device the scope covers.
#[async_trait]
pub trait Assignments: Send + Sync {
    /// Assigns (or reassigns) `artifact` at `scope`, then supersedes or queues the update
    /// actions of every device the scope covers.
    async fn assign(
        &self,
        tenant: TenantKey,
        scope: Scope,
        artifact: ArtifactKey,
        by: &str,
    ) -> StoreResult<Assignment>;
    async fn unassign(
        &self,
        tenant: TenantKey,
        scope: Scope,
        kind: ArtifactKind,
        by: &str,
    ) -> StoreResult<bool>;
    async fn list_assignments(&self, tenant: TenantKey) -> StoreResult<Vec<Assignment>>;
}

/// Update actions: status, history, reports, the notification queue's work list, cancellations.
#[async_trait]
pub trait Actions: Send + Sync {
    /// The device with what it should run and its active action.
    async fn device_status(
        &self,
        tenant: TenantKey,
        id: &DeviceId,
    ) -> StoreResult<Option<DeviceStatus>>;
    async fn action(&self, tenant: TenantKey, key: ActionKey) -> StoreResult<Option<Action>>;
    async fn actions_for_device(
        &self,
        tenant: TenantKey,
        id: &DeviceId,
    ) -> StoreResult<Vec<Action>>;
    async fn action_history(
        &self,
        tenant: TenantKey,
        key: ActionKey,
    ) -> StoreResult<Vec<ActionEvent>>;
    /// Applies a report to an action, or records why it was refused. On success the device's
    /// running release becomes the action's and its next update, if any, is queued.
    async fn report(
        &self,
        tenant: TenantKey,
        key: ActionKey,
        report: &Report,
        source: &str,
    ) -> StoreResult<ReportOutcome>;
    async fn fleet_summary(&self, tenant: TenantKey) -> StoreResult<FleetSummary>;
    /// What the dashboard's fleet page shows of a tenant at `now`: aggregates only, a few
    /// statements whatever the fleet's size.
    async fn fleet_overview(&self, tenant: TenantKey, now: Millis) -> StoreResult<FleetOverview>;
    /// QUEUED actions with keys above `after`, oldest first, at most `limit`, in every tenant:
    /// the notification queue's work list.
    async fn queued_actions(&self, after: ActionKey, limit: u64) -> StoreResult<Vec<Queued>>;
    /// Moves the still-QUEUED ones of `actions` to INITIATED in one transaction; returns those.
    async fn initiate(&self, actions: &[ActionKey], source: &str) -> StoreResult<Vec<ActionKey>>;
    /// The device's pending cancellation, active action and last success, in one query.
    async fn poll_view(&self, device: DeviceKey) -> StoreResult<PollView>;
    /// The newest canceled action of the device that the device was told about and has not
    /// confirmed canceling.
    async fn pending_cancel(&self, device: DeviceKey) -> StoreResult<Option<Action>>;
    /// Records the device's answer to a cancellation; false if none was pending.
    async fn acknowledge_cancel(
        &self,
        tenant: TenantKey,
        key: ActionKey,
        accepted: bool,
        source: &str,
    ) -> StoreResult<bool>;
}

/// Rollouts: their groups and members, counters, and the steps the scheduler takes.
#[async_trait]
pub trait Rollouts: Send + Sync {
    /// Creates the rollout with one group per entry of `members` (each the group's devices, in
    /// the order they are activated within equal delays). Fails with [`StoreError::Conflict`]
    /// when the tenant has a rollout of that name.
    async fn create_rollout(
        &self,
        tenant: TenantKey,
        new: &NewRollout,
        members: &[Vec<DeviceKey>],
    ) -> StoreResult<Rollout>;
    async fn rollout_by_name(&self, tenant: TenantKey, name: &str) -> StoreResult<Option<Rollout>>;
    async fn list_rollouts(&self, tenant: TenantKey) -> StoreResult<Vec<Rollout>>;
    /// The rollout with this key, whatever its tenant (for server-side workers).
    async fn rollout_by_key(&self, rollout: RolloutKey) -> StoreResult<Option<Rollout>>;
    /// The rollout whose group an action belongs to, if any: its update type and window say
    /// how the device may install.
    async fn rollout_of_action(&self, action: ActionKey) -> StoreResult<Option<Rollout>>;
    async fn rollout_groups(&self, rollout: RolloutKey) -> StoreResult<Vec<RolloutGroup>>;
    /// The newest failures of the rollout's devices, at most `limit`.
    async fn rollout_failures(
        &self,
        rollout: RolloutKey,
        limit: u64,
    ) -> StoreResult<Vec<RolloutFailure>>;
    /// Moves the rollout from `from` to `to` (compare-and-set: false when another change came
    /// first). To CANCELED it also withdraws every member that is not UPDATED, canceling their
    /// still-active actions; devices then run what their assignments say.
    async fn set_rollout_state(
        &self,
        rollout: RolloutKey,
        from: Lifecycle,
        to: Lifecycle,
        by: &str,
    ) -> StoreResult<bool>;
    /// The rollouts the scheduler moves: RUNNING ones, and READY ones whose start time came.
    async fn live_rollouts(&self, now: Millis) -> StoreResult<Vec<Rollout>>;
    /// Records that group `group` started (or passed its success threshold) at `now`.
    async fn mark_group(&self, group: i64, mark: GroupMark, now: Millis) -> StoreResult<()>;
    /// How many members of the rollout were activated at or after `since`.
    async fn activated_since(&self, rollout: RolloutKey, since: Millis) -> StoreResult<u64>;
    /// Activates up to `limit` waiting members of the rollout's started groups whose delay has
    /// passed at `now`, and queues their actions; returns how many it activated.
    async fn activate_members(
        &self,
        rollout: &Rollout,
        limit: u64,
        now: Millis,
    ) -> StoreResult<u64>;
}

/// A task that one process at a time runs across every replica on the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Singleton {
    /// The rollout scheduler.
    Scheduler,
    /// Blob garbage collection.
    GarbageCollection,
}

/// What replicas on one database share beyond the fleet model: singleton tasks, secrets, news.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// The right to run `task`: `None` while another process holds it. Held until the lease is
    /// dropped or its database session dies (with PostgreSQL, a session advisory lock; with
    /// SQLite, the one process always holds it).
    async fn lease(&self, task: Singleton) -> StoreResult<Option<Lease>>;
    /// The secret every replica shares under `name`: the stored one, or `candidate` stored now
    /// if there was none (the first replica to ask decides).
    async fn shared_secret(&self, name: &str, candidate: &str) -> StoreResult<String>;
    /// Tells the other processes on this database `news`, after every invalidation of this
    /// process's earlier writes (nothing where no other process can share the database).
    fn publish(&self, news: &str);
    /// What other processes publish, as it arrives (`*`: some may have been missed); `None` where
    /// no other process can share the database (SQLite).
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<String>>;
    /// Up to `want` of the `limit` that every process together may spend in `second` (epoch
    /// seconds) under `name`: how many this caller got. One process alone (SQLite) gets `want`.
    async fn take_budget(&self, name: &str, second: i64, limit: u64, want: u64)
    -> StoreResult<u64>;
    /// Whether the database answers (for `/readyz`): on PostgreSQL over a session of its own, so
    /// that a busy pool does not make a working replica look dead.
    async fn ping(&self) -> StoreResult<()>;
    /// How many reads the in-memory views answered, and how many went to the database, since
    /// the store opened (for `/metrics`).
    fn view_lookups(&self) -> (u64, u64);
}

/// What [`Rollouts::mark_group`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupMark {
    Started,
    Passed,
}

/// What device protocols keep per device or per action: LwM2M DTLS pre-shared keys and AWS IoT job executions.
#[async_trait]
pub trait ProtocolState: Send + Sync {
    /// Sets (replacing) or removes the device's PSK identity and key (hex).
    async fn set_lwm2m_psk(&self, device: DeviceKey, psk: Option<(&str, &str)>) -> StoreResult<()>;
    /// Every (device, identity, key hex), for the DTLS listener.
    async fn lwm2m_psks(&self) -> StoreResult<Vec<(DeviceKey, String, String)>>;
    /// The device's PSK identity, if it has a PSK.
    async fn lwm2m_psk_identity(&self, device: DeviceKey) -> StoreResult<Option<String>>;
    /// Stores (`Some`, replacing) or forgets (`None`) LwM2M registrations, in one transaction.
    async fn save_lwm2m_registrations(
        &self,
        changes: &[(DeviceKey, Option<StoredRegistration>)],
    ) -> StoreResult<()>;
    /// The stored LwM2M registrations that have not expired at `now`.
    async fn lwm2m_registrations(&self, now: Millis) -> StoreResult<Vec<StoredRegistration>>;
    async fn job_execution(&self, action: ActionKey) -> StoreResult<Option<JobExecution>>;
    /// Writes the execution if the stored one still has `expected_version` (`None`: there is
    /// none yet); false when another change came first.
    async fn save_job_execution(
        &self,
        execution: &JobExecution,
        expected_version: Option<i64>,
    ) -> StoreResult<bool>;
    /// A new Frugal-IoT project key (only the secret's hash is kept).
    async fn create_frugal_key(
        &self,
        tenant: TenantKey,
        project: ProjectKey,
        profile: ProfileKey,
        secret_hash: &str,
        max_nodes: u64,
    ) -> StoreResult<FrugalKey>;
    async fn list_frugal_keys(&self, tenant: TenantKey) -> StoreResult<Vec<FrugalKey>>;
    async fn frugal_key(&self, tenant: TenantKey, id: i64) -> StoreResult<Option<FrugalKey>>;
    async fn frugal_key_by_hash(
        &self,
        tenant: TenantKey,
        secret_hash: &str,
    ) -> StoreResult<Option<FrugalKey>>;
    /// Deletes the key; nodes it enrolled stop being Frugal nodes unless they have a key of
    /// their own.
    async fn delete_frugal_key(&self, tenant: TenantKey, id: i64) -> StoreResult<bool>;
    /// The device's Frugal-IoT membership; `None`: the device does not speak Frugal.
    async fn frugal_node(&self, device: DeviceKey) -> StoreResult<Option<FrugalNode>>;
    /// Makes the device a Frugal node with its own key (replacing an earlier own key), or with
    /// `None` a node without one yet (keeping any it has), for a project key to claim.
    async fn set_frugal_node_key(
        &self,
        device: DeviceKey,
        secret_hash: Option<&str>,
    ) -> StoreResult<()>;
    /// Ties a Frugal node that has no key at all to the project key `key`; false if it has one.
    async fn claim_frugal_node(&self, device: DeviceKey, key: i64) -> StoreResult<bool>;
    /// Creates `new` in the key's project and profile as a node enrolled by `key`, in one
    /// transaction that also checks the key's node limit.
    async fn enroll_frugal_node(
        &self,
        key: &FrugalKey,
        new: &NewDevice,
    ) -> StoreResult<(Enrollment, Option<Device>)>;
}

/// Everything Updraft persists except artifact bytes, as one object: every focused trait at
/// once. Methods taking a `TenantKey` never see or change another tenant's rows: a row of another
/// tenant is simply not found. Callers bring the traits they use into scope (`use
/// updraft_store::prelude::*`).
pub trait Store:
    Tenants
    + Fleet
    + Artifacts
    + Assignments
    + Actions
    + Rollouts
    + ProtocolState
    + Cluster
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: Tenants
        + Fleet
        + Artifacts
        + Assignments
        + Actions
        + Rollouts
        + ProtocolState
        + Cluster
        + Send
        + Sync
        + 'static
{
}

/// The store's traits, to call any of its methods.
pub mod prelude {
    pub use crate::{
        Actions, Artifacts, Assignments, Cluster, Fleet, ProtocolState, Rollouts, Store, Tenants,
    };
}
