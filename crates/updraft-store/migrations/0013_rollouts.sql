-- Schema version 13: rollouts. A rollout's target is snapshot into rollout_devices when it is
-- created, each member in one group; a member counts in resolution once the scheduler activated
-- it (its group started and pacing let it through). Each group keeps one counter per update
-- state of its actions, moved in the transaction that moves the action.
CREATE TABLE rollouts (
    id {pk},
    tenant_id BIGINT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    artifact_id BIGINT NOT NULL REFERENCES artifacts(id),
    target TEXT NOT NULL,
    groups_spec TEXT NOT NULL,
    success_pct BIGINT NOT NULL,
    error_pct BIGINT NOT NULL,
    soak_ms BIGINT NOT NULL,
    update_type TEXT NOT NULL,
    start_at BIGINT,
    max_per_minute BIGINT,
    max_downloads BIGINT,
    jitter_ms BIGINT NOT NULL,
    -- Maintenance window: a cron schedule in window_tz opening for window_ms (installs only).
    window_cron TEXT,
    window_ms BIGINT,
    window_tz TEXT,
    -- Devices created later, or that come to match the filter, join new groups.
    dynamic BIGINT NOT NULL DEFAULT 0,
    -- An auto-assignment rule: one dynamic group, no thresholds.
    is_rule BIGINT NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE INDEX rollouts_state ON rollouts (state);
CREATE INDEX rollouts_dynamic ON rollouts (tenant_id) WHERE dynamic = 1;

CREATE TABLE rollout_groups (
    id {pk},
    rollout_id BIGINT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    idx BIGINT NOT NULL,
    size BIGINT NOT NULL,
    -- Built after the static groups, for devices that joined later.
    dynamic BIGINT NOT NULL DEFAULT 0,
    started_at BIGINT,
    passed_at BIGINT,
    n_queued BIGINT NOT NULL DEFAULT 0,
    n_initiated BIGINT NOT NULL DEFAULT 0,
    n_downloading BIGINT NOT NULL DEFAULT 0,
    n_downloaded BIGINT NOT NULL DEFAULT 0,
    n_verified BIGINT NOT NULL DEFAULT 0,
    n_updating BIGINT NOT NULL DEFAULT 0,
    n_updated BIGINT NOT NULL DEFAULT 0,
    n_failed BIGINT NOT NULL DEFAULT 0,
    n_canceled BIGINT NOT NULL DEFAULT 0,
    -- Members that got no action: they ran the artifact already (counted updated too) or
    -- something else wins for them (their own assignment, an artifact failed before).
    n_skipped BIGINT NOT NULL DEFAULT 0,
    -- Failures accepted by resuming a halted rollout: the error threshold counts those after.
    failed_accepted BIGINT NOT NULL DEFAULT 0,
    UNIQUE (rollout_id, idx)
);

-- No foreign keys: checking them row by row more than doubled the time to write a
-- 100,000-device snapshot on PostgreSQL. The store checks a snapshot's devices when it writes it,
-- writes rollouts and groups itself (neither is ever deleted), and settles a device's
-- memberships when the device is deleted.
CREATE TABLE rollout_devices (
    rollout_id BIGINT NOT NULL,
    device_pk BIGINT NOT NULL,
    group_id BIGINT NOT NULL,
    delay_ms BIGINT NOT NULL,
    activated_at BIGINT,
    -- Set when activated without an action of its own: 'already' (ran the artifact),
    -- 'adopted' (its active action installs it), 'skipped' (something else wins for it).
    outcome TEXT,
    PRIMARY KEY (rollout_id, device_pk)
);
CREATE INDEX rollout_devices_active ON rollout_devices (device_pk, rollout_id)
    WHERE activated_at IS NOT NULL;
CREATE INDEX rollout_devices_waiting ON rollout_devices (group_id, delay_ms, device_pk)
    WHERE activated_at IS NULL;
CREATE INDEX rollout_devices_activated ON rollout_devices (rollout_id, activated_at)
    WHERE activated_at IS NOT NULL;

ALTER TABLE actions ADD COLUMN rollout_group_id BIGINT REFERENCES rollout_groups(id) ON DELETE SET NULL;
CREATE INDEX actions_rollout_group ON actions (rollout_group_id, state)
    WHERE rollout_group_id IS NOT NULL;
