//! What device protocols keep per device or per action: LwM2M DTLS pre-shared keys and AWS IoT job executions.

use super::*;

#[async_trait]
impl ProtocolState for SqlStore {
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
}
