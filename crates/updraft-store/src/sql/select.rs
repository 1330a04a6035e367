//! The SELECTs each row type is read with, and the mapping from a row to the struct.

use super::*;

pub(super) const DEVICE_SELECT: &str = "SELECT d.id, d.tenant_id, d.device_id, d.project_id, p.name AS project_name, \
     d.profile_id, f.name AS profile_name, d.tags, d.attributes, d.fw_title, d.fw_version, \
     d.sw_title, d.sw_version, d.last_seen, d.created_at \
     FROM devices d LEFT JOIN projects p ON p.id = d.project_id \
     LEFT JOIN profiles f ON f.id = d.profile_id";

pub(super) fn device_from(row: &AnyRow) -> StoreResult<Device> {
    let project = match (
        row.try_get::<Option<i64>, _>("project_id")?,
        row.try_get::<Option<String>, _>("project_name")?,
    ) {
        (Some(key), Some(name)) => Some((ProjectKey(key), parse_name(name)?)),
        _ => None,
    };
    let profile = match (
        row.try_get::<Option<i64>, _>("profile_id")?,
        row.try_get::<Option<String>, _>("profile_name")?,
    ) {
        (Some(key), Some(name)) => Some((ProfileKey(key), parse_name(name)?)),
        _ => None,
    };
    let running = |title: &str, version: &str| -> StoreResult<Option<Running>> {
        let title: Option<String> = row.try_get(title)?;
        let version: Option<String> = row.try_get(version)?;
        Ok(match (title, version) {
            (Some(title), Some(version)) => Some(Running { title, version }),
            _ => None,
        })
    };
    let tags: String = row.try_get("tags")?;
    let attributes: String = row.try_get("attributes")?;
    Ok(Device {
        key: DeviceKey(row.try_get("id")?),
        tenant: TenantKey(row.try_get("tenant_id")?),
        id: DeviceId::parse(&row.try_get::<String, _>("device_id")?).map_err(corrupt)?,
        project,
        profile,
        tags: serde_json::from_str(&tags).map_err(corrupt)?,
        attributes: serde_json::from_str(&attributes).map_err(corrupt)?,
        firmware: running("fw_title", "fw_version")?,
        software: running("sw_title", "sw_version")?,
        last_seen: row.try_get("last_seen")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) const ARTIFACT_SELECT: &str = "SELECT id, tenant_id, title, version, kind, size, filename, md5, sha1, \
     sha256, sha384, sha512, crc32, murmur3_32, murmur3_128, signature, description, uploaded_by, \
     created_at FROM artifacts";

pub(super) fn artifact_from(
    row: &AnyRow,
    profiles: Vec<(ProfileKey, Name)>,
) -> StoreResult<Artifact> {
    Ok(Artifact {
        key: ArtifactKey(row.try_get("id")?),
        tenant: TenantKey(row.try_get("tenant_id")?),
        title: row.try_get("title")?,
        version: row.try_get("version")?,
        kind: kind_of(&row.try_get::<String, _>("kind")?)?,
        profiles,
        size: to_u64(row.try_get("size")?),
        filename: row.try_get("filename")?,
        checksums: Checksums {
            md5: row.try_get("md5")?,
            sha1: row.try_get("sha1")?,
            sha256: row.try_get("sha256")?,
            sha384: row.try_get("sha384")?,
            sha512: row.try_get("sha512")?,
            crc32: row.try_get("crc32")?,
            murmur3_32: row.try_get("murmur3_32")?,
            murmur3_128: row.try_get("murmur3_128")?,
        },
        signature: row.try_get("signature")?,
        description: row.try_get("description")?,
        uploaded_by: row.try_get("uploaded_by")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) const ACTION_SELECT: &str = "SELECT a.id, a.device_pk, d.device_id, a.artifact_id, a.artifact_title, \
     a.artifact_version, a.kind, a.state, a.progress_done, a.progress_total, a.failure_code, \
     a.failure_reason, a.cancel_pending, a.created_at, a.updated_at FROM actions a JOIN devices d ON d.id = a.device_pk";

pub(super) fn action_from(row: &AnyRow) -> StoreResult<Action> {
    let failure = match row.try_get::<Option<String>, _>("failure_code")? {
        Some(code) => Some(Failed {
            code: code.parse::<FailureCode>().map_err(corrupt)?,
            reason: row
                .try_get::<Option<String>, _>("failure_reason")?
                .unwrap_or_default(),
        }),
        None => None,
    };
    Ok(Action {
        key: ActionKey(row.try_get("id")?),
        device: DeviceKey(row.try_get("device_pk")?),
        device_id: DeviceId::parse(&row.try_get::<String, _>("device_id")?).map_err(corrupt)?,
        artifact: row
            .try_get::<Option<i64>, _>("artifact_id")?
            .map(ArtifactKey),
        artifact_title: row.try_get("artifact_title")?,
        artifact_version: row.try_get("artifact_version")?,
        kind: kind_of(&row.try_get::<String, _>("kind")?)?,
        state: state_of(&row.try_get::<String, _>("state")?)?,
        progress: progress_of(
            row.try_get("progress_done")?,
            row.try_get("progress_total")?,
        ),
        failure,
        cancel_pending: row.try_get::<i64, _>("cancel_pending")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub(super) fn api_key_from(row: &AnyRow) -> StoreResult<ApiKey> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        tenant: TenantKey(row.try_get("tenant_id")?),
        tenant_name: parse_name(row.try_get("tenant_name")?)?,
        name: row.try_get("name")?,
        role: row
            .try_get::<String, _>("role")?
            .parse::<Role>()
            .map_err(corrupt)?,
        server_admin: row.try_get::<i64, _>("server_admin")? != 0,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) const TENANT_SELECT: &str = "SELECT id, name, created_at, poll_interval_secs, auto_register, frugal_auto_register FROM tenants";

pub(super) fn tenant_from(row: &AnyRow) -> StoreResult<Tenant> {
    Ok(Tenant {
        key: TenantKey(row.try_get("id")?),
        name: parse_name(row.try_get("name")?)?,
        settings: TenantSettings {
            poll_interval_secs: u32::try_from(row.try_get::<i64, _>("poll_interval_secs")?)
                .unwrap_or(u32::MAX),
            auto_register: row.try_get::<i64, _>("auto_register")? != 0,
            frugal_auto_register: row.try_get::<i64, _>("frugal_auto_register")? != 0,
        },
        created_at: row.try_get("created_at")?,
    })
}

pub(super) const ASSIGNMENT_SELECT: &str = "SELECT s.id, s.kind, s.device_pk, s.project_id, s.profile_id, s.artifact_id, \
     s.created_by, s.created_at, a.title, a.version, d.device_id, p.name AS project_name, f.name AS profile_name \
     FROM assignments s JOIN artifacts a ON a.id = s.artifact_id LEFT JOIN devices d ON d.id = s.device_pk \
     LEFT JOIN projects p ON p.id = s.project_id LEFT JOIN profiles f ON f.id = s.profile_id";

pub(super) fn assignment_from(row: &AnyRow) -> StoreResult<Assignment> {
    let optional_name = |column: &str| -> StoreResult<Option<Name>> {
        row.try_get::<Option<String>, _>(column)?
            .map(parse_name)
            .transpose()
    };
    Ok(Assignment {
        id: row.try_get("id")?,
        scope: scope_from_columns(
            row.try_get("device_pk")?,
            row.try_get("project_id")?,
            row.try_get("profile_id")?,
        ),
        device_id: row
            .try_get::<Option<String>, _>("device_id")?
            .map(|id| DeviceId::parse(&id).map_err(corrupt))
            .transpose()?,
        project_name: optional_name("project_name")?,
        profile_name: optional_name("profile_name")?,
        kind: kind_of(&row.try_get::<String, _>("kind")?)?,
        artifact: ArtifactKey(row.try_get("artifact_id")?),
        artifact_title: row.try_get("title")?,
        artifact_version: row.try_get("version")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) const API_KEY_SELECT: &str = "SELECT k.id, k.tenant_id, t.name AS tenant_name, k.name, k.role, k.server_admin, \
     k.created_at FROM api_keys k JOIN tenants t ON t.id = k.tenant_id";

pub(super) fn profile_from(row: &AnyRow) -> StoreResult<Profile> {
    Ok(Profile {
        key: ProfileKey(row.try_get("id")?),
        name: parse_name(row.try_get("name")?)?,
        description: row.try_get("description")?,
        settings: ProfileSettings {
            drogue_dfu: row.try_get::<i64, _>("drogue_dfu")? != 0,
            aws_http_delivery: row.try_get::<i64, _>("aws_http")? != 0,
            lwm2m_delivery: row
                .try_get::<String, _>("lwm2m_delivery")?
                .parse()
                .map_err(StoreError::Corrupt)?,
            lwm2m_path_only: row.try_get::<i64, _>("lwm2m_path_only")? != 0,
        },
        signing_cert: match (
            row.try_get::<Option<String>, _>("signing_cert")?,
            row.try_get::<Option<String>, _>("signing_cert_name")?,
        ) {
            (Some(pem), Some(name)) => Some(SigningCert { name, pem }),
            _ => None,
        },
        created_at: row.try_get("created_at")?,
    })
}
