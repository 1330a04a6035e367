-- Schema version 3: Frugal-IoT nodes register themselves on first check-in unless the tenant says no.
ALTER TABLE tenants ADD COLUMN frugal_auto_register BIGINT NOT NULL DEFAULT 1;
