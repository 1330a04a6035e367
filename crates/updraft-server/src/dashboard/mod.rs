//! The web dashboard, served by the server itself: `/` (the fleet) and pages under `/ui/`.
//! Server-rendered HTML (maud), one stylesheet and one small script embedded in the binary (no
//! build step, no CDN). Sign-in exchanges an API key for a session cookie
//! ([`crate::kernel::sessions`]); every page reads as that key's tenant, every change is a form
//! carrying the session's CSRF token and goes through the management API's own handlers, so the
//! dashboard can do nothing the API would refuse. Live regions (`data-live`) are refreshed by the
//! script from the same URL every two seconds.

mod artifacts;
mod auth;
mod charts;
mod devices;
mod fleet;
mod rollouts;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use updraft_core::Role;

use crate::kernel::auth::{Caller, session_caller};
use crate::kernel::error::ApiError;
use crate::kernel::sessions::{self, Session};
use crate::kernel::state::AppState;

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

/// The dashboard's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(fleet::show))
        .route("/ui/login", get(auth::form).post(auth::sign_in))
        .route("/ui/logout", post(auth::sign_out))
        .route("/ui/tenant", post(auth::switch_tenant))
        .route("/ui/devices", get(devices::list))
        .route("/ui/devices/{id}", get(devices::show))
        .route("/ui/devices/{id}/{command}", post(devices::command))
        .route("/ui/artifacts", get(artifacts::list))
        .route("/ui/artifacts/new", get(artifacts::upload_page))
        .route("/ui/artifacts/{id}", get(artifacts::show))
        .route("/ui/artifacts/{id}/delete", post(artifacts::delete))
        .route("/ui/assignments", get(rollouts::assignments))
        .route("/ui/rollouts", get(rollouts::list))
        .route("/ui/rollouts/{name}", get(rollouts::show))
        .route("/ui/rollouts/{name}/{command}", post(rollouts::command))
        .route("/ui/dashboard.css", get(css))
        .route("/ui/dashboard.js", get(js))
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
}

async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
}

/// A signed-in browser: the caller its key makes it, and its session.
pub(crate) struct Viewer {
    pub caller: Caller,
    pub session: Session,
}

impl Viewer {
    /// The signed-in viewer, or the answer that sends the browser to sign in.
    pub async fn of(state: &AppState, headers: &HeaderMap) -> Result<Viewer, Response> {
        match session_caller(state, headers).await {
            Ok(Some((caller, session))) => Ok(Viewer { caller, session }),
            Ok(None) => Err(Redirect::to("/ui/login").into_response()),
            Err(err) => Err(error_page(&err)),
        }
    }

    /// The viewer, for a form that changes something: its CSRF token checked, and its role.
    pub async fn changing(
        state: &AppState,
        headers: &HeaderMap,
        csrf: Option<&str>,
        role: Role,
    ) -> Result<Viewer, Response> {
        let viewer = Viewer::of(state, headers).await?;
        if !sessions::csrf_ok(&viewer.session, csrf) {
            return Err(error_page(&crate::kernel::auth::csrf_refused()));
        }
        viewer.caller.require(role).map_err(|e| error_page(&e))?;
        Ok(viewer)
    }

    pub fn may(&self, role: Role) -> bool {
        self.caller.key.role.allows(role)
    }
}

/// A page handler's viewer; without a session the browser is sent to sign in.
impl axum::extract::FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Viewer::of(state, &parts.headers).await
    }
}

/// Which top-level page is shown (the navigation marks it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Fleet,
    Devices,
    Artifacts,
    Assignments,
    Rollouts,
}

/// A whole page: navigation, the tenant, sign-out, and `body`.
pub(crate) fn page(viewer: &Viewer, section: Section, title: &str, body: Markup) -> Response {
    let key = &viewer.caller.key;
    let nav = [
        (Section::Fleet, "/", "Fleet"),
        (Section::Devices, "/ui/devices", "Devices"),
        (Section::Artifacts, "/ui/artifacts", "Artifacts"),
        (Section::Assignments, "/ui/assignments", "Assignments"),
        (Section::Rollouts, "/ui/rollouts", "Rollouts"),
    ];
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="csrf" content=(viewer.session.csrf);
                title { (title) " · Updraft" }
                link rel="stylesheet" href="/ui/dashboard.css";
                script src="/ui/dashboard.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "Updraft" }
                    nav aria-label="Main" {
                        @for (s, href, label) in nav {
                            a href=(href) aria-current=[(s == section).then_some("page")] { (label) }
                        }
                    }
                    div.who {
                        span.tenant title="tenant" { (key.tenant_name.as_str()) }
                        " · "
                        span { (key.name) " (" (key.role.as_str()) ")" }
                        form method="post" action="/ui/logout" {
                            input type="hidden" name=(sessions::CSRF_FIELD) value=(viewer.session.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    html_response(StatusCode::OK, markup)
}

pub(crate) fn html_response(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// An error as a page: the API's status, stable code and message.
pub(crate) fn error_page(err: &ApiError) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Error · Updraft" }
                link rel="stylesheet" href="/ui/dashboard.css";
            }
            body {
                main {
                    h1 { "Not done" }
                    p.error role="alert" { code { (err.code) } ": " (err.message) }
                    p { a href="/" { "Back to the fleet" } }
                }
            }
        }
    };
    html_response(err.status, markup)
}

/// The hidden CSRF field of a form.
pub(crate) fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name=(sessions::CSRF_FIELD) value=(viewer.session.csrf); }
}

/// A time in milliseconds as RFC 3339 (UTC).
pub(crate) fn when(millis: i64) -> String {
    jiff::Timestamp::from_millisecond(millis)
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_else(|_| millis.to_string())
}

/// An update state as a badge.
pub(crate) fn state_badge(state: &str) -> Markup {
    html! { span class={ "badge s-" (state.to_ascii_lowercase()) } { (state) } }
}

/// Bytes, readably.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Percent-encodes one path segment or query value.
pub(crate) fn encode(text: &str) -> String {
    crate::kernel::views::path_segment(text)
}
