//! Auto-assignment rules: a filter and an artifact. A rule is a dynamic rollout with one
//! unbounded group and no thresholds: the devices that match when it is created (one pass over
//! the fleet, in pages), then each device when it is created or its profile, project or
//! attributes change — matched alone, never by a periodic scan.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use updraft_core::Role;
use updraft_core::rollout::Lifecycle;

use super::wire::*;
use super::{create_rollout, rollout_named};
use crate::kernel::auth::Caller;
use crate::kernel::error::{ApiError, ApiResult, ErrorBody};
use crate::kernel::extract::{ApiJson, ApiPath};
use crate::kernel::state::AppState;

#[utoipa::path(post, path = "/api/v1/rules", tag = "rollouts", request_body = RuleIn,
    responses((status = 201, body = RolloutOut), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_rule(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RuleIn>,
) -> ApiResult<(StatusCode, Json<RolloutOut>)> {
    caller.require(Role::Maintainer)?;
    let spec = RolloutIn {
        name: body.name,
        artifact: body.artifact,
        filter: Some(body.filter),
        devices: None,
        groups: None,
        success_threshold: Some(0),
        error_threshold: Some(100),
        soak: None,
        update_type: body.update_type,
        start: Some("auto".to_owned()),
        max_per_minute: body.max_per_minute,
        max_downloads: body.max_downloads,
        jitter: None,
        // A rule reaches the devices its artifact runs on, now and later.
        skip_incompatible: true,
        dynamic: true,
        window: None,
        window_duration: None,
        tz: None,
    };
    let created = create_rollout(&state, &caller, &spec, true).await?;
    let groups = state.store.rollout_groups(created.key).await?;
    Ok((
        StatusCode::CREATED,
        Json(RolloutOut::new(&created, &groups, None)),
    ))
}

#[utoipa::path(get, path = "/api/v1/rules", tag = "rollouts", responses((status = 200, body = Vec<RolloutOut>)))]
pub async fn list_rules(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<RolloutOut>>> {
    let rollouts = state.store.list_rollouts(caller.tenant()).await?;
    let mut out = Vec::new();
    for rule in rollouts.iter().filter(|r| r.rule) {
        let groups = state.store.rollout_groups(rule.key).await?;
        out.push(RolloutOut::new(rule, &groups, None));
    }
    Ok(Json(out))
}

/// Ends the rule: no device joins it any more; devices it reached keep their update.
#[utoipa::path(delete, path = "/api/v1/rules/{name}", tag = "rollouts",
    params(("name" = String, Path, description = "The rule's name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_rule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Maintainer)?;
    let rule = rollout_named(&state, caller.tenant(), &name).await?;
    if !rule.rule {
        return Err(ApiError::not_found(
            "rule_not_found",
            format!("no rule {name:?} (a rollout of that name is not a rule)"),
        ));
    }
    if rule.state.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "rollout_state",
            "the rule was deleted already",
        ));
    }
    if !state
        .store
        .set_rollout_state(rule.key, rule.state, Lifecycle::Finished, &caller.source())
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "rollout_state",
            "the rule changed meanwhile: look again",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
