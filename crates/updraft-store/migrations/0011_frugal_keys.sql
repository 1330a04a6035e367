-- Schema version 11: Frugal-IoT OTA keys are secrets. A project key (`frugal_keys`) lets nodes of
-- one project and profile enroll; a device speaks Frugal only if it has a `frugal_nodes` row,
-- holding its own key's hash or the project key that enrolled it. Only hashes are stored.
CREATE TABLE frugal_keys (
    id {pk},
    tenant_id BIGINT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    profile_id BIGINT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    max_nodes BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, secret_hash)
);

CREATE TABLE frugal_nodes (
    device_pk BIGINT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    secret_hash TEXT,
    key_id BIGINT REFERENCES frugal_keys(id) ON DELETE CASCADE
);
CREATE INDEX frugal_nodes_key ON frugal_nodes (key_id);
