//! Sign-in with an API key, sign-out, and a server admin's choice of tenant.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use updraft_core::Role;

use super::{Viewer, error_page, html_response};
use crate::kernel::error::ApiError;
use crate::kernel::secret;
use crate::kernel::sessions::{self, COOKIE, SESSION_LIFETIME_MS};
use crate::kernel::state::AppState;

fn login_page(status: StatusCode, problem: Option<&str>) -> Response {
    let markup: Markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · Updraft" }
                link rel="stylesheet" href="/ui/dashboard.css";
            }
            body.login {
                main {
                    h1 { "Updraft" }
                    form method="post" action="/ui/login" {
                        @if let Some(problem) = problem {
                            p.error role="alert" { (problem) }
                        }
                        label for="key" { "API key" }
                        input #key type="password" name="key" autocomplete="current-password" required autofocus;
                        button type="submit" { "Sign in" }
                    }
                    p.hint { "The server admin key is in the data directory's " code { "admin.token" } "." }
                }
            }
        }
    };
    html_response(status, markup)
}

pub(super) async fn form() -> Response {
    login_page(StatusCode::OK, None)
}

#[derive(Deserialize)]
pub(super) struct SignIn {
    key: String,
}

/// A key that names a stored API key opens a session; the cookie is HttpOnly and SameSite=Strict.
pub(super) async fn sign_in(State(state): State<AppState>, Form(form): Form<SignIn>) -> Response {
    let hash = secret::hash(form.key.trim());
    match state.store.api_key_by_hash(&hash).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return login_page(
                StatusCode::UNAUTHORIZED,
                Some("unauthorized: that is not an API key of this server"),
            );
        }
        Err(err) => return error_page(&ApiError::from(err)),
    }
    let Ok((id, _)) = state.sessions.open(hash) else {
        return error_page(&ApiError::internal("no randomness for a session"));
    };
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_LIFETIME_MS / 1000
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
pub(super) struct Csrf {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
}

/// Ends the session: its cookie opens nothing afterwards, even if kept.
pub(super) async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<Csrf>,
) -> Response {
    let viewer = match Viewer::changing(&state, &headers, form.csrf.as_deref(), Role::Viewer).await
    {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    drop(viewer);
    if let Some(id) = sessions::cookie_of(&headers) {
        state.sessions.close(&id);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("updraft_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

#[derive(Deserialize)]
pub(super) struct SwitchTenant {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
    tenant: String,
}

/// The server admin looks at another tenant.
pub(super) async fn switch_tenant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SwitchTenant>,
) -> Response {
    let viewer = match Viewer::changing(&state, &headers, form.csrf.as_deref(), Role::Viewer).await
    {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    if let Err(err) = viewer.caller.require_server_admin() {
        return error_page(&err);
    }
    let tenant = match state.store.tenant_by_name(&form.tenant).await {
        Ok(Some(tenant)) => tenant,
        Ok(None) => {
            return error_page(&ApiError::not_found(
                "tenant_not_found",
                format!("no tenant {:?}", form.tenant),
            ));
        }
        Err(err) => return error_page(&ApiError::from(err)),
    };
    if let Some(id) = sessions::cookie_of(&headers) {
        state.sessions.switch_tenant(&id, tenant.key);
    }
    Redirect::to("/").into_response()
}
