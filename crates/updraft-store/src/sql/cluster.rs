//! What replicas on one database share beyond the fleet model: leases for singleton tasks
//! (PostgreSQL session advisory locks), secrets (a row each) and the news of `feed.rs`.

use super::*;
use crate::{Cluster, Singleton};

fn lock_id(task: Singleton) -> i64 {
    // 7345001 is the migrations' lock.
    match task {
        Singleton::Scheduler => 7_345_003,
        Singleton::GarbageCollection => 7_345_004,
    }
}

/// The right to run a singleton task (see [`Cluster::lease`]).
pub struct Lease {
    /// PostgreSQL: the session holding the advisory lock. SQLite: none, the process is alone.
    conn: Option<AnyConnection>,
    id: i64,
}

impl Lease {
    /// Whether the lease still holds: with PostgreSQL, whether the locking session is alive
    /// (when it dropped, so did the lock, and another replica may hold it now).
    pub async fn held(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(conn) => {
                let alive = sqlx::query("SELECT 1").execute(&mut *conn);
                matches!(
                    tokio::time::timeout(Duration::from_secs(10), alive).await,
                    Ok(Ok(_))
                )
            }
        }
    }

    /// Gives the lease up now (a server shutting down); dropping it gives it up when the
    /// session closes.
    pub async fn release(mut self) {
        if let Some(conn) = &mut self.conn {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.id)
                .execute(&mut *conn)
                .await;
        }
    }
}

#[async_trait]
impl Cluster for SqlStore {
    async fn lease(&self, task: Singleton) -> StoreResult<Option<Lease>> {
        let mut w = self.views.writing();
        w.nothing_cached();
        let id = lock_id(task);
        match self.dialect {
            Dialect::Sqlite => Ok(Some(Lease { conn: None, id })),
            Dialect::Postgres => {
                // Its own session, outside the pool: the lock lives exactly as long as it.
                let mut conn = self.write.acquire().await?.detach();
                let row = sqlx::query("SELECT pg_try_advisory_lock($1) AS held")
                    .bind(id)
                    .fetch_one(&mut conn)
                    .await?;
                if row.try_get::<bool, _>("held")? {
                    Ok(Some(Lease {
                        conn: Some(conn),
                        id,
                    }))
                } else {
                    Ok(None)
                }
            }
        }
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> StoreResult<String> {
        let mut w = self.views.writing();
        w.nothing_cached();
        sqlx::query(
            "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(now_millis())
        .execute(&self.write)
        .await?;
        let row = sqlx::query("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.write)
            .await?;
        Ok(row.try_get("value")?)
    }

    fn view_lookups(&self) -> (u64, u64) {
        self.views.hit_counts()
    }

    fn publish(&self, news: &str) {
        self.views.publish_news(news.to_owned());
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        (self.dialect == Dialect::Postgres).then(|| self.views.news.subscribe())
    }

    async fn take_budget(
        &self,
        name: &str,
        second: i64,
        limit: u64,
        want: u64,
    ) -> StoreResult<u64> {
        let mut w = self.views.writing();
        w.nothing_cached();
        if self.dialect == Dialect::Sqlite {
            return Ok(want);
        }
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO pacing (name, second, used) VALUES ($1, $2, 0) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(second)
        .execute(&mut *tx)
        .await?;
        // The row is locked until the commit: replicas take their shares one after the other.
        let row = sqlx::query("SELECT second, used FROM pacing WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        let stored: i64 = row.try_get("second")?;
        let used = if stored == second {
            u64::try_from(row.try_get::<i64, _>("used")?).unwrap_or(0)
        } else {
            0
        };
        let granted = want.min(limit.saturating_sub(used));
        sqlx::query("UPDATE pacing SET second = $2, used = $3 WHERE name = $1")
            .bind(name)
            .bind(second)
            .bind(i64::try_from(used + granted).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(granted)
    }

    async fn ping(&self) -> StoreResult<()> {
        let timed_out = || StoreError::Database(sqlx::Error::PoolTimedOut);
        let Some(pinger) = &self.pinger else {
            let alive = sqlx::query("SELECT 1").execute(&self.read);
            return match tokio::time::timeout(Duration::from_secs(5), alive).await {
                Ok(done) => done.map(drop).map_err(Into::into),
                Err(_) => Err(timed_out()),
            };
        };
        let asked = async {
            let mut pinger = pinger.lock().await;
            let pinger = &mut *pinger;
            let conn = match &mut pinger.conn {
                Some(conn) => conn,
                None => pinger
                    .conn
                    .insert(sqlx::Connection::connect_with(&pinger.options).await?),
            };
            let answered = sqlx::query("SELECT 1").execute(&mut *conn).await.map(drop);
            if answered.is_err() {
                pinger.conn = None;
            }
            answered
        };
        match tokio::time::timeout(Duration::from_secs(4), asked).await {
            Ok(done) => done.map_err(Into::into),
            Err(_) => {
                // Whatever it was doing is abandoned: the next ping starts on a new session.
                if let Ok(mut pinger) = pinger.try_lock() {
                    pinger.conn = None;
                }
                Err(timed_out())
            }
        }
    }
}
