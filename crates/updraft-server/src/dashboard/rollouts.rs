//! Rollouts (progress per group as bars, thresholds, failures, start/pause/resume/cancel) and
//! assignments at every level. Both read what the management API answers, so the page shows what
//! `updraft rollout show` shows.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::Value;
use updraft_core::Role;

use super::charts::progress;
use super::{Section, Viewer, csrf_field, encode, error_page, page, state_badge, when};
use crate::kernel::error::ApiError;
use crate::kernel::extract::ApiPath;
use crate::kernel::sessions::CSRF_FIELD;
use crate::kernel::state::AppState;

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "—".to_owned(),
        other => other.to_string(),
    }
}

/// Devices of a group (or rollout) that ended, and how many UPDATED.
fn ended(states: &Value) -> (u64, u64) {
    let n = |s: &str| states[s].as_u64().unwrap_or(0);
    let updated = n("UPDATED");
    (updated + n("FAILED") + n("CANCELED"), updated)
}

fn summary_row(rollout: &Value) -> Markup {
    let size = rollout["devices"].as_u64().unwrap_or(0);
    let (done, updated) = ended(&rollout["states"]);
    let name = text(&rollout["name"]);
    html! {
        tr {
            td { a href={ "/ui/rollouts/" (encode(&name)) } { (name) } }
            td { (text(&rollout["artifact"])) }
            td { (state_badge(&text(&rollout["state"]))) }
            td { (progress(done, size, &format!("{done} of {size} ended, {updated} updated"))) }
        }
    }
}

pub(super) async fn list(State(state): State<AppState>, viewer: Viewer) -> Response {
    let rollouts = match crate::api::rollouts::list(State(state), viewer.caller.clone()).await {
        Ok(list) => serde_json::to_value(list.0).unwrap_or_default(),
        Err(err) => return error_page(&err),
    };
    let body = html! {
        div #rollouts-live data-live {
            table.rollouts {
                thead { tr { th { "Rollout" } th { "Artifact" } th { "State" } th { "Progress" } } }
                tbody { @for r in rollouts.as_array().into_iter().flatten() { (summary_row(r)) } }
            }
            @if rollouts.as_array().is_none_or(Vec::is_empty) {
                p.empty { "No rollout yet: " code { "updraft rollout create" } " makes one." }
            }
        }
    };
    page(&viewer, Section::Rollouts, "Rollouts", body)
}

