//! Devices: search and filter (the filter language), keyset pages that cost the same on a fleet of
//! a million; one device with current and desired firmware, its active update, its whole history
//! as a timeline, and assign, cancel and retry.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use updraft_core::{DeviceId, DeviceKey, Filter, Role, UpdateState};
use updraft_store::{Action, ArtifactFilter, Device, DeviceSummary, Page};

use super::charts::progress;
use super::{Section, Viewer, bytes, csrf_field, encode, error_page, page, state_badge, when};
use crate::api::fleet::UnassignQuery;
use crate::api::wire::{AssignmentIn, ScopeIn};
use crate::kernel::clock::now_millis;
use crate::kernel::error::ApiError;
use crate::kernel::extract::{ApiJson, ApiQuery};
use crate::kernel::sessions::CSRF_FIELD;
use crate::kernel::state::AppState;

/// Devices on one page, and the most a page request reads looking for them.
const PAGE: usize = 50;
const SCAN_BUDGET: usize = 20_000;
const BATCH: u64 = 500;
/// Updates shown in a device's history.
const HISTORY: usize = 20;

#[derive(Deserialize, Default)]
pub(super) struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    filter: String,
    /// The latest update's state, or `none` (never had one).
    #[serde(default)]
    state: String,
    /// The protocol of the last report, or `unknown` (never reported).
    #[serde(default)]
    protocol: String,
    after: Option<String>,
}

