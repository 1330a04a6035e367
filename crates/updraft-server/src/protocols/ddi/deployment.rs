//! What a device is told to install: `deploymentBase` (chunks, artifacts, links, download and
//! update types), `installedBase`, and the artifact downloads behind the links.

use super::*;
use updraft_core::rollout::UpdateType;

#[derive(Deserialize, Default)]
pub(super) struct DeploymentQuery {
    #[serde(rename = "actionHistory")]
    action_history: Option<i64>,
}

pub(super) async fn deployment_base(
    State(state): State<AppState>,
    ApiPath((tenant, controller, action)): ApiPath<(String, String, i64)>,
    ApiQuery(query): ApiQuery<DeploymentQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let device = authenticate(&state, &headers, &tenant, &controller).await?;
    let action = own_action(&state, &device, action).await?;
    let body = deployment_json(
        &state,
        &headers,
        &tenant,
        &controller,
        &action,
        query.action_history,
    )
    .await?;
    Ok(hal(body))
}

pub(super) async fn installed_base(
    State(state): State<AppState>,
    ApiPath((tenant, controller, action)): ApiPath<(String, String, i64)>,
    ApiQuery(query): ApiQuery<DeploymentQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let device = authenticate(&state, &headers, &tenant, &controller).await?;
    let action = own_action(&state, &device, action).await?;
    if action.state != UpdateState::Updated {
        return Err(action_not_found(action.key.0));
    }
    let body = deployment_json(
        &state,
        &headers,
        &tenant,
        &controller,
        &action,
        query.action_history,
    )
    .await?;
    Ok(hal(body))
}

pub(super) async fn deployment_json(
    state: &AppState,
    headers: &HeaderMap,
    tenant: &str,
    controller: &str,
    action: &Action,
    history: Option<i64>,
) -> ApiResult<Value> {
    let artifact = match action.artifact {
        Some(key) => {
            state
                .store
                .artifact(action_tenant(state, tenant).await?, key)
                .await?
        }
        None => None,
    };
    let artifact = artifact.ok_or_else(|| {
        ApiError::not_found(
            "artifact_not_found",
            "the artifact of this action was deleted",
        )
    })?;
    let base = format!(
        "{}/{tenant}/controller/v1/{controller}",
        base_url(state, headers)
    );
    // `download` uses the scheme the device reached us with: clients such as the `hawkbit` crate
    // prefer it over `download-http`, so an https link on a plain-HTTP server breaks them.
    let file = format!(
        "{base}/softwaremodules/{}/artifacts/{}",
        artifact.key,
        crate::kernel::views::path_segment(&artifact.filename)
    );
    let plain = file.replacen("https://", "http://", 1);
    let part = match artifact.kind {
        updraft_core::ArtifactKind::Firmware => "os",
        updraft_core::ArtifactKind::Software => "bApp",
    };
    // A rollout's update type and maintenance window: DDI downloads at once and installs only
    // when told `update: forced|attempt` (hawkBit's `skip` outside the window, or download-only).
    let terms = crate::kernel::terms::terms_of(state, action.key).await?;
    let soft = terms.update_type == UpdateType::Soft;
    let download = if soft { "attempt" } else { "forced" };
    let update = match (terms.may_install(), soft) {
        (false, _) => "skip",
        (true, true) => "attempt",
        (true, false) => "forced",
    };
    let mut body = json!({
        "id": action.key.to_string(),
        "deployment": {
            "download": download,
            "update": update,
            "chunks": [{
                "part": part,
                "version": artifact.version,
                "name": artifact.title,
                "artifacts": [{
                    "filename": artifact.filename,
                    "hashes": {
                        "sha1": artifact.checksums.sha1,
                        "md5": artifact.checksums.md5,
                        "sha256": artifact.checksums.sha256,
                    },
                    "size": artifact.size,
                    "_links": {
                        "download": {"href": file},
                        "download-http": {"href": plain},
                        "md5sum": {"href": format!("{file}.MD5SUM")},
                        "md5sum-http": {"href": format!("{plain}.MD5SUM")},
                    },
                }],
            }],
        },
    });
    if let Some(open) = terms.window_open {
        body["deployment"]["maintenanceWindow"] =
            json!(if open { "available" } else { "unavailable" });
    }
    if let Some(count) = history {
        let events = state
            .store
            .action_history(artifact.tenant, action.key)
            .await?;
        let take = if count < 0 {
            events.len()
        } else {
            usize::try_from(count).unwrap_or(0).min(events.len())
        };
        let messages: Vec<String> = events[events.len() - take..]
            .iter()
            .map(|e| format!("{} {}: {}", e.at, e.to, e.detail))
            .collect();
        let status = if action.state.is_final() {
            "FINISHED"
        } else {
            "RUNNING"
        };
        body["actionHistory"] = json!({"status": status, "messages": messages});
    }
    Ok(body)
}

pub(super) async fn action_tenant(
    state: &AppState,
    tenant: &str,
) -> ApiResult<updraft_core::TenantKey> {
    let found = state.store.tenant_by_name(tenant).await?;
    found.map(|t| t.key).ok_or_else(unauthorized)
}

pub(super) async fn download(
    State(state): State<AppState>,
    ApiPath((tenant, controller, module, filename)): ApiPath<(String, String, i64, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let device = authenticate(&state, &headers, &tenant, &controller).await?;
    let not_found = || {
        ApiError::not_found(
            "artifact_not_found",
            format!("no artifact {filename:?} in module {module}"),
        )
    };
    // Only artifacts this device was sent: one device's token opens no other firmware.
    let actions = state
        .store
        .actions_for_device(device.tenant, &device.id)
        .await?;
    if !actions
        .iter()
        .any(|a| a.artifact == Some(ArtifactKey(module)))
    {
        return Err(not_found());
    }
    let artifact: Artifact = state
        .store
        .artifact(device.tenant, ArtifactKey(module))
        .await?
        .ok_or_else(not_found)?;
    if filename == format!("{}.MD5SUM", artifact.filename) {
        let body = format!("{}  {}\n", artifact.checksums.md5, artifact.filename);
        let mut response = body.into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return Ok(response);
    }
    if filename != artifact.filename {
        return Err(not_found());
    }
    let blob = BlobResponse {
        sha256: &artifact.checksums.sha256,
        size: artifact.size,
        filename: &artifact.filename,
        content_type: "application/octet-stream",
        modified_at: artifact.created_at,
    };
    // hawkBit's clients follow redirects: with object storage the bytes may bypass the server.
    serve_or_redirect(&state, blob, &headers).await
}
