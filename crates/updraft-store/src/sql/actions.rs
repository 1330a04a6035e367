//! Update actions: status, history, reports, the notification queue's work list, cancellations.

use super::*;

/// Actions initiated by one statement at most (their keys are spelled out in it).
const INITIATE_BATCH: usize = 500;

#[async_trait]
impl Actions for SqlStore {
    async fn device_status(
        &self,
        tenant: TenantKey,
        id: &DeviceId,
    ) -> StoreResult<Option<DeviceStatus>> {
        let key = (tenant.0, id.as_str().to_owned());
        if let Some(status) = self.views.status(&key) {
            return Ok(Some(status));
        }
        let ticket = self.views.ticket();
        let mut conn = self.read.acquire().await?;
        // The device itself is often still in memory: its own reports keep it there.
        let device = match self.views.device_by_id(&key) {
            Some(device) => device,
            None => {
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
                device_from(&row)?
            }
        };
        let assignments = match self.views.assignments(tenant.0) {
            Some(assignments) => assignments,
            None => {
                let loaded = Arc::new(load_assignments(&mut conn, tenant).await?);
                self.views.put_assignments(tenant.0, &loaded, &ticket);
                loaded
            }
        };
        let memberships =
            load_memberships(&mut conn, tenant, " AND device_pk = $2", Some(device.key.0)).await?;
        let extra: Vec<&LoadedAssignment> = memberships
            .values()
            .flatten()
            .map(|m: &Member| &m.assignment)
            .collect();
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
        let status = DeviceStatus {
            desired_firmware: desired_for(&target, &assignments, &extra, ArtifactKind::Firmware),
            desired_software: desired_for(&target, &assignments, &extra, ArtifactKind::Software),
            active: active.as_ref().map(action_from).transpose()?,
            device,
        };
        self.views.put_status(&status, &ticket);
        Ok(Some(status))
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
            // From the device (unique in its tenant) to its actions: never a scan of the tenant's.
            "{ACTION_SELECT} WHERE d.tenant_id = $1 AND d.device_id = $2 ORDER BY a.id DESC"
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
        self.report_grouped(tenant, key, report, source).await
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

    async fn fleet_overview(&self, tenant: TenantKey, now: Millis) -> StoreResult<FleetOverview> {
        let mut conn = self.read.acquire().await?;
        overview::fleet_overview(&mut conn, tenant, now).await
    }

    async fn queued_actions(&self, after: ActionKey, limit: u64) -> StoreResult<Vec<Queued>> {
        let rows = sqlx::query(
            "SELECT a.id, a.device_pk, a.tenant_id, a.artifact_id, a.kind, d.profile_id, g.rollout_id \
             FROM actions a JOIN devices d ON d.id = a.device_pk \
             LEFT JOIN rollout_groups g ON g.id = a.rollout_group_id \
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
                    rollout: row
                        .try_get::<Option<i64>, _>("rollout_id")?
                        .map(updraft_core::RolloutKey),
                })
            })
            .collect()
    }

    async fn initiate(&self, actions: &[ActionKey], source: &str) -> StoreResult<Vec<ActionKey>> {
        // Each initiation changes its own device's actions only (rolled back on error: none).
        let mut w = self.views.writing();
        w.nothing_cached();
        let mut tx = self.write.begin().await?;
        let now = now_millis();
        let mut moved_all: HashSet<ActionKey> = HashSet::with_capacity(actions.len());
        // A few statements per batch instead of three per action: the notification queue
        // initiates a whole campaign's first round in one call, and every device waits for it.
        for batch in actions.chunks(INITIATE_BATCH) {
            let keys: Vec<i64> = batch.iter().map(|a| a.0).collect();
            let list = key_list(&keys);
            let changed = sqlx::query(&format!(
                "UPDATE actions SET state = 'INITIATED', updated_at = $1 \
                 WHERE id IN ({list}) AND state = 'QUEUED' RETURNING id, device_pk, rollout_group_id"
            ))
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            if changed.is_empty() {
                continue;
            }
            let mut moved: Vec<i64> = Vec::with_capacity(changed.len());
            let mut per_group: BTreeMap<i64, i64> = BTreeMap::new();
            for row in &changed {
                moved.push(row.try_get("id")?);
                w.actions_of(DeviceKey(row.try_get("device_pk")?));
                if let Some(group) = row.try_get::<Option<i64>, _>("rollout_group_id")? {
                    *per_group.entry(group).or_default() += 1;
                }
            }
            for (group, n) in per_group {
                sqlx::query(
                    "UPDATE rollout_groups SET n_initiated = n_initiated + $1, \
                     n_queued = n_queued - $1 WHERE id = $2",
                )
                .bind(n)
                .bind(group)
                .execute(&mut *tx)
                .await?;
            }
            let moved_list = key_list(&moved);
            sqlx::query(&format!(
                "INSERT INTO action_events (action_id, at, from_state, to_state, source, detail, \
                 refused) SELECT id, $1, 'QUEUED', 'INITIATED', $2, 'the device was told', 0 \
                 FROM actions WHERE id IN ({moved_list}) ORDER BY id"
            ))
            .bind(now)
            .bind(source)
            .execute(&mut *tx)
            .await?;
            moved_all.extend(moved.into_iter().map(ActionKey));
        }
        tx.commit().await?;
        // In the order asked, each once.
        Ok(actions
            .iter()
            .filter(|a| moved_all.remove(a))
            .copied()
            .collect())
    }

    async fn poll_view(&self, device: DeviceKey) -> StoreResult<PollView> {
        if let Some(view) = self.views.poll(device) {
            return Ok(view);
        }
        let ticket = self.views.ticket();
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
        self.views.put_poll(device, &view, &ticket);
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
        let mut w = self.views.writing();
        w.nothing_cached();
        let mut tx = self.write.begin().await?;
        let done = sqlx::query("UPDATE actions SET cancel_pending = 0 WHERE tenant_id = $1 AND id = $2 AND cancel_pending = 1 RETURNING device_pk")
            .bind(tenant.0)
            .bind(key.0)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(done) = done else {
            return Ok(false);
        };
        w.actions_of(DeviceKey(done.try_get("device_pk")?));
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
}