/// The states a device list can be filtered by: every update state, and `none`.
const STATES: [&str; 10] = [
    "none",
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

fn summary_matches(summary: &DeviceSummary, state: &str, protocol: &str) -> bool {
    let state_ok = match (state, summary.latest) {
        ("", _) => true,
        ("none", latest) => latest.is_none(),
        (wanted, Some(latest)) => latest.as_str() == wanted,
        (_, None) => false,
    };
    let protocol_ok = match (protocol, summary.protocol.as_deref()) {
        ("", _) => true,
        ("unknown", found) => found.is_none(),
        (wanted, found) => found == Some(wanted),
    };
    state_ok && protocol_ok
}

/// The filter a search box and a filter field make together.
fn filter_of(query: &ListQuery) -> Result<Option<Filter>, ApiError> {
    let q = query.q.trim();
    let filter = query.filter.trim();
    let search = if q.is_empty() {
        None
    } else if q.contains('"') {
        return Err(ApiError::bad_request(
            "invalid_filter",
            "a search may not contain a double quote",
        ));
    } else if q.contains('*') {
        Some(format!("id==\"{q}\""))
    } else {
        Some(format!("id==\"{q}*\""))
    };
    let text = match (search, filter.is_empty()) {
        (None, true) => return Ok(None),
        (Some(search), true) => search,
        (None, false) => filter.to_owned(),
        (Some(search), false) => format!("({filter});{search}"),
    };
    Filter::parse(&text)
        .map(Some)
        .map_err(|e| ApiError::bad_request("invalid_filter", format!("filter {text:?}: {e}")))
}

pub(super) async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<ListQuery>,
) -> Response {
    let filter = match filter_of(&query) {
        Ok(filter) => filter,
        Err(err) => return error_page(&err),
    };
    let tenant = viewer.caller.tenant();
    let now = now_millis();
    let wanted_state = query.state.trim().to_owned();
    let wanted_protocol = query.protocol.trim().to_owned();
    let by_summary = !wanted_state.is_empty() || !wanted_protocol.is_empty();
    let mut after = match query.after.as_deref().map(DeviceId::parse) {
        Some(Ok(id)) => Some(id),
        Some(Err(_)) | None => None,
    };
    let mut shown: Vec<(Device, DeviceSummary)> = Vec::new();
    let mut scanned = 0;
    let mut more = false;
    'scan: while scanned < SCAN_BUDGET {
        let batch = match state
            .store
            .devices_after(tenant, after.as_ref(), BATCH)
            .await
        {
            Ok(batch) => batch,
            Err(err) => return error_page(&err.into()),
        };
        let full = batch.len() as u64 == BATCH;
        let candidates: Vec<&Device> = batch
            .iter()
            .filter(|d| filter.as_ref().is_none_or(|f| f.matches(&d.facts(now))))
            .collect();
        // The update state and protocol of the candidates (all of them when the page filters by
        // those, else only the ones shown, below).
        let mut summaries = if by_summary {
            let keys: Vec<DeviceKey> = candidates.iter().map(|d| d.key).collect();
            match state.store.device_summaries(tenant, &keys).await {
                Ok(found) => found,
                Err(err) => return error_page(&err.into()),
            }
        } else {
            HashMap::new()
        };
        let mut candidates = candidates.into_iter().peekable();
        for device in &batch {
            scanned += 1;
            after = Some(device.id.clone());
            if candidates.peek().is_none_or(|c| c.key != device.key) {
                continue;
            }
            candidates.next();
            let summary = summaries.remove(&device.key).unwrap_or_default();
            if by_summary && !summary_matches(&summary, &wanted_state, &wanted_protocol) {
                continue;
            }
            shown.push((device.clone(), summary));
            if shown.len() == PAGE {
                more = true;
                break 'scan;
            }
        }
        if !full {
            break;
        }
        more = true;
    }
    if !by_summary && !shown.is_empty() {
        let keys: Vec<DeviceKey> = shown.iter().map(|(d, _)| d.key).collect();
        match state.store.device_summaries(tenant, &keys).await {
            Ok(mut found) => {
                for (device, summary) in &mut shown {
                    *summary = found.remove(&device.key).unwrap_or_default();
                }
            }
            Err(err) => return error_page(&err.into()),
        }
    }
    let next = more.then(|| {
        format!(
            "/ui/devices?q={}&filter={}&state={}&protocol={}&after={}",
            encode(&query.q),
            encode(&query.filter),
            encode(&query.state),
            encode(&query.protocol),
            after
                .as_ref()
                .map(|a| encode(a.as_str()))
                .unwrap_or_default()
        )
    });
    let body = html! {
        form.search method="get" action="/ui/devices" role="search" {
            label for="q" { "Device id" }
            input #q type="search" name="q" value=(query.q) placeholder="sensor-1";
            label for="filter" { "Filter" }
            input #filter type="text" name="filter" value=(query.filter)
                placeholder="profile==esp32;tag==beta;fw.version<2.0;seen<1h";
            label for="state" { "Latest update" }
            select #state name="state" {
                option value="" { "any" }
                @for s in STATES {
                    option value=(s) selected[query.state == s] { (s) }
                }
            }
            label for="protocol" { "Protocol" }
            input #protocol type="text" name="protocol" value=(query.protocol) placeholder="ddi" size="10";
            button type="submit" { "Search" }
        }
        p.hint { "Filter fields: id, project, profile, tag, attr.NAME, fw.title, fw.version, sw.title, sw.version, seen — ; is and, , is or." }
        table.devices {
            thead { tr { th { "Device" } th { "Latest update" } th { "Protocol" } th { "Profile" } th { "Project" } th { "Firmware" } th { "Tags" } th { "Last seen" } } }
            tbody {
                @for (device, summary) in &shown {
                    tr {
                        td { a href={ "/ui/devices/" (encode(device.id.as_str())) } { (device.id.as_str()) } }
                        td { @match summary.latest { Some(s) => (state_badge(s.as_str())), None => "—" } }
                        td { (summary.protocol.as_deref().unwrap_or("—")) }
                        td { (device.profile.as_ref().map(|(_, n)| n.as_str()).unwrap_or("—")) }
                        td { (device.project.as_ref().map(|(_, n)| n.as_str()).unwrap_or("—")) }
                        td { (device.firmware.as_ref().map(|r| format!("{}@{}", r.title, r.version)).unwrap_or_else(|| "—".into())) }
                        td { (device.tags.join(", ")) }
                        td { (device.last_seen.map(when).unwrap_or_else(|| "never".into())) }
                    }
                }
            }
        }
        @if shown.is_empty() { p.empty { "No device matches." } }
        @if let Some(next) = next { p { a rel="next" href=(next) { "Next page →" } } }
    };
    page(&viewer, Section::Devices, "Devices", body)
}

