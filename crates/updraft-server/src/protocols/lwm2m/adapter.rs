//! LwM2M as the kernel and the management API see it: a channel (a registered device is driven
//! through its firmware update as soon as it has one), the device fields it takes (endpoint
//! name, DTLS PSK identity and key), and the device management route
//! `POST /api/v1/devices/{id}/lwm2m`.

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use updraft_core::{DeviceId, DeviceKey, Role, TenantKey};
use updraft_store::{CredentialKind, Device, NewCredential};
use utoipa::{OpenApi, ToSchema};

use super::{Ctx, Lwm2m, Operation, SOURCE};
use crate::kernel::auth::Caller;
use crate::kernel::channel::{Adapter, DeviceChannel, Tell};
use crate::kernel::error::{ApiError, ApiResult, ErrorBody};
use crate::kernel::extract::{ApiJson, ApiPath};
use crate::kernel::state::AppState;

/// The LwM2M adapter.
pub struct Lwm2mAdapter {
    pub lwm2m: Arc<Lwm2m>,
}

impl Lwm2mAdapter {
    fn ctx(&self, state: &AppState) -> Ctx {
        Ctx {
            app: state.clone(),
            lwm2m: self.lwm2m.clone(),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    paths(lwm2m_operation),
    components(schemas(Lwm2mOperationIn, Lwm2mOperationOut))
)]
struct Lwm2mDoc;

/// A text field of the request, if present.
fn field<'a>(fields: &'a Map<String, Value>, name: &str) -> ApiResult<Option<&'a str>> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ApiError::bad_request(
            "invalid_request",
            format!("{name} is a string"),
        )),
    }
}

#[async_trait]
impl DeviceChannel for Lwm2mAdapter {
    fn source(&self) -> &'static str {
        SOURCE
    }

    fn reachable(&self) -> Vec<DeviceKey> {
        self.lwm2m.devices()
    }

    fn speaks(&self, _device: DeviceKey) -> bool {
        // A registration is LwM2M by itself.
        true
    }

    async fn tell(&self, state: &AppState, tell: &Tell<'_>) {
        self.lwm2m.kick(&self.ctx(state), tell.queued.device);
    }

    fn withdrawn(&self, state: &AppState, tenant: TenantKey) {
        self.lwm2m.kick_tenant(&self.ctx(state), tenant);
    }

    /// Writing the Package URI downloads; Execute installs.
    fn separates_install(&self) -> bool {
        true
    }

    fn window_opened(&self, state: &AppState, tenant: TenantKey) {
        self.lwm2m.kick_tenant(&self.ctx(state), tenant);
    }
}

#[async_trait]
impl Adapter for Lwm2mAdapter {
    fn name(&self) -> &'static str {
        SOURCE
    }

    /// Another replica stored PSKs: the table is read again (one reload at a time; news that
    /// arrives while one waits joins it).
    fn credentials_changed(&self, state: &AppState) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.lwm2m.psks_reload.swap(true, SeqCst) {
            return;
        }
        let ctx = self.ctx(state);
        tokio::spawn(async move {
            ctx.lwm2m.psks_reload.store(false, SeqCst);
            if let Err(err) = ctx.lwm2m.load_psks(&ctx).await {
                tracing::warn!(error = %err.message, "reloading LwM2M PSKs");
            }
        });
    }

    /// The management route, with the registrations it operates on.
    fn routes(&self) -> Router<AppState> {
        Router::new()
            .route("/api/v1/devices/{id}/lwm2m", post(lwm2m_operation))
            .layer(Extension(self.lwm2m.clone()))
    }

    fn openapi(&self) -> Option<utoipa::openapi::OpenApi> {
        Some(Lwm2mDoc::openapi())
    }

    fn channel(self: Arc<Self>) -> Option<Arc<dyn DeviceChannel>> {
        Some(self)
    }

    async fn device_credentials(
        &self,
        _state: &AppState,
        fields: &Map<String, Value>,
    ) -> ApiResult<Vec<NewCredential>> {
        let mut credentials = Vec::new();
        psk_of(&self.lwm2m, fields)?;
        if let Some(endpoint) = field(fields, "lwm2m_endpoint")? {
            if endpoint.is_empty() || endpoint.len() > 255 {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "lwm2m_endpoint is 1 to 255 bytes",
                ));
            }
            credentials.push(NewCredential {
                kind: CredentialKind::Lwm2mEndpoint,
                secret_hash: endpoint.to_owned(),
                gateway: false,
            });
        }
        Ok(credentials)
    }

    async fn device_created(
        &self,
        state: &AppState,
        device: &Device,
        fields: &Map<String, Value>,
    ) -> ApiResult<Map<String, Value>> {
        let mut answer = Map::new();
        let Some((identity, key)) = psk_of(&self.lwm2m, fields)? else {
            return Ok(answer);
        };
        let key = match key {
            Some(key) => key,
            None => {
                let mut bytes = [0u8; 16];
                getrandom::fill(&mut bytes).map_err(ApiError::internal)?;
                hex::encode(bytes)
            }
        };
        state
            .store
            .set_lwm2m_psk(device.key, Some((&identity, &key)))
            .await?;
        if let Ok(bytes) = hex::decode(&key) {
            self.lwm2m
                .set_psk(device.key, Some((identity.into_bytes(), bytes)));
        }
        // Replicas whose DTLS listener may see this device reload their tables.
        state.publish(crate::kernel::cluster::News::Credentials);
        answer.insert("lwm2m_psk_key".into(), Value::String(key));
        Ok(answer)
    }
}

