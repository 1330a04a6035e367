//! The conformance suite: every test takes a store and must pass on every backend.

use updraft_core::{
    ArtifactKind, Checksums, DeviceId, Failure, FailureCode, MultiHasher, Name, Progress, Report,
    Role, Scope, UpdateState,
};
use updraft_store::*;

use crate::Reopen;

pub use crate::cluster::*;
pub use crate::coverage::*;
pub use crate::frugal_keys::*;
pub use crate::races::*;
pub use crate::rollouts::*;
pub use crate::views::*;

fn name(s: &str) -> Name {
    Name::parse(s).unwrap()
}

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).unwrap()
}

fn sums(content: &str) -> Checksums {
    let mut hasher = MultiHasher::new();
    hasher.update(content.as_bytes());
    hasher.finish()
}

struct Fixture {
    tenant: Tenant,
}

async fn fixture(store: &SqlStore, tenant: &str) -> Fixture {
    let tenant = store.create_tenant(&name(tenant)).await.unwrap();
    Fixture { tenant }
}

async fn artifact(
    store: &SqlStore,
    f: &Fixture,
    title: &str,
    version: &str,
    kind: ArtifactKind,
    profiles: &[&Profile],
) -> Artifact {
    store
        .insert_artifact(
            f.tenant.key,
            &NewArtifact {
                title: title.into(),
                version: version.into(),
                kind,
                profiles: profiles.iter().map(|p| p.key).collect(),
                size: 3,
                filename: format!("{title}-{version}.bin"),
                checksums: sums(&format!("{title}{version}")),
                signature: None,
                description: String::new(),
                uploaded_by: "test".into(),
            },
        )
        .await
        .unwrap()
}

async fn device(
    store: &SqlStore,
    f: &Fixture,
    device_id: &str,
    project: Option<&Project>,
    profile: Option<&Profile>,
) -> Device {
    store
        .create_device(
            f.tenant.key,
            &NewDevice {
                id: id(device_id),
                project: project.map(|p| p.key),
                profile: profile.map(|p| p.key),
                tags: vec!["lab".into()],
                attributes: [("hw".to_owned(), "rev2".to_owned())].into(),
            },
            &[NewCredential {
                kind: CredentialKind::AccessToken,
                secret_hash: format!("hash-of-{}-{device_id}", f.tenant.name),
                gateway: device_id.starts_with("gw"),
            }],
        )
        .await
        .unwrap()
}

async fn desired_fw(store: &SqlStore, f: &Fixture, device_id: &str) -> Option<String> {
    let status = store
        .device_status(f.tenant.key, &id(device_id))
        .await
        .unwrap()
        .unwrap();
    status
        .desired_firmware
        .map(|d| format!("{}@{}", d.title, d.version))
}

async fn active(store: &SqlStore, f: &Fixture, device_id: &str) -> Option<Action> {
    store
        .device_status(f.tenant.key, &id(device_id))
        .await
        .unwrap()
        .unwrap()
        .active
}

fn reached(state: UpdateState) -> Report {
    Report::Reached {
        state,
        progress: None,
    }
}

pub async fn reopening_migrates_nothing_twice_and_keeps_data(store: &SqlStore, reopen: &Reopen) {
    let f = fixture(store, "acme").await;
    artifact(store, &f, "fw", "1", ArtifactKind::Firmware, &[]).await;
    store.close().await;
    let again = reopen.open().await;
    let found = again
        .artifact_by_release(f.tenant.key, "fw", "1")
        .await
        .unwrap();
    assert!(found.is_some());
    assert_eq!(again.list_tenants().await.unwrap().len(), 1);
}

pub async fn tenant_names_are_unique_case_insensitively(store: &SqlStore, _: &Reopen) {
    store.create_tenant(&name("Acme")).await.unwrap();
    let err = store.create_tenant(&name("ACME")).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                code: "tenant_exists",
                ..
            }
        ),
        "{err:?}"
    );
    let found = store.tenant_by_name("acme").await.unwrap().unwrap();
    assert_eq!(found.name.as_str(), "Acme");
    assert!(store.tenant_by_name("other").await.unwrap().is_none());
}

pub async fn title_and_version_are_unique_per_tenant(store: &SqlStore, _: &Reopen) {
    let a = fixture(store, "a").await;
    let b = fixture(store, "b").await;
    artifact(store, &a, "fw", "1.0", ArtifactKind::Firmware, &[]).await;
    let mut again = NewArtifact {
        title: "fw".into(),
        version: "1.0".into(),
        kind: ArtifactKind::Firmware,
        profiles: vec![],
        size: 1,
        filename: "x".into(),
        checksums: sums("x"),
        signature: None,
        description: String::new(),
        uploaded_by: "t".into(),
    };
    let err = store
        .insert_artifact(a.tenant.key, &again)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                code: "artifact_exists",
                ..
            }
        ),
        "{err:?}"
    );
    store.insert_artifact(b.tenant.key, &again).await.unwrap();
    again.version = "1.1".into();
    store.insert_artifact(a.tenant.key, &again).await.unwrap();
    let listed = store
        .list_artifacts(a.tenant.key, &ArtifactFilter::default(), Page::default())
        .await
        .unwrap();
    assert_eq!(listed.total, 2);
    let filtered = store
        .list_artifacts(
            a.tenant.key,
            &ArtifactFilter {
                version: Some("1.1".into()),
                ..Default::default()
            },
            Page::default(),
        )
        .await
        .unwrap();
    assert_eq!(filtered.items.len(), 1);
    assert_eq!(filtered.items[0].version, "1.1");
}