/// One update's history as a timeline.
fn timeline(action: &Action, events: &[updraft_store::ActionEvent]) -> Markup {
    html! {
        section.update {
            h3 {
                (action.artifact_title) "@" (action.artifact_version) " "
                (state_badge(action.state.as_str()))
                @if let Some(failure) = &action.failure {
                    " " code { (failure.code.as_str()) } " " (failure.reason)
                }
            }
            ol.timeline {
                @for event in events {
                    li class=[event.refused.then_some("refused")] {
                        time datetime=(when(event.at)) { (when(event.at)) }
                        " " (state_badge(event.to.as_str()))
                        " " span.source { (event.source) }
                        @if !event.detail.is_empty() { " — " (event.detail) }
                        @if event.refused { " (refused)" }
                    }
                }
            }
        }
    }
}

pub(super) async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    match render(&state, &viewer, &id).await {
        Ok(response) => response,
        Err(err) => error_page(&err),
    }
}

async fn render(state: &AppState, viewer: &Viewer, id: &str) -> Result<Response, ApiError> {
    let tenant = viewer.caller.tenant();
    let not_found = || ApiError::not_found("device_not_found", format!("no device {id:?}"));
    let device_id = DeviceId::parse(id).map_err(|_| not_found())?;
    let status = state
        .store
        .device_status(tenant, &device_id)
        .await?
        .ok_or_else(not_found)?;
    let actions = state.store.actions_for_device(tenant, &device_id).await?;
    let mut history = Vec::new();
    for action in actions.iter().take(HISTORY) {
        history.push((
            action,
            state.store.action_history(tenant, action.key).await?,
        ));
    }
    let credentials = state
        .store
        .device_credentials(tenant, status.device.key)
        .await?;
    let artifacts = state
        .store
        .list_artifacts(
            tenant,
            &ArtifactFilter::default(),
            Page {
                offset: 0,
                limit: 200,
            },
        )
        .await?;
    let device = &status.device;
    let latest_failed = actions
        .first()
        .filter(|a| a.state == UpdateState::Failed && a.artifact.is_some());
    let may_change = viewer.may(Role::Maintainer);
    let release = |r: &Option<updraft_store::Running>| {
        r.as_ref()
            .map(|r| format!("{}@{}", r.title, r.version))
            .unwrap_or_else(|| "—".into())
    };
    let desired = |d: &Option<updraft_store::Desired>| {
        d.as_ref()
            .map(|d| {
                format!(
                    "{}@{} (from the {} assignment)",
                    d.title,
                    d.version,
                    crate::kernel::views::level(d.scope)
                )
            })
            .unwrap_or_else(|| "—".into())
    };
    let path = format!("/ui/devices/{}", encode(device.id.as_str()));
    let body = html! {
        div #device-live data-live {
            dl.facts {
                dt { "Profile" } dd { (device.profile.as_ref().map(|(_, n)| n.as_str()).unwrap_or("—")) }
                dt { "Project" } dd { (device.project.as_ref().map(|(_, n)| n.as_str()).unwrap_or("—")) }
                dt { "Tags" } dd { (device.tags.join(", ")) }
                dt { "Last seen" } dd { (device.last_seen.map(when).unwrap_or_else(|| "never".into())) }
            }
            table.versions {
                thead { tr { th {} th { "Running" } th { "Desired" } } }
                tbody {
                    tr { th { "Firmware" } td data-running="firmware" data-value=(release(&device.firmware)) { (release(&device.firmware)) } td { (desired(&status.desired_firmware)) } }
                    tr { th { "Software" } td data-running="software" data-value=(release(&device.software)) { (release(&device.software)) } td { (desired(&status.desired_software)) } }
                }
            }
            h2 { "Active update" }
            @match &status.active {
                Some(active) => {
                    p data-active-state=(active.state.as_str()) {
                        (active.artifact_title) "@" (active.artifact_version) " " (state_badge(active.state.as_str()))
                        @if let Some(p) = &active.progress {
                            " " (progress(p.done, p.total, &format!("{} of {}", bytes(p.done), bytes(p.total))))
                        }
                    }
                }
                None => { p data-active-state="none" { "None." } }
            }
            h2 { "History" }
            @if history.is_empty() { p.empty { "No update yet." } }
            @for (action, events) in &history { (timeline(action, events)) }
        }
        h2 { "Credentials" }
        @if credentials.is_empty() { p.empty { "None stored (the device may use a protocol's own keys)." } }
        ul.credentials {
            @for c in &credentials {
                li {
                    (c.kind)
                    @if c.gateway { " (gateway)" }
                    @if let Some(fingerprint) = &c.fingerprint { " SHA-256 " code { (fingerprint) } }
                    " — since " (when(c.created_at))
                }
            }
        }
        @if may_change {
            h2 { "Change" }
            form.inline method="post" action={ (path) "/assign" } {
                (csrf_field(viewer))
                label for="artifact" { "Assign " }
                select #artifact name="artifact" required {
                    @for a in &artifacts.items {
                        option value={ (a.title) "@" (a.version) } { (a.title) "@" (a.version) " (" (a.kind.as_str()) ")" }
                    }
                }
                button type="submit" { "Assign to this device" }
            }
            form.inline method="post" action={ (path) "/cancel" } {
                (csrf_field(viewer))
                button type="submit" { "Cancel this device's assignment" }
            }
            @if let Some(failed) = latest_failed {
                form.inline method="post" action={ (path) "/retry" } {
                    (csrf_field(viewer))
                    button type="submit" { "Retry " (failed.artifact_title) "@" (failed.artifact_version) }
                }
            }
        }
    };
    Ok(page(
        viewer,
        Section::Devices,
        &format!("Device {id}"),
        body,
    ))
}

