//! What replicas share: secrets (the first to ask decides) and news (heard by every other
//! process on the database, after the invalidations that went before it, never by its sender).

use updraft_core::Name;
use updraft_store::*;

use crate::Reopen;

pub async fn the_first_replica_decides_a_shared_secret(store: &SqlStore, reopen: &Reopen) {
    assert_eq!(store.shared_secret("k", "first").await.unwrap(), "first");
    let other = reopen.open().await;
    assert_eq!(other.shared_secret("k", "second").await.unwrap(), "first");
    assert_eq!(other.shared_secret("j", "own").await.unwrap(), "own");
    store.ping().await.unwrap();
}

#[tokio::test]
async fn news_reaches_the_other_replicas_after_their_invalidations() {
    let Some(url) = updraft_test_support::postgres::fresh_database().await else {
        return;
    };
    let a = SqlStore::open(&url).await.unwrap();
    let b = SqlStore::open(&url).await.unwrap();
    updraft_test_support::within(a.views().until_live()).await;
    updraft_test_support::within(b.views().until_live()).await;
    let mut heard_by_b = b.subscribe().expect("PostgreSQL replicas hear each other");
    let mut heard_by_a = a.subscribe().unwrap();
    // B caches a tenant; A renames nothing but changes its settings, then announces.
    let tenant = a.create_tenant(&Name::parse("t").unwrap()).await.unwrap();
    assert!(b.tenant_by_name("t").await.unwrap().is_some());
    assert!(b.tenant_by_name("t").await.unwrap().is_some());
    a.publish("queued");
    loop {
        let news = updraft_test_support::within(heard_by_b.recv())
            .await
            .unwrap();
        if news == "queued" {
            break;
        }
        // `*` when the listener (re)connected: nothing else.
        assert_eq!(news, "*");
    }
    let _ = tenant;
    // A's own news does not come back to it.
    a.publish("schedule");
    b.publish("withdrawn 1");
    loop {
        let news = updraft_test_support::within(heard_by_a.recv())
            .await
            .unwrap();
        assert_ne!(news, "schedule", "a replica heard its own news");
        assert_ne!(news, "queued", "a replica heard its own news");
        if news == "withdrawn 1" {
            break;
        }
    }
    // SQLite has no other process to tell.
    let dir = tempfile::tempdir().unwrap();
    let alone = SqlStore::open_sqlite(&dir.path().join("t.db"))
        .await
        .unwrap();
    assert!(alone.subscribe().is_none());
    alone.publish("queued");
}

pub async fn lwm2m_registrations_are_kept_until_they_expire_or_end(
    store: &SqlStore,
    reopen: &Reopen,
) {
    let tenant = store
        .create_tenant(&Name::parse("reg").unwrap())
        .await
        .unwrap();
    let device = store
        .create_device(
            tenant.key,
            &NewDevice {
                id: updraft_core::DeviceId::parse("ep-1").unwrap(),
                project: None,
                profile: None,
                tags: Vec::new(),
                attributes: Default::default(),
            },
            &[],
        )
        .await
        .unwrap();
    let registration = StoredRegistration {
        device: device.key,
        tenant: tenant.key,
        device_id: device.id.clone(),
        endpoint: "urn:dev:ep-1".into(),
        location: "a1b2".into(),
        peer: "127.0.0.1:5683".into(),
        lifetime: 300,
        version: "1.1".into(),
        root: String::new(),
        objects: vec!["/3/0".into(), "/5/0".into()],
        expires_at: 10_000,
    };
    store
        .save_lwm2m_registrations(&[(device.key, Some(registration.clone()))])
        .await
        .unwrap();
    // Another process (a replica after a restart) reads it back; expired ones are not.
    let other = reopen.open().await;
    assert_eq!(
        other.lwm2m_registrations(9_999).await.unwrap(),
        vec![registration.clone()]
    );
    assert!(other.lwm2m_registrations(10_000).await.unwrap().is_empty());
    // An update replaces it; a de-registration ends it; a deleted device has none.
    let moved = StoredRegistration {
        peer: "127.0.0.1:6000".into(),
        expires_at: 20_000,
        ..registration
    };
    store
        .save_lwm2m_registrations(&[(device.key, Some(moved.clone()))])
        .await
        .unwrap();
    assert_eq!(store.lwm2m_registrations(0).await.unwrap(), vec![moved]);
    store
        .save_lwm2m_registrations(&[(device.key, None)])
        .await
        .unwrap();
    assert!(store.lwm2m_registrations(0).await.unwrap().is_empty());
}

pub async fn replicas_share_one_budget_a_second(store: &SqlStore, reopen: &Reopen) {
    let other = reopen.open().await;
    match reopen {
        // One process: it gets what it asks for.
        Reopen::Sqlite(_) => assert_eq!(store.take_budget("n", 7, 10, 30).await.unwrap(), 30),
        Reopen::Url(_) => {
            assert_eq!(store.take_budget("n", 7, 10, 6).await.unwrap(), 6);
            assert_eq!(other.take_budget("n", 7, 10, 6).await.unwrap(), 4);
            assert_eq!(store.take_budget("n", 7, 10, 1).await.unwrap(), 0);
            // The next second starts over; another name has its own budget.
            assert_eq!(other.take_budget("n", 8, 10, 3).await.unwrap(), 3);
            assert_eq!(store.take_budget("m", 8, 5, 9).await.unwrap(), 5);
        }
    }
}
