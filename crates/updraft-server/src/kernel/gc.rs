//! Blob garbage collection as a singleton task: on whichever replica holds the store's lease,
//! every so often, the blobs no artifact refers to and the staging leftovers of interrupted
//! uploads are removed — those older than the grace only, since an upload in flight on any
//! replica keeps its staging object and the blob it commits young (see
//! `updraft_store::collect_garbage`). A replica that just started takes no part until it holds the
//! lease, and then spares what is young like any other.

use std::sync::atomic::Ordering;
use std::time::Duration;

use updraft_store::{Singleton, collect_garbage};

use crate::kernel::clock::now_millis;
use crate::kernel::state::AppState;

/// Runs the collector until the process ends.
pub async fn collector(state: AppState, every: Duration, grace: Duration) {
    let every = every.max(Duration::from_secs(1));
    loop {
        match state.store.lease(Singleton::GarbageCollection).await {
            Ok(Some(mut lease)) => {
                println!("updraft runs garbage collection");
                while lease.held().await {
                    collect(&state, grace).await;
                    tokio::time::sleep(every).await;
                }
                tracing::warn!("garbage collection lease lost");
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "garbage collection lease failed"),
        }
        // Another replica collects (or the database is away): try again in a while, so that a
        // survivor takes over within seconds of the holder's death.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// One collection now, sparing what is younger than `grace`.
pub async fn collect(state: &AppState, grace: Duration) {
    let before = now_millis() - i64::try_from(grace.as_millis()).unwrap_or(i64::MAX / 2);
    match collect_garbage(&*state.store, &*state.blobs, before).await {
        Ok(report) => {
            let removed = report.staging_removed + report.orphans_removed;
            if removed > 0 {
                state
                    .metrics
                    .blobs_collected
                    .fetch_add(removed, Ordering::Relaxed);
                tracing::info!(
                    staging = report.staging_removed,
                    orphans = report.orphans_removed,
                    "garbage collection removed unreferenced blobs"
                );
            }
        }
        Err(err) => tracing::warn!(error = %err, "garbage collection failed"),
    }
}
