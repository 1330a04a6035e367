//! The store's integration tests: one conformance suite run against SQLite and PostgreSQL, and
//! the local blob store's tests.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used)]

mod blobs;
mod cluster;
mod conformance;
mod coverage;
mod frugal_keys;
mod races;
mod rollouts;
mod tls;
mod views;

use updraft_store::SqlStore;

/// Runs each named conformance test against both backends.
macro_rules! backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = updraft_store::SqlStore::open_sqlite(&dir.path().join("t.db")).await.unwrap();
                    crate::conformance::$name(&store, &crate::Reopen::Sqlite(dir.path().join("t.db"))).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(url) = updraft_test_support::postgres::fresh_database().await else { return };
                    let store = updraft_store::SqlStore::open(&url).await.unwrap();
                    crate::conformance::$name(&store, &crate::Reopen::Url(url)).await;
                }
            )*
        }
    };
}

/// How a test opens the same database again.
pub enum Reopen {
    Sqlite(std::path::PathBuf),
    Url(String),
}

impl Reopen {
    pub async fn open(&self) -> SqlStore {
        match self {
            Reopen::Sqlite(path) => SqlStore::open_sqlite(path).await.unwrap(),
            Reopen::Url(url) => SqlStore::open(url).await.unwrap(),
        }
    }
}

backends!(
    the_first_replica_decides_a_shared_secret,
    replicas_share_one_budget_a_second,
    lwm2m_registrations_are_kept_until_they_expire_or_end,
    reopening_migrates_nothing_twice_and_keeps_data,
    tenant_names_are_unique_case_insensitively,
    title_and_version_are_unique_per_tenant,
    tenants_never_see_each_other,
    device_assignment_overrides_profile_assignment,
    frugal_node_beats_project_key_beats_org_key,
    device_reports_walk_the_state_machine_with_history,
    steps_backwards_and_reports_on_finished_actions_are_refused_and_recorded,
    new_desired_artifact_supersedes_the_active_action,
    unassigning_cancels_the_active_action,
    failed_update_is_retried_only_when_assigned_again,
    firmware_goes_before_software,
    incompatible_assignments_are_refused,
    artifacts_in_use_cannot_be_deleted_and_shared_blobs_survive,
    devices_are_found_by_credential_and_paged,
    api_keys_are_found_by_hash_and_scoped_to_their_tenant,
    fleet_summary_counts_latest_action_states,
    the_fleet_overview_counts_a_tenants_fleet,
    tenant_settings_and_gateway_tokens_round_trip,
    profile_settings_and_gateway_credentials_round_trip,
    job_executions_change_only_from_the_version_they_were_read_at,
    reported_attributes_merge_replace_and_remove,
    superseding_an_action_the_device_knew_asks_it_to_confirm,
    placing_a_device_elsewhere_changes_what_it_should_run,
    frugal_keys_enroll_a_bounded_number_of_nodes_in_their_tenant,
    reports_racing_a_supersede_never_leave_a_final_state,
    reconciliations_racing_on_one_device_keep_one_active_action,
    credentials_are_unique_per_tenant_and_ambiguous_ones_open_nothing,
    tenants_projects_and_devices_are_found_by_key_and_name,
    the_queue_lists_queued_actions_and_initiates_each_once,
    lwm2m_psks_are_set_found_and_removed,
    rollouts_count_actions_in_their_groups_and_survive_a_restart,
    a_rollout_never_takes_another_tenants_devices,
    one_scheduler_holds_the_lease_at_a_time,
    a_filter_scan_reads_what_it_needs_and_matches_like_the_full_row,
    idle_reads_come_from_memory_and_every_write_is_seen,
);