pub async fn tenants_never_see_each_other(store: &SqlStore, _: &Reopen) {
    let a = fixture(store, "a").await;
    let b = fixture(store, "b").await;
    let fw = artifact(store, &a, "fw", "1", ArtifactKind::Firmware, &[]).await;
    let dev = device(store, &a, "d1", None, None).await;
    assert!(
        store
            .artifact(b.tenant.key, fw.key)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .device(b.tenant.key, &id("d1"))
            .await
            .unwrap()
            .is_none()
    );
    let err = store
        .assign(b.tenant.key, Scope::Tenant, fw.key, "b")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "artifact" }),
        "{err:?}"
    );
    let fw_b = artifact(store, &b, "fw", "1", ArtifactKind::Firmware, &[]).await;
    let err = store
        .assign(b.tenant.key, Scope::Device(dev.key), fw_b.key, "b")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "device" }),
        "{err:?}"
    );
    assert!(matches!(
        store.delete_artifact(b.tenant.key, fw.key).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(!store.delete_device(b.tenant.key, &id("d1")).await.unwrap());
    // A device of tenant b with the same id is a different device.
    device(store, &b, "d1", None, None).await;
    store
        .assign(a.tenant.key, Scope::Tenant, fw.key, "a")
        .await
        .unwrap();
    assert!(active(store, &a, "d1").await.is_some());
    assert!(active(store, &b, "d1").await.is_none());
}

pub async fn device_assignment_overrides_profile_assignment(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "tb").await;
    let p1 = store
        .create_profile(f.tenant.key, &name("P1"), "")
        .await
        .unwrap();
    let d1 = device(store, &f, "D1", None, Some(&p1)).await;
    device(store, &f, "D2", None, Some(&p1)).await;
    let f1 = artifact(store, &f, "F", "1", ArtifactKind::Firmware, &[&p1]).await;
    let f2 = artifact(store, &f, "F", "2", ArtifactKind::Firmware, &[&p1]).await;
    let f3 = artifact(store, &f, "F", "3", ArtifactKind::Firmware, &[&p1]).await;
    let steps = [
        (Scope::Profile(p1.key), f1.key, "F@1", "F@1"),
        (Scope::Device(d1.key), f2.key, "F@2", "F@1"),
        (Scope::Profile(p1.key), f3.key, "F@2", "F@3"),
    ];
    for (scope, artifact, want_d1, want_d2) in steps {
        store
            .assign(f.tenant.key, scope, artifact, "user:t")
            .await
            .unwrap();
        assert_eq!(desired_fw(store, &f, "D1").await.as_deref(), Some(want_d1));
        assert_eq!(desired_fw(store, &f, "D2").await.as_deref(), Some(want_d2));
        for (dev, want) in [("D1", want_d1), ("D2", want_d2)] {
            let action = active(store, &f, dev).await.unwrap();
            assert_eq!(
                format!("{}@{}", action.artifact_title, action.artifact_version),
                want
            );
            assert_eq!(action.state, UpdateState::Queued);
        }
    }
    // D1 went F1 → F2 and stayed: one action canceled, one active.
    let d1_actions = store
        .actions_for_device(f.tenant.key, &id("D1"))
        .await
        .unwrap();
    let states: Vec<UpdateState> = d1_actions.iter().map(|a| a.state).collect();
    assert_eq!(states, [UpdateState::Queued, UpdateState::Canceled]);
}

pub async fn frugal_node_beats_project_key_beats_org_key(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "dev").await;
    let lotus = store
        .create_project(f.tenant.key, &name("lotus"))
        .await
        .unwrap();
    let other = store
        .create_project(f.tenant.key, &name("other"))
        .await
        .unwrap();
    let sht = store
        .create_profile(f.tenant.key, &name("esp8266-sht"), "")
        .await
        .unwrap();
    let node = device(store, &f, "esp8266-95a754", Some(&lotus), Some(&sht)).await;
    device(store, &f, "esp8266-000001", Some(&lotus), Some(&sht)).await;
    device(store, &f, "esp8266-000002", Some(&other), Some(&sht)).await;
    let org = artifact(store, &f, "sht", "org", ArtifactKind::Firmware, &[]).await;
    let proj = artifact(store, &f, "sht", "project", ArtifactKind::Firmware, &[]).await;
    let mine = artifact(store, &f, "sht", "node", ArtifactKind::Firmware, &[]).await;
    store
        .assign(f.tenant.key, Scope::Profile(sht.key), org.key, "u")
        .await
        .unwrap();
    store
        .assign(
            f.tenant.key,
            Scope::ProjectProfile(lotus.key, sht.key),
            proj.key,
            "u",
        )
        .await
        .unwrap();
    store
        .assign(f.tenant.key, Scope::Device(node.key), mine.key, "u")
        .await
        .unwrap();
    assert_eq!(
        desired_fw(store, &f, "esp8266-95a754").await.as_deref(),
        Some("sht@node")
    );
    assert_eq!(
        desired_fw(store, &f, "esp8266-000001").await.as_deref(),
        Some("sht@project")
    );
    assert_eq!(
        desired_fw(store, &f, "esp8266-000002").await.as_deref(),
        Some("sht@org")
    );
}

