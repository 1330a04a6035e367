//! The server-side object 5 update (`drive`): observe State and Result, write the Package URI,
//! Execute, read the result after a re-Register; notifications and Send values move the update.

use super::*;

impl Lwm2m {
    pub(super) fn told(&self, device: DeviceKey, action: updraft_core::ActionKey) {
        if let Some(r) = self.inner().registrations.get_mut(&device) {
            r.told = Some(action);
            r.offered = Some(action);
        }
    }

    /// Looks again at every registered device of a tenant (after its assignments changed).
    pub fn kick_tenant(self: &Arc<Self>, state: &Ctx, tenant: TenantKey) {
        let devices: Vec<DeviceKey> = {
            let now = now();
            self.inner()
                .registrations
                .values()
                .filter(|r| r.tenant == tenant && r.expires_at > now)
                .map(|r| r.device)
                .collect()
        };
        for device in devices {
            self.kick(state, device);
        }
    }

    /// Starts the firmware driver of `device`; if one runs, it runs once more when done (what
    /// kicked it — a cancel, a notification, a new registration — may have come after it read).
    pub fn kick(self: &Arc<Self>, state: &Ctx, device: DeviceKey) {
        {
            let mut inner = self.inner();
            if let Some(again) = inner.drivers.get_mut(&device) {
                *again = true;
                return;
            }
            inner.drivers.insert(device, false);
        }
        let (this, state) = (self.clone(), state.clone());
        tokio::spawn(async move {
            loop {
                if let Err(err) = this.drive(&state, device).await {
                    tracing::warn!(error = %err.message, "lwm2m firmware update step failed");
                }
                let mut inner = this.inner();
                match inner.drivers.get_mut(&device) {
                    Some(again) if *again => *again = false,
                    _ => {
                        inner.drivers.remove(&device);
                        return;
                    }
                }
            }
        });
    }

    /// Reads the Device object's manufacturer, model and firmware version (single resources:
    /// some clients cannot read instances) into the device's attributes.
    pub(super) async fn read_device_info(
        &self,
        state: &Ctx,
        registration: &Registration,
    ) -> Result<(), ApiError> {
        let mut found = std::collections::BTreeMap::new();
        for (resource, name) in [
            ("0", "lwm2m_manufacturer"),
            ("1", "lwm2m_model"),
            ("3", "lwm2m_firmware_version"),
        ] {
            let path = format!("{}/3/0/{resource}", registration.root);
            let answer = self
                .request(
                    registration.link,
                    RequestType::Get,
                    &path,
                    Vec::new(),
                    None,
                    false,
                )
                .await
                .map_err(ApiError::internal)?;
            let text_like = answer
                .get_first_option(CoapOption::ContentFormat)
                .is_none_or(|cf| uint(cf) == u64::from(lwm2m::TEXT) || uint(cf) == 1541);
            if is_success(&answer)
                && text_like
                && let Ok(text) = std::str::from_utf8(&answer.payload)
            {
                found.insert(name.to_owned(), text.trim().to_owned());
            }
        }
        if !found.is_empty() {
            state
                .store
                .update_attributes(
                    registration.device,
                    updraft_store::AttributeMode::Merge,
                    &found,
                )
                .await?;
        }
        Ok(())
    }

    /// Carries the device's active update one step as far as the server can.
    pub(super) async fn drive(&self, state: &Ctx, device: DeviceKey) -> Result<(), ApiError> {
        let Some(registration) = self.registration_of(device) else {
            return Ok(());
        };
        let gone = registration.gone.clone();
        tokio::select! {
            result = self.step(state, device, registration) => result,
            () = gone.cancelled() => Ok(()),
        }
    }

