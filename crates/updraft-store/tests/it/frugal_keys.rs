//! Frugal-IoT keys and nodes: enrollment bounded per key, keys scoped to their tenant, deletion
//! ending the membership of nodes the key enrolled.

use std::collections::BTreeMap;

use updraft_core::{DeviceId, Name};

use updraft_store::*;

use crate::Reopen;

fn new_node(id: &str) -> NewDevice {
    NewDevice {
        id: DeviceId::parse(id).unwrap(),
        project: None,
        profile: None,
        tags: vec!["frugal-iot".into()],
        attributes: BTreeMap::new(),
    }
}

pub async fn frugal_keys_enroll_a_bounded_number_of_nodes_in_their_tenant(
    store: &SqlStore,
    _: &Reopen,
) {
    let a = store
        .create_tenant(&Name::parse("fa").unwrap())
        .await
        .unwrap();
    let b = store
        .create_tenant(&Name::parse("fb").unwrap())
        .await
        .unwrap();
    let lotus = store
        .create_project(a.key, &Name::parse("lotus").unwrap())
        .await
        .unwrap();
    let sht = store
        .create_profile(a.key, &Name::parse("sht").unwrap(), "")
        .await
        .unwrap();
    let b_project = store
        .create_project(b.key, &Name::parse("lotus").unwrap())
        .await
        .unwrap();
    // A key names its own tenant's project and profile, never another's.
    assert!(matches!(
        store
            .create_frugal_key(b.key, b_project.key, sht.key, "h-b", 5)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let key = store
        .create_frugal_key(a.key, lotus.key, sht.key, "h-a", 2)
        .await
        .unwrap();
    assert_eq!(key.project.1.as_str(), "lotus");
    assert_eq!(key.profile.1.as_str(), "sht");
    // The same secret in another tenant is another key; the lookup never crosses.
    let b_profile = store
        .create_profile(b.key, &Name::parse("sht").unwrap(), "")
        .await
        .unwrap();
    let b_key = store
        .create_frugal_key(b.key, b_project.key, b_profile.key, "h-a", 1)
        .await
        .unwrap();
    assert_eq!(
        store.frugal_key_by_hash(a.key, "h-a").await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(
        store
            .frugal_key_by_hash(b.key, "h-a")
            .await
            .unwrap()
            .map(|k| k.id),
        Some(b_key.id)
    );
    assert_eq!(store.frugal_key(b.key, key.id).await.unwrap(), None);
    assert_eq!(
        store.list_frugal_keys(a.key).await.unwrap(),
        vec![key.clone()]
    );
    assert!(matches!(
        store
            .create_frugal_key(a.key, lotus.key, sht.key, "h-a", 2)
            .await,
        Err(StoreError::Conflict { .. })
    ));

    // Two nodes enroll, placed in the key's project and profile; the third is refused.
    for id in ["n1", "n2"] {
        let (outcome, device) = store.enroll_frugal_node(&key, &new_node(id)).await.unwrap();
        assert_eq!(outcome, Enrollment::Enrolled);
        let device = device.unwrap();
        assert_eq!(device.project.as_ref().map(|p| p.0), Some(lotus.key));
        assert_eq!(device.profile.as_ref().map(|p| p.0), Some(sht.key));
        let node = store.frugal_node(device.key).await.unwrap().unwrap();
        assert_eq!((node.key, node.secret_hash), (Some(key.id), None));
    }
    let (outcome, device) = store
        .enroll_frugal_node(&key, &new_node("n3"))
        .await
        .unwrap();
    assert_eq!((outcome, device), (Enrollment::KeyFull, None));
    assert_eq!(
        store
            .device(a.key, &DeviceId::parse("n3").unwrap())
            .await
            .unwrap(),
        None
    );
    // An existing id is a conflict, not a second device.
    let other = store
        .create_frugal_key(a.key, lotus.key, sht.key, "h-other", 10)
        .await
        .unwrap();
    assert!(matches!(
        store.enroll_frugal_node(&other, &new_node("n1")).await,
        Err(StoreError::Conflict { .. })
    ));

    // A device made by the API is not a Frugal node until it gets a key of its own.
    let ddi = store
        .create_device(a.key, &new_node("ddi-1"), &[])
        .await
        .unwrap();
    assert_eq!(store.frugal_node(ddi.key).await.unwrap(), None);
    store
        .set_frugal_node_key(ddi.key, Some("own-1"))
        .await
        .unwrap();
    store
        .set_frugal_node_key(ddi.key, Some("own-2"))
        .await
        .unwrap();
    let node = store.frugal_node(ddi.key).await.unwrap().unwrap();
    assert_eq!(
        (node.secret_hash.as_deref(), node.key),
        (Some("own-2"), None)
    );
    // A node with no key yet keeps none when marked again, and a project key may claim it once.
    let pushed = store
        .create_device(a.key, &new_node("pushed"), &[])
        .await
        .unwrap();
    store.set_frugal_node_key(pushed.key, None).await.unwrap();
    store.set_frugal_node_key(pushed.key, None).await.unwrap();
    assert!(!store.claim_frugal_node(ddi.key, key.id).await.unwrap());
    assert!(store.claim_frugal_node(pushed.key, key.id).await.unwrap());
    assert!(!store.claim_frugal_node(pushed.key, key.id).await.unwrap());
    let claimed = store.frugal_node(pushed.key).await.unwrap().unwrap();
    assert_eq!((claimed.secret_hash, claimed.key), (None, Some(key.id)));

    // n1 also gets a key of its own: deleting the project key keeps it a node, n2 stops being one.
    let n1 = store
        .device(a.key, &DeviceId::parse("n1").unwrap())
        .await
        .unwrap()
        .unwrap();
    let n2 = store
        .device(a.key, &DeviceId::parse("n2").unwrap())
        .await
        .unwrap()
        .unwrap();
    store
        .set_frugal_node_key(n1.key, Some("own-n1"))
        .await
        .unwrap();
    assert!(!store.delete_frugal_key(b.key, key.id).await.unwrap());
    assert!(store.delete_frugal_key(a.key, key.id).await.unwrap());
    let n1_node = store.frugal_node(n1.key).await.unwrap().unwrap();
    assert_eq!(
        (n1_node.secret_hash.as_deref(), n1_node.key),
        (Some("own-n1"), None)
    );
    assert_eq!(store.frugal_node(n2.key).await.unwrap(), None);
    assert_eq!(store.frugal_key_by_hash(a.key, "h-a").await.unwrap(), None);
}

/// The same credential in two tenants: creating it is no conflict (nothing tells one tenant what
/// another holds), a lookup that names the tenant finds that tenant's device, and one that names
/// none finds neither.
pub async fn credentials_are_unique_per_tenant_and_ambiguous_ones_open_nothing(
    store: &SqlStore,
    _: &Reopen,
) {
    let a = store
        .create_tenant(&Name::parse("ca").unwrap())
        .await
        .unwrap();
    let b = store
        .create_tenant(&Name::parse("cb").unwrap())
        .await
        .unwrap();
    let with = |secret: &str| {
        vec![NewCredential {
            kind: CredentialKind::AccessToken,
            secret_hash: secret.to_owned(),
            gateway: true,
        }]
    };
    let in_a = store
        .create_device(a.key, &new_node("same"), &with("shared"))
        .await
        .unwrap();
    // Only tenant A holds it: found without a tenant, and as A's gateway.
    assert_eq!(
        store
            .device_by_credential(CredentialKind::AccessToken, "shared")
            .await
            .unwrap()
            .map(|d| d.key),
        Some(in_a.key)
    );
    let in_b = store
        .create_device(b.key, &new_node("same"), &with("shared"))
        .await
        .unwrap();
    // Within one tenant it stays unique.
    assert!(matches!(
        store
            .create_device(a.key, &new_node("other"), &with("shared"))
            .await,
        Err(StoreError::Conflict {
            code: "credential_exists",
            ..
        })
    ));
    for (tenant, device) in [(a.key, in_a.key), (b.key, in_b.key)] {
        let found = store
            .device_by_credential_in(tenant, CredentialKind::AccessToken, "shared")
            .await
            .unwrap();
        assert_eq!(found.map(|d| d.key), Some(device));
        let gateway = store
            .gateway_by_credential(tenant, CredentialKind::AccessToken, "shared")
            .await
            .unwrap();
        assert_eq!(gateway.map(|d| d.key), Some(device));
    }
    assert_eq!(
        store
            .device_by_credential(CredentialKind::AccessToken, "shared")
            .await
            .unwrap(),
        None,
        "held in two tenants: no device without a tenant"
    );
}
