//! Projects, profiles and devices with their credentials.

use super::*;

#[async_trait]
impl Fleet for SqlStore {
    async fn create_project(&self, tenant: TenantKey, name: &Name) -> StoreResult<Project> {
        let _w = self.views.writing();
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
        let _w = self.views.writing();
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
        let _w = self.views.writing();
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
        let _w = self.views.writing();
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
        let _w = self.views.writing();
        let mut tx = self.write.begin().await?;
        let device = insert_device(&mut tx, self.dialect, tenant, new, credentials).await?;
        tx.commit().await?;
        Ok(device)
    }

    async fn device(&self, tenant: TenantKey, id: &DeviceId) -> StoreResult<Option<Device>> {
        if let Some(device) = self.views.device_by_id(&(tenant.0, id.as_str().to_owned())) {
            return Ok(Some(device));
        }
        let ticket = self.views.ticket();
        let row = sqlx::query(&format!(
            "{DEVICE_SELECT} WHERE d.tenant_id = $1 AND d.device_id = $2"
        ))
        .bind(tenant.0)
        .bind(id.as_str())
        .fetch_optional(&self.read)
        .await?;
        let device = row.as_ref().map(device_from).transpose()?;
        if let Some(device) = &device {
            self.views.put_device(device, &ticket);
        }
        Ok(device)
    }

