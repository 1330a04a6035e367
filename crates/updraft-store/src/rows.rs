//! The rows the store hands out and takes in. Plain data: no serde, protocol and API modules
//! convert explicitly.

use std::collections::BTreeMap;

use updraft_core::{
    ActionKey, ArtifactKey, ArtifactKind, Checksums, DeviceId, DeviceKey, FailureCode, Name,
    ProfileKey, Progress, ProjectKey, Role, Scope, TenantKey, UpdateState,
};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub key: TenantKey,
    pub name: Name,
    pub settings: TenantSettings,
    pub created_at: Millis,
}

/// What a tenant's devices are told and allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantSettings {
    /// How long devices should wait between polls.
    pub poll_interval_secs: u32,
    /// Whether an unknown device presenting the tenant's gateway token is registered.
    pub auto_register: bool,
    /// Whether an unknown Frugal-IoT node presenting a project OTA key is registered on its
    /// first check-in (the key itself is the operator's consent; this turns enrollment off).
    pub frugal_auto_register: bool,
}

impl Default for TenantSettings {
    fn default() -> Self {
        Self {
            poll_interval_secs: 300,
            auto_register: false,
            frugal_auto_register: true,
        }
    }
}

/// How reported attributes combine with the stored ones (hawkBit's configData modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeMode {
    /// Add and overwrite keys.
    Merge,
    /// Replace all attributes.
    Replace,
    /// Remove the given keys.
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub key: ProjectKey,
    pub name: Name,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub key: ProfileKey,
    pub name: Name,
    pub description: String,
    pub settings: ProfileSettings,
    /// The certificate whose key must verify artifacts for this profile's devices.
    pub signing_cert: Option<SigningCert>,
    pub created_at: Millis,
}

/// A code-signing certificate as devices of a profile hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningCert {
    /// The file name devices know it by (AWS OTA's `certfile`).
    pub name: String,
    pub pem: String,
}

/// What the devices of a profile speak, where it constrains what may be assigned to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProfileSettings {
    /// The profile's devices speak Drogue DFU (`embedded-update`), whose versions hold at most
    /// 16 bytes: longer versions are refused when assigned.
    pub drogue_dfu: bool,
    /// AWS IoT OTA job documents also offer the file over HTTP (a one-time URL), not only in
    /// an MQTT stream.
    pub aws_http_delivery: bool,
    /// How LwM2M devices get the package.
    pub lwm2m_delivery: Lwm2mDelivery,
    /// Write only the URL's path into the Package URI (the device prepends a fixed host).
    pub lwm2m_path_only: bool,
}

/// How an LwM2M device gets its package.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lwm2mDelivery {
    /// It pulls a one-time HTTP(S) URL.
    #[default]
    Http,
    /// It pulls a `coap://` URI on the LwM2M listener (Block2).
    Coap,
    /// The server writes the package into /5/0/0 (Block1).
    Push,
}

impl Lwm2mDelivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Lwm2mDelivery::Http => "http",
            Lwm2mDelivery::Coap => "coap",
            Lwm2mDelivery::Push => "push",
        }
    }
}

impl std::str::FromStr for Lwm2mDelivery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http" => Ok(Lwm2mDelivery::Http),
            "coap" => Ok(Lwm2mDelivery::Coap),
            "push" => Ok(Lwm2mDelivery::Push),
            other => Err(format!(
                "LwM2M delivery {other:?} is not http, coap or push"
            )),
        }
    }
}

/// A release as a device reports running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub title: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub key: DeviceKey,
    pub tenant: TenantKey,
    pub id: DeviceId,
    pub project: Option<(ProjectKey, Name)>,
    pub profile: Option<(ProfileKey, Name)>,
    pub tags: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    pub firmware: Option<Running>,
    pub software: Option<Running>,
    pub last_seen: Option<Millis>,
    pub created_at: Millis,
}

