//! Device reports: one report applied inside a transaction, and on SQLite the group commit that
//! applies the reports arriving together in one transaction (each in its own savepoint), so that
//! ten thousand devices reporting at once cost a few hundred commits and fsyncs instead of ten
//! thousand — every report is still durable before its caller hears it was recorded.
//! (PostgreSQL commits concurrent transactions together by itself; there each report is its own,
//! most of them one statement: `report_fast.rs`.)

use sqlx::{Any, Connection, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::membership::count_in_group;
use super::report_fast::{Fast, report_in_one_statement};
use super::views::Writing;
use super::*;

/// Times a report is read again because the action moved under it.
const MAX_REPORT_ATTEMPTS: usize = 16;
/// Reports applied in one transaction at most.
const GROUP: usize = 256;
/// Reports waiting for the group writer at most (then `report` waits: backpressure).
const QUEUE: usize = 4096;

/// One report to apply.
pub(super) struct ReportJob {
    pub tenant: TenantKey,
    pub key: ActionKey,
    pub report: Report,
    pub source: String,
}

type Reply = oneshot::Sender<StoreResult<ReportOutcome>>;

/// The way to the group writer.
pub(super) type ReportQueue = mpsc::Sender<(ReportJob, Reply)>;

fn busy(key: ActionKey) -> StoreError {
    StoreError::Conflict {
        code: "action_busy",
        message: format!("action {key} kept changing while a report was applied"),
    }
}

impl SqlStore {
    /// Applies a report: through the group writer where there is one, else in a transaction of
    /// its own. Compare-and-set either way: a report applies to the state it read; when another
    /// writer (a supersede, a second report) moved the action first, the report is read again
    /// against the new state — so a final state is never turned into another.
    pub(super) async fn report_grouped(
        &self,
        tenant: TenantKey,
        key: ActionKey,
        report: &Report,
        source: &str,
    ) -> StoreResult<ReportOutcome> {
        let job = ReportJob {
            tenant,
            key,
            report: report.clone(),
            source: source.to_owned(),
        };
        let Some(queue) = &self.reports else {
            return self.report_alone(&job).await;
        };
        let (reply, answer) = oneshot::channel();
        match queue.send((job, reply)).await {
            Ok(()) => answer.await.unwrap_or_else(|_| {
                Err(StoreError::Invalid {
                    code: "store_closing",
                    message: "the store closed before the report was recorded".into(),
                })
            }),
            // The group writer ended with the runtime that started it: on our own.
            Err(mpsc::error::SendError((job, _))) => self.report_alone(&job).await,
        }
    }

    async fn report_alone(&self, job: &ReportJob) -> StoreResult<ReportOutcome> {
        for _ in 0..MAX_REPORT_ATTEMPTS {
            let mut w = self.views.writing();
            if self.dialect == Dialect::Postgres {
                match report_in_one_statement(&self.write, job).await {
                    Ok(Fast::Done(outcome, device)) => {
                        touched(&mut w, &outcome, device);
                        return Ok(*outcome);
                    }
                    Ok(Fast::Moved) => {
                        w.nothing_cached();
                        continue;
                    }
                    Ok(Fast::Slow) => {}
                    Err(err) => {
                        w.nothing_cached();
                        return Err(err);
                    }
                }
            }
            let mut tx = self.write.begin().await?;
            match apply_report(&mut tx, self.dialect, job).await {
                Ok(Some((outcome, device))) => {
                    tx.commit().await?;
                    touched(&mut w, &outcome, device);
                    return Ok(outcome);
                }
                Ok(None) => {
                    w.nothing_cached();
                    tx.rollback().await?;
                }
                Err(err) => {
                    w.nothing_cached();
                    return Err(err);
                }
            }
        }
        Err(busy(job.key))
    }
}

/// Starts the group writer on the current runtime (none outside one).
pub(super) fn spawn_group_writer(
    write: AnyPool,
    dialect: Dialect,
    views: Arc<Views>,
) -> Option<ReportQueue> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (queue, mut jobs) = mpsc::channel::<(ReportJob, Reply)>(QUEUE);
    runtime.spawn(async move {
        let mut group = Vec::with_capacity(GROUP);
        while jobs.recv_many(&mut group, GROUP).await > 0 {
            write_group(&write, dialect, &views, &mut group).await;
        }
    });
    Some(queue)
}

