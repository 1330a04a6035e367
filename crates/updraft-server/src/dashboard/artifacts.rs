//! Artifacts: list with search, detail (every checksum, signature, profiles, where it is assigned
//! and how many devices run it), upload with a progress bar (the script streams the file to the
//! API's multipart upload), delete (the API refuses while assigned).

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use updraft_core::{ArtifactKey, Filter, Role};
use updraft_store::{ArtifactFilter, Page};

use super::{Section, Viewer, bytes, csrf_field, encode, error_page, page, when};
use crate::kernel::clock::now_millis;
use crate::kernel::error::ApiError;
use crate::kernel::extract::ApiPath;
use crate::kernel::sessions::CSRF_FIELD;
use crate::kernel::state::AppState;

/// Artifacts listed at most (newest first), and devices counted at most for "runs on".
const LISTED: u64 = 500;
const COUNTED: usize = 1_000_000;

#[derive(Deserialize, Default)]
pub(super) struct ListQuery {
    #[serde(default)]
    q: String,
}

pub(super) async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<ListQuery>,
) -> Response {
    let found = match state
        .store
        .list_artifacts(
            viewer.caller.tenant(),
            &ArtifactFilter::default(),
            Page {
                offset: 0,
                limit: LISTED,
            },
        )
        .await
    {
        Ok(found) => found,
        Err(err) => return error_page(&err.into()),
    };
    let needle = query.q.trim().to_lowercase();
    let shown: Vec<_> = found
        .items
        .iter()
        .filter(|a| {
            needle.is_empty()
                || a.title.to_lowercase().contains(&needle)
                || a.version.to_lowercase().contains(&needle)
                || a.description.to_lowercase().contains(&needle)
        })
        .collect();
    let body = html! {
        form.search method="get" action="/ui/artifacts" role="search" {
            label for="q" { "Search" }
            input #q type="search" name="q" value=(query.q) placeholder="title or version";
            button type="submit" { "Search" }
            @if viewer.may(Role::Maintainer) {
                " " a.button href="/ui/artifacts/new" { "Upload…" }
            }
        }
        table.artifacts {
            thead { tr { th { "Artifact" } th { "Type" } th { "Size" } th { "Profiles" } th { "Signed" } th { "Uploaded" } } }
            tbody {
                @for a in &shown {
                    tr {
                        td { a href={ "/ui/artifacts/" (a.key.0) } { (a.title) "@" (a.version) } }
                        td { (a.kind.as_str()) }
                        td { (bytes(a.size)) }
                        td { (profiles(a)) }
                        td { (if a.signature.as_deref().is_some_and(|s| !s.is_empty()) { "yes" } else { "no" }) }
                        td { (when(a.created_at)) }
                    }
                }
            }
        }
        @if shown.is_empty() { p.empty { "No artifact matches." } }
        @if found.total > LISTED { p.hint { "The newest " (LISTED) " of " (found.total) " are searched." } }
    };
    page(&viewer, Section::Artifacts, "Artifacts", body)
}

