-- Schema version 6: AWS IoT job executions, one per update action a device has asked about.
CREATE TABLE job_executions (
    action_id BIGINT PRIMARY KEY REFERENCES actions(id) ON DELETE CASCADE,
    -- QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, REJECTED, TIMED_OUT, CANCELED (AWS's words).
    status TEXT NOT NULL,
    -- The device's statusDetails, a JSON object of strings, kept verbatim.
    status_details TEXT NOT NULL,
    version_number BIGINT NOT NULL,
    started_at BIGINT,
    last_updated_at BIGINT NOT NULL,
    -- When an IN_PROGRESS execution times out (stepTimeoutInMinutes), if it does.
    step_deadline BIGINT
);
