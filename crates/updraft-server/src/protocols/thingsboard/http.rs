//! ThingsBoard's HTTP device API: `/api/v1/{token}/attributes`, `/telemetry`, `/firmware` and
//! `/software` (mounted under the management API's `/api/v1`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;
use updraft_core::ArtifactKind;

use super::{chunk, client_attributes, device_for_token, select, shared_attributes, telemetry};
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::extract::{ApiPath, ApiQuery};
use crate::kernel::state::AppState;

/// Routes relative to `/api/v1`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/{token}/attributes",
            get(attributes).post(client_attributes_in),
        )
        .route("/{token}/telemetry", post(telemetry_in))
        .route("/{token}/firmware", get(firmware))
        .route("/{token}/software", get(software))
}

#[derive(Deserialize)]
struct AttributeQuery {
    #[serde(rename = "sharedKeys")]
    shared_keys: Option<String>,
    #[serde(rename = "clientKeys")]
    client_keys: Option<String>,
}

async fn attributes(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
    ApiQuery(query): ApiQuery<AttributeQuery>,
) -> ApiResult<Response> {
    let device = device_for_token(&state, &token).await?;
    state.store.touch_device(device.key).await?;
    let mut body = serde_json::Map::new();
    let neither = query.shared_keys.is_none() && query.client_keys.is_none();
    if query.shared_keys.is_some() || neither {
        let shared = shared_attributes(&state, &device).await?;
        body.insert(
            "shared".into(),
            Value::Object(select(shared, query.shared_keys.as_deref())),
        );
    }
    if query.client_keys.is_some() || neither {
        body.insert(
            "client".into(),
            Value::Object(select(
                client_attributes(&device),
                query.client_keys.as_deref(),
            )),
        );
    }
    Ok(axum::Json(Value::Object(body)).into_response())
}

fn parse(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("not JSON: {e}")))
}

async fn client_attributes_in(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let device = device_for_token(&state, &token).await?;
    let Value::Object(values) = parse(&body)? else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "attributes are a JSON object",
        ));
    };
    let data = crate::kernel::views::attribute_strings(values);
    state
        .store
        .update_attributes(device.key, updraft_store::AttributeMode::Merge, &data)
        .await?;
    Ok(StatusCode::OK)
}

async fn telemetry_in(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let device = device_for_token(&state, &token).await?;
    state.store.touch_device(device.key).await?;
    telemetry(&state, &device, &parse(&body)?).await?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
struct ChunkQuery {
    title: Option<String>,
    version: Option<String>,
    size: Option<u64>,
    chunk: Option<u64>,
}

async fn firmware(
    state: State<AppState>,
    token: ApiPath<String>,
    query: ApiQuery<ChunkQuery>,
) -> ApiResult<Response> {
    download(state, token, query, ArtifactKind::Firmware).await
}

async fn software(
    state: State<AppState>,
    token: ApiPath<String>,
    query: ApiQuery<ChunkQuery>,
) -> ApiResult<Response> {
    download(state, token, query, ArtifactKind::Software).await
}

async fn download(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
    ApiQuery(query): ApiQuery<ChunkQuery>,
    kind: ArtifactKind,
) -> ApiResult<Response> {
    let device = device_for_token(&state, &token).await?;
    let release = match (&query.title, &query.version) {
        (Some(title), Some(version)) => Some((title.as_str(), version.as_str())),
        _ => None,
    };
    let bytes = chunk(
        &state,
        &device,
        kind,
        release,
        query.size.unwrap_or(0),
        query.chunk.unwrap_or(0),
    )
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}
