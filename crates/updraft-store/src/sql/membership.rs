//! What reconciliation and every action transition need of rollouts: a device's activated
//! memberships (its `Scope::Rollout` candidates) and the per-state counters of a rollout group,
//! moved in the transaction that moves the action.

use updraft_core::RolloutKey;

use super::*;

/// A device's activated membership in a rollout, as reconciliation sees it.
pub(super) struct Member {
    pub(super) rollout: i64,
    pub(super) group: i64,
    pub(super) assignment: LoadedAssignment,
}

/// The activated memberships of the devices `device_filter` selects (the reconciliation's
/// `AND device_pk …` clause; `$2` is `one_device`).
pub(super) async fn load_memberships(
    conn: &mut AnyConnection,
    tenant: TenantKey,
    device_filter: &str,
    one_device: Option<i64>,
) -> StoreResult<HashMap<i64, Vec<Member>>> {
    let sql = format!(
        "SELECT rd.device_pk, rd.rollout_id, rd.group_id, r.artifact_id, a.kind, a.title, a.version \
         FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id \
         JOIN artifacts a ON a.id = r.artifact_id \
         WHERE r.tenant_id = $1 AND rd.activated_at IS NOT NULL{}",
        device_filter.replace(" device_pk", " rd.device_pk")
    );
    let mut query = sqlx::query(&sql).bind(tenant.0);
    if let Some(device) = one_device {
        query = query.bind(device);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    let mut compat: HashMap<i64, Vec<ProfileKey>> = HashMap::new();
    for row in &rows {
        let artifact: i64 = row.try_get("artifact_id")?;
        if let std::collections::hash_map::Entry::Vacant(slot) = compat.entry(artifact) {
            let profiles = artifact_profiles(conn, artifact).await?;
            slot.insert(profiles.into_iter().map(|(key, _)| key).collect());
        }
    }
    let mut out: HashMap<i64, Vec<Member>> = HashMap::new();
    for row in &rows {
        let device: i64 = row.try_get("device_pk")?;
        let rollout: i64 = row.try_get("rollout_id")?;
        let artifact: i64 = row.try_get("artifact_id")?;
        out.entry(device).or_default().push(Member {
            rollout,
            group: row.try_get("group_id")?,
            assignment: LoadedAssignment {
                kind: kind_of(&row.try_get::<String, _>("kind")?)?,
                candidate: Candidate {
                    scope: Scope::Rollout(RolloutKey(rollout), DeviceKey(device)),
                    artifact: ArtifactKey(artifact),
                    compatible_profiles: compat.get(&artifact).cloned().unwrap_or_default(),
                },
                title: row.try_get("title")?,
                version: row.try_get("version")?,
            },
        });
    }
    Ok(out)
}

pub(super) fn counter(state: UpdateState) -> String {
    format!("n_{}", state.as_str().to_ascii_lowercase())
}

pub(super) fn move_clause(from: Option<UpdateState>, to: UpdateState) -> String {
    let to = counter(to);
    match from {
        Some(from) => {
            let from = counter(from);
            format!("{to} = {to} + 1, {from} = {from} - 1")
        }
        None => format!("{to} = {to} + 1"),
    }
}

/// Counts an action of group `group` moving from `from` (`None`: new) to `to` (nothing when it
/// stays where it was).
pub(super) async fn count_in_group(
    conn: &mut AnyConnection,
    group: i64,
    from: Option<UpdateState>,
    to: UpdateState,
) -> StoreResult<()> {
    if from == Some(to) {
        return Ok(());
    }
    sqlx::query(&format!(
        "UPDATE rollout_groups SET {} WHERE id = $1",
        move_clause(from, to)
    ))
    .bind(group)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Counts `action` moving from `from` to `to` in its rollout group, if it has one.
pub(super) async fn count_move(
    conn: &mut AnyConnection,
    action: ActionKey,
    from: Option<UpdateState>,
    to: UpdateState,
) -> StoreResult<()> {
    if from == Some(to) {
        return Ok(());
    }
    sqlx::query(&format!(
        "UPDATE rollout_groups SET {} WHERE id = (SELECT rollout_group_id FROM actions WHERE id = $1)",
        move_clause(from, to)
    ))
    .bind(action.0)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A device about to be deleted leaves its rollouts: its still-active action in a group counts as
/// CANCELED there, a member that never got one as skipped, so that its groups can still finish.
pub(super) async fn leave_rollouts(
    conn: &mut AnyConnection,
    tenant: TenantKey,
    device: i64,
) -> StoreResult<()> {
    // Looked up by (rollout, device) per rollout of the tenant: the members' key.
    let rollouts = "(SELECT id FROM rollouts WHERE tenant_id = $2)";
    let rows = sqlx::query(&format!(
        "SELECT rd.group_id, (SELECT a.state FROM actions a WHERE a.device_pk = rd.device_pk \
         AND a.rollout_group_id = rd.group_id ORDER BY a.id DESC LIMIT 1) AS state \
         FROM rollout_devices rd WHERE rd.rollout_id IN {rollouts} AND rd.device_pk = $1"
    ))
    .bind(device)
    .bind(tenant.0)
    .fetch_all(&mut *conn)
    .await?;
    for row in &rows {
        let group: i64 = row.try_get("group_id")?;
        match row.try_get::<Option<String>, _>("state")? {
            None => {
                sqlx::query("UPDATE rollout_groups SET n_skipped = n_skipped + 1 WHERE id = $1")
                    .bind(group)
                    .execute(&mut *conn)
                    .await?;
            }
            Some(state) => {
                let state = state_of(&state)?;
                if !state.is_final() {
                    count_in_group(conn, group, Some(state), UpdateState::Canceled).await?;
                }
            }
        }
    }
    sqlx::query(&format!(
        "DELETE FROM rollout_devices WHERE rollout_id IN {rollouts} AND device_pk = $1"
    ))
    .bind(device)
    .bind(tenant.0)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
