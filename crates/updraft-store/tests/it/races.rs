//! Writers racing on one action: device reports against a supersede. Whatever order they land
//! in, an action never moves from one final state to another.

use std::collections::BTreeMap;

use updraft_core::{DeviceId, Failure, FailureCode, Name, Progress, Report, Scope, UpdateState};
use updraft_store::*;

use crate::Reopen;
use crate::coverage::release;

pub async fn reports_racing_a_supersede_never_leave_a_final_state(store: &SqlStore, _: &Reopen) {
    let tenant = store
        .create_tenant(&Name::parse("race").unwrap())
        .await
        .unwrap();
    let v1 = release(store, &tenant, "1").await;
    let v2 = release(store, &tenant, "2").await;
    for round in 0..5 {
        let device = store
            .create_device(
                tenant.key,
                &NewDevice {
                    id: DeviceId::parse(&format!("d{round}")).unwrap(),
                    project: None,
                    profile: None,
                    tags: vec![],
                    attributes: BTreeMap::new(),
                },
                &[],
            )
            .await
            .unwrap();
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
