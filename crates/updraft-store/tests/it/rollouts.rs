//! Rollouts in the store: members and counters, what a reopened store still knows, the
//! compare-and-set lifecycle, cancel withdrawing members, and the scheduler lease.

use updraft_core::rollout::{Lifecycle, Thresholds, UpdateType};
use updraft_core::{
    ArtifactKind, DeviceId, DeviceKey, MultiHasher, Name, Report, Scope, UpdateState,
};
use updraft_store::*;

use crate::Reopen;

fn new_rollout(name: &str, artifact: &Artifact, state: Lifecycle) -> NewRollout {
    NewRollout {
        name: Name::parse(name).unwrap(),
        artifact: artifact.key,
        target: "test".into(),
        groups_spec: "4,rest".into(),
        thresholds: Thresholds {
            success_pct: 50,
            error_pct: 50,
            soak_millis: 0,
        },
        update_type: UpdateType::Forced,
        state,
        start_at: None,
        max_per_minute: None,
        max_downloads: None,
        jitter_millis: 0,
        window: None,
        dynamic: false,
        rule: false,
        created_by: "test".into(),
    }
}

async fn setup(store: &SqlStore, tenant: &str, n: usize) -> (Tenant, Artifact, Vec<DeviceKey>) {
    let tenant = store
        .create_tenant(&Name::parse(tenant).unwrap())
        .await
        .unwrap();
    let mut hasher = MultiHasher::new();
    hasher.update(b"fw2");
    let artifact = store
        .insert_artifact(
            tenant.key,
            &NewArtifact {
                title: "fw".into(),
                version: "2".into(),
                kind: ArtifactKind::Firmware,
                profiles: vec![],
                size: 3,
                filename: "fw.bin".into(),
                checksums: hasher.finish(),
                signature: None,
                description: String::new(),
                uploaded_by: "test".into(),
            },
        )
        .await
        .unwrap();
    let mut devices = Vec::new();
    for i in 0..n {
        let device = store
            .create_device(
                tenant.key,
                &NewDevice {
                    id: DeviceId::parse(&format!("d{i:02}")).unwrap(),
                    project: None,
                    profile: None,
                    tags: vec![],
                    attributes: Default::default(),
                },
                &[],
            )
            .await
            .unwrap();
        devices.push(device.key);
    }
    (tenant, artifact, devices)
}

async fn active_of(store: &SqlStore, tenant: &Tenant, i: usize) -> Option<Action> {
    store
        .device_status(tenant.key, &DeviceId::parse(&format!("d{i:02}")).unwrap())
        .await
        .unwrap()
        .unwrap()
        .active
}

