//! Reconciliation: inside the transaction that changed what a device should run, load its
//! assignments, resolve them (`updraft_core::resolve`), plan (`updraft_core::plan`) and apply the
//! plan with its history events.

use super::*;

/// An assignment with what resolution and planning need of its artifact.
pub(super) struct LoadedAssignment {
    pub(super) kind: ArtifactKind,
    pub(super) candidate: Candidate,
    pub(super) title: String,
    pub(super) version: String,
}

pub(super) async fn artifact_profiles(
    conn: &mut AnyConnection,
    artifact: i64,
) -> StoreResult<Vec<(ProfileKey, Name)>> {
    let rows = sqlx::query(
        "SELECT p.id, p.name FROM artifact_profiles ap JOIN profiles p ON p.id = ap.profile_id \
         WHERE ap.artifact_id = $1 ORDER BY p.name",
    )
    .bind(artifact)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                ProfileKey(row.try_get("id")?),
                parse_name(row.try_get("name")?)?,
            ))
        })
        .collect()
}

pub(super) async fn load_artifact(conn: &mut AnyConnection, row: &AnyRow) -> StoreResult<Artifact> {
    let profiles = artifact_profiles(conn, row.try_get("id")?).await?;
    artifact_from(row, profiles)
}

pub(super) async fn load_assignments(
    conn: &mut AnyConnection,
    tenant: TenantKey,
) -> StoreResult<Vec<LoadedAssignment>> {
    let rows = sqlx::query(
        "SELECT s.device_pk, s.project_id, s.profile_id, s.kind, s.artifact_id, a.title, a.version \
         FROM assignments s JOIN artifacts a ON a.id = s.artifact_id WHERE s.tenant_id = $1 ORDER BY s.id",
    )
    .bind(tenant.0)
    .fetch_all(&mut *conn)
    .await?;
    let compat_rows = sqlx::query(
        "SELECT DISTINCT ap.artifact_id, ap.profile_id FROM artifact_profiles ap \
         JOIN assignments s ON s.artifact_id = ap.artifact_id WHERE s.tenant_id = $1",
    )
    .bind(tenant.0)
    .fetch_all(&mut *conn)
    .await?;
    let mut compat: HashMap<i64, Vec<ProfileKey>> = HashMap::new();
    for row in &compat_rows {
        compat
            .entry(row.try_get("artifact_id")?)
            .or_default()
            .push(ProfileKey(row.try_get("profile_id")?));
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let artifact: i64 = row.try_get("artifact_id")?;
        out.push(LoadedAssignment {
            kind: kind_of(&row.try_get::<String, _>("kind")?)?,
            candidate: Candidate {
                scope: scope_from_columns(
                    row.try_get("device_pk")?,
                    row.try_get("project_id")?,
                    row.try_get("profile_id")?,
                ),
                artifact: ArtifactKey(artifact),
                compatible_profiles: compat.get(&artifact).cloned().unwrap_or_default(),
            },
            title: row.try_get("title")?,
            version: row.try_get("version")?,
        });
    }
    Ok(out)
}

/// What `target` should run of `kind`, from the tenant's assignments and `extra`: the device's
/// rollout memberships.
pub(super) fn desired_for(
    target: &DeviceTarget,
    assignments: &[LoadedAssignment],
    extra: &[&LoadedAssignment],
    kind: ArtifactKind,
) -> Option<Desired> {
    let of_kind: Vec<&LoadedAssignment> = assignments
        .iter()
        .chain(extra.iter().copied())
        .filter(|a| a.kind == kind)
        .collect();
    let candidates: Vec<Candidate> = of_kind.iter().map(|a| a.candidate.clone()).collect();
    let resolved = resolve(target, &candidates)?;
    let winner = of_kind.iter().find(|a| {
        a.candidate.artifact == resolved.artifact && a.candidate.scope == resolved.scope
    })?;
    Some(Desired {
        artifact: resolved.artifact,
        title: winner.title.clone(),
        version: winner.version.clone(),
        scope: resolved.scope,
    })
}

/// One history entry to write.
pub(super) struct Event<'a> {
    pub(super) action: ActionKey,
    pub(super) from: Option<UpdateState>,
    pub(super) to: UpdateState,
    pub(super) source: &'a str,
    pub(super) detail: &'a str,
    pub(super) refused: bool,
    pub(super) progress: Option<Progress>,
}