    async fn device_by_key(&self, key: DeviceKey) -> StoreResult<Option<Device>> {
        if let Some(device) = self.views.device(key) {
            return Ok(Some(device));
        }
        let ticket = self.views.ticket();
        let row = sqlx::query(&format!("{DEVICE_SELECT} WHERE d.id = $1"))
            .bind(key.0)
            .fetch_optional(&self.read)
            .await?;
        let device = row.as_ref().map(device_from).transpose()?;
        if let Some(device) = &device {
            self.views.put_device(device, &ticket);
        }
        Ok(device)
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

    async fn devices_after(
        &self,
        tenant: TenantKey,
        after: Option<&DeviceId>,
        limit: u64,
    ) -> StoreResult<Vec<Device>> {
        let rows = sqlx::query(&format!(
            "{DEVICE_SELECT} WHERE d.tenant_id = $1 AND d.device_id > $2 \
             ORDER BY d.device_id LIMIT $3"
        ))
        .bind(tenant.0)
        .bind(after.map_or("", DeviceId::as_str))
        .bind(to_i64(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(device_from).collect()
    }

    async fn matching_devices(
        &self,
        tenant: TenantKey,
        filter: &updraft_core::Filter,
        now: Millis,
        at_most: usize,
    ) -> StoreResult<Vec<DeviceMatch>> {
        super::scan::matching(&self.read, tenant, filter, now, at_most).await
    }

    async fn delete_device(&self, tenant: TenantKey, id: &DeviceId) -> StoreResult<bool> {
        let _w = self.views.writing();
        let mut tx = self.write.begin().await?;
        let Some(row) =
            sqlx::query("SELECT id FROM devices WHERE tenant_id = $1 AND device_id = $2")
                .bind(tenant.0)
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(false);
        };
        let device: i64 = row.try_get("id")?;
        super::membership::leave_rollouts(&mut tx, tenant, device).await?;
        sqlx::query("DELETE FROM devices WHERE id = $1")
            .bind(device)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn device_by_credential(
        &self,
        kind: CredentialKind,
        secret_hash: &str,
    ) -> StoreResult<Option<Device>> {
        let credential = (None, kind.as_str(), secret_hash.to_owned());
        if let Some(device) = self.views.device_by_credential(&credential) {
            return Ok(Some(device));
        }
        let ticket = self.views.ticket();
        let rows = sqlx::query(&format!(
            "{DEVICE_SELECT} JOIN device_credentials c ON c.device_pk = d.id \
             WHERE c.kind = $1 AND c.secret_hash = $2 LIMIT 2"
        ))
        .bind(kind.as_str())
        .bind(secret_hash)
        .fetch_all(&self.read)
        .await?;
        match rows.as_slice() {
            [row] => {
                let device = device_from(row)?;
                self.views.put_credential(credential, &device, &ticket);
                Ok(Some(device))
            }
            _ => Ok(None),
        }
    }

    async fn device_by_credential_in(
        &self,
        tenant: TenantKey,
        kind: CredentialKind,
        secret_hash: &str,
    ) -> StoreResult<Option<Device>> {
        let credential = (Some(tenant.0), kind.as_str(), secret_hash.to_owned());
        if self.views.credential_unknown(&credential) {
            return Ok(None);
        }
        if let Some(device) = self.views.device_by_credential(&credential) {
            return Ok(Some(device));
        }
        let ticket = self.views.ticket();
        let row = sqlx::query(&format!(
            "{DEVICE_SELECT} JOIN device_credentials c ON c.device_pk = d.id \
             WHERE c.tenant_id = $1 AND c.kind = $2 AND c.secret_hash = $3"
        ))
        .bind(tenant.0)
        .bind(kind.as_str())
        .bind(secret_hash)
        .fetch_optional(&self.read)
        .await?;
        let device = row.as_ref().map(device_from).transpose()?;
        match &device {
            Some(device) => self.views.put_credential(credential, device, &ticket),
            None => self.views.put_unknown_credential(credential, &ticket),
        }
        Ok(device)
    }

    async fn gateway_by_credential(
        &self,
        tenant: TenantKey,
        kind: CredentialKind,
        secret_hash: &str,
    ) -> StoreResult<Option<Device>> {
        let row = sqlx::query(&format!(
            "{DEVICE_SELECT} JOIN device_credentials c ON c.device_pk = d.id \
             WHERE c.tenant_id = $1 AND c.kind = $2 AND c.secret_hash = $3 AND c.gateway = 1"
        ))
        .bind(tenant.0)
        .bind(kind.as_str())
        .bind(secret_hash)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(device_from).transpose()
    }

    async fn place_device(
        &self,
        tenant: TenantKey,
        device: DeviceKey,
        project: Option<ProjectKey>,
        profile: Option<ProfileKey>,
    ) -> StoreResult<()> {
        let mut w = self.views.writing();
        w.device(device);
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
        join_dynamic(&mut tx, tenant, device).await?;
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
        let mut w = self.views.writing();
        w.device(device);
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

    async fn device_summaries(
        &self,
        tenant: TenantKey,
        devices: &[DeviceKey],
    ) -> StoreResult<HashMap<DeviceKey, DeviceSummary>> {
        let mut out = HashMap::with_capacity(devices.len());
        for chunk in devices.chunks(MAX_SUMMARIES) {
            let keys: Vec<i64> = chunk.iter().map(|d| d.0).collect();
            let rows = sqlx::query(&format!(
                "SELECT d.id, d.protocol, (SELECT a.state FROM actions a WHERE a.device_pk = d.id \
                 ORDER BY a.id DESC LIMIT 1) AS latest FROM devices d \
                 WHERE d.tenant_id = $1 AND d.id IN ({})",
                key_list(&keys)
            ))
            .bind(tenant.0)
            .fetch_all(&self.read)
            .await?;
            for row in &rows {
                let latest: Option<String> = row.try_get("latest")?;
                let latest = match latest {
                    Some(state) => Some(state.parse::<UpdateState>().map_err(corrupt)?),
                    None => None,
                };
                out.insert(
                    DeviceKey(row.try_get("id")?),
                    DeviceSummary {
                        protocol: row.try_get("protocol")?,
                        latest,
                    },
                );
            }
        }
        Ok(out)
    }

    async fn device_credentials(
        &self,
        tenant: TenantKey,
        device: DeviceKey,
    ) -> StoreResult<Vec<CredentialInfo>> {
        let rows = sqlx::query(
            "SELECT kind, secret_hash, gateway, created_at FROM device_credentials \
             WHERE tenant_id = $1 AND device_pk = $2 ORDER BY id",
        )
        .bind(tenant.0)
        .bind(device.0)
        .fetch_all(&self.read)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let kind: String = row.try_get("kind")?;
            let hash: String = row.try_get("secret_hash")?;
            out.push(CredentialInfo {
                fingerprint: (kind == CredentialKind::Certificate.as_str()).then_some(hash),
                kind,
                gateway: row.try_get::<i64, _>("gateway")? != 0,
                created_at: row.try_get("created_at")?,
            });
        }
        Ok(out)
    }

    async fn touch_device(&self, device: DeviceKey) -> StoreResult<()> {
        let now = now_millis();
        // Seen before: batched, written within a second (see `views`).
        if self.views.seen(device, now) {
            return Ok(());
        }
        let mut w = self.views.writing();
        w.device(device);
        let seen = sqlx::query(
            "UPDATE devices SET last_seen = $1 WHERE id = $2 AND last_seen IS NOT NULL",
        )
        .bind(now)
        .bind(device.0)
        .execute(&self.write)
        .await?;
        if seen.rows_affected() > 0 {
            return Ok(());
        }
        // The device's first check-in: it may now match a dynamic rollout or rule (`seen`).
        let mut tx = self.write.begin().await?;
        let Some(row) =
            sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2 RETURNING tenant_id")
                .bind(now)
                .bind(device.0)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(());
        };
        join_dynamic(&mut tx, TenantKey(row.try_get("tenant_id")?), device).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_attributes(
        &self,
        device: DeviceKey,
        mode: AttributeMode,
        data: &BTreeMap<String, String>,
    ) -> StoreResult<()> {
        let mut w = self.views.writing();
        w.device(device);
        let mut tx = self.write.begin().await?;
        let row = sqlx::query("SELECT tenant_id, attributes FROM devices WHERE id = $1")
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
        // The device may now match a dynamic rollout or rule: it joins, and its next scheduler
        // pass activates it.
        join_dynamic(&mut tx, TenantKey(row.try_get("tenant_id")?), device).await?;
        tx.commit().await?;
        Ok(())
    }
}
