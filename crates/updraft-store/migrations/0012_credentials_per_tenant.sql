-- Schema version 12: device credentials are unique per tenant, not across tenants, so that creating
-- one never tells a tenant what another holds. The table gains its tenant and is rebuilt (SQLite
-- cannot drop a UNIQUE constraint); lookups without a tenant use the (kind, secret_hash) index.
CREATE TABLE device_credentials_v12 (
    id {pk},
    tenant_id BIGINT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    device_pk BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    gateway BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, kind, secret_hash)
);
INSERT INTO device_credentials_v12 (tenant_id, device_pk, kind, secret_hash, gateway, created_at)
    SELECT d.tenant_id, c.device_pk, c.kind, c.secret_hash, c.gateway, c.created_at
    FROM device_credentials c JOIN devices d ON d.id = c.device_pk ORDER BY c.id;
DROP TABLE device_credentials;
ALTER TABLE device_credentials_v12 RENAME TO device_credentials;
CREATE INDEX device_credentials_by_secret ON device_credentials (kind, secret_hash);
CREATE INDEX device_credentials_by_device ON device_credentials (device_pk);
