//! The one error every HTTP handler returns, and the table that maps each failure to an HTTP
//! status and a stable machine code. The body is always `{"code": "...", "message": "..."}`.
//!
//! | status | codes |
//! |---|---|
//! | 400 | `invalid_request`, `invalid_json`, `invalid_filename`, `upload_incomplete`, `unknown_checksum_algorithm`, `invalid_status` (Drogue DFU) |
//! | 401 | `unauthorized` |
//! | 403 | `forbidden` |
//! | 404 | `not_found`, `tenant_not_found`, `project_not_found`, `profile_not_found`, `device_not_found`, `artifact_not_found`, `action_not_found`, `api_key_not_found`, `assignment_not_found` |
//! | 409 | `tenant_exists`, `project_exists`, `profile_exists`, `device_exists`, `credential_exists`, `artifact_exists`, `api_key_exists`, `artifact_in_use`, `version_too_long` (marking a profile Drogue DFU) |
//! | 412 | `precondition_failed` (a download's `If-Match`) |
//! | 413 | `payload_too_large` |
//! | 415 | `unsupported_media_type` |
//! | 422 | `checksum_mismatch`, `incompatible_artifact`, `unknown_profile`, `unknown_project`, `unknown_device`, `version_too_long`, `invalid_signature`, `unsupported_signature_algorithm`, `invalid_certificate` |
//! | 500 | `internal` (logged once, details not shown) |
//! | 409 | `not_registered` (an LwM2M operation on a device that is not registered) |
//! | 503 | `not_ready` |
//! | 504 | `device_timeout` (an LwM2M client did not answer) |

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use updraft_store::StoreError;

/// An API failure: status, stable code, message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The wire form of every error.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `checksum_mismatch`.
    pub code: String,
    /// What went wrong and what to do, for people.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown API key: send Authorization: Bearer <key>",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn internal(what: impl std::fmt::Display) -> Self {
        tracing::error!(error = %what, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error: see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { what } => {
                let code = match what {
                    "tenant" => "tenant_not_found",
                    "project" => "project_not_found",
                    "profile" => "profile_not_found",
                    "device" => "device_not_found",
                    "artifact" => "artifact_not_found",
                    "action" => "action_not_found",
                    _ => "not_found",
                };
                ApiError::not_found(code, format!("{what} not found"))
            }
            StoreError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            StoreError::Invalid {
                code: "artifact_in_use",
                message,
            } => ApiError::new(StatusCode::CONFLICT, "artifact_in_use", message),
            StoreError::Invalid { code, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            return ApiError::new(
                status,
                "unsupported_media_type",
                "send Content-Type: application/json",
            );
        }
        ApiError::bad_request("invalid_json", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request("invalid_request", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request("invalid_request", rejection.body_text())
    }
}

impl From<updraft_core::NameError> for ApiError {
    fn from(err: updraft_core::NameError) -> Self {
        ApiError::bad_request("invalid_request", err.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
