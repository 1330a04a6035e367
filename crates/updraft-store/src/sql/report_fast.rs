//! PostgreSQL: most reports in one statement. A report that neither ends the action UPDATED (which
//! writes what the device runs and reconciles it) nor tells the device's protocol for the first
//! time, nor is refused, moves the action by compare-and-set, counts it in its rollout group and
//! writes its history entry in one `UPDATE … RETURNING` chained into an `INSERT … SELECT` — two
//! round trips with the read before it instead of six, in a transaction of their own (the
//! statement is atomic). Every other report takes the transaction of `report.rs`.

use super::membership::move_clause;
use super::report::{ReportJob, applied, plan, read_for_report, writes_protocol};
use super::*;

/// What the one-statement path made of a report.
pub(super) enum Fast {
    /// Applied: the outcome and the device it concerns.
    Done(Box<ReportOutcome>, DeviceKey),
    /// The action moved between the read and the write: read it again.
    Moved,
    /// Not one for this path: apply it in a transaction.
    Slow,
}

pub(super) async fn report_in_one_statement(pool: &AnyPool, job: &ReportJob) -> StoreResult<Fast> {
    let mut conn = pool.acquire().await?;
    let (action, group, protocol) = read_for_report(&mut conn, job.tenant, job.key).await?;
    let Ok(planned) = plan(&action, &job.report) else {
        return Ok(Fast::Slow);
    };
    let next = planned.next;
    if next == UpdateState::Updated || writes_protocol(&job.source, protocol.as_deref()) {
        return Ok(Fast::Slow);
    }
    // The group's counters move only when the action changes state (`moved` names the group).
    let count = match group {
        Some(_) if action.state != next => format!(
            ", counted AS (UPDATE rollout_groups SET {} \
             WHERE id = (SELECT rollout_group_id FROM moved))",
            move_clause(Some(action.state), next)
        ),
        _ => String::new(),
    };
    let now = now_millis();
    let done = sqlx::query(&format!(
        "WITH moved AS (UPDATE actions SET state = $1, progress_done = $2, progress_total = $3, \
         failure_code = $4, failure_reason = $5, updated_at = $6 WHERE id = $7 AND state = $8 \
         RETURNING id, rollout_group_id){count} \
         INSERT INTO action_events (action_id, at, from_state, to_state, source, detail, refused, \
         progress_done, progress_total) SELECT id, $6, $8, $1, $9, $10, 0, $11, $12 FROM moved"
    ))
    .bind(next.as_str())
    .bind(planned.kept.map(|p| to_i64(p.done)))
    .bind(planned.kept.map(|p| to_i64(p.total)))
    .bind(planned.failure.map(|f| f.0))
    .bind(planned.failure.map(|f| f.1))
    .bind(now)
    .bind(job.key.0)
    .bind(action.state.as_str())
    .bind(job.source.as_str())
    .bind(planned.detail.as_str())
    .bind(planned.progress.map(|p| to_i64(p.done)))
    .bind(planned.progress.map(|p| to_i64(p.total)))
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(Fast::Moved);
    }
    let device = action.device;
    let outcome = ReportOutcome::Applied(applied(action, &planned, &job.report, now));
    Ok(Fast::Done(Box::new(outcome), device))
}