fn profiles(a: &updraft_store::Artifact) -> String {
    if a.profiles.is_empty() {
        "any".to_owned()
    } else {
        a.profiles
            .iter()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
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
    let not_found = || ApiError::not_found("artifact_not_found", format!("no artifact {id:?}"));
    let key = id
        .parse::<i64>()
        .map(ArtifactKey)
        .map_err(|_| not_found())?;
    let artifact = state
        .store
        .artifact(tenant, key)
        .await?
        .ok_or_else(not_found)?;
    let assignments: Vec<_> = state
        .store
        .list_assignments(tenant)
        .await?
        .into_iter()
        .filter(|a| a.artifact == key)
        .collect();
    let quote = |s: &str| format!("'{}'", s.replace('\'', ""));
    let running = match Filter::parse(&format!(
        "fw.title=={};fw.version=={}",
        quote(&artifact.title),
        quote(&artifact.version)
    )) {
        Ok(filter) => state
            .store
            .matching_devices(tenant, &filter, now_millis(), COUNTED)
            .await
            .map(|m| m.len().to_string())
            .unwrap_or_else(|_| format!("over {COUNTED}")),
        Err(_) => "—".to_owned(),
    };
    let c = &artifact.checksums;
    let sums = [
        ("SHA-256", &c.sha256),
        ("SHA-512", &c.sha512),
        ("SHA-384", &c.sha384),
        ("SHA-1", &c.sha1),
        ("MD5", &c.md5),
        ("CRC32", &c.crc32),
        ("Murmur3-32", &c.murmur3_32),
        ("Murmur3-128", &c.murmur3_128),
    ];
    let signed = artifact.signature.as_deref().is_some_and(|s| !s.is_empty());
    let body = html! {
        dl.facts {
            dt { "Type" } dd { (artifact.kind.as_str()) }
            dt { "Size" } dd data-size=(artifact.size) { (bytes(artifact.size)) " (" (artifact.size) " bytes)" }
            dt { "File name" } dd { (artifact.filename) }
            dt { "Profiles" } dd { (profiles(&artifact)) }
            dt { "Signature" } dd {
                @if signed {
                    "signed — checked at upload against the signing certificates of its profiles that have one"
                } @else { "unsigned" }
            }
            dt { "Description" } dd { (artifact.description) }
            dt { "Uploaded" } dd { (when(artifact.created_at)) " by " (artifact.uploaded_by) }
            dt { "Runs on" } dd data-running=(running) { (running) " devices" }
        }
        h2 { "Checksums" }
        table.checksums { tbody { @for (name, value) in sums { tr { th { (name) } td { code { (value) } } } } } }
        h2 { "Assigned" }
        @if assignments.is_empty() { p.empty { "Nowhere." } }
        ul {
            @for a in &assignments {
                li {
                    (crate::kernel::views::level(a.scope))
                    @if let Some(d) = &a.device_id { " " a href={ "/ui/devices/" (encode(d.as_str())) } { (d.as_str()) } }
                    @if let Some(p) = &a.project_name { " project " (p.as_str()) }
                    @if let Some(p) = &a.profile_name { " profile " (p.as_str()) }
                    " — by " (a.created_by) ", " (when(a.created_at))
                }
            }
        }
        p { a href={ "/api/v1/artifacts/" (artifact.key.0) "/download" } download { "Download" } }
        @if viewer.may(Role::Maintainer) {
            form.inline method="post" action={ "/ui/artifacts/" (artifact.key.0) "/delete" } {
                (csrf_field(viewer))
                button.danger type="submit" { "Delete" }
            }
        }
    };
    let title = format!("{}@{}", artifact.title, artifact.version);
    Ok(page(viewer, Section::Artifacts, &title, body))
}

/// The upload form; the script sends it with a progress bar.
pub(super) async fn upload_page(viewer: Viewer) -> Response {
    let body = html! {
        form #upload.stack method="post" action="/api/v1/artifacts" enctype="multipart/form-data" {
            label for="title" { "Title" }
            input #title name="title" required placeholder="sensor-fw";
            label for="version" { "Version" }
            input #version name="version" required placeholder="1.0.0";
            label for="type" { "Type" }
            select #type name="type" { option value="firmware" { "firmware" } option value="software" { "software" } }
            label for="profiles" { "Profiles (comma separated; empty: any)" }
            input #profiles name="profiles";
            label for="description" { "Description" }
            input #description name="description";
            label for="file" { "File" }
            input #file type="file" name="file" required;
            button type="submit" { "Upload" }
            progress #upload-progress max="100" value="0" hidden {}
            output #upload-status aria-live="polite" {}
        }
    };
    page(&viewer, Section::Artifacts, "Upload an artifact", body)
}

pub(super) async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let csrf = form.get(CSRF_FIELD).map(String::as_str);
    let viewer = match Viewer::changing(&state, &headers, csrf, Role::Maintainer).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    match crate::api::artifacts::delete(State(state), viewer.caller, ApiPath(id)).await {
        Ok(_) => Redirect::to("/ui/artifacts").into_response(),
        Err(err) => error_page(&err),
    }
}
