//! [`SqlStore`]: the [`Store`] over SQLite or PostgreSQL through sqlx's `Any` driver. The SQL is
//! written once for both (`$n` parameters, `RETURNING`, partial unique indexes); only the schema's
//! auto-increment key differs. SQLite gets one writer connection and a pool of readers, so that
//! writes queue in the process instead of failing with SQLITE_BUSY.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Executor, Row};
use updraft_core::{
    ActionKey, ActiveAction, ArtifactKey, ArtifactKind, Candidate, Checksums, DeviceId, DeviceKey,
    DeviceTarget, FailureCode, KindStatus, Name, Plan, ProfileKey, Progress, ProjectKey, Release,
    Report, Role, Scope, TenantKey, UpdateState, plan, resolve, transition,
};

use crate::Store;
use crate::error::{StoreError, StoreResult};
use crate::rows::*;

/// Which database a [`SqlStore`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub(crate) fn auto_key(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
        }
    }
}

/// The store over SQLite or PostgreSQL.
#[derive(Clone)]
pub struct SqlStore {
    read: AnyPool,
    // Invariant: for SQLite this pool has exactly one connection; every write goes through it.
    write: AnyPool,
    dialect: Dialect,
}

pub(crate) fn now_millis() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

const FINAL_STATES: &str = "('UPDATED', 'FAILED', 'CANCELED')";

