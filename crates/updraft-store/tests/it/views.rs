//! The hot views: an idle check-in's reads come from memory, and every write of this store is
//! seen at once by the next read.

use updraft_core::{ArtifactKey, DeviceId, Name, Report, Scope, UpdateState};
use updraft_store::*;

use crate::Reopen;
use crate::coverage::release;

/// What a DDI poll and a Frugal-IoT check-in read: tenant, device by credential, poll view,
/// status, the desired artifact.
async fn idle_check_in(store: &SqlStore, tenant: &Tenant, hash: &str, artifact: ArtifactKey) {
    let found = store.tenant_by_name("HOT").await.unwrap().unwrap();
    assert_eq!(found.key, tenant.key);
    let device = store
        .device_by_credential_in(tenant.key, CredentialKind::AccessToken, hash)
        .await
        .unwrap()
        .unwrap();
    store.poll_view(device.key).await.unwrap();
    store
        .device_status(tenant.key, &device.id)
        .await
        .unwrap()
        .unwrap();
    store.artifact(tenant.key, artifact).await.unwrap().unwrap();
}

pub async fn idle_reads_come_from_memory_and_every_write_is_seen(
    store: &SqlStore,
    reopen: &Reopen,
) {
    let tenant = store
        .create_tenant(&Name::parse("hot").unwrap())
        .await
        .unwrap();
    let id = DeviceId::parse("d1").unwrap();
    let new = NewDevice {
        id: id.clone(),
        project: None,
        profile: None,
        tags: vec![],
        attributes: Default::default(),
    };
    let credential = NewCredential {
        kind: CredentialKind::AccessToken,
        secret_hash: "hash-d1".into(),
        gateway: false,
    };
    let device = store
        .create_device(tenant.key, &new, &[credential])
        .await
        .unwrap();
    let v1 = release(store, &tenant, "1").await;
    store
        .assign(tenant.key, Scope::Tenant, v1.key, "test")
        .await
        .unwrap();
    let action = store.poll_view(device.key).await.unwrap().active.unwrap();
    for report in [
        Report::Reached {
            state: UpdateState::Downloading,
            progress: None,
        },
        Report::Succeeded,
    ] {
        store
            .report(tenant.key, action.key, &report, "ddi")
            .await
            .unwrap();
    }

    // Warm, then ten more idle check-ins: every read a hit (on PostgreSQL once the change feed
    // listens).
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        store.views().until_live(),
    )
    .await
    .expect("the views' change feed never connected");
    idle_check_in(store, &tenant, "hash-d1", v1.key).await;
    let (hits, misses) = store.views().hit_counts();
    for _ in 0..10 {
        idle_check_in(store, &tenant, "hash-d1", v1.key).await;
    }
    let (hits_after, misses_after) = store.views().hit_counts();
    assert_eq!(
        misses_after, misses,
        "an idle check-in went to the database"
    );
    assert_eq!(hits_after - hits, 50);
    let view = store.poll_view(device.key).await.unwrap();
    assert!(view.active.is_none());
    assert_eq!(view.last_updated.unwrap().key, action.key);

    // This store's writes are seen by the next read: a new assignment, a report.
    let v2 = release(store, &tenant, "2").await;
    store
        .assign(tenant.key, Scope::Tenant, v2.key, "test")
        .await
        .unwrap();
    let next = store.poll_view(device.key).await.unwrap().active.unwrap();
    assert_eq!(next.artifact_version, "2");
    let status = store.device_status(tenant.key, &id).await.unwrap().unwrap();
    assert_eq!(status.desired_firmware.unwrap().version, "2");
    store.initiate(&[next.key], "ddi").await.unwrap();
    let told = store.poll_view(device.key).await.unwrap().active.unwrap();
    assert_eq!(told.state, UpdateState::Initiated);
    let failed = Report::Failed(updraft_core::Failure {
        code: updraft_core::FailureCode::UpdateFailed,
        reason: "no".into(),
    });
    store
        .report(tenant.key, next.key, &failed, "ddi")
        .await
        .unwrap();
    assert!(store.poll_view(device.key).await.unwrap().active.is_none());
    let status = store.device_status(tenant.key, &id).await.unwrap().unwrap();
    assert!(status.active.is_none());

    // A report that does not end UPDATED leaves the device itself in memory (a check-in looks it
    // up without a round trip) and is seen in its poll view; one that ends UPDATED is seen in
    // what the device runs.
    let v3 = release(store, &tenant, "4").await;
    store
        .assign(tenant.key, Scope::Tenant, v3.key, "test")
        .await
        .unwrap();
    let third = store.poll_view(device.key).await.unwrap().active.unwrap();
    let by_credential =
        || store.device_by_credential_in(tenant.key, CredentialKind::AccessToken, "hash-d1");
    by_credential().await.unwrap().unwrap();
    let downloading = Report::Reached {
        state: UpdateState::Downloading,
        progress: None,
    };
    store
        .report(tenant.key, third.key, &downloading, "ddi")
        .await
        .unwrap();
    let (_, misses) = store.views().hit_counts();
    by_credential().await.unwrap().unwrap();
    assert_eq!(
        store.views().hit_counts().1,
        misses,
        "the device was read again after a report that left it as it was"
    );
    let view = store.poll_view(device.key).await.unwrap();
    assert_eq!(view.active.unwrap().state, UpdateState::Downloading);
    store
        .report(tenant.key, third.key, &Report::Succeeded, "ddi")
        .await
        .unwrap();
    let runs = by_credential().await.unwrap().unwrap().firmware.unwrap();
    assert_eq!(runs.version, "4");

    // Negative answers are kept too, and a write that gives them a value is seen: a credential
    // that names no device (until a device is created with it), a device without a PSK (until
    // it is given one).
    for _ in 0..2 {
        let unknown = store
            .device_by_credential_in(tenant.key, CredentialKind::Lwm2mEndpoint, "ep-2")
            .await
            .unwrap();
        assert!(unknown.is_none());
        assert_eq!(store.lwm2m_psk_identity(device.key).await.unwrap(), None);
    }
    let (_, misses) = store.views().hit_counts();
    store
        .device_by_credential_in(tenant.key, CredentialKind::Lwm2mEndpoint, "ep-2")
        .await
        .unwrap();
    store.lwm2m_psk_identity(device.key).await.unwrap();
    assert_eq!(
        store.views().hit_counts().1,
        misses,
        "a negative answer went to the database again"
    );
    let second = NewDevice {
        id: DeviceId::parse("d2").unwrap(),
        ..new.clone()
    };
    let endpoint = NewCredential {
        kind: CredentialKind::Lwm2mEndpoint,
        secret_hash: "ep-2".into(),
        gateway: false,
    };
    let d2 = store
        .create_device(tenant.key, &second, &[endpoint])
        .await
        .unwrap();
    let found = store
        .device_by_credential_in(tenant.key, CredentialKind::Lwm2mEndpoint, "ep-2")
        .await
        .unwrap();
    assert_eq!(found.map(|d| d.key), Some(d2.key));
    store
        .set_lwm2m_psk(device.key, Some(("psk-d1", "00ff")))
        .await
        .unwrap();
    assert_eq!(
        store
            .lwm2m_psk_identity(device.key)
            .await
            .unwrap()
            .as_deref(),
        Some("psk-d1")
    );

    // last_seen: the first sighting is written at once, later ones within a flush.
    store.touch_device(device.key).await.unwrap();
    let other = reopen.open().await;
    let first = other.device_by_key(device.key).await.unwrap().unwrap();
    assert!(
        first.last_seen.is_some(),
        "the first sighting was not written"
    );
    store.device_by_key(device.key).await.unwrap();
    store.touch_device(device.key).await.unwrap();
    let seen = store.device_by_key(device.key).await.unwrap().unwrap();
    store.flush().await.unwrap();
    let third = reopen.open().await;
    let written = third.device_by_key(device.key).await.unwrap().unwrap();
    assert_eq!(written.last_seen, seen.last_seen);

    // Another process's write (a second replica on PostgreSQL) is heard through the change feed;
    // SQLite has one writing process, and the invalidation hook is what a feed calls.
    let settings = TenantSettings {
        poll_interval_secs: 77,
        ..tenant.settings
    };
    store.tenant_by_name("hot").await.unwrap().unwrap();
    let heard = store.views().heard();
    other
        .update_tenant_settings(tenant.key, settings)
        .await
        .unwrap();
    match reopen {
        Reopen::Url(_) => {
            let seen = async {
                let mut heard = heard;
                loop {
                    store.views().heard_after(heard).await;
                    let found = store.tenant_by_name("hot").await.unwrap().unwrap();
                    if found.settings.poll_interval_secs == 77 {
                        return;
                    }
                    heard = store.views().heard();
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(20), seen)
                .await
                .expect("the other process's write was never heard");
            // And a device-level write: the other process's report reaches this one's poll view.
            let v3 = release(store, &tenant, "3").await;
            store
                .assign(tenant.key, Scope::Tenant, v3.key, "test")
                .await
                .unwrap();
            let queued = store.poll_view(device.key).await.unwrap().active.unwrap();
            let heard = store.views().heard();
            other.initiate(&[queued.key], "ddi").await.unwrap();
            let seen = async {
                let mut heard = heard;
                loop {
                    store.views().heard_after(heard).await;
                    let view = store.poll_view(device.key).await.unwrap();
                    if view
                        .active
                        .is_some_and(|a| a.state == UpdateState::Initiated)
                    {
                        return;
                    }
                    heard = store.views().heard();
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(20), seen)
                .await
                .expect("the other process's initiation was never heard");
        }
        Reopen::Sqlite(_) => {
            store.views().invalidate_all();
            let found = store.tenant_by_name("hot").await.unwrap().unwrap();
            assert_eq!(found.settings.poll_interval_secs, 77);
        }
    }
    other.close().await;
    third.close().await;
}