/// Applies `group` in one transaction and answers each report once it committed.
async fn write_group(
    write: &AnyPool,
    dialect: Dialect,
    views: &Views,
    group: &mut Vec<(ReportJob, Reply)>,
) {
    let mut w = views.writing();
    w.nothing_cached();
    let mut results = Vec::with_capacity(group.len());
    let committed = async {
        let mut tx = write.begin().await?;
        for (job, _) in group.iter() {
            results.push(apply_in_savepoint(&mut tx, dialect, job, &mut w).await);
        }
        tx.commit().await
    }
    .await;
    match committed {
        Ok(()) => {
            for ((_, reply), result) in group.drain(..).zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(err) => {
            tracing::warn!("a group of {} reports failed to commit: {err}", group.len());
            for (_, reply) in group.drain(..) {
                let _ = reply.send(Err(StoreError::Invalid {
                    code: "report_not_recorded",
                    message: format!("the report could not be committed: {err}"),
                }));
            }
        }
    }
}

async fn apply_in_savepoint(
    tx: &mut Transaction<'static, Any>,
    dialect: Dialect,
    job: &ReportJob,
    w: &mut Writing<'_>,
) -> StoreResult<ReportOutcome> {
    for _ in 0..MAX_REPORT_ATTEMPTS {
        let mut savepoint = tx.begin().await?;
        match apply_report(&mut savepoint, dialect, job).await {
            Ok(Some((outcome, device))) => {
                savepoint.commit().await?;
                touched(w, &outcome, device);
                return Ok(outcome);
            }
            Ok(None) => savepoint.rollback().await?,
            Err(err) => {
                savepoint.rollback().await?;
                return Err(err);
            }
        }
    }
    Err(busy(job.key))
}

/// What a report touched of the views: the device itself only when it ended UPDATED (what the
/// device runs changed, and reconciliation ran); else only its actions.
fn touched(w: &mut Writing<'_>, outcome: &ReportOutcome, device: DeviceKey) {
    match outcome {
        ReportOutcome::Applied(action) if action.state == UpdateState::Updated => w.device(device),
        _ => w.actions_of(device),
    }
}

/// A report read against the action's state: what it moves the action to.
pub(super) struct Planned<'r> {
    pub(super) next: UpdateState,
    /// The progress the action keeps: the report's, else the one it had, until it ends.
    pub(super) kept: Option<Progress>,
    /// The report's own progress, for the history.
    pub(super) progress: Option<Progress>,
    pub(super) detail: String,
    /// Failure code and reason, for a failure.
    pub(super) failure: Option<(&'r str, &'r str)>,
}

/// What `report` does to `action`, or why it is refused.
pub(super) fn plan<'r>(action: &Action, report: &'r Report) -> Result<Planned<'r>, String> {
    let (progress, detail) = match report {
        Report::Reached { progress, .. } => (*progress, String::new()),
        Report::Failed(failure) => (
            None,
            format!("{}: {}", failure.code.as_str(), failure.reason),
        ),
        Report::Succeeded | Report::Canceled => (None, String::new()),
    };
    let next = transition(action.state, report).map_err(|refusal| refusal.to_string())?;
    Ok(Planned {
        next,
        kept: progress.or(action.progress).filter(|_| !next.is_final()),
        progress,
        detail,
        failure: match report {
            Report::Failed(failure) => Some((failure.code.as_str(), failure.reason.as_str())),
            _ => None,
        },
    })
}

/// The action as its row holds it once `planned` was written at `now`.
pub(super) fn applied(
    action: Action,
    planned: &Planned<'_>,
    report: &Report,
    now: Millis,
) -> Action {
    Action {
        state: planned.next,
        progress: planned.kept,
        failure: match report {
            Report::Failed(failure) => Some(Failed {
                code: failure.code,
                reason: failure.reason.clone(),
            }),
            _ => None,
        },
        updated_at: now,
        ..action
    }
}