pub(super) async fn insert_event(conn: &mut AnyConnection, event: Event<'_>) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO action_events (action_id, at, from_state, to_state, source, detail, refused, \
         progress_done, progress_total) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(event.action.0)
    .bind(now_millis())
    .bind(event.from.map(|s| s.as_str()))
    .bind(event.to.as_str())
    .bind(event.source)
    .bind(event.detail)
    .bind(i64::from(event.refused))
    .bind(event.progress.map(|p| to_i64(p.done)))
    .bind(event.progress.map(|p| to_i64(p.total)))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Which devices a reconciliation looks at.
#[derive(Clone, Copy)]
pub(super) enum Only<'a> {
    /// Every device the scope covers.
    Scope(Scope),
    /// These devices (row keys).
    Devices(&'a [i64]),
}

/// PostgreSQL: what keeps two writers from both queueing an action for one device. One
/// device's reconciliation (a report that ended an action, a new or moved device) holds the
/// tenant's lock shared and the device's exclusively, so different devices reconcile at once;
/// any wider one (an assignment, a rollout's group) holds the tenant's lock exclusively. Both
/// are held to commit, and both take the tenant's lock first. A writer that changes what
/// reconciliation reads (an assignment) takes it before its first write. SQLite: nothing, its one
/// writer is alone.
pub(super) async fn lock_for_reconcile(
    conn: &mut AnyConnection,
    dialect: Dialect,
    tenant: TenantKey,
    only: Only<'_>,
) -> StoreResult<()> {
    if dialect != Dialect::Postgres {
        return Ok(());
    }
    match only {
        Only::Scope(Scope::Device(device)) => {
            sqlx::query(
                "SELECT pg_advisory_xact_lock_shared(7345002, CAST($1 AS INTEGER)), \
                 pg_advisory_xact_lock(7345003, CAST($2 % 2147483647 AS INTEGER))",
            )
            .bind(tenant.0)
            .bind(device.0)
            .execute(&mut *conn)
            .await?;
        }
        _ => {
            sqlx::query("SELECT pg_advisory_xact_lock(7345002, CAST($1 AS INTEGER))")
                .bind(tenant.0)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Brings the active action of every device `only` covers (every device of the tenant when
/// `None`) in line with what the device should run.
pub(super) async fn reconcile(
    conn: &mut AnyConnection,
    dialect: Dialect,
    tenant: TenantKey,
    only: Option<Scope>,
    source: &str,
    retry: Retry,
) -> StoreResult<()> {
    let only = only.unwrap_or(Scope::Tenant);
    reconcile_in(conn, dialect, tenant, Only::Scope(only), source, retry).await
}

/// [`reconcile`] over the devices `only` names.
pub(super) async fn reconcile_in(
    conn: &mut AnyConnection,
    dialect: Dialect,
    tenant: TenantKey,
    only: Only<'_>,
    source: &str,
    retry: Retry,
) -> StoreResult<()> {
    if let Only::Devices([]) = only {
        return Ok(());
    }
    lock_for_reconcile(conn, dialect, tenant, only).await?;
    let assignments = load_assignments(conn, tenant).await?;
    // For one device, look at that device's rows only (bound, so the statement is prepared
    // once): a report must not cost a scan of the whole tenant's history. A list of devices is
    // spelled out (integers only).
    let one_device = match only {
        Only::Scope(Scope::Device(device)) => Some(device.0),
        _ => None,
    };
    let device_filter = match only {
        Only::Scope(Scope::Device(_)) => " AND device_pk = $2".to_owned(),
        Only::Devices(keys) => format!(" AND device_pk IN ({})", key_list(keys)),
        Only::Scope(_) => String::new(),
    };
    // Devices named by key are found by key (`+` keeps the planner off the tenant's index,
    // which it would walk whole); a scope's devices are the tenant's.
    let tenant_column = match only {
        Only::Scope(Scope::Device(_)) | Only::Devices(_) => "+tenant_id",
        Only::Scope(_) => "tenant_id",
    };
    let devices_query = format!(
        "SELECT id, project_id, profile_id, fw_title, fw_version, sw_title, sw_version FROM devices \
         WHERE {tenant_column} = $1{}",
        device_filter.replace("device_pk", "id")
    );
    let mut query = sqlx::query(&devices_query).bind(tenant.0);
    if let Some(device) = one_device {
        query = query.bind(device);
    }
    let devices = query.fetch_all(&mut *conn).await?;
    let memberships = load_memberships(conn, tenant, &device_filter, one_device).await?;

    let active_sql = format!(
        "SELECT id, device_pk, artifact_id, state FROM actions WHERE tenant_id = $1{device_filter} AND state NOT IN {FINAL_STATES}"
    );
    let mut query = sqlx::query(&active_sql).bind(tenant.0);
    if let Some(device) = one_device {
        query = query.bind(device);
    }
    let active_rows = query.fetch_all(&mut *conn).await?;
    let mut active_of: HashMap<i64, (ActionKey, Option<ArtifactKey>, UpdateState)> = HashMap::new();
    for row in &active_rows {
        active_of.insert(
            row.try_get("device_pk")?,
            (
                ActionKey(row.try_get("id")?),
                row.try_get::<Option<i64>, _>("artifact_id")?
                    .map(ArtifactKey),
                state_of(&row.try_get::<String, _>("state")?)?,
            ),
        );
    }
    // (device, artifact) pairs whose latest action failed.
    let failed_sql = format!(
        "SELECT device_pk, artifact_id FROM actions WHERE state = 'FAILED' AND id IN \
         (SELECT MAX(id) FROM actions WHERE tenant_id = $1{device_filter} AND artifact_id IS NOT NULL \
         GROUP BY device_pk, artifact_id)"
    );
    let mut query = sqlx::query(&failed_sql).bind(tenant.0);
    if let Some(device) = one_device {
        query = query.bind(device);
    }
    let failed_rows = query.fetch_all(&mut *conn).await?;
    let mut failed: HashMap<i64, Vec<ArtifactKey>> = HashMap::new();
    for row in &failed_rows {
        failed
            .entry(row.try_get("device_pk")?)
            .or_default()
            .push(ArtifactKey(row.try_get("artifact_id")?));
    }
    let mut release_of: HashMap<ArtifactKey, (&str, &str, ArtifactKind)> = assignments
        .iter()
        .map(|a| {
            (
                a.candidate.artifact,
                (a.title.as_str(), a.version.as_str(), a.kind),
            )
        })
        .collect();
    for member in memberships.values().flatten() {
        let a = &member.assignment;
        release_of.insert(
            a.candidate.artifact,
            (a.title.as_str(), a.version.as_str(), a.kind),
        );
    }

    let mut queued: Vec<NewAction<'_>> = Vec::new();
    for row in &devices {
        let target = DeviceTarget {
            device: DeviceKey(row.try_get("id")?),
            project: row.try_get::<Option<i64>, _>("project_id")?.map(ProjectKey),
            profile: row.try_get::<Option<i64>, _>("profile_id")?.map(ProfileKey),
        };
        if let Only::Scope(scope) = only
            && !scope.covers(&target)
        {
            continue;
        }
        let member = memberships
            .get(&target.device.0)
            .map_or(&[][..], Vec::as_slice);
        let extra: Vec<&LoadedAssignment> = member.iter().map(|m| &m.assignment).collect();
        let running = |t: &str, v: &str| -> StoreResult<Option<(String, String)>> {
            Ok(
                match (
                    row.try_get::<Option<String>, _>(t)?,
                    row.try_get::<Option<String>, _>(v)?,
                ) {
                    (Some(t), Some(v)) => Some((t, v)),
                    _ => None,
                },
            )
        };
        let release = |desired: Option<Desired>| {
            desired.map(|d| Release {
                artifact: d.artifact,
                title: d.title,
                version: d.version,
            })
        };
        let facts = Facts {
            firmware: release(desired_for(
                &target,
                &assignments,
                &extra,
                ArtifactKind::Firmware,
            )),
            software: release(desired_for(
                &target,
                &assignments,
                &extra,
                ArtifactKind::Software,
            )),
            running_firmware: running("fw_title", "fw_version")?,
            running_software: running("sw_title", "sw_version")?,
            active: active_of
                .get(&target.device.0)
                .map(|&(action, artifact, state)| Active {
                    action,
                    artifact,
                    state,
                }),
            failed: failed.get(&target.device.0).cloned().unwrap_or_default(),
        };
        let changes = updraft_core::reconcile(facts, retry);
        if let Some(cancel) = changes.cancel
            && let Some(from) = cancel_action(conn, cancel.action, cancel.from).await?
        {
            count_move(conn, cancel.action, Some(from), UpdateState::Canceled).await?;
            insert_event(
                conn,
                Event {
                    action: cancel.action,
                    from: Some(from),
                    to: UpdateState::Canceled,
                    source,
                    detail: "superseded: the device's desired artifact changed",
                    refused: false,
                    progress: None,
                },
            )
            .await?;
        }
        let Some(next) = changes.queue else { continue };
        let Some((title, version, kind)) = release_of.get(&next).copied() else {
            continue;
        };
        // An action a rollout's membership asked for counts in its group.
        let group = desired_for(&target, &assignments, &extra, kind).and_then(|d| match d.scope {
            Scope::Rollout(rollout, _) => member
                .iter()
                .find(|m| m.rollout == rollout.0)
                .map(|m| m.group),
            _ => None,
        });
        queued.push(NewAction {
            device: target.device.0,
            artifact: next.0,
            title,
            version,
            kind,
            group,
        });
    }
    insert_queued(conn, tenant, &queued, source).await
}

/// An action reconciliation queues.
struct NewAction<'a> {
    device: i64,
    artifact: i64,
    title: &'a str,
    version: &'a str,
    kind: ArtifactKind,
    group: Option<i64>,
}

/// Actions queued by one statement at most (six parameters each).
const QUEUE_BATCH: usize = 1_000;

/// Inserts the QUEUED actions with their history events and group counts, a batch to a
/// statement: an assignment to a whole fleet costs a few statements per thousand devices.
async fn insert_queued(
    conn: &mut AnyConnection,
    tenant: TenantKey,
    queued: &[NewAction<'_>],
    source: &str,
) -> StoreResult<()> {
    let now = now_millis();
    for batch in queued.chunks(QUEUE_BATCH) {
        let rows: Vec<String> = (0..batch.len())
            .map(|i| {
                let p = 3 + 6 * i;
                format!(
                    "($1, ${}, ${}, ${}, ${}, ${}, 'QUEUED', $2, $2, ${})",
                    p,
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO actions (tenant_id, device_pk, artifact_id, artifact_title, artifact_version, \
             kind, state, created_at, updated_at, rollout_group_id) VALUES {} RETURNING id",
            rows.join(", ")
        );
        let mut insert = sqlx::query(&sql).bind(tenant.0).bind(now);
        for a in batch {
            insert = insert
                .bind(a.device)
                .bind(a.artifact)
                .bind(a.title)
                .bind(a.version)
                .bind(a.kind.as_str())
                .bind(a.group);
        }
        let inserted = insert.fetch_all(&mut *conn).await?;
        let ids: Vec<i64> = inserted
            .iter()
            .map(|row| row.try_get::<i64, _>("id"))
            .collect::<Result<_, _>>()?;
        sqlx::query(&format!(
            "INSERT INTO action_events (action_id, at, to_state, source, detail, refused) \
             SELECT id, $1, 'QUEUED', $2, artifact_title || '@' || artifact_version || ' desired', 0 \
             FROM actions WHERE id IN ({}) ORDER BY id",
            key_list(&ids)
        ))
        .bind(now)
        .bind(source)
        .execute(&mut *conn)
        .await?;
        let mut per_group: BTreeMap<i64, i64> = BTreeMap::new();
        for group in batch.iter().filter_map(|a| a.group) {
            *per_group.entry(group).or_default() += 1;
        }
        for (group, n) in per_group {
            sqlx::query("UPDATE rollout_groups SET n_queued = n_queued + $1 WHERE id = $2")
                .bind(n)
                .bind(group)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Refuses a scope naming a device, project or profile of another tenant.
pub(super) async fn check_scope_in_tenant(
    conn: &mut AnyConnection,
    tenant: TenantKey,
    scope: Scope,
) -> StoreResult<()> {
    let checks: Vec<(&'static str, &'static str, i64)> = match scope {
        Scope::Device(d) => vec![("devices", "device", d.0)],
        Scope::ProjectProfile(p, f) => {
            vec![("projects", "project", p.0), ("profiles", "profile", f.0)]
        }
        Scope::Project(p) => vec![("projects", "project", p.0)],
        Scope::Profile(f) => vec![("profiles", "profile", f.0)],
        Scope::Tenant => vec![],
        Scope::Rollout(..) => {
            return Err(StoreError::Invalid {
                code: "invalid_scope",
                message: "a rollout's members are not assigned one by one".to_owned(),
            });
        }
    };
    for (table, what, key) in checks {
        let found = sqlx::query(&format!(
            "SELECT id FROM {table} WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant.0)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
        if found.is_none() {
            return Err(StoreError::NotFound { what });
        }
    }
    Ok(())
}

/// Cancels `action`, which was read in state `read`, compare-and-set: a report that moved it
/// meanwhile is not overwritten. If it moved, the cancel applies to the state it is in now —
/// unless that state is final, when there is nothing left to cancel (`None`). Returns the state
/// the action was canceled from.
async fn cancel_action(
    conn: &mut AnyConnection,
    action: ActionKey,
    read: UpdateState,
) -> StoreResult<Option<UpdateState>> {
    let mut from = read;
    loop {
        let confirm = from >= UpdateState::Initiated;
        let done = sqlx::query(
            "UPDATE actions SET state = 'CANCELED', cancel_pending = $1, updated_at = $2 \
             WHERE id = $3 AND state = $4",
        )
        .bind(i64::from(confirm))
        .bind(now_millis())
        .bind(action.0)
        .bind(from.as_str())
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(Some(from));
        }
        let row = sqlx::query("SELECT state FROM actions WHERE id = $1")
            .bind(action.0)
            .fetch_one(&mut *conn)
            .await?;
        let state: String = row.try_get("state")?;
        let now: UpdateState = state.parse().map_err(corrupt)?;
        if now.is_final() {
            return Ok(None);
        }
        from = now;
    }
}
