//! The SELECTs each row type is read with, the record each row is read into
//! (`#[derive(sqlx::FromRow)]`, columns by name), and the checked conversion from a record to the
//! store's row type (names parsed, enums read, 0/1 as booleans).

use sqlx::FromRow;

use super::*;

pub(super) const DEVICE_SELECT: &str = "SELECT d.id, d.tenant_id, d.device_id, d.project_id, p.name AS project_name, \
     d.profile_id, f.name AS profile_name, d.tags, d.attributes, d.fw_title, d.fw_version, \
     d.sw_title, d.sw_version, d.last_seen, d.created_at \
     FROM devices d LEFT JOIN projects p ON p.id = d.project_id \
     LEFT JOIN profiles f ON f.id = d.profile_id";

/// A device row as `DEVICE_SELECT` reads it.
#[derive(sqlx::FromRow)]
struct DeviceRecord {
    id: i64,
    tenant_id: i64,
    device_id: String,
    project_id: Option<i64>,
    project_name: Option<String>,
    profile_id: Option<i64>,
    profile_name: Option<String>,
    tags: String,
    attributes: String,
    fw_title: Option<String>,
    fw_version: Option<String>,
    sw_title: Option<String>,
    sw_version: Option<String>,
    last_seen: Option<i64>,
    created_at: i64,
}

fn named<K>(
    key: Option<i64>,
    name: Option<String>,
    wrap: fn(i64) -> K,
) -> StoreResult<Option<(K, Name)>> {
    match (key, name) {
        (Some(key), Some(name)) => Ok(Some((wrap(key), parse_name(name)?))),
        _ => Ok(None),
    }
}

fn running(title: Option<String>, version: Option<String>) -> Option<Running> {
    match (title, version) {
        (Some(title), Some(version)) => Some(Running { title, version }),
        _ => None,
    }
}

pub(super) fn device_from(row: &AnyRow) -> StoreResult<Device> {
    let r = DeviceRecord::from_row(row)?;
    Ok(Device {
        key: DeviceKey(r.id),
        tenant: TenantKey(r.tenant_id),
        id: DeviceId::parse(&r.device_id).map_err(corrupt)?,
        project: named(r.project_id, r.project_name, ProjectKey)?,
        profile: named(r.profile_id, r.profile_name, ProfileKey)?,
        tags: serde_json::from_str(&r.tags).map_err(corrupt)?,
        attributes: serde_json::from_str(&r.attributes).map_err(corrupt)?,
        firmware: running(r.fw_title, r.fw_version),
        software: running(r.sw_title, r.sw_version),
        last_seen: r.last_seen,
        created_at: r.created_at,
    })
}

pub(super) const ARTIFACT_SELECT: &str = "SELECT id, tenant_id, title, version, kind, size, filename, md5, sha1, \
     sha256, sha384, sha512, crc32, murmur3_32, murmur3_128, signature, description, uploaded_by, \
     created_at FROM artifacts";

/// An artifact row as `ARTIFACT_SELECT` reads it.
#[derive(sqlx::FromRow)]
struct ArtifactRecord {
    id: i64,
    tenant_id: i64,
    title: String,
    version: String,
    kind: String,
    size: i64,
    filename: String,
    md5: String,
    sha1: String,
    sha256: String,
    sha384: String,
    sha512: String,
    crc32: String,
    murmur3_32: String,
    murmur3_128: String,
    signature: Option<String>,
    description: String,
    uploaded_by: String,
    created_at: i64,
}

pub(super) fn artifact_from(
    row: &AnyRow,
    profiles: Vec<(ProfileKey, Name)>,
) -> StoreResult<Artifact> {
    let r = ArtifactRecord::from_row(row)?;
    Ok(Artifact {
        key: ArtifactKey(r.id),
        tenant: TenantKey(r.tenant_id),
        title: r.title,
        version: r.version,
        kind: kind_of(&r.kind)?,
        profiles,
        size: to_u64(r.size),
        filename: r.filename,
        checksums: Checksums {
            md5: r.md5,
            sha1: r.sha1,
            sha256: r.sha256,
            sha384: r.sha384,
            sha512: r.sha512,
            crc32: r.crc32,
            murmur3_32: r.murmur3_32,
            murmur3_128: r.murmur3_128,
        },
        signature: r.signature,
        description: r.description,
        uploaded_by: r.uploaded_by,
        created_at: r.created_at,
    })
}

pub(super) const ACTION_SELECT: &str = "SELECT a.id, a.device_pk, d.device_id, a.artifact_id, a.artifact_title, \
     a.artifact_version, a.kind, a.state, a.progress_done, a.progress_total, a.failure_code, \
     a.failure_reason, a.cancel_pending, a.created_at, a.updated_at FROM actions a JOIN devices d ON d.id = a.device_pk";

/// An action row as `ACTION_SELECT` reads it.
#[derive(sqlx::FromRow)]
struct ActionRecord {
    id: i64,
    device_pk: i64,
    device_id: String,
    artifact_id: Option<i64>,
    artifact_title: String,
    artifact_version: String,
    kind: String,
    state: String,
    progress_done: Option<i64>,
    progress_total: Option<i64>,
    failure_code: Option<String>,
    failure_reason: Option<String>,
    cancel_pending: i64,
    created_at: i64,
    updated_at: i64,
}