pub async fn device_reports_walk_the_state_machine_with_history(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "t").await;
    device(store, &f, "d", None, None).await;
    let fw = artifact(store, &f, "fw", "2", ArtifactKind::Firmware, &[]).await;
    store
        .assign(f.tenant.key, Scope::Tenant, fw.key, "user:admin")
        .await
        .unwrap();
    let action = active(store, &f, "d").await.unwrap();
    let steps = [
        reached(UpdateState::Initiated),
        Report::Reached {
            state: UpdateState::Downloading,
            progress: Some(Progress { done: 1, total: 4 }),
        },
        Report::Reached {
            state: UpdateState::Downloading,
            progress: Some(Progress { done: 4, total: 4 }),
        },
        reached(UpdateState::Verified),
        Report::Succeeded,
    ];
    // What a report answers is what the store then holds.
    let applied_as_stored = |outcome: ReportOutcome| async move {
        let ReportOutcome::Applied(applied) = outcome else {
            panic!("{outcome:?}");
        };
        let stored = store.action(f.tenant.key, applied.key).await.unwrap();
        assert_eq!(Some(&applied), stored.as_ref());
    };
    for report in &steps {
        let outcome = store
            .report(f.tenant.key, action.key, report, "ddi")
            .await
            .unwrap();
        applied_as_stored(outcome).await;
    }
    device(store, &f, "e", None, None).await;
    let failing = active(store, &f, "e").await.unwrap();
    for report in [
        Report::Reached {
            state: UpdateState::Downloading,
            progress: Some(Progress { done: 1, total: 4 }),
        },
        Report::Failed(Failure {
            code: FailureCode::from_text("download_failed"),
            reason: "cut".into(),
        }),
    ] {
        let outcome = store
            .report(f.tenant.key, failing.key, &report, "ddi")
            .await
            .unwrap();
        applied_as_stored(outcome).await;
    }
    let done = store
        .action(f.tenant.key, action.key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.state, UpdateState::Updated);
    let dev = store.device(f.tenant.key, &id("d")).await.unwrap().unwrap();
    assert_eq!(
        dev.firmware,
        Some(Running {
            title: "fw".into(),
            version: "2".into()
        })
    );
    assert!(
        active(store, &f, "d").await.is_none(),
        "nothing left to do once the device runs fw@2"
    );
    let history = store
        .action_history(f.tenant.key, action.key)
        .await
        .unwrap();
    let path: Vec<(Option<UpdateState>, UpdateState, &str)> = history
        .iter()
        .map(|e| (e.from, e.to, e.source.as_str()))
        .collect();
    use UpdateState::*;
    assert_eq!(
        path,
        [
            (None, Queued, "user:admin"),
            (Some(Queued), Initiated, "ddi"),
            (Some(Initiated), Downloading, "ddi"),
            (Some(Downloading), Downloading, "ddi"),
            (Some(Downloading), Verified, "ddi"),
            (Some(Verified), Updated, "ddi"),
        ]
    );
    assert_eq!(history[3].progress, Some(Progress { done: 4, total: 4 }));
    assert!(history.iter().all(|e| !e.refused));
}

pub async fn steps_backwards_and_reports_on_finished_actions_are_refused_and_recorded(
    store: &SqlStore,
    _: &Reopen,
) {
    let f = fixture(store, "t").await;
    device(store, &f, "d", None, None).await;
    let fw = artifact(store, &f, "fw", "2", ArtifactKind::Firmware, &[]).await;
    store
        .assign(f.tenant.key, Scope::Tenant, fw.key, "u")
        .await
        .unwrap();
    let action = active(store, &f, "d").await.unwrap();
    store
        .report(
            f.tenant.key,
            action.key,
            &reached(UpdateState::Verified),
            "ddi",
        )
        .await
        .unwrap();
    let back = store
        .report(
            f.tenant.key,
            action.key,
            &reached(UpdateState::Downloading),
            "ddi",
        )
        .await
        .unwrap();
    assert!(matches!(back, ReportOutcome::Refused { .. }), "{back:?}");
    assert_eq!(
        store
            .action(f.tenant.key, action.key)
            .await
            .unwrap()
            .unwrap()
            .state,
        UpdateState::Verified
    );
    let failure = Failure {
        code: FailureCode::IntegrityCheckFailed,
        reason: "sha256 mismatch".into(),
    };
    store
        .report(f.tenant.key, action.key, &Report::Failed(failure), "ddi")
        .await
        .unwrap();
    let late = store
        .report(f.tenant.key, action.key, &Report::Succeeded, "ddi")
        .await
        .unwrap();
    assert!(matches!(late, ReportOutcome::Refused { .. }), "{late:?}");
    let done = store
        .action(f.tenant.key, action.key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.state, UpdateState::Failed);
    assert_eq!(
        done.failure,
        Some(Failed {
            code: FailureCode::IntegrityCheckFailed,
            reason: "sha256 mismatch".into()
        })
    );
    let history = store
        .action_history(f.tenant.key, action.key)
        .await
        .unwrap();
    let refused: Vec<(UpdateState, bool)> = history.iter().map(|e| (e.to, e.refused)).collect();
    assert_eq!(
        refused,
        [
            (UpdateState::Queued, false),
            (UpdateState::Verified, false),
            (UpdateState::Downloading, true),
            (UpdateState::Failed, false),
            (UpdateState::Updated, true),
        ]
    );
    let dev = store.device(f.tenant.key, &id("d")).await.unwrap().unwrap();
    assert_eq!(
        dev.firmware, None,
        "a refused success must not change what the device runs"
    );
}

