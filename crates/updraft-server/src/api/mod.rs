//! The management REST API under `/api/v1/`, its OpenAPI document, and the service endpoints
//! (`/healthz`, `/readyz`, `/metrics`).

pub mod artifacts;
pub mod fleet;
pub mod rollouts;
pub mod wire;

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::{Router, middleware};
use utoipa::OpenApi;

use crate::kernel::error::{ApiError, ErrorBody};
use crate::kernel::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Updraft management API",
        description = "Fleet, artifacts, assignments and update status. \
        Authenticate with `Authorization: Bearer <api key>`. Errors are `{\"code\", \"message\"}` with stable codes."
    ),
    paths(
        fleet::list_tenants,
        fleet::create_tenant,
        fleet::create_tenant_api_key,
        fleet::show_tenant,
        fleet::update_tenant,
        fleet::rotate_gateway_token,
        fleet::revoke_gateway_token,
        fleet::list_api_keys,
        fleet::create_api_key,
        fleet::delete_api_key,
        fleet::list_projects,
        fleet::create_project,
        fleet::list_profiles,
        fleet::create_profile,
        fleet::update_profile,
        fleet::list_devices,
        fleet::create_device,
        fleet::show_device,
        fleet::delete_device,
        fleet::device_history,
        fleet::list_assignments,
        fleet::assign,
        fleet::unassign,
        fleet::status,
        artifacts::upload,
        artifacts::list,
        artifacts::show,
        artifacts::download,
        artifacts::delete,
        rollouts::create,
        rollouts::list,
        rollouts::show,
        rollouts::command,
        rollouts::create_rule,
        rollouts::list_rules,
        rollouts::delete_rule,
    ),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

/// The whole HTTP surface of the server: the management API, the service endpoints, download
/// grants, every protocol's routes, and `pages` (the dashboard, which the composition root
/// brings: the API knows nothing of it).
pub fn router(state: AppState, pages: Router<AppState>) -> Router {
    let api = Router::new()
        .route(
            "/tenants",
            get(fleet::list_tenants).post(fleet::create_tenant),
        )
        .route(
            "/tenants/{tenant}/api-keys",
            post(fleet::create_tenant_api_key),
        )
        .route("/tenant", get(fleet::show_tenant))
        .route("/tenant/settings", put(fleet::update_tenant))
        .route(
            "/tenant/gateway-token",
            post(fleet::rotate_gateway_token).delete(fleet::revoke_gateway_token),
        )
        .route(
            "/api-keys",
            get(fleet::list_api_keys).post(fleet::create_api_key),
        )
        .route("/api-keys/{id}", delete(fleet::delete_api_key))
        .route(
            "/projects",
            get(fleet::list_projects).post(fleet::create_project),
        )
        .route(
            "/profiles",
            get(fleet::list_profiles).post(fleet::create_profile),
        )
        .route("/profiles/{name}", put(fleet::update_profile))
        .route(
            "/devices",
            get(fleet::list_devices).post(fleet::create_device),
        )
        .route(
            "/devices/{id}",
            get(fleet::show_device).delete(fleet::delete_device),
        )
        .route("/devices/{id}/history", get(fleet::device_history))
        .route(
            "/assignments",
            get(fleet::list_assignments)
                .post(fleet::assign)
                .delete(fleet::unassign),
        )
        .route("/status", get(fleet::status))
        .route("/rollouts", get(rollouts::list).post(rollouts::create))
        .route("/rollouts/{name}", get(rollouts::show))
        .route("/rollouts/{name}/{command}", post(rollouts::command))
        .route(
            "/rules",
            get(rollouts::list_rules).post(rollouts::create_rule),
        )
        .route("/rules/{name}", delete(rollouts::delete_rule))
        .route(
            "/artifacts",
            get(artifacts::list)
                // The upload streams and enforces its own limit (--max-upload-bytes).
                .post(artifacts::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/artifacts/{id}",
            get(artifacts::show).delete(artifacts::delete),
        )
        .route("/artifacts/{id}/download", get(artifacts::download))
        .route("/openapi.json", get(openapi));
    let mut router = Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(crate::kernel::grants::routes())
        .merge(pages);
    // Each protocol brings its own routes (and, for the management API, their description).
    for adapter in state.adapters.all() {
        router = router.merge(adapter.routes());
    }
    router
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::kernel::metrics::track,
        ))
        .with_state(state)
}

async fn openapi(State(state): State<AppState>) -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    for part in state.adapters.all().iter().filter_map(|a| a.openapi()) {
        doc.merge(part);
    }
    Json(doc)
}

async fn ready(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    let not_ready = |why: &str| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why);
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(not_ready("the server is shutting down"));
    }
    if let Err(err) = state.store.ping().await {
        tracing::warn!(error = %err, "not ready: the database");
        return Err(not_ready("the database does not answer"));
    }
    let blobs = tokio::time::timeout(std::time::Duration::from_secs(5), state.blobs.check());
    if !matches!(blobs.await, Ok(Ok(()))) {
        tracing::warn!("not ready: the blob store {}", state.blobs.describe());
        return Err(not_ready("the blob store does not answer"));
    }
    Ok("ready")
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    let (hits, misses) = state.store.view_lookups();
    text.push_str(&format!(
        "# HELP updraft_store_view_lookups_total Device check-in reads answered from memory (hit) or from the database (miss).\n\
         # TYPE updraft_store_view_lookups_total counter\n\
         updraft_store_view_lookups_total{{result=\"hit\"}} {hits}\n\
         updraft_store_view_lookups_total{{result=\"miss\"}} {misses}\n"
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint: see /api/v1/openapi.json")
}
