//! Tenants, their settings and gateway token, and API keys.

use super::*;

#[async_trait]
impl Tenants for SqlStore {
    async fn create_tenant(&self, name: &Name) -> StoreResult<Tenant> {
        let _w = self.views.writing();
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
        if let Some(tenant) = self.views.tenant(name) {
            return Ok(Some(tenant));
        }
        let ticket = self.views.ticket();
        let row = sqlx::query(&format!("{TENANT_SELECT} WHERE name_lower = $1"))
            .bind(name.to_ascii_lowercase())
            .fetch_optional(&self.read)
            .await?;
        let tenant = row.as_ref().map(tenant_from).transpose()?;
        if let Some(tenant) = &tenant {
            self.views.put_tenant(tenant, &ticket);
        }
        Ok(tenant)
    }

    async fn tenant_by_key(&self, key: TenantKey) -> StoreResult<Option<Tenant>> {
        let row = sqlx::query(&format!("{TENANT_SELECT} WHERE id = $1"))
            .bind(key.0)
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

    async fn update_tenant_settings(
        &self,
        tenant: TenantKey,
        settings: TenantSettings,
    ) -> StoreResult<()> {
        let _w = self.views.writing();
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
        let _w = self.views.writing();
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

    async fn create_api_key(&self, tenant: TenantKey, new: &NewApiKey) -> StoreResult<ApiKey> {
        let _w = self.views.writing();
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
        let _w = self.views.writing();
        // The server admin key is never deleted this way: it is the way back in.
        let done = sqlx::query(
            "DELETE FROM api_keys WHERE tenant_id = $1 AND id = $2 AND server_admin = 0",
        )
        .bind(tenant.0)
        .bind(id)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