pub async fn new_desired_artifact_supersedes_the_active_action(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "t").await;
    let dev = device(store, &f, "d", None, None).await;
    let v1 = artifact(store, &f, "fw", "1", ArtifactKind::Firmware, &[]).await;
    let v2 = artifact(store, &f, "fw", "2", ArtifactKind::Firmware, &[]).await;
    store
        .assign(f.tenant.key, Scope::Device(dev.key), v1.key, "u")
        .await
        .unwrap();
    let first = active(store, &f, "d").await.unwrap();
    store
        .report(
            f.tenant.key,
            first.key,
            &reached(UpdateState::Downloading),
            "ddi",
        )
        .await
        .unwrap();
    store
        .assign(f.tenant.key, Scope::Device(dev.key), v2.key, "u")
        .await
        .unwrap();
    let second = active(store, &f, "d").await.unwrap();
    assert_ne!(first.key, second.key);
    assert_eq!(second.artifact, Some(v2.key));
    let first = store
        .action(f.tenant.key, first.key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.state, UpdateState::Canceled);
    // Assigning the same artifact again changes nothing.
    store
        .assign(f.tenant.key, Scope::Device(dev.key), v2.key, "u")
        .await
        .unwrap();
    assert_eq!(active(store, &f, "d").await.unwrap().key, second.key);
}

pub async fn unassigning_cancels_the_active_action(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "t").await;
    device(store, &f, "d", None, None).await;
    let v1 = artifact(store, &f, "fw", "1", ArtifactKind::Firmware, &[]).await;
    store
        .assign(f.tenant.key, Scope::Tenant, v1.key, "u")
        .await
        .unwrap();
    let action = active(store, &f, "d").await.unwrap();
    assert!(
        store
            .unassign(f.tenant.key, Scope::Tenant, ArtifactKind::Firmware, "u")
            .await
            .unwrap()
    );
    assert!(active(store, &f, "d").await.is_none());
    assert_eq!(
        store
            .action(f.tenant.key, action.key)
            .await
            .unwrap()
            .unwrap()
            .state,
        UpdateState::Canceled
    );
    assert!(
        !store
            .unassign(f.tenant.key, Scope::Tenant, ArtifactKind::Firmware, "u")
            .await
            .unwrap()
    );
}

pub async fn failed_update_is_retried_only_when_assigned_again(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "t").await;
    let p = store
        .create_profile(f.tenant.key, &name("p"), "")
        .await
        .unwrap();
    device(store, &f, "d", None, Some(&p)).await;
    let v1 = artifact(store, &f, "fw", "1", ArtifactKind::Firmware, &[]).await;
    let app = artifact(store, &f, "app", "1", ArtifactKind::Software, &[]).await;
    store
        .assign(f.tenant.key, Scope::Tenant, v1.key, "u")
        .await
        .unwrap();
    let action = active(store, &f, "d").await.unwrap();
    let failure = Failure {
        code: FailureCode::NotEnoughStorage,
        reason: "full".into(),
    };
    store
        .report(f.tenant.key, action.key, &Report::Failed(failure), "ddi")
        .await
        .unwrap();
    // Another assignment covering the device must not retry the failed one by itself: it
    // queues the software instead.
    store
        .assign(f.tenant.key, Scope::Profile(p.key), app.key, "u")
        .await
        .unwrap();
    let next = active(store, &f, "d").await.unwrap();
    assert_eq!(next.artifact, Some(app.key));
    store
        .report(f.tenant.key, next.key, &Report::Canceled, "u")
        .await
        .unwrap();
    assert!(active(store, &f, "d").await.is_none());
    store
        .assign(f.tenant.key, Scope::Tenant, v1.key, "u")
        .await
        .unwrap();
    let retry = active(store, &f, "d").await.unwrap();
    assert_eq!(retry.artifact, Some(v1.key));
    assert_ne!(retry.key, action.key);
}

pub async fn firmware_goes_before_software(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "t").await;
    device(store, &f, "d", None, None).await;
    let app = artifact(store, &f, "app", "1", ArtifactKind::Software, &[]).await;
    let fw = artifact(store, &f, "fw", "1", ArtifactKind::Firmware, &[]).await;
    store
        .assign(f.tenant.key, Scope::Tenant, fw.key, "u")
        .await
        .unwrap();
    store
        .assign(f.tenant.key, Scope::Tenant, app.key, "u")
        .await
        .unwrap();
    let first = active(store, &f, "d").await.unwrap();
    assert_eq!(first.artifact, Some(fw.key));
    store
        .report(f.tenant.key, first.key, &Report::Succeeded, "ddi")
        .await
        .unwrap();
    let second = active(store, &f, "d").await.unwrap();
    assert_eq!(second.artifact, Some(app.key));
    assert_eq!(second.kind, ArtifactKind::Software);
    store
        .report(f.tenant.key, second.key, &Report::Succeeded, "ddi")
        .await
        .unwrap();
    let dev = store.device(f.tenant.key, &id("d")).await.unwrap().unwrap();
    assert_eq!(
        dev.software,
        Some(Running {
            title: "app".into(),
            version: "1".into()
        })
    );
    assert!(active(store, &f, "d").await.is_none());
}

