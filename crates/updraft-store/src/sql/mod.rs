//! [`SqlStore`]: the [`Store`] over SQLite or PostgreSQL through sqlx's `Any` driver. The SQL is
//! written once for both (`$n` parameters, `RETURNING`, partial unique indexes); only the schema's
//! auto-increment key differs. SQLite gets one writer connection and a pool of readers, so that
//! writes queue in the process instead of failing with SQLITE_BUSY.

mod actions;
mod artifacts;
mod assignments;
mod cluster;
mod dynamic;
mod feed;
mod fleet;
mod membership;
mod new_device;
mod overview;
mod protocol_state;
mod reconcile;
mod report;
mod report_fast;
mod rollouts;
mod scan;
mod select;
mod tenants;
mod views;

pub use self::cluster::Lease;
use self::dynamic::join_dynamic;
use self::membership::{Member, count_move, load_memberships};
use self::new_device::insert_device;
use self::reconcile::*;
use self::select::*;
pub use self::views::Views;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Executor, Row};
use updraft_core::{
    ActionKey, Active, ArtifactKey, ArtifactKind, Candidate, Checksums, DeviceId, DeviceKey,
    DeviceTarget, Facts, FailureCode, Name, ProfileKey, Progress, ProjectKey, Release, Report,
    Retry, Role, Scope, TenantKey, UpdateState, resolve, transition,
};

use crate::error::{StoreError, StoreResult};
use crate::prelude::*;
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
    // What idle check-ins read, in memory; every writing method holds `views.writing()`.
    views: Arc<Views>,
    // SQLite's group commit of device reports (`report`); `None` on PostgreSQL.
    reports: Option<self::report::ReportQueue>,
    // PostgreSQL: the connection `ping` asks on, outside the pools, so that a replica whose pool
    // is queued up with a campaign's work still answers its balancer's health checks.
    pinger: Option<Arc<tokio::sync::Mutex<Pinger>>>,
}

/// A connection of its own for health checks (opened on first use, again after a failure).
pub(crate) struct Pinger {
    pub(crate) options: AnyConnectOptions,
    pub(crate) conn: Option<sqlx::AnyConnection>,
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
        let pinger = (dialect == Dialect::Postgres).then(|| {
            Arc::new(tokio::sync::Mutex::new(Pinger {
                options: options.clone(),
                conn: None,
            }))
        });
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
        let views = Views::new(dialect == Dialect::Postgres);
        Views::spawn_flusher(&views, write.clone());
        if dialect == Dialect::Postgres {
            self::feed::spawn(&views, write.clone(), url.to_owned());
        }
        let reports = match dialect {
            Dialect::Sqlite => {
                self::report::spawn_group_writer(write.clone(), dialect, Arc::clone(&views))
            }
            Dialect::Postgres => None,
        };
        Ok(SqlStore {
            read,
            write,
            dialect,
            views,
            reports,
            pinger,
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The in-memory views (for their hit counts, and for a change feed to invalidate).
    pub fn views(&self) -> &Views {
        &self.views
    }

    /// Writes what is batched (devices' `last_seen`) now.
    pub async fn flush(&self) -> StoreResult<()> {
        let seen = self.views.take_seen();
        self::views::write_seen(&self.write, &seen).await?;
        Ok(())
    }

    /// Writes what is batched, then closes every connection (waits for them to be returned).
    pub async fn close(&self) {
        if let Err(err) = self.flush().await {
            tracing::warn!("writing batched last_seen at close: {err}");
        }
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

/// Row keys spelled out for `IN (…)`: integers only, so written into the statement as such.
fn key_list(keys: &[i64]) -> String {
    let list: Vec<String> = keys.iter().map(i64::to_string).collect();
    list.join(",")
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
        Scope::Rollout(r, d) => format!("rollout:{r}/device:{d}"),
    }
}

fn scope_columns(scope: Scope) -> (Option<i64>, Option<i64>, Option<i64>) {
    match scope {
        Scope::Device(d) | Scope::Rollout(_, d) => (Some(d.0), None, None),
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
