//! The rest of the `Store` methods, and a check that the conformance suite calls every method the
//! traits declare (so that a new method cannot go untested on either backend).

use std::collections::BTreeMap;

use updraft_core::{
    ArtifactKind, Checksums, DeviceId, MultiHasher, Name, Report, Scope, UpdateState,
};
use updraft_store::*;

use crate::Reopen;

fn sums(content: &str) -> Checksums {
    let mut hasher = MultiHasher::new();
    hasher.update(content.as_bytes());
    hasher.finish()
}

fn node(id: &str) -> NewDevice {
    NewDevice {
        id: DeviceId::parse(id).unwrap(),
        project: None,
        profile: None,
        tags: vec![],
        attributes: BTreeMap::new(),
    }
}

/// A firmware `fw@{version}` of three bytes, for every profile.
pub async fn release(store: &SqlStore, tenant: &Tenant, version: &str) -> Artifact {
    store
        .insert_artifact(
            tenant.key,
            &NewArtifact {
                title: "fw".into(),
                version: version.into(),
                kind: ArtifactKind::Firmware,
                profiles: vec![],
                size: 3,
                filename: format!("fw-{version}.bin"),
                checksums: sums(version),
                signature: None,
                description: String::new(),
                uploaded_by: "test".into(),
            },
        )
        .await
        .unwrap()
}

pub async fn tenants_projects_and_devices_are_found_by_key_and_name(store: &SqlStore, _: &Reopen) {
    let a = store
        .create_tenant(&Name::parse("ka").unwrap())
        .await
        .unwrap();
    let b = store
        .create_tenant(&Name::parse("kb").unwrap())
        .await
        .unwrap();
    assert_eq!(store.tenant_by_key(a.key).await.unwrap(), Some(a.clone()));
    assert_eq!(
        store
            .tenant_by_key(updraft_core::TenantKey(-1))
            .await
            .unwrap(),
        None
    );
    let lotus = store
        .create_project(a.key, &Name::parse("lotus").unwrap())
        .await
        .unwrap();
    store
        .create_project(a.key, &Name::parse("rose").unwrap())
        .await
        .unwrap();
    let names: Vec<String> = store
        .list_projects(a.key)
        .await
        .unwrap()
        .iter()
        .map(|p| p.name.to_string())
        .collect();
    assert_eq!(names, ["lotus", "rose"]);
    assert!(store.list_projects(b.key).await.unwrap().is_empty());
    assert_eq!(
        store
            .project_by_name(a.key, &Name::parse("lotus").unwrap())
            .await
            .unwrap()
            .map(|p| p.key),
        Some(lotus.key)
    );
    assert_eq!(
        store
            .project_by_name(b.key, &Name::parse("lotus").unwrap())
            .await
            .unwrap(),
        None
    );
    let device = store.create_device(a.key, &node("k1"), &[]).await.unwrap();
    assert_eq!(
        store.device_by_key(device.key).await.unwrap(),
        Some(device.clone())
    );
    store.delete_device(a.key, &device.id).await.unwrap();
    assert_eq!(store.device_by_key(device.key).await.unwrap(), None);
}