pub(super) fn action_from(row: &AnyRow) -> StoreResult<Action> {
    let r = ActionRecord::from_row(row)?;
    let failure = match r.failure_code {
        Some(code) => Some(Failed {
            code: code.parse::<FailureCode>().map_err(corrupt)?,
            reason: r.failure_reason.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(Action {
        key: ActionKey(r.id),
        device: DeviceKey(r.device_pk),
        device_id: DeviceId::parse(&r.device_id).map_err(corrupt)?,
        artifact: r.artifact_id.map(ArtifactKey),
        artifact_title: r.artifact_title,
        artifact_version: r.artifact_version,
        kind: kind_of(&r.kind)?,
        state: state_of(&r.state)?,
        progress: progress_of(r.progress_done, r.progress_total),
        failure,
        cancel_pending: r.cancel_pending != 0,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

/// An API key row as `API_KEY_SELECT` reads it.
#[derive(sqlx::FromRow)]
struct ApiKeyRecord {
    id: i64,
    tenant_id: i64,
    tenant_name: String,
    name: String,
    role: String,
    server_admin: i64,
    created_at: i64,
}

pub(super) fn api_key_from(row: &AnyRow) -> StoreResult<ApiKey> {
    let r = ApiKeyRecord::from_row(row)?;
    Ok(ApiKey {
        id: r.id,
        tenant: TenantKey(r.tenant_id),
        tenant_name: parse_name(r.tenant_name)?,
        name: r.name,
        role: r.role.parse::<Role>().map_err(corrupt)?,
        server_admin: r.server_admin != 0,
        created_at: r.created_at,
    })
}

pub(super) const TENANT_SELECT: &str = "SELECT id, name, created_at, poll_interval_secs, auto_register, frugal_auto_register FROM tenants";

/// A tenant row as `TENANT_SELECT` reads it.
#[derive(sqlx::FromRow)]
struct TenantRecord {
    id: i64,
    name: String,
    created_at: i64,
    poll_interval_secs: i64,
    auto_register: i64,
    frugal_auto_register: i64,
}

pub(super) fn tenant_from(row: &AnyRow) -> StoreResult<Tenant> {
    let r = TenantRecord::from_row(row)?;
    Ok(Tenant {
        key: TenantKey(r.id),
        name: parse_name(r.name)?,
        settings: TenantSettings {
            poll_interval_secs: u32::try_from(r.poll_interval_secs).unwrap_or(u32::MAX),
            auto_register: r.auto_register != 0,
            frugal_auto_register: r.frugal_auto_register != 0,
        },
        created_at: r.created_at,
    })
}

pub(super) const ASSIGNMENT_SELECT: &str = "SELECT s.id, s.kind, s.device_pk, s.project_id, s.profile_id, s.artifact_id, \
     s.created_by, s.created_at, a.title, a.version, d.device_id, p.name AS project_name, f.name AS profile_name \
     FROM assignments s JOIN artifacts a ON a.id = s.artifact_id LEFT JOIN devices d ON d.id = s.device_pk \
     LEFT JOIN projects p ON p.id = s.project_id LEFT JOIN profiles f ON f.id = s.profile_id";

/// An assignment row as `ASSIGNMENT_SELECT` reads it.
#[derive(sqlx::FromRow)]
struct AssignmentRecord {
    id: i64,
    kind: String,
    device_pk: Option<i64>,
    project_id: Option<i64>,
    profile_id: Option<i64>,
    artifact_id: i64,
    created_by: String,
    created_at: i64,
    title: String,
    version: String,
    device_id: Option<String>,
    project_name: Option<String>,
    profile_name: Option<String>,
}

pub(super) fn assignment_from(row: &AnyRow) -> StoreResult<Assignment> {
    let r = AssignmentRecord::from_row(row)?;
    let optional_name = |name: Option<String>| name.map(parse_name).transpose();
    Ok(Assignment {
        id: r.id,
        scope: scope_from_columns(r.device_pk, r.project_id, r.profile_id),
        device_id: r
            .device_id
            .map(|id| DeviceId::parse(&id).map_err(corrupt))
            .transpose()?,
        project_name: optional_name(r.project_name)?,
        profile_name: optional_name(r.profile_name)?,
        kind: kind_of(&r.kind)?,
        artifact: ArtifactKey(r.artifact_id),
        artifact_title: r.title,
        artifact_version: r.version,
        created_by: r.created_by,
        created_at: r.created_at,
    })
}

pub(super) const API_KEY_SELECT: &str = "SELECT k.id, k.tenant_id, t.name AS tenant_name, k.name, k.role, k.server_admin, \
     k.created_at FROM api_keys k JOIN tenants t ON t.id = k.tenant_id";

/// A profile row as the profile queries read it.
#[derive(sqlx::FromRow)]
struct ProfileRecord {
    id: i64,
    name: String,
    description: String,
    drogue_dfu: i64,
    aws_http: i64,
    lwm2m_delivery: String,
    lwm2m_path_only: i64,
    signing_cert: Option<String>,
    signing_cert_name: Option<String>,
    created_at: i64,
}

pub(super) fn profile_from(row: &AnyRow) -> StoreResult<Profile> {
    let r = ProfileRecord::from_row(row)?;
    Ok(Profile {
        key: ProfileKey(r.id),
        name: parse_name(r.name)?,
        description: r.description,
        settings: ProfileSettings {
            drogue_dfu: r.drogue_dfu != 0,
            aws_http_delivery: r.aws_http != 0,
            lwm2m_delivery: r.lwm2m_delivery.parse().map_err(StoreError::Corrupt)?,
            lwm2m_path_only: r.lwm2m_path_only != 0,
        },
        signing_cert: match (r.signing_cert, r.signing_cert_name) {
            (Some(pem), Some(name)) => Some(SigningCert { name, pem }),
            _ => None,
        },
        created_at: r.created_at,
    })
}
