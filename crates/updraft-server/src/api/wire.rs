//! The management API's JSON shapes and the explicit conversions from store rows. Changing a
//! shape here changes the API: it is a decision, not an accident.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use updraft_store as store;
use utoipa::ToSchema;

pub use crate::kernel::views::{
    ArtifactOut, AssignmentOut, ChecksumsOut, attribute_strings, level,
};

#[derive(Serialize, ToSchema)]
pub struct TenantOut {
    pub name: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

impl From<&store::Tenant> for TenantOut {
    fn from(t: &store::Tenant) -> Self {
        Self {
            name: t.name.to_string(),
            created_at: t.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct NameIn {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectOut {
    pub name: String,
    pub created_at: i64,
}

impl From<&store::Project> for ProjectOut {
    fn from(p: &store::Project) -> Self {
        Self {
            name: p.name.to_string(),
            created_at: p.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ProfileOut {
    pub name: String,
    pub description: String,
    /// The profile's devices speak Drogue DFU: versions longer than 16 bytes are refused when
    /// assigned to them.
    pub drogue_dfu: bool,
    /// AWS IoT OTA job documents offer the file over HTTP too.
    pub aws_http_delivery: bool,
    /// How LwM2M devices get the package: `http`, `coap` or `push`.
    pub lwm2m_delivery: String,
    /// Only the URL's path goes into the Package URI.
    pub lwm2m_path_only: bool,
    /// The name devices know the profile's code-signing certificate by, if it has one.
    pub signing_cert_name: Option<String>,
    pub created_at: i64,
}

impl From<&store::Profile> for ProfileOut {
    fn from(p: &store::Profile) -> Self {
        Self {
            name: p.name.to_string(),
            description: p.description.clone(),
            drogue_dfu: p.settings.drogue_dfu,
            aws_http_delivery: p.settings.aws_http_delivery,
            lwm2m_delivery: p.settings.lwm2m_delivery.as_str().to_owned(),
            lwm2m_path_only: p.settings.lwm2m_path_only,
            signing_cert_name: p.signing_cert.as_ref().map(|c| c.name.clone()),
            created_at: p.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileIn {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The profile's devices speak Drogue DFU (`embedded-update`).
    #[serde(default)]
    pub drogue_dfu: bool,
    /// AWS IoT OTA job documents offer the file over HTTP too (a one-time URL).
    #[serde(default)]
    pub aws_http_delivery: bool,
    /// How LwM2M devices get the package: `http` (default; a one-time URL), `coap` (a
    /// `coap://` URI on the LwM2M listener, Block2) or `push` (written into /5/0/0, Block1).
    pub lwm2m_delivery: Option<String>,
    /// Write only the URL's path into /5/0/1 (devices that prepend a host fixed in firmware).
    #[serde(default)]
    pub lwm2m_path_only: bool,
    /// PEM X.509 certificate with the ECDSA P-256 key that artifact signatures must verify with.
    pub signing_cert: Option<String>,
    /// The name the profile's devices know that certificate by (AWS OTA `certfile`);
    /// `code-sign.crt` by default.
    pub signing_cert_name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileSettingsIn {
    /// The profile's devices speak Drogue DFU (`embedded-update`).
    pub drogue_dfu: Option<bool>,
    /// AWS IoT OTA job documents offer the file over HTTP too (a one-time URL).
    pub aws_http_delivery: Option<bool>,
    /// `http`, `coap` or `push`.
    pub lwm2m_delivery: Option<String>,
    pub lwm2m_path_only: Option<bool>,
    /// PEM code-signing certificate; an empty string removes it.
    pub signing_cert: Option<String>,
    pub signing_cert_name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ReleaseOut {
    pub title: String,
    pub version: String,
}

#[derive(Serialize, ToSchema)]
pub struct DeviceOut {
    pub id: String,
    pub project: Option<String>,
    pub profile: Option<String>,
    pub tags: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    /// Firmware the device last reported running.
    pub firmware: Option<ReleaseOut>,
    /// Software package the device last reported running.
    pub software: Option<ReleaseOut>,
    pub last_seen: Option<i64>,
    pub created_at: i64,
}

impl From<&store::Device> for DeviceOut {
    fn from(d: &store::Device) -> Self {
        let release = |r: &Option<store::Running>| {
            r.as_ref().map(|r| ReleaseOut {
                title: r.title.clone(),
                version: r.version.clone(),
            })
        };
        Self {
            id: d.id.to_string(),
            project: d.project.as_ref().map(|(_, name)| name.to_string()),
            profile: d.profile.as_ref().map(|(_, name)| name.to_string()),
            tags: d.tags.clone(),
            attributes: d.attributes.clone(),
            firmware: release(&d.firmware),
            software: release(&d.software),
            last_seen: d.last_seen,
            created_at: d.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct DeviceIn {
    pub id: String,
    pub profile: Option<String>,
    pub project: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The device's access token; generated when absent. At least 16 characters.
    pub token: Option<String>,
    /// The token is a gateway's: it may speak for the other devices of the tenant (Drogue DFU
    /// `?as={device}` and `dfu/{device}`).
    #[serde(default)]
    pub gateway: bool,
    /// A PEM client certificate that authenticates the device on the TLS MQTT listener (matched
    /// by its SHA-256 fingerprint), as AWS IoT registers device certificates.
    pub certificate: Option<String>,
    /// Fields of the device protocols, each read by its adapter: `lwm2m_endpoint` (the LwM2M
    /// endpoint name, when it is not the id), `lwm2m_psk_identity` (its DTLS PSK identity; with
    /// it the device registers only over DTLS) and `lwm2m_psk_key` (the PSK in hex, 16 to 64
    /// bytes; generated when an identity comes without one).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub protocol: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct DeviceCreated {
    #[serde(flatten)]
    pub device: DeviceOut,
    /// The device's access token. Shown once: only its hash is stored.
    pub token: String,
    /// What the device protocols add, shown once: `lwm2m_psk_key` (hex) when the device has a
    /// generated or given LwM2M PSK.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub protocol: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct DesiredOut {
    pub artifact_id: i64,
    pub title: String,
    pub version: String,
    /// Which assignment level decided: device, project_profile, project, profile or tenant.
    pub level: String,
}

impl From<&store::Desired> for DesiredOut {
    fn from(d: &store::Desired) -> Self {
        Self {
            artifact_id: d.artifact.0,
            title: d.title.clone(),
            version: d.version.clone(),
            level: level(d.scope).to_owned(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub device: DeviceOut,
    pub desired_firmware: Option<DesiredOut>,
    pub desired_software: Option<DesiredOut>,
    pub active_action: Option<ActionOut>,
    /// The device's most recent update, active or ended (with its outcome and failure code).
    pub latest_action: Option<ActionOut>,
}

impl DeviceDetail {
    pub fn new(s: &store::DeviceStatus, latest: Option<&store::Action>) -> Self {
        Self {
            device: DeviceOut::from(&s.device),
            desired_firmware: s.desired_firmware.as_ref().map(DesiredOut::from),
            desired_software: s.desired_software.as_ref().map(DesiredOut::from),
            active_action: s.active.as_ref().map(ActionOut::from),
            latest_action: latest.map(ActionOut::from),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ProgressOut {
    pub done: u64,
    pub total: u64,
}

#[derive(Serialize, ToSchema)]
pub struct FailureOut {
    /// One of LwM2M's result codes by name, e.g. `integrity_check_failed`.
    pub code: String,
    pub reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct ActionOut {
    pub id: i64,
    pub device: String,
    pub artifact_id: Option<i64>,
    pub title: String,
    pub version: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// QUEUED, INITIATED, DOWNLOADING, DOWNLOADED, VERIFIED, UPDATING, UPDATED, FAILED or CANCELED.
    pub state: String,
    pub progress: Option<ProgressOut>,
    pub failure: Option<FailureOut>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<&store::Action> for ActionOut {
    fn from(a: &store::Action) -> Self {
        Self {
            id: a.key.0,
            device: a.device_id.to_string(),
            artifact_id: a.artifact.map(|k| k.0),
            title: a.artifact_title.clone(),
            version: a.artifact_version.clone(),
            kind: a.kind.as_str().to_owned(),
            state: a.state.as_str().to_owned(),
            progress: a.progress.map(|p| ProgressOut {
                done: p.done,
                total: p.total,
            }),
            failure: a.failure.as_ref().map(|f| FailureOut {
                code: f.code.as_str().to_owned(),
                reason: f.reason.clone(),
            }),
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct EventOut {
    pub at: i64,
    pub from: Option<String>,
    pub to: String,
    /// `user:<key name>`, `server`, or the protocol that reported.
    pub source: String,
    pub detail: String,
    /// The report was not applied (a step backwards, or the action had ended).
    pub refused: bool,
    pub progress: Option<ProgressOut>,
}

impl From<&store::ActionEvent> for EventOut {
    fn from(e: &store::ActionEvent) -> Self {
        Self {
            at: e.at,
            from: e.from.map(|s| s.as_str().to_owned()),
            to: e.to.as_str().to_owned(),
            source: e.source.clone(),
            detail: e.detail.clone(),
            refused: e.refused,
            progress: e.progress.map(|p| ProgressOut {
                done: p.done,
                total: p.total,
            }),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ActionHistory {
    #[serde(flatten)]
    pub action: ActionOut,
    pub history: Vec<EventOut>,
}

#[derive(Serialize, ToSchema)]
pub struct ArtifactPage {
    pub items: Vec<ArtifactOut>,
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
}

#[derive(Serialize, ToSchema)]
pub struct DevicePage {
    pub items: Vec<DeviceOut>,
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
}

/// Where an assignment applies. Exactly one of: `device`; `project` and/or `profile`;
/// `tenant_default: true`.
#[derive(Deserialize, Serialize, ToSchema, Default, Clone)]
pub struct ScopeIn {
    pub device: Option<String>,
    pub project: Option<String>,
    pub profile: Option<String>,
    #[serde(default)]
    pub tenant_default: bool,
}

#[derive(Deserialize, ToSchema)]
pub struct AssignmentIn {
    #[serde(flatten)]
    pub scope: ScopeIn,
    /// The artifact as `TITLE@VERSION`; or give `artifact_id`.
    pub artifact: Option<String>,
    pub artifact_id: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct StatusOut {
    pub tenant: String,
    pub devices: u64,
    pub artifacts: u64,
    /// Devices by the state of their latest update action.
    pub actions: BTreeMap<String, u64>,
}

#[derive(Deserialize, ToSchema)]
pub struct ApiKeyIn {
    pub name: String,
    /// admin, maintainer or viewer.
    pub role: String,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyOut {
    pub id: i64,
    pub tenant: String,
    pub name: String,
    pub role: String,
    pub server_admin: bool,
    pub created_at: i64,
}

impl From<&store::ApiKey> for ApiKeyOut {
    fn from(k: &store::ApiKey) -> Self {
        Self {
            id: k.id,
            tenant: k.tenant_name.to_string(),
            name: k.name.clone(),
            role: k.role.as_str().to_owned(),
            server_admin: k.server_admin,
            created_at: k.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyCreated {
    #[serde(flatten)]
    pub key: ApiKeyOut,
    /// The key itself. Shown once: only its hash is stored.
    pub token: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct DeviceQuery {
    pub offset: Option<u64>,
    /// At most 500; 50 when absent.
    pub limit: Option<u64>,
    /// Only devices matching this filter expression, e.g. `profile==esp32;tag==beta,attr.region==eu`
    /// (`;` and, `,` or; `==`, `!=`, `=in=`, `=out=`, `<`/`>` on versions and `seen`).
    pub filter: Option<String>,
}

impl DeviceQuery {
    pub fn page(&self) -> store::Page {
        PageQuery {
            offset: self.offset,
            limit: self.limit,
        }
        .page()
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    pub offset: Option<u64>,
    /// At most 500; 50 when absent.
    pub limit: Option<u64>,
}

impl PageQuery {
    pub fn page(&self) -> store::Page {
        store::Page {
            offset: self.offset.unwrap_or(0),
            limit: self.limit.unwrap_or(50).clamp(1, 500),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TenantSettingsOut {
    pub name: String,
    /// Seconds devices wait between polls (DDI `config.polling.sleep`).
    pub poll_interval_secs: u32,
    /// Unknown controllers presenting the gateway token are registered.
    pub auto_register: bool,
    /// Unknown Frugal-IoT nodes are registered on their first check-in.
    pub frugal_auto_register: bool,
}

#[derive(Deserialize, ToSchema)]
pub struct TenantSettingsIn {
    pub poll_interval_secs: Option<u32>,
    pub auto_register: Option<bool>,
    pub frugal_auto_register: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct GatewayTokenOut {
    /// The tenant's gateway token (DDI `Authorization: GatewayToken …`). Shown once.
    pub token: String,
}