/// assign, cancel (remove the device's own assignment) or retry (assign its failed update again).
pub(super) async fn command(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, command)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let csrf = form.get(CSRF_FIELD).map(String::as_str);
    let viewer = match Viewer::changing(&state, &headers, csrf, Role::Maintainer).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    let scope = ScopeIn {
        device: Some(id.clone()),
        project: None,
        profile: None,
        tenant_default: false,
    };
    let caller = viewer.caller.clone();
    let done = match command.as_str() {
        "assign" | "retry" => {
            let artifact = if command == "retry" {
                retried(&state, &viewer, &id).await
            } else {
                form.get("artifact").cloned().ok_or_else(|| {
                    ApiError::bad_request("invalid_request", "say which artifact to assign")
                })
            };
            match artifact {
                Ok(artifact) => {
                    let body = AssignmentIn {
                        scope,
                        artifact: Some(artifact),
                        artifact_id: None,
                    };
                    crate::api::fleet::assign(State(state), caller, ApiJson(body))
                        .await
                        .map(|_| ())
                }
                Err(err) => Err(err),
            }
        }
        "cancel" => {
            let query = UnassignQuery {
                device: Some(id.clone()),
                project: None,
                profile: None,
                tenant_default: false,
                kind: None,
            };
            crate::api::fleet::unassign(State(state), caller, ApiQuery(query))
                .await
                .map(|_| ())
        }
        _ => Err(ApiError::not_found("not_found", "no such command")),
    };
    match done {
        Ok(()) => Redirect::to(&format!("/ui/devices/{}", encode(&id))).into_response(),
        Err(err) => error_page(&err),
    }
}

/// The release of the device's latest update, when it failed.
async fn retried(state: &AppState, viewer: &Viewer, id: &str) -> Result<String, ApiError> {
    let device_id = DeviceId::parse(id)
        .map_err(|_| ApiError::not_found("device_not_found", format!("no device {id:?}")))?;
    let actions = state
        .store
        .actions_for_device(viewer.caller.tenant(), &device_id)
        .await?;
    actions
        .first()
        .filter(|a| a.state == UpdateState::Failed)
        .map(|a| format!("{}@{}", a.artifact_title, a.artifact_version))
        .ok_or_else(|| {
            ApiError::bad_request(
                "nothing_to_retry",
                "the device's latest update did not fail",
            )
        })
}
