//! Dynamic rollouts and auto-assignment rules: a device that is created, or whose profile,
//! project or attributes change, is matched against its tenant's dynamic rollouts — that device
//! only, never a scan of the fleet — and joins the open group of each it now matches.

use updraft_core::Filter;

use super::*;

/// Makes `device` a member of every dynamic rollout of `tenant` whose filter it matches now and
/// whose artifact runs on its profile, inside the caller's transaction.
pub(super) async fn join_dynamic(
    conn: &mut AnyConnection,
    tenant: TenantKey,
    device: DeviceKey,
) -> StoreResult<()> {
    let rollouts = sqlx::query(
        "SELECT id, target, artifact_id, jitter_ms FROM rollouts WHERE tenant_id = $1 \
         AND dynamic = 1 AND state NOT IN ('FINISHED', 'CANCELED') ORDER BY id",
    )
    .bind(tenant.0)
    .fetch_all(&mut *conn)
    .await?;
    if rollouts.is_empty() {
        return Ok(());
    }
    let row = sqlx::query(&format!("{DEVICE_SELECT} WHERE d.id = $1"))
        .bind(device.0)
        .fetch_one(&mut *conn)
        .await?;
    let found = device_from(&row)?;
    let facts = found.facts(now_millis());
    for rollout in &rollouts {
        let id: i64 = rollout.try_get("id")?;
        let target: String = rollout.try_get("target")?;
        // Only a filter is stored for a dynamic rollout; one that no longer parses (a newer
        // server's syntax) takes no one.
        let Ok(filter) = Filter::parse(&target) else {
            continue;
        };
        if !filter.matches(&facts) {
            continue;
        }
        let profiles = artifact_profiles(conn, rollout.try_get("artifact_id")?).await?;
        let runs_on = profiles.is_empty()
            || found
                .profile
                .as_ref()
                .is_some_and(|(key, _)| profiles.iter().any(|(p, _)| p == key));
        if !runs_on {
            continue;
        }
        let member = sqlx::query(
            "SELECT 1 AS one FROM rollout_devices WHERE rollout_id = $1 AND device_pk = $2",
        )
        .bind(id)
        .bind(device.0)
        .fetch_optional(&mut *conn)
        .await?;
        if member.is_some() {
            continue;
        }
        let group = open_group(conn, id).await?;
        sqlx::query("UPDATE rollout_groups SET size = size + 1 WHERE id = $1")
            .bind(group)
            .execute(&mut *conn)
            .await?;
        let delay = updraft_core::rollout::jitter(id, device.0, rollout.try_get("jitter_ms")?);
        sqlx::query(
            "INSERT INTO rollout_devices (rollout_id, device_pk, group_id, delay_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(device.0)
        .bind(group)
        .bind(delay)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The group a device joining `rollout` goes to: the last one if it is dynamic and not yet as
/// large as the last static group (unbounded when there is none: a rule), else a new one.
async fn open_group(conn: &mut AnyConnection, rollout: i64) -> StoreResult<i64> {
    let template: Option<i64> = sqlx::query(
        "SELECT size FROM rollout_groups WHERE rollout_id = $1 AND dynamic = 0 ORDER BY idx DESC LIMIT 1",
    )
    .bind(rollout)
    .fetch_optional(&mut *conn)
    .await?
    .map(|row| row.try_get("size"))
    .transpose()?;
    let last = sqlx::query(
        "SELECT id, idx, size, dynamic FROM rollout_groups WHERE rollout_id = $1 ORDER BY idx DESC LIMIT 1",
    )
    .bind(rollout)
    .fetch_optional(&mut *conn)
    .await?;
    let mut next_index = 0;
    if let Some(last) = last {
        let size: i64 = last.try_get("size")?;
        let fits = template.is_none_or(|t| size < t.max(1));
        if last.try_get::<i64, _>("dynamic")? != 0 && fits {
            return Ok(last.try_get("id")?);
        }
        next_index = last.try_get::<i64, _>("idx")? + 1;
    }
    let row = sqlx::query(
        "INSERT INTO rollout_groups (rollout_id, idx, size, dynamic) VALUES ($1, $2, 0, 1) RETURNING id",
    )
    .bind(rollout)
    .bind(next_index)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("id")?)
}