pub async fn incompatible_assignments_are_refused(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "t").await;
    let a = store
        .create_profile(f.tenant.key, &name("a"), "")
        .await
        .unwrap();
    let b = store
        .create_profile(f.tenant.key, &name("b"), "")
        .await
        .unwrap();
    let dev = device(store, &f, "d", None, Some(&b)).await;
    let only_a = artifact(store, &f, "fw", "1", ArtifactKind::Firmware, &[&a]).await;
    for scope in [Scope::Device(dev.key), Scope::Profile(b.key)] {
        let err = store
            .assign(f.tenant.key, scope, only_a.key, "u")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Invalid {
                    code: "incompatible_artifact",
                    ..
                }
            ),
            "{err:?}"
        );
    }
    // Tenant-wide, it applies only where it fits.
    store
        .assign(f.tenant.key, Scope::Tenant, only_a.key, "u")
        .await
        .unwrap();
    assert_eq!(desired_fw(store, &f, "d").await, None);
    assert!(active(store, &f, "d").await.is_none());
}

pub async fn artifacts_in_use_cannot_be_deleted_and_shared_blobs_survive(
    store: &SqlStore,
    _: &Reopen,
) {
    let f = fixture(store, "t").await;
    let g = fixture(store, "u").await;
    // Same bytes (same checksums) in two tenants.
    let mine = artifact(store, &f, "fw", "1", ArtifactKind::Firmware, &[]).await;
    let theirs = artifact(store, &g, "fw", "1", ArtifactKind::Firmware, &[]).await;
    assert_eq!(mine.checksums.sha256, theirs.checksums.sha256);
    store
        .assign(f.tenant.key, Scope::Tenant, mine.key, "u")
        .await
        .unwrap();
    let err = store
        .delete_artifact(f.tenant.key, mine.key)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                code: "artifact_in_use",
                ..
            }
        ),
        "{err:?}"
    );
    store
        .unassign(f.tenant.key, Scope::Tenant, ArtifactKind::Firmware, "u")
        .await
        .unwrap();
    let deleted = store.delete_artifact(f.tenant.key, mine.key).await.unwrap();
    assert!(
        !deleted.blob_unreferenced,
        "tenant u still refers to the blob"
    );
    let deleted = store
        .delete_artifact(g.tenant.key, theirs.key)
        .await
        .unwrap();
    assert!(deleted.blob_unreferenced);
    assert!(store.blob_references().await.unwrap().is_empty());
}

pub async fn devices_are_found_by_credential_and_paged(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "t").await;
    for n in 0..7 {
        device(store, &f, &format!("dev-{n}"), None, None).await;
    }
    let found = store
        .device_by_credential(CredentialKind::AccessToken, "hash-of-t-dev-3")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id.as_str(), "dev-3");
    assert_eq!(found.tags, ["lab"]);
    assert_eq!(found.attributes.get("hw").map(String::as_str), Some("rev2"));
    assert!(
        store
            .device_by_credential(CredentialKind::AccessToken, "nope")
            .await
            .unwrap()
            .is_none()
    );
    let page = store
        .list_devices(
            f.tenant.key,
            Page {
                offset: 5,
                limit: 5,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total, 7);
    let ids: Vec<&str> = page.items.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["dev-5", "dev-6"]);
    // Keyset paging walks the same order, from the start and from a device.
    let first = store.devices_after(f.tenant.key, None, 2).await.unwrap();
    let ids: Vec<&str> = first.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["dev-0", "dev-1"]);
    let rest = store
        .devices_after(f.tenant.key, Some(&first[1].id), 100)
        .await
        .unwrap();
    let ids: Vec<&str> = rest.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["dev-2", "dev-3", "dev-4", "dev-5", "dev-6"]);
    assert!(
        store
            .devices_after(f.tenant.key, Some(&id("dev-6")), 100)
            .await
            .unwrap()
            .is_empty()
    );
    let err = store
        .create_device(
            f.tenant.key,
            &NewDevice {
                id: id("dev-1"),
                project: None,
                profile: None,
                tags: vec![],
                attributes: Default::default(),
            },
            &[NewCredential {
                kind: CredentialKind::AccessToken,
                secret_hash: "fresh".into(),
                gateway: false,
            }],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                code: "device_exists",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        store
            .delete_device(f.tenant.key, &id("dev-1"))
            .await
            .unwrap()
    );
    assert!(
        store
            .device_by_credential(CredentialKind::AccessToken, "hash-of-t-dev-1")
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn api_keys_are_found_by_hash_and_scoped_to_their_tenant(store: &SqlStore, _: &Reopen) {
    let a = fixture(store, "a").await;
    let b = fixture(store, "b").await;
    let key = store
        .create_api_key(
            a.tenant.key,
            &NewApiKey {
                name: "ci".into(),
                role: Role::Maintainer,
                server_admin: false,
                secret_hash: "h1".into(),
            },
        )
        .await
        .unwrap();
    let found = store.api_key_by_hash("h1").await.unwrap().unwrap();
    assert_eq!(found, key);
    assert_eq!(found.tenant_name.as_str(), "a");
    assert!(store.list_api_keys(b.tenant.key).await.unwrap().is_empty());
    assert!(!store.delete_api_key(b.tenant.key, key.id).await.unwrap());
    assert!(store.delete_api_key(a.tenant.key, key.id).await.unwrap());
    assert!(store.api_key_by_hash("h1").await.unwrap().is_none());
}

pub async fn fleet_summary_counts_latest_action_states(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "t").await;
    for n in 0..3 {
        device(store, &f, &format!("d{n}"), None, None).await;
    }
    let fw = artifact(store, &f, "fw", "1", ArtifactKind::Firmware, &[]).await;
    store
        .assign(f.tenant.key, Scope::Tenant, fw.key, "u")
        .await
        .unwrap();
    let action = active(store, &f, "d0").await.unwrap();
    store
        .report(f.tenant.key, action.key, &Report::Succeeded, "ddi")
        .await
        .unwrap();
    let summary = store.fleet_summary(f.tenant.key).await.unwrap();
    assert_eq!(summary.devices, 3);
    assert_eq!(summary.artifacts, 1);
    assert_eq!(summary.latest_action_states.get("QUEUED"), Some(&2));
    assert_eq!(summary.latest_action_states.get("UPDATED"), Some(&1));
}

