//! What device protocols keep per device or per action: LwM2M DTLS pre-shared keys and AWS IoT job executions.

use super::*;

const FRUGAL_KEY_SELECT: &str = "SELECT k.id, k.tenant_id, k.project_id, p.name AS project_name, k.profile_id, \
     f.name AS profile_name, k.secret_hash, k.max_nodes, k.created_at FROM frugal_keys k \
     JOIN projects p ON p.id = k.project_id JOIN profiles f ON f.id = k.profile_id";

#[derive(sqlx::FromRow)]
struct FrugalKeyRecord {
    id: i64,
    tenant_id: i64,
    project_id: i64,
    project_name: String,
    profile_id: i64,
    profile_name: String,
    secret_hash: String,
    max_nodes: i64,
    created_at: i64,
}

fn frugal_key_from(row: &AnyRow) -> StoreResult<FrugalKey> {
    use sqlx::FromRow;
    let r = FrugalKeyRecord::from_row(row)?;
    Ok(FrugalKey {
        id: r.id,
        tenant: TenantKey(r.tenant_id),
        project: (ProjectKey(r.project_id), parse_name(r.project_name)?),
        profile: (ProfileKey(r.profile_id), parse_name(r.profile_name)?),
        secret_hash: r.secret_hash,
        max_nodes: u64::try_from(r.max_nodes).unwrap_or(0),
        created_at: r.created_at,
    })
}

