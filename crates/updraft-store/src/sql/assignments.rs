//! What should run where: assigning reconciles every device the scope covers.

use super::*;

#[async_trait]
impl Assignments for SqlStore {
    async fn assign(
        &self,
        tenant: TenantKey,
        scope: Scope,
        artifact: ArtifactKey,
        by: &str,
    ) -> StoreResult<Assignment> {
        let _w = self.views.writing();
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
                Scope::Project(_) | Scope::Tenant | Scope::Rollout(..) => None,
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
        // Two assignments to one scope must not both find it free.
        lock_for_reconcile(&mut tx, self.dialect, tenant, Only::Scope(scope)).await?;
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
        let _w = self.views.writing();
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
}
