-- Schema version 15: what replicas share.
-- Secrets every replica uses alike (the key that signs download URLs), made by the first to ask.
CREATE TABLE server_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL, created_at BIGINT NOT NULL);
-- Budgets shared by every replica per second (the notification queue's pacing).
CREATE TABLE pacing (name TEXT PRIMARY KEY, second BIGINT NOT NULL, used BIGINT NOT NULL);
-- LwM2M registrations outlive the process that took them (NoSec clients: a replica's restart).
CREATE TABLE lwm2m_registrations (
    device_pk BIGINT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    endpoint TEXT NOT NULL,
    location TEXT NOT NULL,
    peer TEXT NOT NULL,
    lifetime BIGINT NOT NULL,
    version TEXT NOT NULL,
    root TEXT NOT NULL,
    objects TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