/// The dashboard's overview: latest states, running versions, who was seen, the day's failures
/// by code, stuck downloads; another tenant's fleet counts for nothing.
pub async fn the_fleet_overview_counts_a_tenants_fleet(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "t").await;
    let other = fixture(store, "u").await;
    device(store, &other, "elsewhere", None, None).await;
    for n in 0..4 {
        device(store, &f, &format!("d{n}"), None, None).await;
    }
    let fw = artifact(store, &f, "fw", "1", ArtifactKind::Firmware, &[]).await;
    store
        .assign(f.tenant.key, Scope::Tenant, fw.key, "u")
        .await
        .unwrap();
    let d0 = active(store, &f, "d0").await.unwrap();
    store
        .report(f.tenant.key, d0.key, &Report::Succeeded, "ddi")
        .await
        .unwrap();
    let d1 = active(store, &f, "d1").await.unwrap();
    let failure = Failure {
        code: FailureCode::IntegrityCheckFailed,
        reason: "bad".into(),
    };
    store
        .report(f.tenant.key, d1.key, &Report::Failed(failure), "ddi")
        .await
        .unwrap();
    let d2 = active(store, &f, "d2").await.unwrap();
    let downloading = Report::Reached {
        state: UpdateState::Downloading,
        progress: None,
    };
    store
        .report(f.tenant.key, d2.key, &downloading, "ddi")
        .await
        .unwrap();
    let d3 = store
        .device(f.tenant.key, &DeviceId::parse("d3").unwrap())
        .await
        .unwrap()
        .unwrap();
    store.touch_device(d3.key).await.unwrap();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let overview = store.fleet_overview(f.tenant.key, now).await.unwrap();
    assert_eq!(overview.devices, 4);
    assert_eq!(overview.never_seen, 3);
    assert_eq!(overview.online, 1);
    let states = |s: &str| overview.latest_action_states.get(s).copied();
    assert_eq!(
        (
            states("UPDATED"),
            states("FAILED"),
            states("DOWNLOADING"),
            states("QUEUED")
        ),
        (Some(1), Some(1), Some(1), Some(1))
    );
    assert_eq!(
        overview.versions,
        [("unknown".to_owned(), 3), ("fw@1".to_owned(), 1)]
    );
    assert_eq!(
        overview.failures_24h,
        [("integrity_check_failed".to_owned(), 1)]
    );
    assert_eq!(overview.stuck_downloads, 0);
    // An hour and more later the download is stuck, the devices offline, the failure still today.
    let later = store
        .fleet_overview(f.tenant.key, now + updraft_store::STUCK_MS + 1)
        .await
        .unwrap();
    assert_eq!(later.stuck_downloads, 1);
    assert_eq!(later.online, 0);
    assert_eq!(later.failures_24h.len(), 1);
    // A device list's view of them: the protocol of their last report, their latest update.
    let d0_key = d0.device;
    let summaries = store
        .device_summaries(f.tenant.key, &[d0_key, d3.key])
        .await
        .unwrap();
    assert_eq!(summaries[&d0_key].protocol.as_deref(), Some("ddi"));
    assert_eq!(summaries[&d0_key].latest, Some(UpdateState::Updated));
    assert_eq!(summaries[&d3.key].protocol, None);
    assert_eq!(summaries[&d3.key].latest, Some(UpdateState::Queued));
    // Another tenant's devices are not found.
    assert!(
        store
            .device_summaries(other.tenant.key, &[d0_key])
            .await
            .unwrap()
            .is_empty()
    );
    let tomorrow = store
        .fleet_overview(f.tenant.key, now + 25 * 3600 * 1000)
        .await
        .unwrap();
    assert!(tomorrow.failures_24h.is_empty());
}