    /// One step of `registration`'s firmware update: whatever the action's state asks of us.
    async fn step(
        &self,
        state: &Ctx,
        device: DeviceKey,
        registration: Registration,
    ) -> Result<(), ApiError> {
        if !registration.info_read {
            if let Some(r) = self.inner().registrations.get_mut(&registration.device) {
                r.info_read = true;
            }
            let lock = self.device_lock(device);
            let _one_at_a_time = lock.lock().await;
            self.read_device_info(state, &registration).await?;
        }
        let Some(status) = state
            .store
            .device_status(registration.tenant, &registration.device_id)
            .await?
        else {
            return Ok(());
        };
        let active = status
            .active
            .filter(|a| a.kind == ArtifactKind::Firmware && !a.state.is_final());
        // A package the device was given for an action that is over without it (canceled or
        // superseded): reset /5/0/1 with an empty Package URI before anything else.
        if let Some(told) = registration.told
            && active.as_ref().is_none_or(|a| a.key != told)
        {
            let finished = state.store.action(registration.tenant, told).await?;
            if finished.is_none_or(|a| a.state == UpdateState::Canceled) {
                let lock = self.device_lock(device);
                let _one_at_a_time = lock.lock().await;
                let path = format!("{}/5/0/1", registration.root);
                self.request(
                    registration.link,
                    RequestType::Put,
                    &path,
                    Vec::new(),
                    Some(lwm2m::TEXT),
                    false,
                )
                .await
                .map_err(ApiError::internal)?;
            }
            if let Some(r) = self.inner().registrations.get_mut(&registration.device) {
                r.told = None;
            }
        }
        let Some(action) = active else {
            return Ok(());
        };
        let lock = self.device_lock(device);
        let _one_at_a_time = lock.lock().await;
        let root = registration.root.clone();
        let addr = registration.link;
        let report = |report: Report| async move {
            state
                .store
                .report(registration.tenant, action.key, &report, SOURCE)
                .await
                .map(|_| ())
        };
        if !registration.observed {
            for resource in ["3", "5"] {
                let path = format!("{root}/5/0/{resource}");
                match self
                    .request(addr, RequestType::Get, &path, Vec::new(), None, true)
                    .await
                {
                    Ok(answer) if is_success(&answer) => {
                        self.inner().observations.insert(
                            (addr, answer.get_token().to_vec()),
                            Observation {
                                device,
                                path: format!("/5/0/{resource}"),
                            },
                        );
                        // The current value counts like a notification.
                        self.notified(state, device, &format!("/5/0/{resource}"), &answer)
                            .await?;
                    }
                    Ok(answer) => {
                        tracing::debug!(code = ?answer.header.code, path, "observe refused")
                    }
                    Err(err) => return Err(ApiError::internal(err)),
                }
            }
            if let Some(r) = self.inner().registrations.get_mut(&registration.device) {
                r.observed = true;
            }
        }
        // Reread: the current values may have moved the action on.
        let Some(action) = state
            .store
            .action(registration.tenant, action.key)
            .await?
            .filter(|a| !a.state.is_final())
        else {
            return Ok(());
        };
        match action.state {
            UpdateState::Queued | UpdateState::Initiated => {
                if registration.offered == Some(action.key) {
                    return Ok(());
                }
                let Some(artifact_key) = action.artifact else {
                    return Ok(());
                };
                let Some(artifact) = state
                    .store
                    .artifact(registration.tenant, artifact_key)
                    .await?
                else {
                    return Ok(());
                };
                let token = state.grants.issue(action.key, &artifact)?;
                let settings = match &status.device.profile {
                    Some((_, name)) => state
                        .store
                        .profile_by_name(registration.tenant, name)
                        .await?
                        .map(|p| p.settings)
                        .unwrap_or_default(),
                    None => updraft_store::ProfileSettings::default(),
                };
                if settings.lwm2m_delivery == updraft_store::Lwm2mDelivery::Push {
                    if let Some(initiated) = updraft_core::told(action.state) {
                        report(initiated).await?;
                    }
                    self.told(registration.device, action.key);
                    if let Err(reason) = self.push_package(state, addr, &root, &artifact).await {
                        report(Report::Failed(Failure {
                            code: FailureCode::ConnectionLost,
                            reason,
                        }))
                        .await?;
                    }
                    return Ok(());
                }
                let url = self.package_uri(state, &token, settings);
                let path = format!("{root}/5/0/1");
                // Told now, before the URI goes out: a client pulls at once, and its download's
                // DOWNLOADING must not arrive before INITIATED (it would be refused as a step back).
                if let Some(initiated) = updraft_core::told(action.state) {
                    report(initiated).await?;
                }
                let answer = self
                    .request(
                        addr,
                        RequestType::Put,
                        &path,
                        url.into_bytes(),
                        Some(lwm2m::TEXT),
                        false,
                    )
                    .await
                    .map_err(ApiError::internal)?;
                if is_success(&answer) {
                    self.told(registration.device, action.key);
                } else {
                    report(Report::Failed(Failure {
                        code: FailureCode::UnsupportedProtocol,
                        reason: format!(
                            "the device refused the Package URI: {:?}",
                            answer.header.code
                        ),
                    }))
                    .await?;
                }
            }
            UpdateState::Downloaded | UpdateState::Verified => {
                // Download-only, or outside the rollout's maintenance window: Execute waits (the
                // scheduler kicks the device when the window opens).
                if !crate::kernel::terms::terms_of(state, action.key)
                    .await?
                    .may_install()
                {
                    return Ok(());
                }
                let path = format!("{root}/5/0/2");
                let answer = self
                    .request(addr, RequestType::Post, &path, Vec::new(), None, false)
                    .await
                    .map_err(ApiError::internal)?;
                if is_success(&answer) {
                    report(Report::Reached {
                        state: UpdateState::Updating,
                        progress: None,
                    })
                    .await?;
                } else {
                    report(Report::Failed(Failure {
                        code: FailureCode::UpdateFailed,
                        reason: format!(
                            "the device refused Execute /5/0/2: {:?}",
                            answer.header.code
                        ),
                    }))
                    .await?;
                }
            }
            UpdateState::Updating => {
                let path = format!("{root}/5/0/5");
                let answer = self
                    .request(addr, RequestType::Get, &path, Vec::new(), None, false)
                    .await
                    .map_err(ApiError::internal)?;
                if is_success(&answer) {
                    self.notified(state, device, "/5/0/5", &answer).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A value of an observed (or read) resource: moves the device's action along.
    pub(super) async fn notified(
        &self,
        state: &Ctx,
        device: DeviceKey,
        path: &str,
        packet: &Packet,
    ) -> Result<(), ApiError> {
        let content_format = packet
            .get_first_option(CoapOption::ContentFormat)
            .map(|v| u16::try_from(uint(v)).unwrap_or(u16::MAX));
        let Ok(value) = lwm2m::integer(content_format, &packet.payload) else {
            // Counted, never fatal: a client's value we cannot read.
            state.lwm2m.malformed.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        self.value(state, device, path, value).await
    }

    /// A value of /5/0/3 or /5/0/5, from a read, a notification or a Send.
    pub(super) async fn value(
        &self,
        state: &Ctx,
        device: DeviceKey,
        path: &str,
        value: i64,
    ) -> Result<(), ApiError> {
        let Some(registration) = self.registration_of(device) else {
            return Ok(());
        };
        let Some(action) = state
            .store
            .device_status(registration.tenant, &registration.device_id)
            .await?
            .and_then(|s| s.active)
            .filter(|a| a.kind == ArtifactKind::Firmware && !a.state.is_final())
        else {
            return Ok(());
        };
        let mut reports = Vec::new();
        match (path, value) {
            ("/5/0/3", 1) if action.state < UpdateState::Downloading => {
                reports.push(Report::Reached {
                    state: UpdateState::Downloading,
                    progress: None,
                });
            }
            ("/5/0/3", 2) if action.state < UpdateState::Downloaded => {
                // The client checks the package before it says Downloaded.
                for reached in [UpdateState::Downloaded, UpdateState::Verified] {
                    reports.push(Report::Reached {
                        state: reached,
                        progress: None,
                    });
                }
            }
            ("/5/0/3", 3) if action.state < UpdateState::Updating => {
                reports.push(Report::Reached {
                    state: UpdateState::Updating,
                    progress: None,
                });
            }
            ("/5/0/5", 1) if action.state > UpdateState::Queued => reports.push(Report::Succeeded),
            ("/5/0/5", code @ 2..=9) if action.state > UpdateState::Queued => {
                let code = FailureCode::ALL
                    .into_iter()
                    .find(|c| i64::from(c.lwm2m_result()) == code)
                    .unwrap_or(FailureCode::UpdateFailed);
                reports.push(Report::Failed(Failure {
                    code,
                    reason: format!("the device reported Update Result {}", code.lwm2m_result()),
                }));
            }
            _ => {}
        }
        let moved = !reports.is_empty();
        for report in &reports {
            state
                .store
                .report(registration.tenant, action.key, report, SOURCE)
                .await?;
        }
        if moved && path == "/5/0/3" && value == 2 {
            // Downloaded: the server's turn (Execute), outside this notification.
            state.lwm2m.kick(state, device);
        }
        Ok(())
    }
}
