-- Schema version 1: tenants, projects, profiles, devices and credentials, artifacts, assignments,
-- update actions with their history, API keys. Written for SQLite and PostgreSQL alike.
CREATE TABLE tenants (
    id {pk},
    name TEXT NOT NULL,
    name_lower TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE projects (
    id {pk},
    tenant_id BIGINT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE profiles (
    id {pk},
    tenant_id BIGINT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE devices (
    id {pk},
    tenant_id BIGINT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    device_id TEXT NOT NULL,
    project_id BIGINT REFERENCES projects(id),
    profile_id BIGINT REFERENCES profiles(id),
    tags TEXT NOT NULL,
    attributes TEXT NOT NULL,
    fw_title TEXT,
    fw_version TEXT,
    sw_title TEXT,
    sw_version TEXT,
    last_seen BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, device_id)
);

CREATE TABLE device_credentials (
    id {pk},
    device_pk BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (kind, secret_hash)
);

CREATE TABLE artifacts (
    id {pk},
    tenant_id BIGINT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    version TEXT NOT NULL,
    kind TEXT NOT NULL,
    size BIGINT NOT NULL,
    filename TEXT NOT NULL,
    md5 TEXT NOT NULL,
    sha1 TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    sha384 TEXT NOT NULL,
    sha512 TEXT NOT NULL,
    crc32 TEXT NOT NULL,
    murmur3_32 TEXT NOT NULL,
    murmur3_128 TEXT NOT NULL,
    signature TEXT,
    description TEXT NOT NULL,
    uploaded_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, title, version)
);
CREATE INDEX artifacts_sha256 ON artifacts (sha256);

CREATE TABLE artifact_profiles (
    artifact_id BIGINT NOT NULL REFERENCES artifacts(id) ON DELETE CASCADE,
    profile_id BIGINT NOT NULL REFERENCES profiles(id),
    PRIMARY KEY (artifact_id, profile_id)
);

-- scope_key spells the scope ("device:12", "project:3/profile:4", "tenant") so that one unique
-- constraint holds for every level.
CREATE TABLE assignments (
    id {pk},
    tenant_id BIGINT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    scope_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    device_pk BIGINT REFERENCES devices(id) ON DELETE CASCADE,
    project_id BIGINT REFERENCES projects(id),
    profile_id BIGINT REFERENCES profiles(id),
    artifact_id BIGINT NOT NULL REFERENCES artifacts(id),
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, scope_key, kind)
);

CREATE TABLE actions (
    id {pk},
    tenant_id BIGINT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    device_pk BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    artifact_id BIGINT REFERENCES artifacts(id) ON DELETE SET NULL,
    artifact_title TEXT NOT NULL,
    artifact_version TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    progress_done BIGINT,
    progress_total BIGINT,
    failure_code TEXT,
    failure_reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- Invariant: at most one active action per device.
CREATE UNIQUE INDEX actions_one_active ON actions (device_pk)
    WHERE state NOT IN ('UPDATED', 'FAILED', 'CANCELED');
CREATE INDEX actions_device ON actions (device_pk, id);

CREATE TABLE action_events (
    id {pk},
    action_id BIGINT NOT NULL REFERENCES actions(id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    source TEXT NOT NULL,
    detail TEXT NOT NULL,
    refused BIGINT NOT NULL,
    progress_done BIGINT,
    progress_total BIGINT
);
CREATE INDEX action_events_action ON action_events (action_id, id);

CREATE TABLE api_keys (
    id {pk},
    tenant_id BIGINT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    server_admin BIGINT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