pub async fn tenant_settings_and_gateway_tokens_round_trip(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "t").await;
    assert_eq!(f.tenant.settings, TenantSettings::default());
    let settings = TenantSettings {
        poll_interval_secs: 42,
        auto_register: true,
        frugal_auto_register: false,
    };
    store
        .update_tenant_settings(f.tenant.key, settings)
        .await
        .unwrap();
    let again = store.tenant_by_name("T").await.unwrap().unwrap();
    assert_eq!(again.settings, settings);
    store
        .set_gateway_token(f.tenant.key, Some("gw-hash"))
        .await
        .unwrap();
    assert_eq!(
        store
            .tenant_by_gateway_token("gw-hash")
            .await
            .unwrap()
            .map(|t| t.key),
        Some(f.tenant.key)
    );
    store.set_gateway_token(f.tenant.key, None).await.unwrap();
    assert!(
        store
            .tenant_by_gateway_token("gw-hash")
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn profile_settings_and_gateway_credentials_round_trip(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "t").await;
    let profile = store
        .create_profile(f.tenant.key, &name("nrf52"), "")
        .await
        .unwrap();
    assert_eq!(profile.settings, ProfileSettings::default());
    let settings = ProfileSettings {
        drogue_dfu: true,
        aws_http_delivery: true,
        lwm2m_delivery: Lwm2mDelivery::Coap,
        lwm2m_path_only: true,
    };
    assert!(
        store
            .set_profile_settings(f.tenant.key, profile.key, settings)
            .await
            .unwrap()
    );
    let again = store
        .profile_by_name(f.tenant.key, &name("nrf52"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.settings, settings);
    assert_eq!(
        store.list_profiles(f.tenant.key).await.unwrap()[0].settings,
        settings
    );
    let other = fixture(store, "u").await;
    assert!(
        !store
            .set_profile_settings(other.tenant.key, profile.key, settings)
            .await
            .unwrap()
    );
    assert_eq!(again.signing_cert, None);
    let cert = SigningCert {
        name: "code-sign.crt".into(),
        pem: "-----BEGIN CERTIFICATE-----\n...".into(),
    };
    assert!(
        store
            .set_profile_signing_cert(f.tenant.key, profile.key, Some(&cert))
            .await
            .unwrap()
    );
    let signed = &store.list_profiles(f.tenant.key).await.unwrap()[0];
    assert_eq!(signed.signing_cert.as_ref(), Some(&cert));
    assert_eq!(signed.settings, settings, "settings stay");
    store
        .set_profile_signing_cert(f.tenant.key, profile.key, None)
        .await
        .unwrap();
    let plain = store
        .profile_by_name(f.tenant.key, &name("nrf52"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plain.signing_cert, None);

    let gw = device(store, &f, "gw-1", None, None).await;
    device(store, &f, "leaf", None, None).await;
    let by = |hash: &'static str| async move {
        (
            store
                .device_by_credential(CredentialKind::AccessToken, hash)
                .await
                .unwrap()
                .map(|d| d.id.to_string()),
            store
                .gateway_by_credential(f.tenant.key, CredentialKind::AccessToken, hash)
                .await
                .unwrap()
                .map(|d| d.key),
        )
    };
    assert_eq!(
        by("hash-of-t-gw-1").await,
        (Some("gw-1".into()), Some(gw.key))
    );
    assert_eq!(by("hash-of-t-leaf").await, (Some("leaf".into()), None));
    // What the dashboard shows of them: kinds, never the secrets' hashes; another tenant sees none.
    let shown = store
        .device_credentials(f.tenant.key, gw.key)
        .await
        .unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].kind, "access_token");
    assert!(shown[0].gateway);
    assert_eq!(shown[0].fingerprint, None);
    let other = fixture(store, "other").await;
    assert!(
        store
            .device_credentials(other.tenant.key, gw.key)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn job_executions_change_only_from_the_version_they_were_read_at(
    store: &SqlStore,
    _: &Reopen,
) {
    let f = fixture(store, "t").await;
    device(store, &f, "d", None, None).await;
    let fw = artifact(store, &f, "fw", "2", ArtifactKind::Firmware, &[]).await;
    store
        .assign(f.tenant.key, Scope::Tenant, fw.key, "user:admin")
        .await
        .unwrap();
    let action = active(store, &f, "d").await.unwrap();
    assert_eq!(store.job_execution(action.key).await.unwrap(), None);
    let mut execution = JobExecution {
        action: action.key,
        status: "QUEUED".into(),
        status_details: "{}".into(),
        version_number: 1,
        started_at: None,
        last_updated_at: 1000,
        step_deadline: None,
    };
    assert!(store.save_job_execution(&execution, None).await.unwrap());
    assert!(
        !store.save_job_execution(&execution, None).await.unwrap(),
        "created once"
    );
    execution.status = "IN_PROGRESS".into();
    execution.status_details = r#"{"self_test":"receiving"}"#.into();
    execution.version_number = 2;
    execution.started_at = Some(2000);
    execution.step_deadline = Some(62_000);
    assert!(store.save_job_execution(&execution, Some(1)).await.unwrap());
    assert!(
        !store.save_job_execution(&execution, Some(1)).await.unwrap(),
        "a stale version loses"
    );
    assert_eq!(
        store.job_execution(action.key).await.unwrap(),
        Some(execution)
    );
}

pub async fn reported_attributes_merge_replace_and_remove(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "t").await;
    let dev = device(store, &f, "d", None, None).await;
    let data = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let attributes = || async {
        store
            .device(f.tenant.key, &id("d"))
            .await
            .unwrap()
            .unwrap()
            .attributes
    };
    store
        .update_attributes(
            dev.key,
            AttributeMode::Merge,
            &data(&[("mac", "ff"), ("hw", "rev3")]),
        )
        .await
        .unwrap();
    assert_eq!(attributes().await, data(&[("hw", "rev3"), ("mac", "ff")]));
    store
        .update_attributes(dev.key, AttributeMode::Remove, &data(&[("mac", "")]))
        .await
        .unwrap();
    assert_eq!(attributes().await, data(&[("hw", "rev3")]));
    store
        .update_attributes(dev.key, AttributeMode::Replace, &data(&[("a", "1")]))
        .await
        .unwrap();
    assert_eq!(attributes().await, data(&[("a", "1")]));
    assert!(
        store
            .device(f.tenant.key, &id("d"))
            .await
            .unwrap()
            .unwrap()
            .last_seen
            .is_none()
    );
    store.touch_device(dev.key).await.unwrap();
    store
        .set_running(dev.key, ArtifactKind::Software, "app", "3")
        .await
        .unwrap();
    let running = store.device(f.tenant.key, &id("d")).await.unwrap().unwrap();
    assert_eq!(
        running.software,
        Some(Running {
            title: "app".into(),
            version: "3".into()
        })
    );
    assert_eq!(running.firmware, None);
    assert!(
        store
            .device(f.tenant.key, &id("d"))
            .await
            .unwrap()
            .unwrap()
            .last_seen
            .is_some()
    );
}

