//! The rollout scheduler: drives every live rollout from the store with `updraft_core::rollout`'s
//! decisions — start the next group, note a passed threshold, halt, finish — and activates the
//! members pacing lets through, whose actions the notification queue then tells through each
//! device's own channel. It keeps no state of its own: a restarted server, or another replica,
//! continues from what is stored. One replica at a time holds the store's scheduler lease.

use std::time::Duration;

use updraft_core::rollout::{GroupProgress, Lifecycle, MAX_GROUPS, Step, may_start, next_step};
use updraft_store::{GroupMark, Rollout, RolloutGroup, Singleton};

use crate::kernel::clock::now_millis;
use crate::kernel::error::ApiError;
use crate::kernel::state::AppState;

/// At most this many members are activated per rollout per pass.
const PER_PASS: u64 = 5_000;

/// Runs the scheduler until the process ends: waits for the lease, then passes once a second
/// (or when a command wakes it) for as long as the lease holds.
pub async fn scheduler(state: AppState) {
    loop {
        let mut lease = match state.store.lease(Singleton::Scheduler).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                // Another replica schedules; try again in a while.
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            Err(err) => {
                tracing::warn!(error = %err, "rollout scheduler lease failed");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        tracing::info!("rollout scheduler running on this replica");
        // On standard output too, as the listening lines are: operators and tests see which
        // replica runs it.
        println!("updraft runs the rollout scheduler");
        while lease.held().await {
            if let Err(err) = pass(&state, now_millis()).await {
                tracing::warn!(error = %err.message, "rollout scheduler pass failed");
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = state.schedule.notified() => {}
            }
        }
        tracing::warn!("rollout scheduler lease lost");
    }
}

/// One pass over every live rollout at `now`; returns how many members it activated (the
/// notification queue is woken when any were).
pub async fn pass(state: &AppState, now: i64) -> Result<u64, ApiError> {
    let mut activated = 0;
    let mut in_flight = 0;
    let live = state.store.live_rollouts(now).await?;
    windows_opened(state, &live, now);
    for rollout in live {
        let (started, flying) = advance(state, rollout, now).await?;
        activated += started;
        in_flight += flying;
    }
    state
        .metrics
        .rollout_downloads_in_flight
        .store(in_flight, std::sync::atomic::Ordering::Relaxed);
    if activated > 0 {
        state
            .metrics
            .rollout_activations
            .fetch_add(activated, std::sync::atomic::Ordering::Relaxed);
        state.announce(crate::kernel::cluster::News::Queued);
    }
    Ok(activated)
}

/// Tells the channels of each tenant whose rollout's maintenance window opened since the last
/// pass (or is open at the first), so that devices waiting to install are told; forgets
/// rollouts that are no longer live.
fn windows_opened(state: &AppState, live: &[Rollout], now: i64) {
    let mut opened = Vec::new();
    if let Ok(mut windows) = state.windows.lock() {
        windows.retain(|key, _| live.iter().any(|r| r.key == *key));
        for rollout in live {
            let Some(spec) = &rollout.window else {
                continue;
            };
            let open = crate::kernel::terms::window_open(spec, now);
            if open && windows.insert(rollout.key, open) != Some(true) {
                opened.push(rollout.tenant);
            } else {
                windows.insert(rollout.key, open);
            }
        }
    }
    opened.dedup();
    for tenant in opened {
        state.announce(crate::kernel::cluster::News::WindowOpened(tenant));
    }
}

/// Moves one rollout as far as its groups allow at `now`, then activates what pacing allows;
/// returns how many it activated and how many of its updates are in flight now.
async fn advance(state: &AppState, mut rollout: Rollout, now: i64) -> Result<(u64, u64), ApiError> {
    let store = &state.store;
    if rollout.state == Lifecycle::Ready {
        // Its start time came.
        if !store
            .set_rollout_state(
                rollout.key,
                Lifecycle::Ready,
                Lifecycle::Running,
                "scheduler",
            )
            .await?
        {
            return Ok((0, 0));
        }
        rollout.state = Lifecycle::Running;
    }
    let mut groups: Vec<RolloutGroup> = store.rollout_groups(rollout.key).await?;
    // Each step changes one group's marks; a rollout has at most two per group.
    for _ in 0..(2 * MAX_GROUPS + 2) {
        let progress: Vec<GroupProgress> = groups.iter().map(RolloutGroup::progress).collect();
        let (group, mark) = match next_step(rollout.state, &progress, &rollout.thresholds, now) {
            Step::Wait => break,
            Step::Passed(i) => (i, GroupMark::Passed),
            Step::Start(i) => (i, GroupMark::Started),
            Step::Halt(i) => {
                tracing::warn!(rollout = %rollout.name, group = i + 1, "rollout halted: too many failures");
                store
                    .set_rollout_state(rollout.key, rollout.state, Lifecycle::Halted, "scheduler")
                    .await?;
                return Ok((0, 0));
            }
            // A dynamic rollout (or rule) waits for the devices that will join it.
            Step::Finish if rollout.dynamic => break,
            Step::Finish => {
                store
                    .set_rollout_state(rollout.key, rollout.state, Lifecycle::Finished, "scheduler")
                    .await?;
                return Ok((0, 0));
            }
        };
        let Some(g) = groups.get_mut(group) else {
            break;
        };
        store.mark_group(g.id, mark, now).await?;
        match mark {
            GroupMark::Started => g.started_at = Some(now),
            GroupMark::Passed => g.passed_at = Some(now),
        }
    }
    let in_flight: u64 = groups.iter().map(RolloutGroup::in_flight).sum();
    let told_last_minute = match rollout.max_per_minute {
        Some(_) => store.activated_since(rollout.key, now - 60_000).await?,
        None => 0,
    };
    let mut budget = may_start(
        rollout.max_per_minute,
        told_last_minute,
        rollout.max_downloads,
        in_flight,
    )
    .min(PER_PASS);
    let mut activated = 0;
    while budget > 0 {
        let batch = store.activate_members(&rollout, budget, now).await?;
        if batch == 0 {
            break;
        }
        activated += batch;
        budget -= batch.min(budget);
    }
    // Each member activated has at most one new action, QUEUED.
    Ok((activated, in_flight + activated))
}
