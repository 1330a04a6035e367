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