/// The PSK identity and key (lower-case hex, if given) a request asks for, checked.
fn psk_of(
    lwm2m: &Lwm2m,
    fields: &Map<String, Value>,
) -> ApiResult<Option<(String, Option<String>)>> {
    let psk = match (
        field(fields, "lwm2m_psk_identity")?,
        field(fields, "lwm2m_psk_key")?,
    ) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "lwm2m_psk_key needs an lwm2m_psk_identity",
            ));
        }
        (Some(identity), key) => {
            if identity.is_empty() || identity.len() > 128 {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "lwm2m_psk_identity is 1 to 128 bytes",
                ));
            }
            let key = match key {
                Some(key) => {
                    let ok = hex::decode(key).is_ok_and(|k| (16..=64).contains(&k.len()));
                    if !ok {
                        return Err(ApiError::bad_request(
                            "invalid_request",
                            "lwm2m_psk_key is 16 to 64 bytes in hex",
                        ));
                    }
                    Some(key.to_ascii_lowercase())
                }
                None => None,
            };
            let taken = lwm2m
                .psks
                .read()
                .map(|t| t.contains_key(identity.as_bytes()))
                .unwrap_or(false);
            if taken {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "psk_identity_exists",
                    format!("PSK identity {identity:?} belongs to another device"),
                ));
            }
            Some((identity.to_owned(), key))
        }
    };
    Ok(psk)
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/lwm2m", tag = "devices", params(("id" = String, Path)),
    request_body = Lwm2mOperationIn,
    responses((status = 200, body = Lwm2mOperationOut), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn lwm2m_operation(
    State(state): State<AppState>,
    Extension(lwm2m): Extension<Arc<Lwm2m>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Lwm2mOperationIn>,
) -> ApiResult<Json<Lwm2mOperationOut>> {
    caller.require(Role::Maintainer)?;
    let device_id = DeviceId::parse(&id).map_err(|_| device_not_found(&id))?;
    let device = state
        .store
        .device(caller.tenant(), &device_id)
        .await?
        .ok_or_else(|| device_not_found(&id))?;
    let levels: Vec<&str> = body.path.split('/').skip(1).collect();
    let path_ok = body.path.starts_with('/')
        && (1..=4).contains(&levels.len())
        && levels
            .iter()
            .all(|l| !l.is_empty() && l.len() <= 5 && l.chars().all(|c| c.is_ascii_digit()));
    if !path_ok {
        return Err(ApiError::bad_request(
            "invalid_request",
            "path is /object[/instance[/resource[/resource instance]]] in numbers",
        ));
    }
    let operation = match body.operation.as_str() {
        "read" => Operation::Read,
        "write" => Operation::Write(body.value.unwrap_or_default()),
        "execute" => Operation::Execute(body.value.unwrap_or_default()),
        "discover" => Operation::Discover,
        "write-attributes" => Operation::WriteAttributes(body.attributes.unwrap_or_default()),
        "observe" => Operation::Observe,
        "cancel-observe" => Operation::CancelObserve,
        other => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!(
                    "operation {other:?} is not read, write, execute, discover, write-attributes, observe or cancel-observe"
                ),
            ));
        }
    };
    let answer = lwm2m
        .operate(device.key, &body.path, operation)
        .await
        .map_err(|e| ApiError::new(StatusCode::GATEWAY_TIMEOUT, "device_timeout", e))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "not_registered",
                format!("{id} is not registered with the LwM2M server"),
            )
        })?;
    let texty = matches!(
        answer.content_format,
        None | Some(0) | Some(40) | Some(50) | Some(110) | Some(1541) | Some(11543)
    );
    Ok(Json(Lwm2mOperationOut {
        code: answer.code,
        content_format: answer.content_format,
        text: texty
            .then(|| String::from_utf8(answer.payload.clone()).ok())
            .flatten(),
        payload: base64::engine::general_purpose::STANDARD.encode(&answer.payload),
    }))
}

fn device_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "device_not_found",
        format!("no device {id:?} in this tenant"),
    )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Lwm2mOperationIn {
    /// read, write, execute, discover, write-attributes, observe or cancel-observe.
    pub operation: String,
    /// An object, instance, resource or resource instance: `/3/0/3`.
    pub path: String,
    /// The value to write (as text), or Execute's arguments.
    pub value: Option<String>,
    /// Write-Attributes: `pmin=10&pmax=60`.
    pub attributes: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Lwm2mOperationOut {
    /// The client's CoAP answer code: `2.05`, `4.04`, …
    pub code: String,
    pub content_format: Option<u16>,
    /// The payload as text, when it is text (plain text, link format, JSON).
    pub text: Option<String>,
    /// The payload in standard base64.
    pub payload: String,
}
