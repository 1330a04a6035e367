//! JSON views of artifacts and assignments, shared by the management API and the endpoints
//! that adapters add to it (a developer's push answers with the artifact and assignment it made).

use std::collections::BTreeMap;

use serde::Serialize;
use updraft_core::Scope;
use updraft_store as store;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct ChecksumsOut {
    pub md5: String,
    pub sha1: String,
    pub sha256: String,
    pub sha384: String,
    pub sha512: String,
    /// Little-endian hex of the CRC32, as ThingsBoard prints it.
    pub crc32: String,
    pub murmur3_32: String,
    pub murmur3_128: String,
}

#[derive(Serialize, ToSchema)]
pub struct ArtifactOut {
    pub id: i64,
    pub title: String,
    pub version: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Profiles it runs on; empty means any.
    pub profiles: Vec<String>,
    pub size: u64,
    pub filename: String,
    pub checksums: ChecksumsOut,
    pub signature: Option<String>,
    pub description: String,
    pub uploaded_by: String,
    pub created_at: i64,
    pub download_url: String,
}

impl ArtifactOut {
    pub fn new(a: &store::Artifact, public_url: &str) -> Self {
        let c = &a.checksums;
        Self {
            id: a.key.0,
            title: a.title.clone(),
            version: a.version.clone(),
            kind: a.kind.as_str().to_owned(),
            profiles: a
                .profiles
                .iter()
                .map(|(_, name)| name.to_string())
                .collect(),
            size: a.size,
            filename: a.filename.clone(),
            checksums: ChecksumsOut {
                md5: c.md5.clone(),
                sha1: c.sha1.clone(),
                sha256: c.sha256.clone(),
                sha384: c.sha384.clone(),
                sha512: c.sha512.clone(),
                crc32: c.crc32.clone(),
                murmur3_32: c.murmur3_32.clone(),
                murmur3_128: c.murmur3_128.clone(),
            },
            signature: a.signature.clone(),
            description: a.description.clone(),
            uploaded_by: a.uploaded_by.clone(),
            created_at: a.created_at,
            download_url: format!("{public_url}/api/v1/artifacts/{}/download", a.key.0),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AssignmentOut {
    pub id: i64,
    /// device, project_profile, project, profile or tenant.
    pub level: String,
    pub device: Option<String>,
    pub project: Option<String>,
    pub profile: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub artifact_id: i64,
    pub title: String,
    pub version: String,
    pub created_by: String,
    pub created_at: i64,
}

impl From<&store::Assignment> for AssignmentOut {
    fn from(a: &store::Assignment) -> Self {
        Self {
            id: a.id,
            level: level(a.scope).to_owned(),
            device: a.device_id.as_ref().map(ToString::to_string),
            project: a.project_name.as_ref().map(ToString::to_string),
            profile: a.profile_name.as_ref().map(ToString::to_string),
            kind: a.kind.as_str().to_owned(),
            artifact_id: a.artifact.0,
            title: a.artifact_title.clone(),
            version: a.artifact_version.clone(),
            created_by: a.created_by.clone(),
            created_at: a.created_at,
        }
    }
}

pub fn level(scope: Scope) -> &'static str {
    match scope {
        Scope::Device(_) => "device",
        Scope::Rollout(..) => "rollout",
        Scope::ProjectProfile(..) => "project_profile",
        Scope::Project(_) => "project",
        Scope::Profile(_) => "profile",
        Scope::Tenant => "tenant",
    }
}

/// Attributes a device reported as a JSON object, as the text values the store keeps (strings as
/// they are, anything else as its JSON).
pub fn attribute_strings(
    values: serde_json::Map<String, serde_json::Value>,
) -> BTreeMap<String, String> {
    values
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (key, text)
        })
        .collect()
}

/// `segment` percent-encoded for one URL path segment: everything but RFC 3986's unreserved
/// characters is escaped, so a file name with spaces, `?`, `#` or `%` stays one segment.
pub fn path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_escape_all_but_unreserved() {
        assert_eq!(super::path_segment("fw-1.0_a~b.bin"), "fw-1.0_a~b.bin");
        assert_eq!(
            super::path_segment("my fw?#%/ü.bin"),
            "my%20fw%3F%23%25%2F%C3%BC.bin"
        );
    }
}