pub async fn rollouts_count_actions_in_their_groups_and_survive_a_restart(
    store: &SqlStore,
    reopen: &Reopen,
) {
    let (tenant, artifact, devices) = setup(store, "ra", 10).await;
    let members = vec![devices[..4].to_vec(), devices[4..].to_vec()];
    let rollout = store
        .create_rollout(
            tenant.key,
            &new_rollout("r", &artifact, Lifecycle::Running),
            &members,
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_rollout(
                tenant.key,
                &new_rollout("r", &artifact, Lifecycle::Ready),
                &members
            )
            .await,
        Err(StoreError::Conflict {
            code: "rollout_exists",
            ..
        })
    ));
    let groups = store.rollout_groups(rollout.key).await.unwrap();
    assert_eq!(groups.iter().map(|g| g.size).collect::<Vec<_>>(), [4, 6]);
    // Nothing is activated before its group starts.
    assert_eq!(
        store.activate_members(&rollout, 100, 1_000).await.unwrap(),
        0
    );
    store
        .mark_group(groups[0].id, GroupMark::Started, 1_000)
        .await
        .unwrap();
    assert_eq!(store.activate_members(&rollout, 3, 1_000).await.unwrap(), 3);
    assert_eq!(
        store.activate_members(&rollout, 100, 1_000).await.unwrap(),
        1
    );
    assert_eq!(store.activated_since(rollout.key, 1_000).await.unwrap(), 4);
    assert_eq!(store.activated_since(rollout.key, 1_001).await.unwrap(), 0);

    // A restarted server reads the same progress, and reports keep moving it.
    let reopened = reopen.open().await;
    let groups = reopened.rollout_groups(rollout.key).await.unwrap();
    assert_eq!(groups[0].count(UpdateState::Queued), 4);
    assert_eq!(groups[1].count(UpdateState::Queued), 0);
    let mut keys = Vec::new();
    for i in 0..4 {
        keys.push(active_of(&reopened, &tenant, i).await.unwrap().key);
    }
    assert!(active_of(&reopened, &tenant, 4).await.is_none());
    reopened.initiate(&keys[..2], "test").await.unwrap();
    // Progress within a state leaves the counts as they are.
    for done in [1, 2] {
        let downloading = Report::Reached {
            state: UpdateState::Downloading,
            progress: Some(updraft_core::Progress { done, total: 3 }),
        };
        reopened
            .report(tenant.key, keys[0], &downloading, "test")
            .await
            .unwrap();
    }
    let groups = reopened.rollout_groups(rollout.key).await.unwrap();
    assert_eq!(groups[0].count(UpdateState::Downloading), 1);
    assert_eq!(groups[0].count(UpdateState::Initiated), 1);
    reopened
        .report(tenant.key, keys[0], &Report::Succeeded, "test")
        .await
        .unwrap();
    let groups = reopened.rollout_groups(rollout.key).await.unwrap();
    assert_eq!(groups[0].count(UpdateState::Queued), 2);
    assert_eq!(groups[0].count(UpdateState::Initiated), 1);
    assert_eq!(groups[0].count(UpdateState::Updated), 1);
    let status = reopened
        .device_status(tenant.key, &DeviceId::parse("d00").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.desired_firmware.unwrap().scope,
        Scope::Rollout(rollout.key, devices[0])
    );

    assert_eq!(
        reopened
            .rollout_by_key(rollout.key)
            .await
            .unwrap()
            .unwrap()
            .name,
        rollout.name
    );
    assert_eq!(
        reopened
            .rollout_of_action(keys[0])
            .await
            .unwrap()
            .map(|r| r.key),
        Some(rollout.key)
    );
    reopened
        .report(
            tenant.key,
            keys[1],
            &Report::Failed(updraft_core::Failure {
                code: updraft_core::FailureCode::OutOfMemory,
                reason: "no room".into(),
            }),
            "test",
        )
        .await
        .unwrap();
    let failures = reopened.rollout_failures(rollout.key, 10).await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].device_id.as_str(), "d01");
    assert_eq!(failures[0].code, updraft_core::FailureCode::OutOfMemory);
    assert_eq!(failures[0].group, 0);

    // The lifecycle moves by compare-and-set.
    assert!(
        reopened
            .set_rollout_state(rollout.key, Lifecycle::Running, Lifecycle::Paused, "test")
            .await
            .unwrap()
    );
    assert!(
        !reopened
            .set_rollout_state(rollout.key, Lifecycle::Running, Lifecycle::Halted, "test")
            .await
            .unwrap()
    );
    assert!(reopened.live_rollouts(0).await.unwrap().is_empty());

    // Cancel: the updated member keeps the release, the others are withdrawn.
    assert!(
        reopened
            .set_rollout_state(rollout.key, Lifecycle::Paused, Lifecycle::Canceled, "test")
            .await
            .unwrap()
    );
    let groups = reopened.rollout_groups(rollout.key).await.unwrap();
    assert_eq!(groups[0].count(UpdateState::Canceled), 2);
    assert_eq!(groups[0].count(UpdateState::Failed), 1);
    assert_eq!(groups[0].count(UpdateState::Updated), 1);
    assert_eq!(groups[0].in_flight(), 0);
    for i in 1..10 {
        assert!(active_of(&reopened, &tenant, i).await.is_none(), "d{i:02}");
    }
    let kept = reopened
        .device_status(tenant.key, &DeviceId::parse("d00").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.desired_firmware.unwrap().version, "2");
    let listed = reopened.list_rollouts(tenant.key).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, Lifecycle::Canceled);
}

