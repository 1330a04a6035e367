//! Rollouts: creating one with its groups and members, reading progress, and the scheduler's
//! steps (start a group, activate members, cancel). A member counts in resolution
//! (`Scope::Rollout`) from its activation on; reconciliation does the rest (`membership.rs`).

use crate::GroupMark;
use crate::rollout_rows::*;
use updraft_core::RolloutKey;
use updraft_core::rollout::{Lifecycle, Thresholds, UpdateType};

use super::membership::{count_in_group, counter};
use super::*;

const ROLLOUT_SELECT: &str = "SELECT r.id, r.tenant_id, r.name, r.artifact_id, a.title, a.version, a.kind, \
    r.target, r.groups_spec, r.success_pct, r.error_pct, r.soak_ms, r.update_type, r.state, r.start_at, \
    r.max_per_minute, r.max_downloads, r.jitter_ms, r.window_cron, r.window_ms, r.window_tz, r.dynamic, r.is_rule, r.created_by, r.created_at, r.updated_at \
    FROM rollouts r JOIN artifacts a ON a.id = r.artifact_id";

fn rollout_from(row: &AnyRow) -> StoreResult<Rollout> {
    let pct = |col: &str| -> StoreResult<u8> {
        u8::try_from(row.try_get::<i64, _>(col)?).map_err(corrupt)
    };
    Ok(Rollout {
        key: RolloutKey(row.try_get("id")?),
        tenant: TenantKey(row.try_get("tenant_id")?),
        name: parse_name(row.try_get("name")?)?,
        artifact: ArtifactKey(row.try_get("artifact_id")?),
        artifact_title: row.try_get("title")?,
        artifact_version: row.try_get("version")?,
        kind: kind_of(&row.try_get::<String, _>("kind")?)?,
        target: row.try_get("target")?,
        groups_spec: row.try_get("groups_spec")?,
        thresholds: Thresholds {
            success_pct: pct("success_pct")?,
            error_pct: pct("error_pct")?,
            soak_millis: row.try_get("soak_ms")?,
        },
        update_type: UpdateType::parse(&row.try_get::<String, _>("update_type")?)
            .map_err(corrupt)?,
        state: {
            let state: String = row.try_get("state")?;
            Lifecycle::parse(&state).ok_or_else(|| corrupt(format!("rollout state {state}")))?
        },
        start_at: row.try_get("start_at")?,
        max_per_minute: row.try_get::<Option<i64>, _>("max_per_minute")?.map(to_u64),
        max_downloads: row.try_get::<Option<i64>, _>("max_downloads")?.map(to_u64),
        jitter_millis: row.try_get("jitter_ms")?,
        window: match (
            row.try_get::<Option<String>, _>("window_cron")?,
            row.try_get::<Option<i64>, _>("window_ms")?,
            row.try_get::<Option<String>, _>("window_tz")?,
        ) {
            (Some(cron), Some(duration_millis), Some(tz)) => Some(WindowSpec {
                cron,
                duration_millis,
                tz,
            }),
            _ => None,
        },
        dynamic: row.try_get::<i64, _>("dynamic")? != 0,
        rule: row.try_get::<i64, _>("is_rule")? != 0,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn group_from(row: &AnyRow) -> StoreResult<RolloutGroup> {
    let mut counts = [0u64; 9];
    for (i, state) in UpdateState::ALL.iter().enumerate() {
        counts[i] = to_u64(row.try_get(counter(*state).as_str())?);
    }
    Ok(RolloutGroup {
        id: row.try_get("id")?,
        index: usize::try_from(row.try_get::<i64, _>("idx")?).map_err(corrupt)?,
        size: to_u64(row.try_get("size")?),
        dynamic: row.try_get::<i64, _>("dynamic")? != 0,
        started_at: row.try_get("started_at")?,
        passed_at: row.try_get("passed_at")?,
        counts,
        skipped: to_u64(row.try_get("n_skipped")?),
        failed_accepted: to_u64(row.try_get("failed_accepted")?),
    })
}

/// Members are activated (and withdrawn) this many to a transaction.
const MEMBER_BATCH: usize = 500;
/// Members are written this many to a statement when a rollout is created.
const INSERT_BATCH: usize = 5_000;

#[async_trait]
impl Rollouts for SqlStore {
    async fn create_rollout(
        &self,
        tenant: TenantKey,
        new: &NewRollout,
        members: &[Vec<DeviceKey>],
    ) -> StoreResult<Rollout> {
        let _w = self.views.writing();
        let mut tx = self.write.begin().await?;
        let found = sqlx::query("SELECT id FROM artifacts WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.0)
            .bind(new.artifact.0)
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Err(StoreError::NotFound { what: "artifact" });
        }
        let now = now_millis();
        let row = sqlx::query(
            "INSERT INTO rollouts (tenant_id, name, artifact_id, target, groups_spec, success_pct, \
             error_pct, soak_ms, update_type, start_at, max_per_minute, max_downloads, jitter_ms, \
             state, created_by, created_at, updated_at, dynamic, is_rule, window_cron, window_ms, window_tz) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16, $17, $18, \
             $19, $20, $21) RETURNING id",
        )
        .bind(tenant.0)
        .bind(new.name.as_str())
        .bind(new.artifact.0)
        .bind(&new.target)
        .bind(&new.groups_spec)
        .bind(i64::from(new.thresholds.success_pct))
        .bind(i64::from(new.thresholds.error_pct))
        .bind(new.thresholds.soak_millis)
        .bind(new.update_type.as_str())
        .bind(new.start_at)
        .bind(new.max_per_minute.map(to_i64))
        .bind(new.max_downloads.map(to_i64))
        .bind(new.jitter_millis)
        .bind(new.state.as_str())
        .bind(&new.created_by)
        .bind(now)
        .bind(i64::from(new.dynamic || new.rule))
        .bind(i64::from(new.rule))
        .bind(new.window.as_ref().map(|w| w.cron.as_str()))
        .bind(new.window.as_ref().map(|w| w.duration_millis))
        .bind(new.window.as_ref().map(|w| w.tz.as_str()))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            conflict(
                e,
                "rollout_exists",
                format!("a rollout named {} exists", new.name),
            )
        })?;
        let rollout: i64 = row.try_get("id")?;
        for (index, devices) in members.iter().enumerate() {
            let row = sqlx::query(
                "INSERT INTO rollout_groups (rollout_id, idx, size, dynamic) VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(rollout)
            .bind(i64::try_from(index).unwrap_or(i64::MAX))
            .bind(i64::try_from(devices.len()).unwrap_or(i64::MAX))
            .bind(i64::from(new.rule))
            .fetch_one(&mut *tx)
            .await?;
            let group: i64 = row.try_get("id")?;
            // In key order: the member indexes grow at their end instead of everywhere.
            let mut devices = devices.clone();
            devices.sort_unstable();
            for batch in devices.chunks(INSERT_BATCH) {
                // Integers only: the values are spelled out rather than bound 4 × 5,000 times.
                let values: Vec<String> = batch
                    .iter()
                    .map(|device| {
                        let delay =
                            updraft_core::rollout::jitter(rollout, device.0, new.jitter_millis);
                        format!("({rollout}, {}, {group}, {delay})", device.0)
                    })
                    .collect();
                sqlx::query(&format!(
                    "INSERT INTO rollout_devices (rollout_id, device_pk, group_id, delay_ms) VALUES {}",
                    values.join(",")
                ))
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    conflict(
                        e,
                        "duplicate_device",
                        "a device is in the target twice".to_owned(),
                    )
                })?;
            }
        }
        // Every member is a device of this tenant (there is no foreign key to say so).
        let ours = sqlx::query(
            "SELECT COUNT(*) AS n FROM rollout_devices rd JOIN devices d ON d.id = rd.device_pk \
             WHERE rd.rollout_id = $1 AND d.tenant_id = $2",
        )
        .bind(rollout)
        .bind(tenant.0)
        .fetch_one(&mut *tx)
        .await?;
        let total: usize = members.iter().map(Vec::len).sum();
        if to_u64(ours.try_get("n")?) != total as u64 {
            return Err(StoreError::NotFound { what: "device" });
        }
        let row = sqlx::query(&format!("{ROLLOUT_SELECT} WHERE r.id = $1"))
            .bind(rollout)
            .fetch_one(&mut *tx)
            .await?;
        let created = rollout_from(&row)?;
        tx.commit().await?;
        Ok(created)
    }

    async fn rollout_by_name(&self, tenant: TenantKey, name: &str) -> StoreResult<Option<Rollout>> {
        let row = sqlx::query(&format!(
            "{ROLLOUT_SELECT} WHERE r.tenant_id = $1 AND r.name = $2"
        ))
        .bind(tenant.0)
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(rollout_from).transpose()
    }

    async fn rollout_by_key(&self, rollout: RolloutKey) -> StoreResult<Option<Rollout>> {
        let row = sqlx::query(&format!("{ROLLOUT_SELECT} WHERE r.id = $1"))
            .bind(rollout.0)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(rollout_from).transpose()
    }

    async fn rollout_of_action(&self, action: ActionKey) -> StoreResult<Option<Rollout>> {
        let row = sqlx::query(&format!(
            "{ROLLOUT_SELECT} WHERE r.id = (SELECT g.rollout_id FROM actions x \
             JOIN rollout_groups g ON g.id = x.rollout_group_id WHERE x.id = $1)"
        ))
        .bind(action.0)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(rollout_from).transpose()
    }

    async fn list_rollouts(&self, tenant: TenantKey) -> StoreResult<Vec<Rollout>> {
        let rows = sqlx::query(&format!(
            "{ROLLOUT_SELECT} WHERE r.tenant_id = $1 ORDER BY r.id"
        ))
        .bind(tenant.0)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(rollout_from).collect()
    }

    async fn rollout_groups(&self, rollout: RolloutKey) -> StoreResult<Vec<RolloutGroup>> {
        let rows = sqlx::query("SELECT * FROM rollout_groups WHERE rollout_id = $1 ORDER BY idx")
            .bind(rollout.0)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(group_from).collect()
    }

    async fn rollout_failures(
        &self,
        rollout: RolloutKey,
        limit: u64,
    ) -> StoreResult<Vec<RolloutFailure>> {
        let rows = sqlx::query(
            "SELECT d.device_id, g.idx, a.failure_code, a.failure_reason, a.updated_at \
             FROM rollout_groups g JOIN actions a ON a.rollout_group_id = g.id AND a.state = 'FAILED' \
             JOIN devices d ON d.id = a.device_pk WHERE g.rollout_id = $1 \
             ORDER BY a.updated_at DESC, a.id DESC LIMIT $2",
        )
        .bind(rollout.0)
        .bind(to_i64(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                let code: Option<String> = row.try_get("failure_code")?;
                Ok(RolloutFailure {
                    device_id: DeviceId::parse(&row.try_get::<String, _>("device_id")?)
                        .map_err(corrupt)?,
                    group: usize::try_from(row.try_get::<i64, _>("idx")?).map_err(corrupt)?,
                    code: code
                        .as_deref()
                        .unwrap_or("unknown")
                        .parse::<FailureCode>()
                        .map_err(corrupt)?,
                    reason: row
                        .try_get::<Option<String>, _>("failure_reason")?
                        .unwrap_or_default(),
                    at: row.try_get("updated_at")?,
                })
            })
            .collect()
    }

    async fn set_rollout_state(
        &self,
        rollout: RolloutKey,
        from: Lifecycle,
        to: Lifecycle,
        by: &str,
    ) -> StoreResult<bool> {
        let _w = self.views.writing();
        let mut tx = self.write.begin().await?;
        let done = sqlx::query(
            "UPDATE rollouts SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4",
        )
        .bind(to.as_str())
        .bind(now_millis())
        .bind(rollout.0)
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        if from == Lifecycle::Halted && to == Lifecycle::Running {
            // Resuming accepts the failures that halted it.
            sqlx::query(
                "UPDATE rollout_groups SET failed_accepted = n_failed WHERE rollout_id = $1",
            )
            .bind(rollout.0)
            .execute(&mut *tx)
            .await?;
        }
        if to == Lifecycle::Canceled {
            let tenant: i64 = sqlx::query("SELECT tenant_id FROM rollouts WHERE id = $1")
                .bind(rollout.0)
                .fetch_one(&mut *tx)
                .await?
                .try_get("tenant_id")?;
            // Members that run the artifact thanks to the rollout keep it; every other one is
            // withdrawn, and its still-active action is canceled by reconciliation.
            let rows = sqlx::query(
                "SELECT rd.device_pk FROM rollout_devices rd WHERE rd.rollout_id = $1 \
                 AND rd.activated_at IS NOT NULL AND (rd.outcome IS NULL OR rd.outcome <> 'already') \
                 AND NOT EXISTS (SELECT 1 FROM actions a WHERE a.device_pk = rd.device_pk \
                 AND a.rollout_group_id = rd.group_id AND a.state = 'UPDATED')",
            )
            .bind(rollout.0)
            .fetch_all(&mut *tx)
            .await?;
            let withdrawn: Vec<i64> = rows
                .iter()
                .map(|row| row.try_get("device_pk"))
                .collect::<Result<_, _>>()?;
            sqlx::query(
                "DELETE FROM rollout_devices WHERE rollout_id = $1 AND activated_at IS NULL",
            )
            .bind(rollout.0)
            .execute(&mut *tx)
            .await?;
            for batch in withdrawn.chunks(MEMBER_BATCH) {
                sqlx::query(&format!(
                    "DELETE FROM rollout_devices WHERE rollout_id = $1 AND device_pk IN ({})",
                    key_list(batch)
                ))
                .bind(rollout.0)
                .execute(&mut *tx)
                .await?;
                reconcile_in(
                    &mut tx,
                    self.dialect,
                    TenantKey(tenant),
                    Only::Devices(batch),
                    by,
                    Retry::No,
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn live_rollouts(&self, now: Millis) -> StoreResult<Vec<Rollout>> {
        let rows = sqlx::query(&format!(
            "{ROLLOUT_SELECT} WHERE r.state = 'RUNNING' \
             OR (r.state = 'READY' AND r.start_at IS NOT NULL AND r.start_at <= $1) ORDER BY r.id"
        ))
        .bind(now)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(rollout_from).collect()
    }

    async fn mark_group(&self, group: i64, mark: GroupMark, now: Millis) -> StoreResult<()> {
        let _w = self.views.writing();
        let column = match mark {
            GroupMark::Started => "started_at",
            GroupMark::Passed => "passed_at",
        };
        sqlx::query(&format!(
            "UPDATE rollout_groups SET {column} = $1 WHERE id = $2 AND {column} IS NULL"
        ))
        .bind(now)
        .bind(group)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn activated_since(&self, rollout: RolloutKey, since: Millis) -> StoreResult<u64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM rollout_devices WHERE rollout_id = $1 AND activated_at >= $2",
        )
        .bind(rollout.0)
        .bind(since)
        .fetch_one(&self.read)
        .await?;
        Ok(to_u64(row.try_get("n")?))
    }

    async fn activate_members(
        &self,
        rollout: &Rollout,
        limit: u64,
        now: Millis,
    ) -> StoreResult<u64> {
        let _w = self.views.writing();
        let limit = limit.min(MEMBER_BATCH as u64);
        if limit == 0 {
            return Ok(0);
        }
        let mut tx = self.write.begin().await?;
        // Group by group in order, each read along the waiting index (delay, device): no sort of
        // the rollout's members, however many wait.
        let groups = sqlx::query(
            "SELECT id, started_at FROM rollout_groups WHERE rollout_id = $1 \
             AND started_at IS NOT NULL ORDER BY idx",
        )
        .bind(rollout.key.0)
        .fetch_all(&mut *tx)
        .await?;
        let mut devices: Vec<i64> = Vec::new();
        for group in &groups {
            let left = limit - devices.len() as u64;
            if left == 0 {
                break;
            }
            let started: i64 = group.try_get("started_at")?;
            let rows = sqlx::query(
                "SELECT device_pk FROM rollout_devices WHERE group_id = $1 AND activated_at IS NULL \
                 AND delay_ms <= $2 ORDER BY delay_ms, device_pk LIMIT $3",
            )
            .bind(group.try_get::<i64, _>("id")?)
            .bind(now - started)
            .bind(to_i64(left))
            .fetch_all(&mut *tx)
            .await?;
            for row in &rows {
                devices.push(row.try_get("device_pk")?);
            }
        }
        if devices.is_empty() {
            return Ok(0);
        }
        let list = key_list(&devices);
        sqlx::query(&format!(
            "UPDATE rollout_devices SET activated_at = $1 WHERE rollout_id = $2 AND device_pk IN ({list})"
        ))
        .bind(now)
        .bind(rollout.key.0)
        .execute(&mut *tx)
        .await?;
        let source = format!("rollout:{}", rollout.name);
        reconcile_in(
            &mut tx,
            self.dialect,
            rollout.tenant,
            Only::Devices(&devices),
            &source,
            Retry::Only(rollout.artifact),
        )
        .await?;
        settle_without_action(&mut tx, rollout, &list).await?;
        tx.commit().await?;
        Ok(devices.len() as u64)
    }
}

/// Members just activated that got no action of their group: one whose active action installs
/// the artifact already is adopted by the group; one that runs it counts as UPDATED; any other
/// is skipped (its own assignment or a newer rollout wins, or the artifact failed on it before).
async fn settle_without_action(
    conn: &mut AnyConnection,
    rollout: &Rollout,
    list: &str,
) -> StoreResult<()> {
    let (title_col, version_col) = match rollout.kind {
        ArtifactKind::Firmware => ("fw_title", "fw_version"),
        ArtifactKind::Software => ("sw_title", "sw_version"),
    };
    let rows = sqlx::query(&format!(
        "SELECT rd.device_pk, rd.group_id, d.{title_col} AS title, d.{version_col} AS version, \
         (SELECT a.id FROM actions a WHERE a.device_pk = rd.device_pk AND a.artifact_id = $2 \
          AND a.rollout_group_id IS NULL AND a.state NOT IN {FINAL_STATES}) AS active \
         FROM rollout_devices rd JOIN devices d ON d.id = rd.device_pk \
         WHERE rd.rollout_id = $1 AND rd.device_pk IN ({list}) AND NOT EXISTS \
         (SELECT 1 FROM actions a WHERE a.device_pk = rd.device_pk AND a.rollout_group_id = rd.group_id)"
    ))
    .bind(rollout.key.0)
    .bind(rollout.artifact.0)
    .fetch_all(&mut *conn)
    .await?;
    for row in &rows {
        let device: i64 = row.try_get("device_pk")?;
        let group: i64 = row.try_get("group_id")?;
        let runs = row.try_get::<Option<String>, _>("title")?.as_deref()
            == Some(rollout.artifact_title.as_str())
            && row.try_get::<Option<String>, _>("version")?.as_deref()
                == Some(rollout.artifact_version.as_str());
        let outcome = if let Some(active) = row.try_get::<Option<i64>, _>("active")? {
            let state: String = sqlx::query(
                "UPDATE actions SET rollout_group_id = $1 WHERE id = $2 RETURNING state",
            )
            .bind(group)
            .bind(active)
            .fetch_one(&mut *conn)
            .await?
            .try_get("state")?;
            count_in_group(conn, group, None, state_of(&state)?).await?;
            "adopted"
        } else if runs {
            count_in_group(conn, group, None, UpdateState::Updated).await?;
            "already"
        } else {
            sqlx::query("UPDATE rollout_groups SET n_skipped = n_skipped + 1 WHERE id = $1")
                .bind(group)
                .execute(&mut *conn)
                .await?;
            "skipped"
        };
        sqlx::query(
            "UPDATE rollout_devices SET outcome = $1 WHERE rollout_id = $2 AND device_pk = $3",
        )
        .bind(outcome)
        .bind(rollout.key.0)
        .bind(device)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