impl Device {
    /// What the filter language sees of the device, at `now` (milliseconds).
    pub fn facts(&self, now: Millis) -> updraft_core::DeviceFacts<'_> {
        updraft_core::DeviceFacts {
            id: self.id.as_str(),
            project: self.project.as_ref().map(|(_, n)| n.as_str()),
            profile: self.profile.as_ref().map(|(_, n)| n.as_str()),
            tags: &self.tags,
            attributes: &self.attributes,
            firmware: self
                .firmware
                .as_ref()
                .map(|r| (r.title.as_str(), r.version.as_str())),
            software: self
                .software
                .as_ref()
                .map(|r| (r.title.as_str(), r.version.as_str())),
            last_seen: self.last_seen,
            now,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    pub id: DeviceId,
    pub project: Option<ProjectKey>,
    pub profile: Option<ProfileKey>,
    pub tags: Vec<String>,
    pub attributes: BTreeMap<String, String>,
}

/// The kinds of device credential. Every protocol adapter looks devices up by one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// ThingsBoard access token, DDI target token, Drogue/AWS password.
    AccessToken,
    /// A client certificate, by the SHA-256 of its DER (not a secret, but unique).
    Certificate,
    /// An LwM2M endpoint name other than the device id (not a secret, but unique).
    Lwm2mEndpoint,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::AccessToken => "access_token",
            CredentialKind::Certificate => "certificate",
            CredentialKind::Lwm2mEndpoint => "lwm2m_endpoint",
        }
    }
}

/// What a device list shows beside a device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceSummary {
    /// The protocol of its last report, if it ever reported.
    pub protocol: Option<String>,
    /// The state of its latest update, if it ever had one.
    pub latest: Option<UpdateState>,
}

/// The most devices one `device_summaries` call reads.
pub const MAX_SUMMARIES: usize = 1000;

/// A stored credential as it may be shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialInfo {
    /// `access_token`, `certificate` or `lwm2m_endpoint`.
    pub kind: String,
    /// The SHA-256 of a certificate's DER; `None` for secrets.
    pub fingerprint: Option<String>,
    pub gateway: bool,
    pub created_at: Millis,
}

/// A credential to store: only its hash is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCredential {
    pub kind: CredentialKind,
    pub secret_hash: String,
    /// The device may speak for the other devices of its tenant (Drogue DFU gateways).
    pub gateway: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub key: ArtifactKey,
    pub tenant: TenantKey,
    pub title: String,
    pub version: String,
    pub kind: ArtifactKind,
    pub profiles: Vec<(ProfileKey, Name)>,
    pub size: u64,
    pub filename: String,
    pub checksums: Checksums,
    pub signature: Option<String>,
    pub description: String,
    pub uploaded_by: String,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArtifact {
    pub title: String,
    pub version: String,
    pub kind: ArtifactKind,
    pub profiles: Vec<ProfileKey>,
    pub size: u64,
    pub filename: String,
    pub checksums: Checksums,
    pub signature: Option<String>,
    pub description: String,
    pub uploaded_by: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactFilter {
    pub title: Option<String>,
    pub version: Option<String>,
    pub kind: Option<ArtifactKind>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedArtifact {
    pub sha256: String,
    /// No artifact of any tenant refers to the blob any more.
    pub blob_unreferenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub id: i64,
    pub scope: Scope,
    /// The names the scope's keys stand for, for people.
    pub device_id: Option<DeviceId>,
    pub project_name: Option<Name>,
    pub profile_name: Option<Name>,
    pub kind: ArtifactKind,
    pub artifact: ArtifactKey,
    pub artifact_title: String,
    pub artifact_version: String,
    pub created_by: String,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub code: FailureCode,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub key: ActionKey,
    pub device: DeviceKey,
    pub device_id: DeviceId,
    /// `None` once the artifact has been deleted; title and version stay for the history.
    pub artifact: Option<ArtifactKey>,
    pub artifact_title: String,
    pub artifact_version: String,
    pub kind: ArtifactKind,
    pub state: UpdateState,
    pub progress: Option<Progress>,
    pub failure: Option<Failed>,
    /// Canceled, and the device (which had been told about it) has not confirmed yet.
    pub cancel_pending: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A device a filter matched: what a rollout's snapshot needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMatch {
    pub key: DeviceKey,
    pub id: DeviceId,
    pub profile: Option<ProfileKey>,
}

/// What a polling device needs to know, from one query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PollView {
    /// The newest canceled action still awaiting the device's confirmation.
    pub pending_cancel: Option<Action>,
    /// The active action.
    pub active: Option<Action>,
    /// The newest action that ended UPDATED.
    pub last_updated: Option<Action>,
}

/// One entry of an action's history: a transition, or a report that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionEvent {
    pub at: Millis,
    pub from: Option<UpdateState>,
    pub to: UpdateState,
    /// Who said so: `user:<key name>`, `server`, a protocol name.
    pub source: String,
    pub detail: String,
    /// The report was not applied; `detail` says why.
    pub refused: bool,
    pub progress: Option<Progress>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    Applied(Action),
    Refused { action: Action, reason: String },
}