pub(super) async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> Response {
    let shown =
        crate::api::rollouts::show(State(state), viewer.caller.clone(), ApiPath(name.clone()))
            .await;
    let rollout = match shown {
        Ok(json) => serde_json::to_value(json.0).unwrap_or_default(),
        Err(err) => return error_page(&err),
    };
    let rollout_state = text(&rollout["state"]);
    let commands: &[&str] = match rollout_state.as_str() {
        "READY" => &["start", "cancel"],
        "RUNNING" => &["pause", "cancel"],
        "PAUSED" | "HALTED" => &["resume", "cancel"],
        _ => &[],
    };
    let path = format!("/ui/rollouts/{}", encode(&name));
    let body = html! {
        div #rollout-live data-live {
            p data-rollout-state=(rollout_state) {
                (state_badge(&rollout_state)) " " (text(&rollout["artifact"]))
                " to " (text(&rollout["devices"])) " devices matching " code { (text(&rollout["target"])) }
            }
            dl.facts {
                dt { "Groups" } dd { (text(&rollout["groups_spec"])) }
                dt { "Thresholds" } dd {
                    "a group passes at " (text(&rollout["success_threshold"])) "% updated; the rollout halts at "
                    (text(&rollout["error_threshold"])) "% failed"
                }
                dt { "Type" } dd { (text(&rollout["type"])) }
                @if !rollout["window"].is_null() {
                    dt { "Window" } dd { (text(&rollout["window"])) " (" (text(&rollout["tz"])) ")" }
                }
                @if !rollout["max_downloads"].is_null() {
                    dt { "At most" } dd { (text(&rollout["max_downloads"])) " downloads at once" }
                }
            }
            h2 { "Groups" }
            table.groups {
                thead { tr { th { "Group" } th { "Devices" } th { "Progress" } th { "States" } th { "Started" } } }
                tbody {
                    @for g in rollout["groups"].as_array().into_iter().flatten() {
                        @let size = g["size"].as_u64().unwrap_or(0);
                        @let (done, updated) = ended(&g["states"]);
                        tr data-group=(text(&g["group"])) {
                            td { (text(&g["group"])) }
                            td { (size) }
                            td { (progress(done, size, &format!("{updated} updated of {size}"))) }
                            td {
                                @for (s, n) in g["states"].as_object().into_iter().flatten() {
                                    (state_badge(s)) " " (text(n)) " "
                                }
                            }
                            td { (g["started_at"].as_i64().map(when).unwrap_or_else(|| "—".into())) }
                        }
                    }
                }
            }
            h2 { "Failures" }
            @let failures = rollout["failures"].as_array().cloned().unwrap_or_default();
            @if failures.is_empty() { p.empty { "None." } }
            ul {
                @for f in &failures {
                    li {
                        a href={ "/ui/devices/" (encode(&text(&f["device"]))) } { (text(&f["device"])) }
                        " (group " (text(&f["group"])) ") " code { (text(&f["code"])) } " " (text(&f["reason"]))
                    }
                }
            }
        }
        @if viewer.may(Role::Maintainer) && !commands.is_empty() {
            div.commands {
                @for command in commands {
                    form.inline method="post" action={ (path) "/" (command) } {
                        (csrf_field(&viewer))
                        button type="submit" data-command=(command) { (command) }
                    }
                }
            }
        }
    };
    page(&viewer, Section::Rollouts, &format!("Rollout {name}"), body)
}

pub(super) async fn command(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, command)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let csrf = form.get(CSRF_FIELD).map(String::as_str);
    let viewer = match Viewer::changing(&state, &headers, csrf, Role::Maintainer).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    let path = ApiPath((name.clone(), command));
    match crate::api::rollouts::command(State(state), viewer.caller, path).await {
        Ok(_) => Redirect::to(&format!("/ui/rollouts/{}", encode(&name))).into_response(),
        Err(err) => error_page(&err),
    }
}

/// Every assignment, most specific level first.
pub(super) async fn assignments(State(state): State<AppState>, viewer: Viewer) -> Response {
    let mut all = match state.store.list_assignments(viewer.caller.tenant()).await {
        Ok(all) => all,
        Err(err) => return error_page(&ApiError::from(err)),
    };
    all.sort_by_key(|a| a.scope.rank());
    let body = html! {
        p.hint { "The most specific assignment wins: device, then rollout, then project and profile, project, profile, and the tenant's default." }
        table.assignments {
            thead { tr { th { "Level" } th { "Where" } th { "Type" } th { "Artifact" } th { "By" } th { "Since" } } }
            tbody {
                @for a in &all {
                    tr {
                        td { (crate::kernel::views::level(a.scope)) }
                        td {
                            @if let Some(d) = &a.device_id { a href={ "/ui/devices/" (encode(d.as_str())) } { (d.as_str()) } }
                            @if let Some(p) = &a.project_name { "project " (p.as_str()) " " }
                            @if let Some(p) = &a.profile_name { "profile " (p.as_str()) }
                            @if a.device_id.is_none() && a.project_name.is_none() && a.profile_name.is_none() { "every device" }
                        }
                        td { (a.kind.as_str()) }
                        td { a href={ "/ui/artifacts/" (a.artifact.0) } { (a.artifact_title) "@" (a.artifact_version) } }
                        td { (a.created_by) }
                        td { (when(a.created_at)) }
                    }
                }
            }
        }
        @if all.is_empty() { p.empty { "Nothing is assigned." } }
    };
    page(&viewer, Section::Assignments, "Assignments", body)
}
