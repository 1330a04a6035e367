//! Artifact metadata (the bytes are in the blob store).

use super::*;

#[async_trait]
impl Artifacts for SqlStore {
    async fn insert_artifact(&self, tenant: TenantKey, new: &NewArtifact) -> StoreResult<Artifact> {
        let _w = self.views.writing();
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
        if let Some(artifact) = self.views.artifact((tenant.0, key.0)) {
            return Ok(Some(artifact));
        }
        let ticket = self.views.ticket();
        let mut conn = self.read.acquire().await?;
        let row = sqlx::query(&format!(
            "{ARTIFACT_SELECT} WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant.0)
        .bind(key.0)
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            Some(row) => {
                let artifact = load_artifact(&mut conn, &row).await?;
                self.views.put_artifact(&artifact, tenant.0, &ticket);
                Ok(Some(artifact))
            }
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
        let _w = self.views.writing();
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
}
