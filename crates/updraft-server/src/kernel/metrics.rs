//! Prometheus metrics: a handful of counters kept in memory and rendered in the text format at
//! `/metrics`. Counters restart from zero with the process, as Prometheus expects.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::kernel::state::AppState;

#[derive(Default)]
pub struct Metrics {
    // (method, route, status) → count
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    pub upload_bytes: AtomicU64,
    pub artifacts_uploaded: AtomicU64,
    pub uploads_refused: AtomicU64,
    pub download_bytes: AtomicU64,
    /// Downloads sent to a presigned object-storage URL instead of served.
    pub download_redirects: AtomicU64,
    /// Blobs and staging leftovers removed by garbage collection.
    pub blobs_collected: AtomicU64,
    /// Passes over a tenant's whole fleet (a rollout's or rule's target, a filtered list).
    pub fleet_scans: AtomicU64,
    /// Members the rollout scheduler activated.
    pub rollout_activations: AtomicU64,
    /// A gauge: rollouts' actions queued, told or downloading after the scheduler's last pass
    /// (what `--max-downloads` bounds).
    pub rollout_downloads_in_flight: AtomicU64,
    /// Counters that adapters register: (name, help, value).
    registered: Mutex<Vec<(&'static str, &'static str, Arc<AtomicU64>)>>,
}

impl Metrics {
    /// Adds a counter of an adapter's to the exposition (a name that is already there is not
    /// added twice).
    pub fn register(&self, name: &'static str, help: &'static str, value: Arc<AtomicU64>) {
        if let Ok(mut registered) = self.registered.lock()
            && !registered.iter().any(|(n, _, _)| *n == name)
        {
            registered.push((name, help, value));
        }
    }

    fn record(&self, method: &str, route: &str, status: u16) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests
                .entry((method.to_owned(), route.to_owned(), status))
                .or_default() += 1;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP updraft_http_requests_total HTTP requests by method, route and status.\n",
        );
        out.push_str("# TYPE updraft_http_requests_total counter\n");
        if let Ok(requests) = self.requests.lock() {
            for ((method, route, status), count) in requests.iter() {
                let _ = writeln!(
                    out,
                    "updraft_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
                );
            }
        }
        let counters = [
            (
                "updraft_download_redirects_total",
                "Downloads redirected to a presigned object-storage URL.",
                &self.download_redirects,
            ),
            (
                "updraft_blobs_collected_total",
                "Unreferenced blobs and staging leftovers removed by garbage collection.",
                &self.blobs_collected,
            ),
            (
                "updraft_upload_bytes_total",
                "Artifact bytes received.",
                &self.upload_bytes,
            ),
            (
                "updraft_artifacts_uploaded_total",
                "Artifacts stored.",
                &self.artifacts_uploaded,
            ),
            (
                "updraft_uploads_refused_total",
                "Uploads refused (bad checksum, too large, cut off).",
                &self.uploads_refused,
            ),
            (
                "updraft_download_bytes_total",
                "Artifact bytes sent.",
                &self.download_bytes,
            ),
            (
                "updraft_fleet_scans_total",
                "Passes over a tenant's whole fleet (rollout and rule targets, filtered lists).",
                &self.fleet_scans,
            ),
            (
                "updraft_rollout_activations_total",
                "Rollout members the scheduler let start.",
                &self.rollout_activations,
            ),
        ];
        let _ = writeln!(
            out,
            "# HELP updraft_rollout_downloads_in_flight Rollout updates queued, told or downloading (after the scheduler's last pass).\n# TYPE updraft_rollout_downloads_in_flight gauge\nupdraft_rollout_downloads_in_flight {}",
            self.rollout_downloads_in_flight.load(Ordering::Relaxed)
        );
        let registered = self
            .registered
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        let registered = registered.iter().map(|(n, h, v)| (*n, *h, v.as_ref()));
        for (name, help, value) in counters.into_iter().chain(registered) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// Middleware counting every request by its route template (not its raw path, which would let
/// devices blow up the label set).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // Methods outside the standard set share one label: a client inventing methods must not
    // grow `/metrics`.
    let method = match request.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS") => m.to_owned(),
        _ => "other".to_owned(),
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    state
        .metrics
        .record(&method, &route, response.status().as_u16());
    response
}
