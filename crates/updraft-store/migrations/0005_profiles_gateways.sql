-- Schema version 5: per-profile device-protocol settings; gateway credentials.
-- 1 when the profile's devices speak Drogue DFU (versions of at most 16 bytes).
ALTER TABLE profiles ADD COLUMN drogue_dfu BIGINT NOT NULL DEFAULT 0;
-- 1 when the credential's device may speak for the other devices of its tenant.
ALTER TABLE device_credentials ADD COLUMN gateway BIGINT NOT NULL DEFAULT 0;
