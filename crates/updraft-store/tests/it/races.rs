//! Writers racing on one action: device reports against a supersede. Whatever order they land
//! in, an action never moves from one final state to another. Writers racing on one device's
//! reconciliation: each device keeps one active action, whatever lands first.

use std::collections::BTreeMap;

use updraft_core::{DeviceId, Failure, FailureCode, Name, Progress, Report, Scope, UpdateState};
use updraft_store::*;

use crate::Reopen;
use crate::coverage::release;

/// A device in no project or profile, with no credential.
async fn bare_device(store: &SqlStore, tenant: &Tenant, id: &str) -> Device {
    store
        .create_device(
            tenant.key,
            &NewDevice {
                id: DeviceId::parse(id).unwrap(),
                project: None,
                profile: None,
                tags: vec![],
                attributes: BTreeMap::new(),
            },
            &[],
        )
        .await
        .unwrap()
}

pub async fn reports_racing_a_supersede_never_leave_a_final_state(store: &SqlStore, _: &Reopen) {
    let tenant = store
        .create_tenant(&Name::parse("race").unwrap())
        .await
        .unwrap();
    let v1 = release(store, &tenant, "1").await;
    let v2 = release(store, &tenant, "2").await;
    for round in 0..5 {
        let device = bare_device(store, &tenant, &format!("d{round}")).await;
        store
            .assign(tenant.key, Scope::Device(device.key), v1.key, "u")
            .await
            .unwrap();
        let status = store
            .device_status(tenant.key, &device.id)
            .await
            .unwrap()
            .unwrap();
        let action = status.active.unwrap().key;
        let downloading = Report::Reached {
            state: UpdateState::Downloading,
            progress: Some(Progress { done: 0, total: 3 }),
        };
        store
            .report(tenant.key, action, &downloading, "t")
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for n in 0..100 {
            let store = store.clone();
            let tenant = tenant.key;
            let device = device.key;
            let v2 = v2.key;
            tasks.push(tokio::spawn(async move {
                if n == 50 {
                    store
                        .assign(tenant, Scope::Device(device), v2, "u")
                        .await
                        .map(|_| ())
                } else {
                    let report = match n % 3 {
                        0 => Report::Succeeded,
                        1 => Report::Failed(Failure {
                            code: FailureCode::from_text("download_failed"),
                            reason: "cut".into(),
                        }),
                        _ => Report::Reached {
                            state: UpdateState::Downloaded,
                            progress: None,
                        },
                    };
                    store.report(tenant, action, &report, "t").await.map(|_| ())
                }
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let history = store.action_history(tenant.key, action).await.unwrap();
        let applied: Vec<&ActionEvent> = history.iter().filter(|e| !e.refused).collect();
        let finals = applied.iter().filter(|e| e.to.is_final()).count();
        assert_eq!(finals, 1, "one final state, reached once: {applied:#?}");
        assert!(
            applied
                .iter()
                .all(|e| !e.from.is_some_and(|f| f.is_final())),
            "nothing applied after a final state: {applied:#?}"
        );
        let last = store.action(tenant.key, action).await.unwrap().unwrap();
        assert_eq!(Some(&last.state), applied.last().map(|e| &e.to));
    }
}

/// Moves of one device (each reconciles that device alone) racing each other, moves of other
/// devices and assignments to the whole tenant: every writer succeeds (no two queue an action
/// for one device, which the one-active-action index would refuse), and each device ends with the
/// one active action its last placement calls for.
pub async fn reconciliations_racing_on_one_device_keep_one_active_action(
    store: &SqlStore,
    _: &Reopen,
) {
    let tenant = store
        .create_tenant(&Name::parse("race-place").unwrap())
        .await
        .unwrap();
    let v1 = release(store, &tenant, "1").await;
    let v2 = release(store, &tenant, "2").await;
    let v3 = release(store, &tenant, "3").await;
    let mut profiles = Vec::new();
    for (name, artifact) in [("pa", &v1), ("pb", &v2)] {
        let profile = store
            .create_profile(tenant.key, &Name::parse(name).unwrap(), "")
            .await
            .unwrap();
        store
            .assign(tenant.key, Scope::Profile(profile.key), artifact.key, "u")
            .await
            .unwrap();
        profiles.push(profile.key);
    }
    let mut devices = Vec::new();
    for n in 0..8 {
        let device = bare_device(store, &tenant, &format!("p{n}")).await;
        devices.push(device);
    }
    let mut tasks = Vec::new();
    for n in 0..160usize {
        let store = store.clone();
        let tenant = tenant.key;
        let device = devices[n % devices.len()].key;
        let profile = profiles[(n / devices.len()) % 2];
        // Every tenth writer assigns a tenant-wide default (v3 and v1 in turn).
        let default = if n % 20 == 5 { v3.key } else { v1.key };
        tasks.push(tokio::spawn(async move {
            if n % 10 == 5 {
                store
                    .assign(tenant, Scope::Tenant, default, "u")
                    .await
                    .map(|_| ())
            } else {
                store
                    .place_device(tenant, device, None, Some(profile))
                    .await
            }
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    // Whichever placement of a device landed last, its profile's assignment (more specific than
    // the tenant's) is what its one active action installs.
    for device in &devices {
        let status = store
            .device_status(tenant.key, &device.id)
            .await
            .unwrap()
            .unwrap();
        let (profile, _) = status.device.profile.clone().expect("placed in a profile");
        let wanted = if profile == profiles[0] { &v1 } else { &v2 };
        let active = status.active.expect("an active action");
        assert_eq!(
            active.artifact,
            Some(wanted.key),
            "{}: {active:#?}",
            device.id
        );
    }
}
