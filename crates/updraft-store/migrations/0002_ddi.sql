-- Schema version 2: per-tenant device-API settings and gateway token; cancel acknowledgement.
ALTER TABLE tenants ADD COLUMN poll_interval_secs BIGINT NOT NULL DEFAULT 300;
ALTER TABLE tenants ADD COLUMN auto_register BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tenants ADD COLUMN gateway_token_hash TEXT;
CREATE UNIQUE INDEX tenants_gateway_token ON tenants (gateway_token_hash);
-- 1 while a device that was told about this action has not yet confirmed its cancellation.
ALTER TABLE actions ADD COLUMN cancel_pending BIGINT NOT NULL DEFAULT 0;