pub async fn the_queue_lists_queued_actions_and_initiates_each_once(store: &SqlStore, _: &Reopen) {
    let tenant = store
        .create_tenant(&Name::parse("q").unwrap())
        .await
        .unwrap();
    let other = store
        .create_tenant(&Name::parse("q2").unwrap())
        .await
        .unwrap();
    let v1 = release(store, &tenant, "1").await;
    let mut devices = Vec::new();
    for n in 0..3 {
        devices.push(
            store
                .create_device(tenant.key, &node(&format!("q{n}")), &[])
                .await
                .unwrap(),
        );
    }
    store
        .create_device(other.key, &node("q0"), &[])
        .await
        .unwrap();
    store
        .assign(tenant.key, Scope::Tenant, v1.key, "u")
        .await
        .unwrap();
    let listed = store
        .assign(tenant.key, Scope::Tenant, v1.key, "u")
        .await
        .unwrap();
    let assignments = store.list_assignments(tenant.key).await.unwrap();
    assert_eq!(assignments.len(), 1);
    assert_eq!(
        (assignments[0].scope, assignments[0].artifact),
        (Scope::Tenant, v1.key)
    );
    assert_eq!(assignments[0].id, listed.id);
    assert!(store.list_assignments(other.key).await.unwrap().is_empty());

    let queued = store
        .queued_actions(updraft_core::ActionKey(0), 10)
        .await
        .unwrap();
    assert_eq!(queued.len(), 3);
    assert!(
        queued
            .iter()
            .all(|q| q.tenant == tenant.key && q.artifact == Some(v1.key))
    );
    assert!(
        queued.windows(2).all(|w| w[0].action.0 < w[1].action.0),
        "oldest first"
    );
    let page = store.queued_actions(queued[0].action, 1).await.unwrap();
    assert_eq!(
        page.iter().map(|q| q.action).collect::<Vec<_>>(),
        [queued[1].action]
    );

    let keys: Vec<_> = queued.iter().map(|q| q.action).collect();
    assert_eq!(store.initiate(&keys[..2], "mqtt").await.unwrap(), keys[..2]);
    // Initiated ones are not initiated again, nor listed as queued.
    assert_eq!(store.initiate(&keys, "mqtt").await.unwrap(), keys[2..]);
    assert!(
        store
            .queued_actions(updraft_core::ActionKey(0), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // What a poll needs, in one view: the active action, then the last success.
    let first = devices[0].key;
    let view = store.poll_view(first).await.unwrap();
    assert_eq!(view.active.as_ref().map(|a| a.key), Some(keys[0]));
    assert_eq!(
        view.active.as_ref().map(|a| a.state),
        Some(UpdateState::Initiated)
    );
    assert!(view.last_updated.is_none() && view.pending_cancel.is_none());
    store
        .report(tenant.key, keys[0], &Report::Succeeded, "t")
        .await
        .unwrap();
    let view = store.poll_view(first).await.unwrap();
    assert!(view.active.is_none());
    assert_eq!(view.last_updated.map(|a| a.key), Some(keys[0]));
    // A canceled action the device knew of waits for its confirmation.
    let second = devices[1].key;
    let v2 = release(store, &tenant, "2").await;
    store
        .assign(tenant.key, Scope::Device(second), v2.key, "u")
        .await
        .unwrap();
    let view = store.poll_view(second).await.unwrap();
    assert_eq!(view.pending_cancel.map(|a| a.key), Some(keys[1]));
}

pub async fn lwm2m_psks_are_set_found_and_removed(store: &SqlStore, _: &Reopen) {
    let tenant = store
        .create_tenant(&Name::parse("psk").unwrap())
        .await
        .unwrap();
    let one = store
        .create_device(tenant.key, &node("p1"), &[])
        .await
        .unwrap();
    let two = store
        .create_device(tenant.key, &node("p2"), &[])
        .await
        .unwrap();
    store
        .set_lwm2m_psk(one.key, Some(("id-1", "00ff")))
        .await
        .unwrap();
    assert_eq!(
        store.lwm2m_psk_identity(one.key).await.unwrap().as_deref(),
        Some("id-1")
    );
    assert_eq!(store.lwm2m_psk_identity(two.key).await.unwrap(), None);
    assert!(matches!(
        store.set_lwm2m_psk(two.key, Some(("id-1", "aa"))).await,
        Err(StoreError::Conflict { .. })
    ));
    store
        .set_lwm2m_psk(one.key, Some(("id-1b", "0102")))
        .await
        .unwrap();
    assert_eq!(
        store.lwm2m_psks().await.unwrap(),
        vec![(one.key, "id-1b".to_owned(), "0102".to_owned())]
    );
    store.set_lwm2m_psk(one.key, None).await.unwrap();
    assert!(store.lwm2m_psks().await.unwrap().is_empty());
    assert_eq!(store.lwm2m_psk_identity(one.key).await.unwrap(), None);
}

/// Every method of the store's traits is called somewhere in this suite.
#[test]
fn the_conformance_suite_calls_every_store_method() {
    let root = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
    )
    .to_path_buf();
    let traits = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let mut suite = String::new();
    for entry in std::fs::read_dir(root.join("tests/it")).unwrap() {
        suite.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let missing: Vec<&str> = traits
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("async fn "))
        .filter_map(|rest| rest.split('(').next())
        .filter(|name| !suite.contains(&format!(".{name}(")))
        .collect();
    assert!(
        missing.is_empty(),
        "store methods no conformance test calls: {missing:?}"
    );
}