impl SqlStore {
    /// Opens (creating if needed) the SQLite database at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> StoreResult<Self> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Self::open(&url).await
    }

    /// Opens `sqlite://…` or `postgres://…` and migrates it.
    pub async fn open(url: &str) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::Invalid {
                code: "unsupported_database",
                message: format!(
                    "unsupported database url {url:?}: use sqlite://PATH or postgres://…"
                ),
            });
        };
        let options: AnyConnectOptions = url.parse()?;
        let (read, write) = match dialect {
            Dialect::Sqlite => {
                let pool = |max| {
                    // A local file cannot drop a connection: no ping round trip to SQLite's
                    // worker thread before every query (profiled as a large share of a poll).
                    AnyPoolOptions::new()
                        .max_connections(max)
                        .test_before_acquire(false)
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                conn.execute(
                                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 30000;",
                                )
                                .await?;
                                Ok(())
                            })
                        })
                };
                let write = pool(1).connect_with(options.clone()).await?;
                migrate_first(&write, dialect).await?;
                let read = pool(4).connect_with(options).await?;
                (read, write)
            }
            Dialect::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .connect_with(options)
                    .await?;
                migrate_first(&pool, dialect).await?;
                (pool.clone(), pool)
            }
        };
        Ok(SqlStore {
            read,
            write,
            dialect,
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Closes every connection (waits for them to be returned).
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

async fn migrate_first(pool: &AnyPool, dialect: Dialect) -> StoreResult<()> {
    crate::migrations::migrate(pool, dialect).await
}

/// Runs a `SELECT COUNT(*) AS n … WHERE … = $1` query.
async fn count(conn: &mut AnyConnection, sql: &str, key: i64) -> StoreResult<i64> {
    let row = sqlx::query(sql).bind(key).fetch_one(&mut *conn).await?;
    Ok(row.try_get("n")?)
}

fn conflict(err: sqlx::Error, code: &'static str, message: String) -> StoreError {
    let unique = err
        .as_database_error()
        .is_some_and(|db| db.is_unique_violation());
    if unique {
        StoreError::Conflict { code, message }
    } else {
        StoreError::Database(err)
    }
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn parse_name(s: String) -> StoreResult<Name> {
    Name::parse(&s).map_err(corrupt)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn progress_of(done: Option<i64>, total: Option<i64>) -> Option<Progress> {
    match (done, total) {
        (Some(done), Some(total)) => Some(Progress {
            done: to_u64(done),
            total: to_u64(total),
        }),
        _ => None,
    }
}

fn scope_key(scope: Scope) -> String {
    match scope {
        Scope::Device(d) => format!("device:{d}"),
        Scope::ProjectProfile(p, f) => format!("project:{p}/profile:{f}"),
        Scope::Project(p) => format!("project:{p}"),
        Scope::Profile(f) => format!("profile:{f}"),
        Scope::Tenant => "tenant".to_owned(),
    }
}

fn scope_columns(scope: Scope) -> (Option<i64>, Option<i64>, Option<i64>) {
    match scope {
        Scope::Device(d) => (Some(d.0), None, None),
        Scope::ProjectProfile(p, f) => (None, Some(p.0), Some(f.0)),
        Scope::Project(p) => (None, Some(p.0), None),
        Scope::Profile(f) => (None, None, Some(f.0)),
        Scope::Tenant => (None, None, None),
    }
}

fn scope_from_columns(device: Option<i64>, project: Option<i64>, profile: Option<i64>) -> Scope {
    match (device, project, profile) {
        (Some(d), _, _) => Scope::Device(DeviceKey(d)),
        (None, Some(p), Some(f)) => Scope::ProjectProfile(ProjectKey(p), ProfileKey(f)),
        (None, Some(p), None) => Scope::Project(ProjectKey(p)),
        (None, None, Some(f)) => Scope::Profile(ProfileKey(f)),
        (None, None, None) => Scope::Tenant,
    }
}

fn kind_of(s: &str) -> StoreResult<ArtifactKind> {
    s.parse().map_err(corrupt)
}

fn state_of(s: &str) -> StoreResult<UpdateState> {
    s.parse().map_err(corrupt)
}

const DEVICE_SELECT: &str = "SELECT d.id, d.tenant_id, d.device_id, d.project_id, p.name AS project_name, \
     d.profile_id, f.name AS profile_name, d.tags, d.attributes, d.fw_title, d.fw_version, \
     d.sw_title, d.sw_version, d.last_seen, d.created_at \
     FROM devices d LEFT JOIN projects p ON p.id = d.project_id \
     LEFT JOIN profiles f ON f.id = d.profile_id";

fn device_from(row: &AnyRow) -> StoreResult<Device> {
    let project = match (
        row.try_get::<Option<i64>, _>("project_id")?,
        row.try_get::<Option<String>, _>("project_name")?,
    ) {
        (Some(key), Some(name)) => Some((ProjectKey(key), parse_name(name)?)),
        _ => None,
    };
    let profile = match (
        row.try_get::<Option<i64>, _>("profile_id")?,
        row.try_get::<Option<String>, _>("profile_name")?,
    ) {
        (Some(key), Some(name)) => Some((ProfileKey(key), parse_name(name)?)),
        _ => None,
    };
    let running = |title: &str, version: &str| -> StoreResult<Option<Running>> {
        let title: Option<String> = row.try_get(title)?;
        let version: Option<String> = row.try_get(version)?;
        Ok(match (title, version) {
            (Some(title), Some(version)) => Some(Running { title, version }),
            _ => None,
        })
    };
    let tags: String = row.try_get("tags")?;
    let attributes: String = row.try_get("attributes")?;
    Ok(Device {
        key: DeviceKey(row.try_get("id")?),
        tenant: TenantKey(row.try_get("tenant_id")?),
        id: DeviceId::parse(&row.try_get::<String, _>("device_id")?).map_err(corrupt)?,
        project,
        profile,
        tags: serde_json::from_str(&tags).map_err(corrupt)?,
        attributes: serde_json::from_str(&attributes).map_err(corrupt)?,
        firmware: running("fw_title", "fw_version")?,
        software: running("sw_title", "sw_version")?,
        last_seen: row.try_get("last_seen")?,
        created_at: row.try_get("created_at")?,
    })
}

const ARTIFACT_SELECT: &str = "SELECT id, tenant_id, title, version, kind, size, filename, md5, sha1, \
     sha256, sha384, sha512, crc32, murmur3_32, murmur3_128, signature, description, uploaded_by, \
     created_at FROM artifacts";

fn artifact_from(row: &AnyRow, profiles: Vec<(ProfileKey, Name)>) -> StoreResult<Artifact> {
    Ok(Artifact {
        key: ArtifactKey(row.try_get("id")?),
        tenant: TenantKey(row.try_get("tenant_id")?),
        title: row.try_get("title")?,
        version: row.try_get("version")?,
        kind: kind_of(&row.try_get::<String, _>("kind")?)?,
        profiles,
        size: to_u64(row.try_get("size")?),
        filename: row.try_get("filename")?,
        checksums: Checksums {
            md5: row.try_get("md5")?,
            sha1: row.try_get("sha1")?,
            sha256: row.try_get("sha256")?,
            sha384: row.try_get("sha384")?,
            sha512: row.try_get("sha512")?,
            crc32: row.try_get("crc32")?,
            murmur3_32: row.try_get("murmur3_32")?,
            murmur3_128: row.try_get("murmur3_128")?,
        },
        signature: row.try_get("signature")?,
        description: row.try_get("description")?,
        uploaded_by: row.try_get("uploaded_by")?,
        created_at: row.try_get("created_at")?,
    })
}

const ACTION_SELECT: &str = "SELECT a.id, a.device_pk, d.device_id, a.artifact_id, a.artifact_title, \
     a.artifact_version, a.kind, a.state, a.progress_done, a.progress_total, a.failure_code, \
     a.failure_reason, a.cancel_pending, a.created_at, a.updated_at FROM actions a JOIN devices d ON d.id = a.device_pk";

fn action_from(row: &AnyRow) -> StoreResult<Action> {
    let failure = match row.try_get::<Option<String>, _>("failure_code")? {
        Some(code) => Some(Failed {
            code: code.parse::<FailureCode>().map_err(corrupt)?,
            reason: row
                .try_get::<Option<String>, _>("failure_reason")?
                .unwrap_or_default(),
        }),
        None => None,
    };
    Ok(Action {
        key: ActionKey(row.try_get("id")?),
        device: DeviceKey(row.try_get("device_pk")?),
        device_id: DeviceId::parse(&row.try_get::<String, _>("device_id")?).map_err(corrupt)?,
        artifact: row
            .try_get::<Option<i64>, _>("artifact_id")?
            .map(ArtifactKey),
        artifact_title: row.try_get("artifact_title")?,
        artifact_version: row.try_get("artifact_version")?,
        kind: kind_of(&row.try_get::<String, _>("kind")?)?,
        state: state_of(&row.try_get::<String, _>("state")?)?,
        progress: progress_of(
            row.try_get("progress_done")?,
            row.try_get("progress_total")?,
        ),
        failure,
        cancel_pending: row.try_get::<i64, _>("cancel_pending")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn api_key_from(row: &AnyRow) -> StoreResult<ApiKey> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        tenant: TenantKey(row.try_get("tenant_id")?),
        tenant_name: parse_name(row.try_get("tenant_name")?)?,
        name: row.try_get("name")?,
        role: row
            .try_get::<String, _>("role")?
            .parse::<Role>()
            .map_err(corrupt)?,
        server_admin: row.try_get::<i64, _>("server_admin")? != 0,
        created_at: row.try_get("created_at")?,
    })
}

const TENANT_SELECT: &str = "SELECT id, name, created_at, poll_interval_secs, auto_register, frugal_auto_register FROM tenants";

fn tenant_from(row: &AnyRow) -> StoreResult<Tenant> {
    Ok(Tenant {
        key: TenantKey(row.try_get("id")?),
        name: parse_name(row.try_get("name")?)?,
        settings: TenantSettings {
            poll_interval_secs: u32::try_from(row.try_get::<i64, _>("poll_interval_secs")?)
                .unwrap_or(u32::MAX),
            auto_register: row.try_get::<i64, _>("auto_register")? != 0,
            frugal_auto_register: row.try_get::<i64, _>("frugal_auto_register")? != 0,
        },
        created_at: row.try_get("created_at")?,
    })
}

/// An assignment with what resolution and planning need of its artifact.
struct LoadedAssignment {
    kind: ArtifactKind,
    candidate: Candidate,
    title: String,
    version: String,
}

async fn artifact_profiles(
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

async fn load_artifact(conn: &mut AnyConnection, row: &AnyRow) -> StoreResult<Artifact> {
    let profiles = artifact_profiles(conn, row.try_get("id")?).await?;
    artifact_from(row, profiles)
}

async fn load_assignments(
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

fn desired_for(
    target: &DeviceTarget,
    assignments: &[LoadedAssignment],
    kind: ArtifactKind,
) -> Option<Desired> {
    let of_kind: Vec<&LoadedAssignment> = assignments.iter().filter(|a| a.kind == kind).collect();
    let candidates: Vec<Candidate> = of_kind.iter().map(|a| a.candidate.clone()).collect();
    let resolved = resolve(target, &candidates)?;
    let winner = of_kind
        .iter()
        .find(|a| a.candidate.artifact == resolved.artifact)?;
    Some(Desired {
        artifact: resolved.artifact,
        title: winner.title.clone(),
        version: winner.version.clone(),
        scope: resolved.scope,
    })
}

fn kind_status(desired: Option<Desired>, running: Option<(String, String)>) -> KindStatus {
    KindStatus {
        desired: desired.map(|d| Release {
            artifact: d.artifact,
            title: d.title,
            version: d.version,
        }),
        running,
    }
}

/// One history entry to write.
struct Event<'a> {
    action: ActionKey,
    from: Option<UpdateState>,
    to: UpdateState,
    source: &'a str,
    detail: &'a str,
    refused: bool,
    progress: Option<Progress>,
}

async fn insert_event(conn: &mut AnyConnection, event: Event<'_>) -> StoreResult<()> {
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

/// Whether a reconciliation may queue again an artifact whose last action on a device failed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// The explicit assignment of this artifact: try it again.
    Only(ArtifactKey),
    /// Anything else: a failed update stays failed until someone assigns it again.
    No,
}

/// Brings the active action of every device `only` covers (every device of the tenant when
/// `None`) in line with what the device should run.
async fn reconcile(
    conn: &mut AnyConnection,
    dialect: Dialect,
    tenant: TenantKey,
    only: Option<Scope>,
    source: &str,
    retry: Retry,
) -> StoreResult<()> {
    if dialect == Dialect::Postgres {
        // One reconciliation per tenant at a time, so two writers cannot both queue an action.
        sqlx::query("SELECT pg_advisory_xact_lock(7345002, CAST($1 AS INTEGER))")
            .bind(tenant.0)
            .execute(&mut *conn)
            .await?;
    }
    let assignments = load_assignments(conn, tenant).await?;
    let mut devices_query = String::from(
        "SELECT id, project_id, profile_id, fw_title, fw_version, sw_title, sw_version FROM devices WHERE tenant_id = $1",
    );
    if let Some(Scope::Device(_)) = only {
        devices_query.push_str(" AND id = $2");
    }
    let mut query = sqlx::query(&devices_query).bind(tenant.0);
    if let Some(Scope::Device(device)) = only {
        query = query.bind(device.0);
    }
    let devices = query.fetch_all(&mut *conn).await?;

    // For one device, look at that device's actions only: a report must not cost a scan of the
    // whole tenant's history.
    let one_device = match only {
        Some(Scope::Device(device)) => Some(device.0),
        _ => None,
    };
    let device_filter = if one_device.is_some() {
        " AND device_pk = $2"
    } else {
        ""
    };
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
    let mut failed: HashSet<(i64, i64)> = HashSet::new();
    for row in &failed_rows {
        failed.insert((row.try_get("device_pk")?, row.try_get("artifact_id")?));
    }
    let release_of: HashMap<ArtifactKey, (&str, &str, ArtifactKind)> = assignments
        .iter()
        .map(|a| {
            (
                a.candidate.artifact,
                (a.title.as_str(), a.version.as_str(), a.kind),
            )
        })
        .collect();

    for row in &devices {
        let target = DeviceTarget {
            device: DeviceKey(row.try_get("id")?),
            project: row.try_get::<Option<i64>, _>("project_id")?.map(ProjectKey),
            profile: row.try_get::<Option<i64>, _>("profile_id")?.map(ProfileKey),
        };
        if let Some(scope) = only
            && !scope.covers(&target)
        {
            continue;
        }
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
        // A desired artifact that already failed on this device is not planned again, unless
        // this reconciliation is the explicit assignment of it.
        let plannable = |desired: Option<Desired>| {
            desired.filter(|d| {
                retry == Retry::Only(d.artifact)
                    || !failed.contains(&(target.device.0, d.artifact.0))
            })
        };
        let firmware = kind_status(
            plannable(desired_for(&target, &assignments, ArtifactKind::Firmware)),
            running("fw_title", "fw_version")?,
        );
        let software = kind_status(
            plannable(desired_for(&target, &assignments, ArtifactKind::Software)),
            running("sw_title", "sw_version")?,
        );
        let current = active_of.get(&target.device.0).copied();
        // An active action whose artifact was deleted cannot be wanted: a key no artifact has
        // makes the plan supersede it.
        let active = current.map(|(action, artifact, _)| ActiveAction {
            action,
            artifact: artifact.unwrap_or(ArtifactKey(-1)),
        });
        let (cancel, next) = match plan(&firmware, &software, active) {
            Plan::Keep => (None, None),
            Plan::Queue(artifact) => (None, Some(artifact)),
            Plan::Supersede { cancel, next } => (Some(cancel), next),
        };
        if let Some(cancel) = cancel {
            let from = current.map(|(_, _, state)| state);
            // A device that was told about the action must confirm that it stopped.
            let told = from.is_some_and(|state| state >= UpdateState::Initiated);
            sqlx::query("UPDATE actions SET state = 'CANCELED', cancel_pending = $1, updated_at = $2 WHERE id = $3")
                .bind(i64::from(told))
                .bind(now_millis())
                .bind(cancel.0)
                .execute(&mut *conn)
                .await?;
            insert_event(
                conn,
                Event {
                    action: cancel,
                    from,
                    to: UpdateState::Canceled,
                    source,
                    detail: "superseded: the device's desired artifact changed",
                    refused: false,
                    progress: None,
                },
            )
            .await?;
        }
        let Some(next) = next else { continue };
        let Some((title, version, kind)) = release_of.get(&next).copied() else {
            continue;
        };
        let now = now_millis();
        let row = sqlx::query(
            "INSERT INTO actions (tenant_id, device_pk, artifact_id, artifact_title, artifact_version, kind, \
             state, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'QUEUED', $7, $7) RETURNING id",
        )
        .bind(tenant.0)
        .bind(target.device.0)
        .bind(next.0)
        .bind(title)
        .bind(version)
        .bind(kind.as_str())
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
        let action = ActionKey(row.try_get("id")?);
        insert_event(
            conn,
            Event {
                action,
                from: None,
                to: UpdateState::Queued,
                source,
                detail: &format!("{title}@{version} desired"),
                refused: false,
                progress: None,
            },
        )
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqlStore {
    async fn create_tenant(&self, name: &Name) -> StoreResult<Tenant> {
        let now = now_millis();
        let row = sqlx::query(
            "INSERT INTO tenants (name, name_lower, created_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name.as_str())
        .bind(name.as_str().to_ascii_lowercase())
        .bind(now)
        .fetch_one(&self.write)
        .await
        .map_err(|e| conflict(e, "tenant_exists", format!("tenant {name} exists already")))?;
        Ok(Tenant {
            key: TenantKey(row.try_get("id")?),
            name: name.clone(),
            settings: TenantSettings::default(),
            created_at: now,
        })
    }

    async fn tenant_by_name(&self, name: &str) -> StoreResult<Option<Tenant>> {
        let row = sqlx::query(&format!("{TENANT_SELECT} WHERE name_lower = $1"))
            .bind(name.to_ascii_lowercase())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(tenant_from).transpose()
    }

    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        let rows = sqlx::query(&format!("{TENANT_SELECT} ORDER BY name"))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(tenant_from).collect()
    }

    async fn create_project(&self, tenant: TenantKey, name: &Name) -> StoreResult<Project> {
        let now = now_millis();
        let row = sqlx::query(
            "INSERT INTO projects (tenant_id, name, created_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(tenant.0)
        .bind(name.as_str())
        .bind(now)
        .fetch_one(&self.write)
        .await
        .map_err(|e| {
            conflict(
                e,
                "project_exists",
                format!("project {name} exists already"),
            )
        })?;
        Ok(Project {
            key: ProjectKey(row.try_get("id")?),
            name: name.clone(),
            created_at: now,
        })
    }

    async fn project_by_name(
        &self,
        tenant: TenantKey,
        name: &Name,
    ) -> StoreResult<Option<Project>> {
        let row = sqlx::query(
            "SELECT id, name, created_at FROM projects WHERE tenant_id = $1 AND name = $2",
        )
        .bind(tenant.0)
        .bind(name.as_str())
        .fetch_optional(&self.read)
        .await?;
        match row {
            Some(row) => Ok(Some(Project {
                key: ProjectKey(row.try_get("id")?),
                name: parse_name(row.try_get("name")?)?,
                created_at: row.try_get("created_at")?,
            })),
            None => Ok(None),
        }
    }

    async fn list_projects(&self, tenant: TenantKey) -> StoreResult<Vec<Project>> {
        let rows = sqlx::query(
            "SELECT id, name, created_at FROM projects WHERE tenant_id = $1 ORDER BY name",
        )
        .bind(tenant.0)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Project {
                    key: ProjectKey(row.try_get("id")?),
                    name: parse_name(row.try_get("name")?)?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn create_profile(
        &self,
        tenant: TenantKey,
        name: &Name,
        description: &str,
    ) -> StoreResult<Profile> {
        let now = now_millis();
        let row = sqlx::query(
            "INSERT INTO profiles (tenant_id, name, description, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(tenant.0)
        .bind(name.as_str())
        .bind(description)
        .bind(now)
        .fetch_one(&self.write)
        .await
        .map_err(|e| conflict(e, "profile_exists", format!("profile {name} exists already")))?;
        Ok(Profile {
            key: ProfileKey(row.try_get("id")?),
            name: name.clone(),
            description: description.to_owned(),
            settings: ProfileSettings::default(),
            signing_cert: None,
            created_at: now,
        })
    }

    async fn profile_by_name(
        &self,
        tenant: TenantKey,
        name: &Name,
    ) -> StoreResult<Option<Profile>> {
        let row = sqlx::query("SELECT id, name, description, drogue_dfu, aws_http, lwm2m_delivery, lwm2m_path_only, signing_cert, signing_cert_name, created_at FROM profiles WHERE tenant_id = $1 AND name = $2")
            .bind(tenant.0)
            .bind(name.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(profile_from).transpose()
    }

    async fn list_profiles(&self, tenant: TenantKey) -> StoreResult<Vec<Profile>> {
        let rows = sqlx::query("SELECT id, name, description, drogue_dfu, aws_http, lwm2m_delivery, lwm2m_path_only, signing_cert, signing_cert_name, created_at FROM profiles WHERE tenant_id = $1 ORDER BY name")
            .bind(tenant.0)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(profile_from).collect()
    }

    async fn set_profile_signing_cert(
        &self,
        tenant: TenantKey,
        profile: ProfileKey,
        cert: Option<&SigningCert>,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE profiles SET signing_cert = $1, signing_cert_name = $2 WHERE tenant_id = $3 AND id = $4",
        )
        .bind(cert.map(|c| c.pem.clone()))
        .bind(cert.map(|c| c.name.clone()))
        .bind(tenant.0)
        .bind(profile.0)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_profile_settings(
        &self,
        tenant: TenantKey,
        profile: ProfileKey,
        settings: ProfileSettings,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE profiles SET drogue_dfu = $1, aws_http = $2, lwm2m_delivery = $3, \
             lwm2m_path_only = $4 WHERE tenant_id = $5 AND id = $6",
        )
        .bind(i64::from(settings.drogue_dfu))
        .bind(i64::from(settings.aws_http_delivery))
        .bind(settings.lwm2m_delivery.as_str())
        .bind(i64::from(settings.lwm2m_path_only))
        .bind(tenant.0)
        .bind(profile.0)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn create_device(
        &self,
        tenant: TenantKey,
        new: &NewDevice,
        credentials: &[NewCredential],
    ) -> StoreResult<Device> {
        let mut tx = self.write.begin().await?;
        let now = now_millis();
        let tags = serde_json::to_string(&new.tags).map_err(corrupt)?;
        let attributes = serde_json::to_string(&new.attributes).map_err(corrupt)?;
        let row = sqlx::query(
            "INSERT INTO devices (tenant_id, device_id, project_id, profile_id, tags, attributes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(tenant.0)
        .bind(new.id.as_str())
        .bind(new.project.map(|p| p.0))
        .bind(new.profile.map(|p| p.0))
        .bind(tags)
        .bind(attributes)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| conflict(e, "device_exists", format!("device {} exists already", new.id)))?;
        let key = DeviceKey(row.try_get("id")?);
        for credential in credentials {
            sqlx::query(
                "INSERT INTO device_credentials (device_pk, kind, secret_hash, gateway, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(key.0)
            .bind(credential.kind.as_str())
            .bind(&credential.secret_hash)
            .bind(i64::from(credential.gateway))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict(e, "credential_exists", "that credential belongs to another device".to_owned()))?;
        }
        reconcile(
            &mut tx,
            self.dialect,
            tenant,
            Some(Scope::Device(key)),
            "server",
            Retry::No,
        )
        .await?;
        let row = sqlx::query(&format!("{DEVICE_SELECT} WHERE d.id = $1"))
            .bind(key.0)
            .fetch_one(&mut *tx)
            .await?;
        let device = device_from(&row)?;
        tx.commit().await?;
        Ok(device)
    }

    async fn device(&self, tenant: TenantKey, id: &DeviceId) -> StoreResult<Option<Device>> {
        let row = sqlx::query(&format!(
            "{DEVICE_SELECT} WHERE d.tenant_id = $1 AND d.device_id = $2"
        ))
        .bind(tenant.0)
        .bind(id.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(device_from).transpose()
    }

    async fn device_by_key(&self, key: DeviceKey) -> StoreResult<Option<Device>> {
        let row = sqlx::query(&format!("{DEVICE_SELECT} WHERE d.id = $1"))
            .bind(key.0)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(device_from).transpose()
    }

    async fn list_devices(&self, tenant: TenantKey, page: Page) -> StoreResult<Paged<Device>> {
        let rows = sqlx::query(&format!(
            "{DEVICE_SELECT} WHERE d.tenant_id = $1 ORDER BY d.device_id LIMIT $2 OFFSET $3"
        ))
        .bind(tenant.0)
        .bind(to_i64(page.limit))
        .bind(to_i64(page.offset))
        .fetch_all(&self.read)
        .await?;
        let mut conn = self.read.acquire().await?;
        let total = count(
            &mut conn,
            "SELECT COUNT(*) AS n FROM devices WHERE tenant_id = $1",
            tenant.0,
        )
        .await?;
        Ok(Paged {
            items: rows.iter().map(device_from).collect::<StoreResult<_>>()?,
            total: to_u64(total),
        })
    }

    async fn delete_device(&self, tenant: TenantKey, id: &DeviceId) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM devices WHERE tenant_id = $1 AND device_id = $2")
            .bind(tenant.0)
            .bind(id.as_str())
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn device_by_credential(
        &self,
        kind: CredentialKind,
        secret_hash: &str,
    ) -> StoreResult<Option<Device>> {
        let row = sqlx::query(&format!(
            "{DEVICE_SELECT} JOIN device_credentials c ON c.device_pk = d.id WHERE c.kind = $1 AND c.secret_hash = $2"
        ))
        .bind(kind.as_str())
        .bind(secret_hash)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(device_from).transpose()
    }

    async fn gateway_by_credential(
        &self,
        kind: CredentialKind,
        secret_hash: &str,
    ) -> StoreResult<Option<Device>> {
        let row = sqlx::query(&format!(
            "{DEVICE_SELECT} JOIN device_credentials c ON c.device_pk = d.id \
             WHERE c.kind = $1 AND c.secret_hash = $2 AND c.gateway = 1"
        ))
        .bind(kind.as_str())
        .bind(secret_hash)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(device_from).transpose()
    }

    async fn insert_artifact(&self, tenant: TenantKey, new: &NewArtifact) -> StoreResult<Artifact> {
        let mut tx = self.write.begin().await?;
        let now = now_millis();
        let sums = &new.checksums;
        let row = sqlx::query(
            "INSERT INTO artifacts (tenant_id, title, version, kind, size, filename, md5, sha1, sha256, \
             sha384, sha512, crc32, murmur3_32, murmur3_128, signature, description, uploaded_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) RETURNING id",
        )
        .bind(tenant.0)
        .bind(&new.title)
        .bind(&new.version)
        .bind(new.kind.as_str())
        .bind(to_i64(new.size))
        .bind(&new.filename)
        .bind(&sums.md5)
        .bind(&sums.sha1)
        .bind(&sums.sha256)
        .bind(&sums.sha384)
        .bind(&sums.sha512)
        .bind(&sums.crc32)
        .bind(&sums.murmur3_32)
        .bind(&sums.murmur3_128)
        .bind(new.signature.as_deref())
        .bind(&new.description)
        .bind(&new.uploaded_by)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            conflict(e, "artifact_exists", format!("artifact {}@{} exists already", new.title, new.version))
        })?;
        let key: i64 = row.try_get("id")?;
        for profile in &new.profiles {
            sqlx::query(
                "INSERT INTO artifact_profiles (artifact_id, profile_id) \
                 SELECT $1, id FROM profiles WHERE id = $2 AND tenant_id = $3",
            )
            .bind(key)
            .bind(profile.0)
            .bind(tenant.0)
            .execute(&mut *tx)
            .await?;
        }
        let row = sqlx::query(&format!("{ARTIFACT_SELECT} WHERE id = $1"))
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        let artifact = load_artifact(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(artifact)
    }

    async fn artifact(&self, tenant: TenantKey, key: ArtifactKey) -> StoreResult<Option<Artifact>> {
        let mut conn = self.read.acquire().await?;
        let row = sqlx::query(&format!(
            "{ARTIFACT_SELECT} WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant.0)
        .bind(key.0)
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            Some(row) => Ok(Some(load_artifact(&mut conn, &row).await?)),
            None => Ok(None),
        }
    }

    async fn artifact_by_release(
        &self,
        tenant: TenantKey,
        title: &str,
        version: &str,
    ) -> StoreResult<Option<Artifact>> {
        let mut conn = self.read.acquire().await?;
        let row = sqlx::query(&format!(
            "{ARTIFACT_SELECT} WHERE tenant_id = $1 AND title = $2 AND version = $3"
        ))
        .bind(tenant.0)
        .bind(title)
        .bind(version)
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            Some(row) => Ok(Some(load_artifact(&mut conn, &row).await?)),
            None => Ok(None),
        }
    }

    async fn list_artifacts(
        &self,
        tenant: TenantKey,
        filter: &ArtifactFilter,
        page: Page,
    ) -> StoreResult<Paged<Artifact>> {
        let mut conn = self.read.acquire().await?;
        // Absent filters compare the column with itself.
        let condition = "tenant_id = $1 AND title = COALESCE($2, title) AND version = COALESCE($3, version) \
                         AND kind = COALESCE($4, kind)";
        let rows = sqlx::query(&format!(
            "{ARTIFACT_SELECT} WHERE {condition} ORDER BY title, id LIMIT $5 OFFSET $6"
        ))
        .bind(tenant.0)
        .bind(filter.title.as_deref())
        .bind(filter.version.as_deref())
        .bind(filter.kind.map(|k| k.as_str()))
        .bind(to_i64(page.limit))
        .bind(to_i64(page.offset))
        .fetch_all(&mut *conn)
        .await?;
        let total: i64 = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM artifacts WHERE {condition}"
        ))
        .bind(tenant.0)
        .bind(filter.title.as_deref())
        .bind(filter.version.as_deref())
        .bind(filter.kind.map(|k| k.as_str()))
        .fetch_one(&mut *conn)
        .await?
        .try_get("n")?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            items.push(load_artifact(&mut conn, row).await?);
        }
        Ok(Paged {
            items,
            total: to_u64(total),
        })
    }

    async fn delete_artifact(
        &self,
        tenant: TenantKey,
        key: ArtifactKey,
    ) -> StoreResult<DeletedArtifact> {
        let mut tx = self.write.begin().await?;
        let row = sqlx::query(
            "SELECT sha256, title, version FROM artifacts WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.0)
        .bind(key.0)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound { what: "artifact" })?;
        let sha256: String = row.try_get("sha256")?;
        let release = format!(
            "{}@{}",
            row.try_get::<String, _>("title")?,
            row.try_get::<String, _>("version")?
        );
        let assigned = count(
            &mut tx,
            "SELECT COUNT(*) AS n FROM assignments WHERE artifact_id = $1",
            key.0,
        )
        .await?;
        let active = count(
            &mut tx,
            &format!("SELECT COUNT(*) AS n FROM actions WHERE artifact_id = $1 AND state NOT IN {FINAL_STATES}"),
            key.0,
        )
        .await?;
        if assigned > 0 || active > 0 {
            return Err(StoreError::Invalid {
                code: "artifact_in_use",
                message: format!(
                    "artifact {release} is assigned {assigned} time(s) and installing on {active} device(s): unassign it first"
                ),
            });
        }
        sqlx::query("DELETE FROM artifacts WHERE id = $1")
            .bind(key.0)
            .execute(&mut *tx)
            .await?;
        let others: i64 = sqlx::query("SELECT COUNT(*) AS n FROM artifacts WHERE sha256 = $1")
            .bind(&sha256)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        tx.commit().await?;
        Ok(DeletedArtifact {
            sha256,
            blob_unreferenced: others == 0,
        })
    }

    async fn blob_references(&self) -> StoreResult<HashSet<String>> {
        let rows = sqlx::query("SELECT DISTINCT sha256 FROM artifacts")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<String, _>("sha256")?))
            .collect()
    }

    async fn assign(
        &self,
        tenant: TenantKey,
        scope: Scope,
        artifact: ArtifactKey,
        by: &str,
    ) -> StoreResult<Assignment> {
        let mut tx = self.write.begin().await?;
        let row = sqlx::query(
            "SELECT title, version, kind FROM artifacts WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.0)
        .bind(artifact.0)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound { what: "artifact" })?;
        let title: String = row.try_get("title")?;
        let version: String = row.try_get("version")?;
        let kind = kind_of(&row.try_get::<String, _>("kind")?)?;
        check_scope_in_tenant(&mut tx, tenant, scope).await?;
        let compatible = artifact_profiles(&mut tx, artifact.0).await?;
        if !compatible.is_empty() {
            let scope_profile = match scope {
                Scope::Device(device) => {
                    sqlx::query("SELECT profile_id FROM devices WHERE id = $1")
                        .bind(device.0)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get::<Option<i64>, _>("profile_id")?
                        .map(ProfileKey)
                }
                Scope::ProjectProfile(_, profile) | Scope::Profile(profile) => Some(profile),
                Scope::Project(_) | Scope::Tenant => None,
            };
            let fits = match scope {
                Scope::Project(_) | Scope::Tenant => true,
                _ => scope_profile.is_some_and(|p| compatible.iter().any(|(key, _)| *key == p)),
            };
            if !fits {
                let names: Vec<&str> = compatible.iter().map(|(_, name)| name.as_str()).collect();
                return Err(StoreError::Invalid {
                    code: "incompatible_artifact",
                    message: format!(
                        "artifact {title}@{version} runs only on profiles {}: assign it where those run",
                        names.join(", ")
                    ),
                });
            }
        }
        let now = now_millis();
        let (device, project, profile) = scope_columns(scope);
        sqlx::query(
            "DELETE FROM assignments WHERE tenant_id = $1 AND scope_key = $2 AND kind = $3",
        )
        .bind(tenant.0)
        .bind(scope_key(scope))
        .bind(kind.as_str())
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "INSERT INTO assignments (tenant_id, scope_key, kind, device_pk, project_id, profile_id, artifact_id, \
             created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(tenant.0)
        .bind(scope_key(scope))
        .bind(kind.as_str())
        .bind(device)
        .bind(project)
        .bind(profile)
        .bind(artifact.0)
        .bind(by)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get("id")?;
        reconcile(
            &mut tx,
            self.dialect,
            tenant,
            Some(scope),
            by,
            Retry::Only(artifact),
        )
        .await?;
        let row = sqlx::query(&format!("{ASSIGNMENT_SELECT} WHERE s.id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let assignment = assignment_from(&row)?;
        tx.commit().await?;
        Ok(assignment)
    }

    async fn unassign(
        &self,
        tenant: TenantKey,
        scope: Scope,
        kind: ArtifactKind,
        by: &str,
    ) -> StoreResult<bool> {
        let mut tx = self.write.begin().await?;
        let done = sqlx::query(
            "DELETE FROM assignments WHERE tenant_id = $1 AND scope_key = $2 AND kind = $3",
        )
        .bind(tenant.0)
        .bind(scope_key(scope))
        .bind(kind.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        reconcile(&mut tx, self.dialect, tenant, Some(scope), by, Retry::No).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list_assignments(&self, tenant: TenantKey) -> StoreResult<Vec<Assignment>> {
        let rows = sqlx::query(&format!(
            "{ASSIGNMENT_SELECT} WHERE s.tenant_id = $1 ORDER BY s.id"
        ))
        .bind(tenant.0)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(assignment_from).collect()
    }

    async fn device_status(
        &self,
        tenant: TenantKey,
        id: &DeviceId,
    ) -> StoreResult<Option<DeviceStatus>> {
        let mut conn = self.read.acquire().await?;
        let Some(row) = sqlx::query(&format!(
            "{DEVICE_SELECT} WHERE d.tenant_id = $1 AND d.device_id = $2"
        ))
        .bind(tenant.0)
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?
        else {
            return Ok(None);
        };
        let device = device_from(&row)?;
        let assignments = load_assignments(&mut conn, tenant).await?;
        let target = DeviceTarget {
            device: device.key,
            project: device.project.as_ref().map(|(key, _)| *key),
            profile: device.profile.as_ref().map(|(key, _)| *key),
        };
        let active = sqlx::query(&format!(
            "{ACTION_SELECT} WHERE a.device_pk = $1 AND a.state NOT IN {FINAL_STATES}"
        ))
        .bind(device.key.0)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(Some(DeviceStatus {
            desired_firmware: desired_for(&target, &assignments, ArtifactKind::Firmware),
            desired_software: desired_for(&target, &assignments, ArtifactKind::Software),
            active: active.as_ref().map(action_from).transpose()?,
            device,
        }))
    }

    async fn action(&self, tenant: TenantKey, key: ActionKey) -> StoreResult<Option<Action>> {
        let row = sqlx::query(&format!(
            "{ACTION_SELECT} WHERE a.tenant_id = $1 AND a.id = $2"
        ))
        .bind(tenant.0)
        .bind(key.0)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(action_from).transpose()
    }

    async fn actions_for_device(
        &self,
        tenant: TenantKey,
        id: &DeviceId,
    ) -> StoreResult<Vec<Action>> {
        let rows = sqlx::query(&format!(
            "{ACTION_SELECT} WHERE a.tenant_id = $1 AND d.device_id = $2 ORDER BY a.id DESC"
        ))
        .bind(tenant.0)
        .bind(id.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(action_from).collect()
    }

    async fn action_history(
        &self,
        tenant: TenantKey,
        key: ActionKey,
    ) -> StoreResult<Vec<ActionEvent>> {
        let rows = sqlx::query(
            "SELECT e.at, e.from_state, e.to_state, e.source, e.detail, e.refused, e.progress_done, e.progress_total \
             FROM action_events e JOIN actions a ON a.id = e.action_id WHERE a.tenant_id = $1 AND a.id = $2 ORDER BY e.id",
        )
        .bind(tenant.0)
        .bind(key.0)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ActionEvent {
                    at: row.try_get("at")?,
                    from: row
                        .try_get::<Option<String>, _>("from_state")?
                        .as_deref()
                        .map(state_of)
                        .transpose()?,
                    to: state_of(&row.try_get::<String, _>("to_state")?)?,
                    source: row.try_get("source")?,
                    detail: row.try_get("detail")?,
                    refused: row.try_get::<i64, _>("refused")? != 0,
                    progress: progress_of(
                        row.try_get("progress_done")?,
                        row.try_get("progress_total")?,
                    ),
                })
            })
            .collect()
    }

    async fn report(
        &self,
        tenant: TenantKey,
        key: ActionKey,
        report: &Report,
        source: &str,
    ) -> StoreResult<ReportOutcome> {
        let mut tx = self.write.begin().await?;
        let row = sqlx::query(&format!(
            "{ACTION_SELECT} WHERE a.tenant_id = $1 AND a.id = $2"
        ))
        .bind(tenant.0)
        .bind(key.0)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound { what: "action" })?;
        let action = action_from(&row)?;
        let target = report.target();
        let (progress, detail) = match report {
            Report::Reached { progress, .. } => (*progress, String::new()),
            Report::Failed(failure) => (
                None,
                format!("{}: {}", failure.code.as_str(), failure.reason),
            ),
            Report::Succeeded | Report::Canceled => (None, String::new()),
        };
        let next = match transition(action.state, report) {
            Ok(next) => next,
            Err(refusal) => {
                let reason = refusal.to_string();
                insert_event(
                    &mut tx,
                    Event {
                        action: key,
                        from: Some(action.state),
                        to: target,
                        source,
                        detail: &reason,
                        refused: true,
                        progress,
                    },
                )
                .await?;
                tx.commit().await?;
                return Ok(ReportOutcome::Refused { action, reason });
            }
        };
        let (failure_code, failure_reason) = match report {
            Report::Failed(failure) => (Some(failure.code.as_str()), Some(failure.reason.as_str())),
            _ => (None, None),
        };
        // Progress survives reports that carry none, until the action ends.
        let kept = progress.or(action.progress).filter(|_| !next.is_final());
        sqlx::query(
            "UPDATE actions SET state = $1, progress_done = $2, progress_total = $3, failure_code = $4, \
             failure_reason = $5, updated_at = $6 WHERE id = $7",
        )
        .bind(next.as_str())
        .bind(kept.map(|p| to_i64(p.done)))
        .bind(kept.map(|p| to_i64(p.total)))
        .bind(failure_code)
        .bind(failure_reason)
        .bind(now_millis())
        .bind(key.0)
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            Event {
                action: key,
                from: Some(action.state),
                to: next,
                source,
                detail: &detail,
                refused: false,
                progress,
            },
        )
        .await?;
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
                &mut tx,
                self.dialect,
                tenant,
                Some(Scope::Device(action.device)),
                "server",
                Retry::No,
            )
            .await?;
        }
        let row = sqlx::query(&format!("{ACTION_SELECT} WHERE a.id = $1"))
            .bind(key.0)
            .fetch_one(&mut *tx)
            .await?;
        let updated = action_from(&row)?;
        tx.commit().await?;
        Ok(ReportOutcome::Applied(updated))
    }

    async fn fleet_summary(&self, tenant: TenantKey) -> StoreResult<FleetSummary> {
        let mut conn = self.read.acquire().await?;
        let devices = to_u64(
            count(
                &mut conn,
                "SELECT COUNT(*) AS n FROM devices WHERE tenant_id = $1",
                tenant.0,
            )
            .await?,
        );
        let artifacts = to_u64(
            count(
                &mut conn,
                "SELECT COUNT(*) AS n FROM artifacts WHERE tenant_id = $1",
                tenant.0,
            )
            .await?,
        );
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM actions WHERE id IN \
             (SELECT MAX(id) FROM actions WHERE tenant_id = $1 GROUP BY device_pk) GROUP BY state",
        )
        .bind(tenant.0)
        .fetch_all(&mut *conn)
        .await?;
        let mut latest_action_states = BTreeMap::new();
        for row in &rows {
            latest_action_states.insert(
                row.try_get::<String, _>("state")?,
                to_u64(row.try_get("n")?),
            );
        }
        Ok(FleetSummary {
            devices,
            artifacts,
            latest_action_states,
        })
    }

    async fn update_tenant_settings(
        &self,
        tenant: TenantKey,
        settings: TenantSettings,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE tenants SET poll_interval_secs = $1, auto_register = $2, frugal_auto_register = $3 WHERE id = $4",
        )
        .bind(i64::from(settings.poll_interval_secs))
        .bind(i64::from(settings.auto_register))
        .bind(i64::from(settings.frugal_auto_register))
        .bind(tenant.0)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn set_gateway_token(
        &self,
        tenant: TenantKey,
        secret_hash: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE tenants SET gateway_token_hash = $1 WHERE id = $2")
            .bind(secret_hash)
            .bind(tenant.0)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn tenant_by_gateway_token(&self, secret_hash: &str) -> StoreResult<Option<Tenant>> {
        let row = sqlx::query(&format!("{TENANT_SELECT} WHERE gateway_token_hash = $1"))
            .bind(secret_hash)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(tenant_from).transpose()
    }

    async fn place_device(
        &self,
        tenant: TenantKey,
        device: DeviceKey,
        project: Option<ProjectKey>,
        profile: Option<ProfileKey>,
    ) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        let done = sqlx::query(
            "UPDATE devices SET project_id = $1, profile_id = $2 WHERE tenant_id = $3 AND id = $4",
        )
        .bind(project.map(|p| p.0))
        .bind(profile.map(|p| p.0))
        .bind(tenant.0)
        .bind(device.0)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "device" });
        }
        reconcile(
            &mut tx,
            self.dialect,
            tenant,
            Some(Scope::Device(device)),
            "server",
            Retry::No,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_running(
        &self,
        device: DeviceKey,
        kind: ArtifactKind,
        title: &str,
        version: &str,
    ) -> StoreResult<()> {
        let sql = match kind {
            ArtifactKind::Firmware => {
                "UPDATE devices SET fw_title = $1, fw_version = $2 WHERE id = $3"
            }
            ArtifactKind::Software => {
                "UPDATE devices SET sw_title = $1, sw_version = $2 WHERE id = $3"
            }
        };
        sqlx::query(sql)
            .bind(title)
            .bind(version)
            .bind(device.0)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn touch_device(&self, device: DeviceKey) -> StoreResult<()> {
        sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2")
            .bind(now_millis())
            .bind(device.0)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn update_attributes(
        &self,
        device: DeviceKey,
        mode: AttributeMode,
        data: &BTreeMap<String, String>,
    ) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        let row = sqlx::query("SELECT attributes FROM devices WHERE id = $1")
            .bind(device.0)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound { what: "device" })?;
        let mut attributes: BTreeMap<String, String> =
            serde_json::from_str(&row.try_get::<String, _>("attributes")?).map_err(corrupt)?;
        match mode {
            AttributeMode::Merge => attributes.extend(data.clone()),
            AttributeMode::Replace => attributes = data.clone(),
            AttributeMode::Remove => attributes.retain(|key, _| !data.contains_key(key)),
        }
        sqlx::query("UPDATE devices SET attributes = $1 WHERE id = $2")
            .bind(serde_json::to_string(&attributes).map_err(corrupt)?)
            .bind(device.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn queued_actions(&self, after: ActionKey, limit: u64) -> StoreResult<Vec<Queued>> {
        let rows = sqlx::query(
            "SELECT a.id, a.device_pk, a.tenant_id, a.artifact_id, a.kind, d.profile_id FROM actions a \
             JOIN devices d ON d.id = a.device_pk \
             WHERE a.state = 'QUEUED' AND a.id > $1 ORDER BY a.id LIMIT $2",
        )
        .bind(after.0)
        .bind(to_i64(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Queued {
                    action: ActionKey(row.try_get("id")?),
                    device: DeviceKey(row.try_get("device_pk")?),
                    tenant: TenantKey(row.try_get("tenant_id")?),
                    artifact: row
                        .try_get::<Option<i64>, _>("artifact_id")?
                        .map(ArtifactKey),
                    kind: kind_of(&row.try_get::<String, _>("kind")?)?,
                    profile: row.try_get::<Option<i64>, _>("profile_id")?.map(ProfileKey),
                })
            })
            .collect()
    }

    async fn initiate(&self, actions: &[ActionKey], source: &str) -> StoreResult<Vec<ActionKey>> {
        let mut tx = self.write.begin().await?;
        let now = now_millis();
        let mut done = Vec::with_capacity(actions.len());
        for action in actions {
            let changed = sqlx::query("UPDATE actions SET state = 'INITIATED', updated_at = $1 WHERE id = $2 AND state = 'QUEUED'")
                .bind(now)
                .bind(action.0)
                .execute(&mut *tx)
                .await?;
            if changed.rows_affected() == 0 {
                continue;
            }
            insert_event(
                &mut tx,
                Event {
                    action: *action,
                    from: Some(UpdateState::Queued),
                    to: UpdateState::Initiated,
                    source,
                    detail: "the device was told",
                    refused: false,
                    progress: None,
                },
            )
            .await?;
            done.push(*action);
        }
        tx.commit().await?;
        Ok(done)
    }

    async fn poll_view(&self, device: DeviceKey) -> StoreResult<PollView> {
        let rows = sqlx::query(&format!(
            "{ACTION_SELECT} WHERE a.device_pk = $1 AND (a.cancel_pending = 1 OR a.state = 'UPDATED' \
             OR a.state NOT IN {FINAL_STATES}) ORDER BY a.id DESC"
        ))
        .bind(device.0)
        .fetch_all(&self.read)
        .await?;
        let mut view = PollView::default();
        for row in &rows {
            let action = action_from(row)?;
            if action.cancel_pending && view.pending_cancel.is_none() {
                view.pending_cancel = Some(action.clone());
            }
            if !action.state.is_final() && view.active.is_none() {
                view.active = Some(action.clone());
            }
            if action.state == UpdateState::Updated && view.last_updated.is_none() {
                view.last_updated = Some(action);
            }
        }
        Ok(view)
    }

    async fn pending_cancel(&self, device: DeviceKey) -> StoreResult<Option<Action>> {
        let row = sqlx::query(&format!(
            "{ACTION_SELECT} WHERE a.device_pk = $1 AND a.cancel_pending = 1 ORDER BY a.id DESC LIMIT 1"
        ))
        .bind(device.0)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(action_from).transpose()
    }

    async fn acknowledge_cancel(
        &self,
        tenant: TenantKey,
        key: ActionKey,
        accepted: bool,
        source: &str,
    ) -> StoreResult<bool> {
        let mut tx = self.write.begin().await?;
        let done = sqlx::query("UPDATE actions SET cancel_pending = 0 WHERE tenant_id = $1 AND id = $2 AND cancel_pending = 1")
            .bind(tenant.0)
            .bind(key.0)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let detail = if accepted {
            "the device confirmed the cancellation"
        } else {
            "the device could not cancel"
        };
        insert_event(
            &mut tx,
            Event {
                action: key,
                from: Some(UpdateState::Canceled),
                to: UpdateState::Canceled,
                source,
                detail,
                refused: false,
                progress: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_lwm2m_psk(&self, device: DeviceKey, psk: Option<(&str, &str)>) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query("DELETE FROM lwm2m_psk WHERE device_pk = $1")
            .bind(device.0)
            .execute(&mut *tx)
            .await?;
        if let Some((identity, key)) = psk {
            sqlx::query("INSERT INTO lwm2m_psk (device_pk, identity, psk_key) VALUES ($1, $2, $3)")
                .bind(device.0)
                .bind(identity)
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    conflict(
                        e,
                        "psk_identity_exists",
                        format!("PSK identity {identity:?} belongs to another device"),
                    )
                })?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn lwm2m_psks(&self) -> StoreResult<Vec<(DeviceKey, String, String)>> {
        let rows = sqlx::query("SELECT device_pk, identity, psk_key FROM lwm2m_psk")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    DeviceKey(row.try_get("device_pk")?),
                    row.try_get("identity")?,
                    row.try_get("psk_key")?,
                ))
            })
            .collect()
    }

    async fn job_execution(&self, action: ActionKey) -> StoreResult<Option<JobExecution>> {
        let row = sqlx::query(
            "SELECT action_id, status, status_details, version_number, started_at, last_updated_at, \
             step_deadline FROM job_executions WHERE action_id = $1",
        )
        .bind(action.0)
        .fetch_optional(&self.read)
        .await?;
        row.map(|row| -> StoreResult<JobExecution> {
            Ok(JobExecution {
                action: ActionKey(row.try_get("action_id")?),
                status: row.try_get("status")?,
                status_details: row.try_get("status_details")?,
                version_number: row.try_get("version_number")?,
                started_at: row.try_get("started_at")?,
                last_updated_at: row.try_get("last_updated_at")?,
                step_deadline: row.try_get("step_deadline")?,
            })
        })
        .transpose()
    }

    async fn save_job_execution(
        &self,
        execution: &JobExecution,
        expected_version: Option<i64>,
    ) -> StoreResult<bool> {
        let query = match expected_version {
            None => {
                "INSERT INTO job_executions (status, status_details, version_number, started_at, \
                 last_updated_at, step_deadline, action_id) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (action_id) DO NOTHING"
            }
            Some(_) => {
                "UPDATE job_executions SET status = $1, status_details = $2, version_number = $3, \
                 started_at = $4, last_updated_at = $5, step_deadline = $6 \
                 WHERE action_id = $7 AND version_number = $8"
            }
        };
        let mut bound = sqlx::query(query)
            .bind(&execution.status)
            .bind(&execution.status_details)
            .bind(execution.version_number)
            .bind(execution.started_at)
            .bind(execution.last_updated_at)
            .bind(execution.step_deadline)
            .bind(execution.action.0);
        if let Some(expected) = expected_version {
            bound = bound.bind(expected);
        }
        let done = bound.execute(&self.write).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn create_api_key(&self, tenant: TenantKey, new: &NewApiKey) -> StoreResult<ApiKey> {
        let now = now_millis();
        let row = sqlx::query(
            "INSERT INTO api_keys (tenant_id, name, role, server_admin, secret_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(tenant.0)
        .bind(&new.name)
        .bind(new.role.as_str())
        .bind(i64::from(new.server_admin))
        .bind(&new.secret_hash)
        .bind(now)
        .fetch_one(&self.write)
        .await
        .map_err(|e| conflict(e, "api_key_exists", "that key exists already".to_owned()))?;
        let id: i64 = row.try_get("id")?;
        let row = sqlx::query(&format!("{API_KEY_SELECT} WHERE k.id = $1"))
            .bind(id)
            .fetch_one(&self.write)
            .await?;
        api_key_from(&row)
    }

    async fn api_key_by_hash(&self, secret_hash: &str) -> StoreResult<Option<ApiKey>> {
        let row = sqlx::query(&format!("{API_KEY_SELECT} WHERE k.secret_hash = $1"))
            .bind(secret_hash)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(api_key_from).transpose()
    }

    async fn list_api_keys(&self, tenant: TenantKey) -> StoreResult<Vec<ApiKey>> {
        let rows = sqlx::query(&format!(
            "{API_KEY_SELECT} WHERE k.tenant_id = $1 ORDER BY k.id"
        ))
        .bind(tenant.0)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(api_key_from).collect()
    }

    async fn delete_api_key(&self, tenant: TenantKey, id: i64) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM api_keys WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.0)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

const ASSIGNMENT_SELECT: &str = "SELECT s.id, s.kind, s.device_pk, s.project_id, s.profile_id, s.artifact_id, \
     s.created_by, s.created_at, a.title, a.version, d.device_id, p.name AS project_name, f.name AS profile_name \
     FROM assignments s JOIN artifacts a ON a.id = s.artifact_id LEFT JOIN devices d ON d.id = s.device_pk \
     LEFT JOIN projects p ON p.id = s.project_id LEFT JOIN profiles f ON f.id = s.profile_id";

fn assignment_from(row: &AnyRow) -> StoreResult<Assignment> {
    let optional_name = |column: &str| -> StoreResult<Option<Name>> {
        row.try_get::<Option<String>, _>(column)?
            .map(parse_name)
            .transpose()
    };
    Ok(Assignment {
        id: row.try_get("id")?,
        scope: scope_from_columns(
            row.try_get("device_pk")?,
            row.try_get("project_id")?,
            row.try_get("profile_id")?,
        ),
        device_id: row
            .try_get::<Option<String>, _>("device_id")?
            .map(|id| DeviceId::parse(&id).map_err(corrupt))
            .transpose()?,
        project_name: optional_name("project_name")?,
        profile_name: optional_name("profile_name")?,
        kind: kind_of(&row.try_get::<String, _>("kind")?)?,
        artifact: ArtifactKey(row.try_get("artifact_id")?),
        artifact_title: row.try_get("title")?,
        artifact_version: row.try_get("version")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
    })
}

const API_KEY_SELECT: &str = "SELECT k.id, k.tenant_id, t.name AS tenant_name, k.name, k.role, k.server_admin, \
     k.created_at FROM api_keys k JOIN tenants t ON t.id = k.tenant_id";

fn profile_from(row: &AnyRow) -> StoreResult<Profile> {
    Ok(Profile {
        key: ProfileKey(row.try_get("id")?),
        name: parse_name(row.try_get("name")?)?,
        description: row.try_get("description")?,
        settings: ProfileSettings {
            drogue_dfu: row.try_get::<i64, _>("drogue_dfu")? != 0,
            aws_http_delivery: row.try_get::<i64, _>("aws_http")? != 0,
            lwm2m_delivery: row
                .try_get::<String, _>("lwm2m_delivery")?
                .parse()
                .map_err(StoreError::Corrupt)?,
            lwm2m_path_only: row.try_get::<i64, _>("lwm2m_path_only")? != 0,
        },
        signing_cert: match (
            row.try_get::<Option<String>, _>("signing_cert")?,
            row.try_get::<Option<String>, _>("signing_cert_name")?,
        ) {
            (Some(pem), Some(name)) => Some(SigningCert { name, pem }),
            _ => None,
        },
        created_at: row.try_get("created_at")?,
    })
}

/// Refuses a scope naming a device, project or profile of another tenant.
async fn check_scope_in_tenant(
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