#[async_trait]
impl ProtocolState for SqlStore {
    async fn set_lwm2m_psk(&self, device: DeviceKey, psk: Option<(&str, &str)>) -> StoreResult<()> {
        let _w = self.views.writing();
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

    async fn save_lwm2m_registrations(
        &self,
        changes: &[(DeviceKey, Option<StoredRegistration>)],
    ) -> StoreResult<()> {
        let mut w = self.views.writing();
        w.nothing_cached();
        let mut tx = self.write.begin().await?;
        for (device, registration) in changes {
            sqlx::query("DELETE FROM lwm2m_registrations WHERE device_pk = $1")
                .bind(device.0)
                .execute(&mut *tx)
                .await?;
            let Some(r) = registration else { continue };
            // A device deleted meanwhile has nothing to register: skipped, not an error.
            sqlx::query(
                "INSERT INTO lwm2m_registrations (device_pk, endpoint, location, peer, lifetime, \
                 version, root, objects, expires_at) \
                 SELECT id, $2, $3, $4, $5, $6, $7, $8, $9 FROM devices WHERE id = $1",
            )
            .bind(device.0)
            .bind(&r.endpoint)
            .bind(&r.location)
            .bind(&r.peer)
            .bind(i64::from(r.lifetime))
            .bind(&r.version)
            .bind(&r.root)
            .bind(r.objects.join(","))
            .bind(r.expires_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn lwm2m_registrations(&self, now: Millis) -> StoreResult<Vec<StoredRegistration>> {
        let rows = sqlx::query(
            "SELECT r.device_pk, d.tenant_id, d.device_id, r.endpoint, r.location, r.peer, \
             r.lifetime, r.version, r.root, r.objects, r.expires_at \
             FROM lwm2m_registrations r JOIN devices d ON d.id = r.device_pk \
             WHERE r.expires_at > $1",
        )
        .bind(now)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                let objects: String = row.try_get("objects")?;
                let device_id: String = row.try_get("device_id")?;
                Ok(StoredRegistration {
                    device: DeviceKey(row.try_get("device_pk")?),
                    tenant: TenantKey(row.try_get("tenant_id")?),
                    device_id: DeviceId::parse(&device_id)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    endpoint: row.try_get("endpoint")?,
                    location: row.try_get("location")?,
                    peer: row.try_get("peer")?,
                    lifetime: u32::try_from(row.try_get::<i64, _>("lifetime")?).unwrap_or(0),
                    version: row.try_get("version")?,
                    root: row.try_get("root")?,
                    objects: objects
                        .split(',')
                        .filter(|o| !o.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    expires_at: row.try_get("expires_at")?,
                })
            })
            .collect()
    }

    async fn lwm2m_psk_identity(&self, device: DeviceKey) -> StoreResult<Option<String>> {
        if let Some(identity) = self.views.psk_identity(device) {
            return Ok(identity);
        }
        let ticket = self.views.ticket();
        let row = sqlx::query("SELECT identity FROM lwm2m_psk WHERE device_pk = $1")
            .bind(device.0)
            .fetch_optional(&self.read)
            .await?;
        let identity: Option<String> = row.map(|row| row.try_get("identity")).transpose()?;
        self.views.put_psk_identity(device, &identity, &ticket);
        Ok(identity)
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
        // Job executions are read from the database only.
        let mut w = self.views.writing();
        w.nothing_cached();
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

    async fn create_frugal_key(
        &self,
        tenant: TenantKey,
        project: ProjectKey,
        profile: ProfileKey,
        secret_hash: &str,
        max_nodes: u64,
    ) -> StoreResult<FrugalKey> {
        let _w = self.views.writing();
        let mut tx = self.write.begin().await?;
        let row = sqlx::query(
            "INSERT INTO frugal_keys (tenant_id, project_id, profile_id, secret_hash, max_nodes, created_at) \
             SELECT $1, p.id, f.id, $4, $5, $6 FROM projects p, profiles f \
             WHERE p.id = $2 AND p.tenant_id = $1 AND f.id = $3 AND f.tenant_id = $1 RETURNING id",
        )
        .bind(tenant.0)
        .bind(project.0)
        .bind(profile.0)
        .bind(secret_hash)
        .bind(to_i64(max_nodes))
        .bind(now_millis())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| conflict(e, "key_exists", "that key exists already".to_owned()))?
        .ok_or_else(|| StoreError::NotFound { what: "project or profile" })?;
        let id: i64 = row.try_get("id")?;
        let row = sqlx::query(&format!("{FRUGAL_KEY_SELECT} WHERE k.id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let key = frugal_key_from(&row)?;
        tx.commit().await?;
        Ok(key)
    }

    async fn list_frugal_keys(&self, tenant: TenantKey) -> StoreResult<Vec<FrugalKey>> {
        let rows = sqlx::query(&format!(
            "{FRUGAL_KEY_SELECT} WHERE k.tenant_id = $1 ORDER BY k.id"
        ))
        .bind(tenant.0)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(frugal_key_from).collect()
    }

    async fn frugal_key(&self, tenant: TenantKey, id: i64) -> StoreResult<Option<FrugalKey>> {
        let row = sqlx::query(&format!(
            "{FRUGAL_KEY_SELECT} WHERE k.tenant_id = $1 AND k.id = $2"
        ))
        .bind(tenant.0)
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(frugal_key_from).transpose()
    }

    async fn frugal_key_by_hash(
        &self,
        tenant: TenantKey,
        secret_hash: &str,
    ) -> StoreResult<Option<FrugalKey>> {
        let row = sqlx::query(&format!(
            "{FRUGAL_KEY_SELECT} WHERE k.tenant_id = $1 AND k.secret_hash = $2"
        ))
        .bind(tenant.0)
        .bind(secret_hash)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(frugal_key_from).transpose()
    }

    async fn delete_frugal_key(&self, tenant: TenantKey, id: i64) -> StoreResult<bool> {
        let _w = self.views.writing();
        let mut tx = self.write.begin().await?;
        // Nodes with a key of their own stay Frugal nodes; the others stop being ones.
        sqlx::query(
            "UPDATE frugal_nodes SET key_id = NULL WHERE key_id = $1 AND secret_hash IS NOT NULL \
             AND key_id IN (SELECT id FROM frugal_keys WHERE tenant_id = $2)",
        )
        .bind(id)
        .bind(tenant.0)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query("DELETE FROM frugal_keys WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn frugal_node(&self, device: DeviceKey) -> StoreResult<Option<FrugalNode>> {
        if let Some(node) = self.views.frugal_node(device) {
            return Ok(node);
        }
        let ticket = self.views.ticket();
        let row = sqlx::query(
            "SELECT n.secret_hash, n.key_id, k.secret_hash AS key_hash FROM frugal_nodes n \
             LEFT JOIN frugal_keys k ON k.id = n.key_id WHERE n.device_pk = $1",
        )
        .bind(device.0)
        .fetch_optional(&self.read)
        .await?;
        let node = row
            .map(|row| -> StoreResult<FrugalNode> {
                Ok(FrugalNode {
                    device,
                    secret_hash: row.try_get("secret_hash")?,
                    key: row.try_get("key_id")?,
                    key_hash: row.try_get("key_hash")?,
                })
            })
            .transpose()?;
        self.views.put_frugal_node(device, &node, &ticket);
        Ok(node)
    }

    async fn set_frugal_node_key(
        &self,
        device: DeviceKey,
        secret_hash: Option<&str>,
    ) -> StoreResult<()> {
        let _w = self.views.writing();
        let query = match secret_hash {
            Some(_) => {
                "INSERT INTO frugal_nodes (device_pk, secret_hash) VALUES ($1, $2) \
                 ON CONFLICT (device_pk) DO UPDATE SET secret_hash = $2"
            }
            None => {
                "INSERT INTO frugal_nodes (device_pk, secret_hash) VALUES ($1, $2) \
                 ON CONFLICT (device_pk) DO NOTHING"
            }
        };
        sqlx::query(query)
            .bind(device.0)
            .bind(secret_hash)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn claim_frugal_node(&self, device: DeviceKey, key: i64) -> StoreResult<bool> {
        let _w = self.views.writing();
        let done = sqlx::query(
            "UPDATE frugal_nodes SET key_id = $2 WHERE device_pk = $1 AND key_id IS NULL \
             AND secret_hash IS NULL",
        )
        .bind(device.0)
        .bind(key)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn enroll_frugal_node(
        &self,
        key: &FrugalKey,
        new: &NewDevice,
    ) -> StoreResult<(Enrollment, Option<Device>)> {
        let _w = self.views.writing();
        let mut tx = self.write.begin().await?;
        if self.dialect == Dialect::Postgres {
            // Enrollments with one key take turns, so that the node limit holds.
            sqlx::query("SELECT id FROM frugal_keys WHERE id = $1 FOR UPDATE")
                .bind(key.id)
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query("SELECT COUNT(*) AS n FROM frugal_nodes WHERE key_id = $1")
            .bind(key.id)
            .fetch_one(&mut *tx)
            .await?;
        let enrolled: i64 = row.try_get("n")?;
        if u64::try_from(enrolled).unwrap_or(u64::MAX) >= key.max_nodes {
            return Ok((Enrollment::KeyFull, None));
        }
        let placed = NewDevice {
            project: Some(key.project.0),
            profile: Some(key.profile.0),
            ..new.clone()
        };
        let device = insert_device(&mut tx, self.dialect, key.tenant, &placed, &[]).await?;
        sqlx::query("INSERT INTO frugal_nodes (device_pk, key_id) VALUES ($1, $2)")
            .bind(device.key.0)
            .bind(key.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((Enrollment::Enrolled, Some(device)))
    }
}
