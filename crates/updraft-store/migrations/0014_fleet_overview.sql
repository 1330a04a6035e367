-- Schema version 14: the fleet at a glance without sorting the fleet.
-- The protocol a device last reported over (the source of its last applied report).
ALTER TABLE devices ADD COLUMN protocol TEXT;
-- Running versions and protocols are grouped in index order.
CREATE INDEX devices_running ON devices (tenant_id, fw_title, fw_version, protocol);
-- A device's updates, newest last, with their state: the latest update of every device is one
-- index-only scan, and a device's history is found within its tenant.
CREATE INDEX actions_tenant_device ON actions (tenant_id, device_pk, id, state);
-- Failures of the last day and stuck downloads are ranges.
CREATE INDEX actions_tenant_state ON actions (tenant_id, state, updated_at);