/// What a device runs, should run, and is doing about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    pub device: Device,
    pub desired_firmware: Option<Desired>,
    pub desired_software: Option<Desired>,
    pub active: Option<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub artifact: ArtifactKey,
    pub title: String,
    pub version: String,
    pub scope: Scope,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FleetSummary {
    pub devices: u64,
    pub artifacts: u64,
    /// Devices whose latest action is in each state; devices that never had one are not counted.
    pub latest_action_states: BTreeMap<String, u64>,
}

/// A tenant's fleet at a glance (the dashboard's fleet page).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FleetOverview {
    pub devices: u64,
    /// Devices whose latest update is in each state.
    pub latest_action_states: BTreeMap<String, u64>,
    /// The most common running firmware (`title@version`, or `unknown`), with their devices.
    pub versions: Vec<(String, u64)>,
    /// Devices by the protocol of their last report (`unknown` before one), most first.
    pub protocols: Vec<(String, u64)>,
    /// Devices heard from in the last [`ONLINE_MS`].
    pub online: u64,
    pub never_seen: u64,
    /// Updates that ended FAILED in the last 24 hours, per failure code.
    pub failures_24h: Vec<(String, u64)>,
    /// Active downloads with no progress for [`STUCK_MS`].
    pub stuck_downloads: u64,
}

/// A device heard from this recently is online.
pub const ONLINE_MS: Millis = 10 * 60 * 1000;
/// A download with no news for this long is stuck.
pub const STUCK_MS: Millis = 3600 * 1000;
/// How many running versions the overview lists.
pub const OVERVIEW_VERSIONS: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: i64,
    pub tenant: TenantKey,
    pub tenant_name: Name,
    pub name: String,
    pub role: Role,
    /// May manage tenants and act on every tenant's keys.
    pub server_admin: bool,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    pub name: String,
    pub role: Role,
    pub server_admin: bool,
    pub secret_hash: String,
}

/// Offset pagination, as hawkBit's management API does it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: u64,
    pub limit: u64,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            offset: 0,
            limit: 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// A QUEUED action as the notification queue sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub action: ActionKey,
    pub device: DeviceKey,
    pub tenant: TenantKey,
    pub artifact: Option<ArtifactKey>,
    pub kind: ArtifactKind,
    /// The device's profile.
    pub profile: Option<ProfileKey>,
    /// The rollout that asked for the action, if one did.
    pub rollout: Option<updraft_core::RolloutKey>,
}

/// An AWS IoT job execution: the device's view of one update action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobExecution {
    pub action: ActionKey,
    /// AWS's status word (QUEUED, IN_PROGRESS, SUCCEEDED, …).
    pub status: String,
    /// The device's statusDetails as JSON text, returned verbatim.
    pub status_details: String,
    /// 1 when queued, +1 per accepted change by the device.
    pub version_number: i64,
    pub started_at: Option<Millis>,
    pub last_updated_at: Millis,
    pub step_deadline: Option<Millis>,
}

/// A Frugal-IoT project OTA key: nodes presenting it may enroll into its project and profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrugalKey {
    pub id: i64,
    pub tenant: TenantKey,
    pub project: (ProjectKey, Name),
    pub profile: (ProfileKey, Name),
    pub secret_hash: String,
    /// At most this many nodes enroll with the key.
    pub max_nodes: u64,
    pub created_at: Millis,
}

/// What makes a device a Frugal-IoT node: its own OTA key's hash, or the project key that
/// enrolled it (or both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrugalNode {
    pub device: DeviceKey,
    pub secret_hash: Option<String>,
    pub key: Option<i64>,
    /// The secret hash of the project key that enrolled it (read with it: one query).
    pub key_hash: Option<String>,
}

/// Why an enrollment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrollment {
    Enrolled,
    /// The key already enrolled `max_nodes` nodes.
    KeyFull,
}

/// An LwM2M registration as stored, so that it outlives the process that took it (a replica's
/// restart): over NoSec only (a DTLS session dies with its process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRegistration {
    pub device: DeviceKey,
    pub tenant: TenantKey,
    pub device_id: DeviceId,
    pub endpoint: String,
    pub location: String,
    /// The client's address (`ip:port`).
    pub peer: String,
    pub lifetime: u32,
    pub version: String,
    pub root: String,
    pub objects: Vec<String>,
    pub expires_at: Millis,
}
