-- Schema version 9: how LwM2M devices of a profile get their package.
-- 'http' (a one-time URL), 'coap' (a coap:// URI on the LwM2M listener).
ALTER TABLE profiles ADD COLUMN lwm2m_delivery TEXT NOT NULL DEFAULT 'http';
-- 1: write only the URL's path into /5/0/1 (devices that put a fixed host in front of it).
ALTER TABLE profiles ADD COLUMN lwm2m_path_only BIGINT NOT NULL DEFAULT 0;