/// The action a report is about, with what its writes need to know: its rollout group (whose
/// counters move with it) and the protocol its device last reported over.
pub(super) async fn read_for_report(
    conn: &mut AnyConnection,
    tenant: TenantKey,
    key: ActionKey,
) -> StoreResult<(Action, Option<i64>, Option<String>)> {
    let columns = ACTION_SELECT
        .strip_prefix("SELECT ")
        .unwrap_or(ACTION_SELECT);
    let row = sqlx::query(&format!(
        "SELECT a.rollout_group_id, d.protocol AS device_protocol, {columns} \
         WHERE a.tenant_id = $1 AND a.id = $2"
    ))
    .bind(tenant.0)
    .bind(key.0)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::NotFound { what: "action" })?;
    Ok((
        action_from(&row)?,
        row.try_get("rollout_group_id")?,
        row.try_get("device_protocol")?,
    ))
}

/// Whether a report from `source` records the protocol its device speaks (`server`, `user:…`,
/// `rollout:…` are not devices), which the device's row says is `known` now.
pub(super) fn writes_protocol(source: &str, known: Option<&str>) -> bool {
    source != "server" && !source.contains(':') && known != Some(source)
}

/// One attempt at a report inside the caller's transaction (or savepoint): the outcome and the
/// device it concerns, or `None` when the action moved between reading and writing (the caller
/// rolls back and tries again).
pub(super) async fn apply_report(
    tx: &mut AnyConnection,
    dialect: Dialect,
    job: &ReportJob,
) -> StoreResult<Option<(ReportOutcome, DeviceKey)>> {
    let (tenant, key, report, source) = (job.tenant, job.key, &job.report, job.source.as_str());
    let (action, group, device_protocol) = read_for_report(tx, tenant, key).await?;
    let device = action.device;
    let planned = match plan(&action, report) {
        Ok(planned) => planned,
        Err(reason) => {
            insert_event(
                &mut *tx,
                Event {
                    action: key,
                    from: Some(action.state),
                    to: report.target(),
                    source,
                    detail: &reason,
                    refused: true,
                    progress: match report {
                        Report::Reached { progress, .. } => *progress,
                        _ => None,
                    },
                },
            )
            .await?;
            return Ok(Some((ReportOutcome::Refused { action, reason }, device)));
        }
    };
    let next = planned.next;
    let now = now_millis();
    let moved = sqlx::query(
            "UPDATE actions SET state = $1, progress_done = $2, progress_total = $3, failure_code = $4, \
             failure_reason = $5, updated_at = $6 WHERE id = $7 AND state = $8",
        )
        .bind(next.as_str())
        .bind(planned.kept.map(|p| to_i64(p.done)))
        .bind(planned.kept.map(|p| to_i64(p.total)))
        .bind(planned.failure.map(|f| f.0))
        .bind(planned.failure.map(|f| f.1))
        .bind(now)
        .bind(key.0)
        .bind(action.state.as_str())
        .execute(&mut *tx)
        .await?;
    if moved.rows_affected() == 0 {
        // Another writer moved it since it was read: read it again.
        return Ok(None);
    }
    if let Some(group) = group {
        count_in_group(&mut *tx, group, Some(action.state), next).await?;
    }
    insert_event(
        &mut *tx,
        Event {
            action: key,
            from: Some(action.state),
            to: next,
            source,
            detail: &planned.detail,
            refused: false,
            progress: planned.progress,
        },
    )
    .await?;
    if writes_protocol(source, device_protocol.as_deref()) {
        sqlx::query(
            "UPDATE devices SET protocol = $1 WHERE id = $2 \
                 AND (protocol IS NULL OR protocol <> $1)",
        )
        .bind(source)
        .bind(action.device.0)
        .execute(&mut *tx)
        .await?;
    }
    if next == UpdateState::Updated {
        let (title_col, version_col) = match action.kind {
            ArtifactKind::Firmware => ("fw_title", "fw_version"),
            ArtifactKind::Software => ("sw_title", "sw_version"),
        };
        sqlx::query(&format!(
            "UPDATE devices SET {title_col} = $1, {version_col} = $2 WHERE id = $3"
        ))
        .bind(&action.artifact_title)
        .bind(&action.artifact_version)
        .bind(action.device.0)
        .execute(&mut *tx)
        .await?;
        reconcile(
            &mut *tx,
            dialect,
            tenant,
            Some(Scope::Device(action.device)),
            "server",
            Retry::No,
        )
        .await?;
    }
    // What the row now holds, from what was written (reconciliation leaves a final action as
    // it is, and nothing else changes this one while the compare-and-set holds its row).
    let updated = applied(action, &planned, report, now);
    Ok(Some((ReportOutcome::Applied(updated), device)))
}
