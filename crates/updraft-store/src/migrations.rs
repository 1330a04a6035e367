//! Versioned schema migrations, one list for both databases. Each migration is SQL written once
//! with `{pk}` standing for the dialect's auto-increment key; applied migrations are recorded in
//! `updraft_schema`, so a newer binary upgrades an older database and never re-runs a step.

use sqlx::{AnyPool, Row};

use crate::error::StoreResult;
use crate::sql::Dialect;

/// (version, SQL). Append only: a released migration never changes.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_initial.sql")),
    (2, include_str!("../migrations/0002_ddi.sql")),
    (3, include_str!("../migrations/0003_frugal.sql")),
    (4, include_str!("../migrations/0004_queue.sql")),
    (5, include_str!("../migrations/0005_profiles_gateways.sql")),
    (6, include_str!("../migrations/0006_jobs.sql")),
    (7, include_str!("../migrations/0007_signing.sql")),
    (8, include_str!("../migrations/0008_aws_http.sql")),
    (9, include_str!("../migrations/0009_lwm2m.sql")),
    (10, include_str!("../migrations/0010_lwm2m_psk.sql")),
    (11, include_str!("../migrations/0011_frugal_keys.sql")),
    (
        12,
        include_str!("../migrations/0012_credentials_per_tenant.sql"),
    ),
    (13, include_str!("../migrations/0013_rollouts.sql")),
    (14, include_str!("../migrations/0014_fleet_overview.sql")),
    (15, include_str!("../migrations/0015_cluster.sql")),
];

/// Applies every migration newer than the database's version, each in its own transaction.
pub(crate) async fn migrate(pool: &AnyPool, dialect: Dialect) -> StoreResult<()> {
    let mut conn = pool.acquire().await?;
    if dialect == Dialect::Postgres {
        // Replicas starting together take turns.
        sqlx::query("SELECT pg_advisory_lock(7345001)")
            .execute(&mut *conn)
            .await?;
    }
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS updraft_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM updraft_schema")
        .fetch_one(&mut *conn)
        .await?;
    let current: i64 = row.try_get("v")?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let sql = sql.replace("{pk}", dialect.auto_key());
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::raw_sql(&sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO updraft_schema (version, applied_at) VALUES ($1, $2)")
            .bind(*version)
            .bind(crate::sql::now_millis())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, "applied schema migration");
    }
    if dialect == Dialect::Postgres {
        sqlx::query("SELECT pg_advisory_unlock(7345001)")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