pub async fn a_rollout_never_takes_another_tenants_devices(store: &SqlStore, _: &Reopen) {
    let (a, artifact, _) = setup(store, "rb", 2).await;
    let (_, _, theirs) = setup(store, "rc", 2).await;
    let refused = store
        .create_rollout(
            a.key,
            &new_rollout("steal", &artifact, Lifecycle::Ready),
            &[theirs],
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::NotFound { what: "device" })),
        "{refused:?}"
    );
    assert!(
        store
            .rollout_by_name(a.key, "steal")
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn one_scheduler_holds_the_lease_at_a_time(store: &SqlStore, reopen: &Reopen) {
    let mut first = store.lease(Singleton::Scheduler).await.unwrap().unwrap();
    assert!(first.held().await);
    let other = reopen.open().await;
    let second = other.lease(Singleton::Scheduler).await.unwrap();
    match reopen {
        // SQLite is one process's database: its scheduler is alone by construction.
        Reopen::Sqlite(_) => assert!(second.is_some()),
        Reopen::Url(_) => {
            assert!(
                second.is_none(),
                "PostgreSQL gives the lease to one session"
            );
            first.release().await;
            let mut taken = other.lease(Singleton::Scheduler).await.unwrap().unwrap();
            assert!(taken.held().await);
            assert!(store.lease(Singleton::Scheduler).await.unwrap().is_none());
            // Each singleton task has a lease of its own.
            let gc = store.lease(Singleton::GarbageCollection).await.unwrap();
            assert!(gc.is_some(), "the collector's lease is another lock");
            assert!(
                other
                    .lease(Singleton::GarbageCollection)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
    }
}

pub async fn a_filter_scan_reads_what_it_needs_and_matches_like_the_full_row(
    store: &SqlStore,
    _: &Reopen,
) {
    let tenant = store
        .create_tenant(&Name::parse("rs").unwrap())
        .await
        .unwrap();
    let lab = store
        .create_project(tenant.key, &Name::parse("lab").unwrap())
        .await
        .unwrap();
    let esp = store
        .create_profile(tenant.key, &Name::parse("esp32").unwrap(), "")
        .await
        .unwrap();
    for i in 0..12 {
        let device = store
            .create_device(
                tenant.key,
                &NewDevice {
                    id: DeviceId::parse(&format!("s{i:02}")).unwrap(),
                    project: (i % 2 == 0).then_some(lab.key),
                    profile: (i % 3 == 0).then_some(esp.key),
                    tags: if i % 4 == 0 {
                        vec!["beta".into()]
                    } else {
                        vec![]
                    },
                    attributes: [("hw".to_owned(), format!("v{}", i % 2))].into(),
                },
                &[],
            )
            .await
            .unwrap();
        if i < 6 {
            store
                .set_running(device.key, ArtifactKind::Firmware, "fw", &format!("1.{i}"))
                .await
                .unwrap();
        }
        if i == 7 {
            store.touch_device(device.key).await.unwrap();
        }
    }
    let now = 4_000_000_000_000;
    for text in [
        "id==s0*",
        "project==lab;profile==esp32",
        "tag==beta,attr.hw==v1",
        "fw.version>=1.3",
        "fw.title==fw;attr.hw!=v0",
        "seen<100000d",
        "profile=out=(esp32)",
    ] {
        let filter = updraft_core::Filter::parse(text).unwrap();
        let scanned: Vec<String> = store
            .matching_devices(tenant.key, &filter, now, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id.to_string())
            .collect();
        let mut expected = Vec::new();
        for device in store.devices_after(tenant.key, None, 100).await.unwrap() {
            if filter.matches(&device.facts(now)) {
                expected.push(device.id.to_string());
            }
        }
        expected.sort();
        let mut sorted = scanned.clone();
        sorted.sort();
        assert_eq!(sorted, expected, "{text}");
        assert!(!expected.is_empty(), "{text} matches someone");
    }
    let all = updraft_core::Filter::parse("id==*").unwrap();
    assert!(matches!(
        store.matching_devices(tenant.key, &all, now, 5).await,
        Err(StoreError::Invalid {
            code: "target_too_large",
            ..
        })
    ));
}
