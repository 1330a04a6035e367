//! The fleet page (`/`): devices per update state and per running version, who is online, the
//! last day's failures by code, and what needs attention.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use maud::html;
use updraft_store::{ONLINE_MS, STUCK_MS};

use super::charts::{Bar, bars};
use super::{Section, Viewer, csrf_field, error_page, page, when};
use crate::kernel::clock::now_millis;
use crate::kernel::state::{AppState, CachedOverview};

/// The update states in their order, for the chart.
const STATES: [&str; 9] = [
    "QUEUED",
    "INITIATED",
    "DOWNLOADING",
    "DOWNLOADED",
    "VERIFIED",
    "UPDATING",
    "UPDATED",
    "FAILED",
    "CANCELED",
];

/// How old the fleet page's numbers may be before they are recounted (in the background: the
/// last count is shown meanwhile)…
pub(super) const FRESH_MS: i64 = 5_000;
/// …and how old they may be shown at all (a viewer after a quiet minute waits for a count).
const SHOWN_MS: i64 = 60_000;

/// The tenant's overview and when it was counted. A count older than [`FRESH_MS`] is recounted
/// in the background (one recount at a time) and shown meanwhile; with none younger than
/// [`SHOWN_MS`] the viewer waits for one (viewers arriving meanwhile wait for the same one).
async fn overview(
    state: &AppState,
    tenant: updraft_core::TenantKey,
) -> Result<(Arc<updraft_store::FleetOverview>, i64), updraft_store::StoreError> {
    let mut cached = state.overviews.lock().await;
    let now = now_millis();
    if let Some(entry) = cached.get_mut(&tenant)
        && now - entry.at < SHOWN_MS
    {
        if now - entry.at >= FRESH_MS && !entry.refreshing {
            entry.refreshing = true;
            let state = state.clone();
            tokio::spawn(async move { recount(&state, tenant).await });
        }
        return Ok((entry.overview.clone(), entry.at));
    }
    // Nothing recent enough: count now, holding the table so that others wait for this count.
    let overview = Arc::new(state.store.fleet_overview(tenant, now).await?);
    cached.retain(|_, entry| now - entry.at < SHOWN_MS);
    cached.insert(
        tenant,
        CachedOverview {
            at: now,
            overview: overview.clone(),
            refreshing: false,
        },
    );
    Ok((overview, now))
}

/// Counts the tenant's overview again and keeps it.
async fn recount(state: &AppState, tenant: updraft_core::TenantKey) {
    let now = now_millis();
    let counted = state.store.fleet_overview(tenant, now).await;
    let mut cached = state.overviews.lock().await;
    match counted {
        Ok(overview) => {
            cached.insert(
                tenant,
                CachedOverview {
                    at: now,
                    overview: Arc::new(overview),
                    refreshing: false,
                },
            );
        }
        Err(err) => {
            tracing::warn!(error = %err, "recounting the fleet overview failed");
            if let Some(entry) = cached.get_mut(&tenant) {
                entry.refreshing = false;
            }
        }
    }
}

/// Named counts as bars of one colour.
fn counted(counts: &[(String, u64)], class: &str) -> Vec<Bar> {
    counts
        .iter()
        .map(|(label, count)| Bar {
            label: label.clone(),
            count: *count,
            class: class.to_owned(),
        })
        .collect()
}

async fn page_of(state: &AppState, viewer: &Viewer) -> Response {
    let (overview, computed_at) = match overview(state, viewer.caller.tenant()).await {
        Ok(found) => found,
        Err(err) => return error_page(&err.into()),
    };
    let with_update: u64 = overview.latest_action_states.values().sum();
    let mut by_state: Vec<Bar> = STATES
        .iter()
        .filter_map(|s| {
            overview.latest_action_states.get(*s).map(|n| Bar {
                label: (*s).to_owned(),
                count: *n,
                class: format!("s-{}", s.to_ascii_lowercase()),
            })
        })
        .collect();
    if overview.devices > with_update {
        by_state.push(Bar {
            label: "no update yet".to_owned(),
            count: overview.devices - with_update,
            class: "s-none".to_owned(),
        });
    }
    let versions = counted(&overview.versions, "version");
    let failures = counted(&overview.failures_24h, "s-failed");
    let protocols = counted(&overview.protocols, "version");
    // Connected sessions are counted across the server: shown to the server admin only.
    let sessions: Vec<Bar> = if viewer.caller.key.server_admin {
        state
            .adapters
            .channels()
            .iter()
            .map(|c| Bar {
                label: c.source().to_owned(),
                count: c.reachable().len() as u64,
                class: "version".to_owned(),
            })
            .filter(|b| b.count > 0)
            .collect()
    } else {
        Vec::new()
    };
    let tenants = if viewer.caller.key.server_admin {
        state.store.list_tenants().await.unwrap_or_default()
    } else {
        Vec::new()
    };
    let body = html! {
        div #fleet-live data-live {
            p.hint { "As of " time datetime=(when(computed_at)) { (when(computed_at)) }
                " (recounted when over " (FRESH_MS / 1000) " s old)." }
            ul.cards {
                li { span.n data-stat="devices" { (overview.devices) } " devices" }
                li { span.n data-stat="online" { (overview.online) } " online"
                    small { " (heard from in " (ONLINE_MS / 60_000) " min)" } }
                li { span.n data-stat="never-seen" { (overview.never_seen) } " never seen" }
                li.attention[overview.stuck_downloads > 0] {
                    span.n data-stat="stuck" { (overview.stuck_downloads) } " stuck downloads"
                    small { " (no progress for " (STUCK_MS / 60_000) " min; "
                        a href="/ui/devices?state=DOWNLOADING" { "downloading now" } ")" }
                }
            }
            div.charts {
                (bars("states", "Devices by the state of their latest update", &by_state))
                (bars("versions", "Running firmware", &versions))
                (bars("protocols", "Devices by the protocol of their last report", &protocols))
                (bars("failures", "Failures in the last 24 hours, by code", &failures))
                @if !sessions.is_empty() {
                    (bars("sessions", "Connected now, by protocol (whole server)", &sessions))
                }
            }
        }
        @if tenants.len() > 1 {
            form.inline method="post" action="/ui/tenant" {
                (csrf_field(viewer))
                label for="tenant" { "Look at tenant " }
                select #tenant name="tenant" {
                    @for t in &tenants {
                        option value=(t.name.as_str()) selected[t.key == viewer.caller.tenant()] {
                            (t.name.as_str())
                        }
                    }
                }
                button type="submit" { "Switch" }
            }
        }
    };
    page(viewer, Section::Fleet, "Fleet", body)
}

pub(super) async fn show(State(state): State<AppState>, viewer: Viewer) -> Response {
    page_of(&state, &viewer).await
}