pub async fn superseding_an_action_the_device_knew_asks_it_to_confirm(
    store: &SqlStore,
    _: &Reopen,
) {
    let f = fixture(store, "t").await;
    let dev = device(store, &f, "d", None, None).await;
    let v1 = artifact(store, &f, "fw", "1", ArtifactKind::Firmware, &[]).await;
    let v2 = artifact(store, &f, "fw", "2", ArtifactKind::Firmware, &[]).await;
    let v3 = artifact(store, &f, "fw", "3", ArtifactKind::Firmware, &[]).await;
    store
        .assign(f.tenant.key, Scope::Device(dev.key), v1.key, "u")
        .await
        .unwrap();
    // Still QUEUED: the device never heard of it, so nothing to confirm.
    store
        .assign(f.tenant.key, Scope::Device(dev.key), v2.key, "u")
        .await
        .unwrap();
    assert!(store.pending_cancel(dev.key).await.unwrap().is_none());
    let second = active(store, &f, "d").await.unwrap();
    store
        .report(
            f.tenant.key,
            second.key,
            &reached(UpdateState::Initiated),
            "ddi",
        )
        .await
        .unwrap();
    store
        .assign(f.tenant.key, Scope::Device(dev.key), v3.key, "u")
        .await
        .unwrap();
    let pending = store.pending_cancel(dev.key).await.unwrap().unwrap();
    assert_eq!(pending.key, second.key);
    assert!(
        store
            .acknowledge_cancel(f.tenant.key, second.key, true, "ddi")
            .await
            .unwrap()
    );
    assert!(
        !store
            .acknowledge_cancel(f.tenant.key, second.key, true, "ddi")
            .await
            .unwrap()
    );
    assert!(store.pending_cancel(dev.key).await.unwrap().is_none());
    let history = store
        .action_history(f.tenant.key, second.key)
        .await
        .unwrap();
    assert_eq!(
        history.last().unwrap().detail,
        "the device confirmed the cancellation"
    );
}

pub async fn placing_a_device_elsewhere_changes_what_it_should_run(store: &SqlStore, _: &Reopen) {
    let f = fixture(store, "dev").await;
    let lotus = store
        .create_project(f.tenant.key, &name("lotus"))
        .await
        .unwrap();
    let sht = store
        .create_profile(f.tenant.key, &name("esp8266-sht"), "")
        .await
        .unwrap();
    let dummy = store
        .create_profile(f.tenant.key, &name("dummy"), "")
        .await
        .unwrap();
    let node = device(store, &f, "esp8266-95a754", Some(&lotus), Some(&dummy)).await;
    let fw = artifact(store, &f, "sht", "1", ArtifactKind::Firmware, &[]).await;
    store
        .assign(
            f.tenant.key,
            Scope::ProjectProfile(lotus.key, sht.key),
            fw.key,
            "u",
        )
        .await
        .unwrap();
    assert!(
        active(store, &f, "esp8266-95a754").await.is_none(),
        "a dummy OTA key finds nothing"
    );
    store
        .place_device(f.tenant.key, node.key, Some(lotus.key), Some(sht.key))
        .await
        .unwrap();
    assert_eq!(
        active(store, &f, "esp8266-95a754").await.unwrap().artifact,
        Some(fw.key)
    );
    let moved = store
        .device(f.tenant.key, &id("esp8266-95a754"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        moved.profile.map(|(_, n)| n.to_string()).as_deref(),
        Some("esp8266-sht")
    );
    let other = fixture(store, "other").await;
    let err = store
        .place_device(other.tenant.key, node.key, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "device" }),
        "{err:?}"
    );
}
