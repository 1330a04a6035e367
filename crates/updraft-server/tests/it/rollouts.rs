//! Rollouts through the management API, driven by the scheduler's passes on a stepped clock
//! (`kernel::scheduler::pass`): groups, thresholds, soak, halt and resume, pacing, cancel over
//! DDI and ThingsBoard MQTT, and the bad input that creates nothing.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use updraft_core::{ActionKey, DeviceId, Failure, FailureCode, Report, UpdateState};
use updraft_server::kernel::scheduler::pass;
use updraft_store::NewDevice;

use crate::{TestApp, default_tenant};

const T0: i64 = 1_900_000_000_000;
const MINUTE: i64 = 60_000;

/// `n` devices `{prefix}-0000`… created straight in the store.
async fn fleet(app: &TestApp, prefix: &str, n: usize) {
    let tenant = default_tenant(app).await;
    for i in 0..n {
        let new = NewDevice {
            id: DeviceId::parse(&format!("{prefix}-{i:04}")).unwrap(),
            project: None,
            profile: None,
            tags: vec![],
            attributes: Default::default(),
        };
        app.state
            .store
            .create_device(tenant, &new, &[])
            .await
            .unwrap();
    }
}

async fn show(app: &TestApp, name: &str) -> Value {
    let answer = app.get(&format!("/api/v1/rollouts/{name}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.json());
    answer.json()
}

async fn command(app: &TestApp, name: &str, command: &str) -> (StatusCode, Value) {
    let answer = app
        .post(&format!("/api/v1/rollouts/{name}/{command}"), json!({}))
        .await;
    (answer.status, answer.json())
}

fn group_state(rollout: &Value, group: usize, state: &str) -> u64 {
    rollout["groups"][group]["states"][state]
        .as_u64()
        .unwrap_or(0)
}

/// The active actions of the rollout's devices in `state`, in device order.
async fn actions_in(app: &TestApp, prefix: &str, n: usize, state: UpdateState) -> Vec<ActionKey> {
    let tenant = default_tenant(app).await;
    let mut out = Vec::new();
    for i in 0..n {
        let id = DeviceId::parse(&format!("{prefix}-{i:04}")).unwrap();
        // A deleted device has none.
        let Some(status) = app.state.store.device_status(tenant, &id).await.unwrap() else {
            continue;
        };
        if let Some(action) = status.active.filter(|a| a.state == state) {
            out.push(action.key);
        }
    }
    out
}

async fn report(app: &TestApp, actions: &[ActionKey], report: Report) {
    let tenant = default_tenant(app).await;
    for action in actions {
        let outcome = app
            .state
            .store
            .report(tenant, *action, &report, "test")
            .await
            .unwrap();
        assert!(
            matches!(outcome, updraft_store::ReportOutcome::Applied(_)),
            "{outcome:?}"
        );
    }
}

fn failed() -> Report {
    Report::Failed(Failure {
        code: FailureCode::IntegrityCheckFailed,
        reason: "bad image".to_owned(),
    })
}

#[tokio::test]
async fn a_thousand_devices_go_group_by_group_halt_resume_and_finish() {
    let app = TestApp::new().await;
    fleet(&app, "node", 1000).await;
    app.upload("title=fw&version=2", b"two").await;
    let created = app
        .post(
            "/api/v1/rollouts",
            json!({"name": "r1", "artifact": "fw@2", "filter": "id==node-*",
                   "groups": "10%,40%,50%", "success_threshold": 80, "error_threshold": 10,
                   "soak": "30m"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    let created = created.json();
    assert_eq!(created["state"], "READY");
    assert_eq!(created["devices"], 1000);
    let sizes: Vec<u64> = created["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [100, 400, 500]);

    // Nothing moves before the start.
    assert_eq!(pass(&app.state, T0).await.unwrap(), 0);
    let (status, started) = command(&app, "r1", "start").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(started["state"], "RUNNING");
    let (status, again) = command(&app, "r1", "start").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(again["code"], "rollout_state");

    assert_eq!(pass(&app.state, T0).await.unwrap(), 100);
    let rollout = show(&app, "r1").await;
    assert_eq!(group_state(&rollout, 0, "QUEUED"), 100);
    assert!(rollout["groups"][1]["started_at"].is_null());
    let queued = actions_in(&app, "node", 1000, UpdateState::Queued).await;
    assert_eq!(queued.len(), 100, "only the first group has actions");

    // 79 of 100 is below 80%: group 2 waits.
    report(&app, &queued[..79], Report::Succeeded).await;
    assert_eq!(pass(&app.state, T0 + MINUTE).await.unwrap(), 0);
    report(&app, &queued[79..80], Report::Succeeded).await;
    assert_eq!(pass(&app.state, T0 + 2 * MINUTE).await.unwrap(), 0);
    let rollout = show(&app, "r1").await;
    assert_eq!(rollout["groups"][0]["passed_at"], T0 + 2 * MINUTE);
    assert!(rollout["groups"][1]["started_at"].is_null(), "soaking");
    assert_eq!(pass(&app.state, T0 + 31 * MINUTE).await.unwrap(), 0);
    assert_eq!(pass(&app.state, T0 + 32 * MINUTE).await.unwrap(), 400);
    let rollout = show(&app, "r1").await;
    assert_eq!(group_state(&rollout, 0, "UPDATED"), 80);
    assert_eq!(group_state(&rollout, 1, "QUEUED"), 400);

    // 41 failures of 400 are beyond 10%: halted, group 3 untouched.
    let queued = actions_in(&app, "node", 1000, UpdateState::Queued).await;
    assert_eq!(queued.len(), 420);
    // Group 1's actions were created first: the 20 of it still queued keep the lowest keys.
    let (group1, group2): (Vec<ActionKey>, Vec<ActionKey>) =
        queued.into_iter().partition(|key| key.0 <= 100);
    assert_eq!(group1.len(), 20);
    let failing = group2[..41].to_vec();
    let rest: Vec<ActionKey> = group1
        .into_iter()
        .chain(group2[41..].iter().copied())
        .collect();
    report(&app, &failing, failed()).await;
    assert_eq!(pass(&app.state, T0 + 33 * MINUTE).await.unwrap(), 0);
    let rollout = show(&app, "r1").await;
    assert_eq!(rollout["state"], "HALTED");
    assert!(rollout["groups"][2]["started_at"].is_null());
    assert_eq!(rollout["groups"][2]["states"], json!({}));
    assert_eq!(group_state(&rollout, 1, "FAILED"), 41);
    let failures = rollout["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 41);
    assert_eq!(failures[0]["code"], "integrity_check_failed");
    assert_eq!(failures[0]["group"], 2);

    // Resuming accepts those failures; the rest of the rollout completes.
    let (status, resumed) = command(&app, "r1", "resume").await;
    assert_eq!(status, StatusCode::OK, "{resumed:?}");
    report(&app, &rest, Report::Succeeded).await;
    assert_eq!(pass(&app.state, T0 + 34 * MINUTE).await.unwrap(), 0);
    assert_eq!(pass(&app.state, T0 + 65 * MINUTE).await.unwrap(), 500);
    let last = actions_in(&app, "node", 1000, UpdateState::Queued).await;
    assert_eq!(last.len(), 500);
    report(&app, &last, Report::Succeeded).await;
    pass(&app.state, T0 + 66 * MINUTE).await.unwrap();
    let rollout = show(&app, "r1").await;
    assert_eq!(rollout["state"], "FINISHED");
    assert_eq!(rollout["states"]["UPDATED"], 959);
    assert_eq!(rollout["states"]["FAILED"], 41);
    let (status, refused) = command(&app, "r1", "cancel").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused["code"], "rollout_state");
}

#[tokio::test]
async fn pacing_bounds_downloads_in_flight_and_starts_per_minute() {
    let app = TestApp::new().await;
    fleet(&app, "paced", 300).await;
    app.upload("title=fw&version=2", b"two").await;
    let created = app
        .post(
            "/api/v1/rollouts",
            json!({"name": "slow", "artifact": "fw@2", "filter": "id==paced-*",
                   "max_downloads": 50, "max_per_minute": 80, "start": "auto"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    assert_eq!(pass(&app.state, T0).await.unwrap(), 50);
    assert_eq!(
        pass(&app.state, T0 + 1_000).await.unwrap(),
        0,
        "50 in flight"
    );
    let queued = actions_in(&app, "paced", 300, UpdateState::Queued).await;
    // Downloaded ones are no longer in flight; the minute's budget (80) still binds.
    report(
        &app,
        &queued[..45],
        Report::Reached {
            state: UpdateState::Downloaded,
            progress: None,
        },
    )
    .await;
    assert_eq!(pass(&app.state, T0 + 2_000).await.unwrap(), 30);
    let rollout = show(&app, "slow").await;
    let in_flight = group_state(&rollout, 0, "QUEUED")
        + group_state(&rollout, 0, "INITIATED")
        + group_state(&rollout, 0, "DOWNLOADING");
    assert_eq!(in_flight, 35);
    assert_eq!(
        pass(&app.state, T0 + 30_000).await.unwrap(),
        0,
        "80 this minute"
    );
    assert_eq!(
        pass(&app.state, T0 + 62_000).await.unwrap(),
        15,
        "the next minute"
    );
}

#[tokio::test]
async fn canceling_reaches_ddi_and_thingsboard_devices_and_keeps_the_updated() {
    let app = TestApp::new().await;
    let ddi_token = app.device("ddi-1").await;
    let tb_token = app.device("tb-1").await;
    app.device("done-1").await;
    app.upload("title=fw&version=2", b"two").await;
    let (host, port) = app.listen_mqtt().await;
    let (tb, mut events) = crate::mqtt::client(&host, port, &tb_token, "tb-1");
    crate::mqtt::connected(&mut events).await;
    tb.subscribe("v1/devices/me/attributes", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    // Speaking ThingsBoard: ask for the shared attributes once.
    tb.subscribe(
        "v1/devices/me/attributes/response/+",
        rumqttc::QoS::AtLeastOnce,
    )
    .await
    .unwrap();
    tb.publish(
        "v1/devices/me/attributes/request/1",
        rumqttc::QoS::AtLeastOnce,
        false,
        json!({"sharedKeys": "fw_title,fw_version"}).to_string(),
    )
    .await
    .unwrap();
    let (topic, _) = crate::mqtt::next_publish(&mut events).await;
    assert_eq!(topic, "v1/devices/me/attributes/response/1");

    let created = app
        .post(
            "/api/v1/rollouts",
            json!({"name": "c1", "artifact": "fw@2", "devices": ["ddi-1", "tb-1", "done-1"],
                   "start": "auto"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    assert_eq!(pass(&app.state, T0).await.unwrap(), 3);
    app.state.wake.notify_one();
    let (topic, payload) = crate::mqtt::next_publish(&mut events).await;
    assert_eq!(topic, "v1/devices/me/attributes");
    let pushed: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(pushed["fw_version"], "2");

    // done-1 finishes before the cancel; ddi-1 learns of its action by polling.
    let tenant = default_tenant(&app).await;
    let done = app
        .state
        .store
        .device_status(tenant, &DeviceId::parse("done-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    report(&app, &[done.active.unwrap().key], Report::Succeeded).await;
    let auth = format!("TargetToken {ddi_token}");
    let poll = ddi_get(&app, "/DEFAULT/controller/v1/ddi-1", &auth).await;
    assert!(poll["_links"]["deploymentBase"].is_object(), "{poll}");

    let (status, canceled) = command(&app, "c1", "cancel").await;
    assert_eq!(status, StatusCode::OK, "{canceled:?}");
    assert_eq!(canceled["state"], "CANCELED");
    assert_eq!(canceled["states"]["CANCELED"], 2);
    assert_eq!(canceled["states"]["UPDATED"], 1);

    // ThingsBoard: the shared attributes are deleted.
    let (topic, payload) = crate::mqtt::next_publish(&mut events).await;
    assert_eq!(topic, "v1/devices/me/attributes");
    let deleted: Value = serde_json::from_slice(&payload).unwrap();
    assert!(
        deleted["deleted"]
            .as_array()
            .unwrap()
            .contains(&json!("fw_version")),
        "{deleted}"
    );
    // DDI: the next poll asks the device to cancel.
    let poll = ddi_get(&app, "/DEFAULT/controller/v1/ddi-1", &auth).await;
    assert!(poll["_links"]["cancelAction"].is_object(), "{poll}");
    assert!(poll["_links"]["deploymentBase"].is_null());

    // The device that updated keeps its release: the rollout still names it.
    let shown = app.get("/api/v1/devices/done-1").await.json();
    assert_eq!(shown["desired_firmware"]["version"], "2", "{shown}");
    assert!(shown["active_action"].is_null());
    let shown = app.get("/api/v1/devices/ddi-1").await.json();
    assert!(shown["desired_firmware"].is_null(), "{shown}");
    let (status, refused) = command(&app, "c1", "resume").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused["code"], "rollout_state");
}

async fn ddi_get(app: &TestApp, path: &str, auth: &str) -> Value {
    let request = axum::http::Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("authorization", auth)
        .header("accept", "application/hal+json")
        .body(axum::body::Body::empty())
        .unwrap();
    let answer = app.send(request).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.json()
}

#[tokio::test]
async fn a_newer_rollout_supersedes_and_a_device_assignment_wins() {
    let app = TestApp::new().await;
    fleet(&app, "dev", 4).await;
    app.upload("title=fw&version=2", b"two").await;
    app.upload("title=fw&version=3", b"three").await;
    app.upload("title=fw&version=9", b"nine").await;
    for (name, version) in [("old", "2"), ("new", "3")] {
        let created = app
            .post(
                "/api/v1/rollouts",
                json!({"name": name, "artifact": format!("fw@{version}"), "filter": "id==dev-*", "start": "auto"}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
        pass(&app.state, T0).await.unwrap();
    }
    let old = show(&app, "old").await;
    assert_eq!(old["states"]["CANCELED"], 4, "superseded: {old}");
    let new = show(&app, "new").await;
    assert_eq!(new["states"]["QUEUED"], 4);
    let assigned = app
        .post(
            "/api/v1/assignments",
            json!({"device": "dev-0001", "artifact": "fw@9"}),
        )
        .await;
    assert_eq!(assigned.status, StatusCode::CREATED);
    let shown = app.get("/api/v1/devices/dev-0001").await.json();
    assert_eq!(shown["desired_firmware"]["version"], "9");
    assert_eq!(shown["desired_firmware"]["level"], "device");
    let shown = app.get("/api/v1/devices/dev-0002").await.json();
    assert_eq!(shown["desired_firmware"]["version"], "3");
    assert_eq!(shown["desired_firmware"]["level"], "rollout");
    let new = show(&app, "new").await;
    assert_eq!(new["states"]["QUEUED"], 3);
    assert_eq!(new["states"]["CANCELED"], 1);
}

#[tokio::test]
async fn bad_rollouts_get_clear_errors_and_create_nothing() {
    let app = TestApp::new().await;
    fleet(&app, "bad", 10).await;
    app.upload("title=fw&version=2", b"two").await;
    app.post("/api/v1/profiles", json!({"name": "esp32"})).await;
    app.upload("title=esp&version=1&profiles=esp32", b"esp")
        .await;
    let base = json!({"name": "x", "artifact": "fw@2", "filter": "id==bad-*"});
    let with = |extra: Value| {
        let mut body = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases = [
        (
            with(json!({"groups": "10%,40%"})),
            StatusCode::BAD_REQUEST,
            "bad_groups",
        ),
        (
            with(json!({"groups": "5,10"})),
            StatusCode::BAD_REQUEST,
            "bad_groups",
        ),
        (
            with(json!({"filter": "id==nobody"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_target",
        ),
        (
            with(json!({"success_threshold": 101})),
            StatusCode::BAD_REQUEST,
            "bad_threshold",
        ),
        (
            with(json!({"filter": "id=~x"})),
            StatusCode::BAD_REQUEST,
            "bad_filter",
        ),
        (
            with(json!({"soak": "soon"})),
            StatusCode::BAD_REQUEST,
            "bad_duration",
        ),
        (
            with(json!({"type": "maybe"})),
            StatusCode::BAD_REQUEST,
            "bad_type",
        ),
        (
            with(json!({"start": "tomorrow"})),
            StatusCode::BAD_REQUEST,
            "bad_start",
        ),
        (
            with(json!({"artifact": "esp@1"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "artifact_incompatible",
        ),
        (
            with(json!({"devices": ["bad-0001", "ghost"], "filter": null})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_device",
        ),
        (
            with(json!({"devices": ["bad-0001"]})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(json!({"artifact": "fw@7"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_artifact",
        ),
    ];
    for (body, status, code) in cases {
        let answer = app.post("/api/v1/rollouts", body.clone()).await;
        assert_eq!(
            (answer.status, answer.code()),
            (status, code.to_owned()),
            "{body}"
        );
        assert!(
            answer.json()["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    let answer = app.get("/api/v1/rollouts").await;
    assert_eq!(answer.json(), json!([]), "nothing was created");
    // With skip_incompatible the misfits are left out (here: every device, so nothing is left).
    let answer = app
        .post(
            "/api/v1/rollouts",
            with(json!({"artifact": "esp@1", "skip_incompatible": true})),
        )
        .await;
    assert_eq!(answer.code(), "empty_target");
    let answer = app.post("/api/v1/rollouts", base.clone()).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let answer = app.post("/api/v1/rollouts", base).await;
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::CONFLICT, "rollout_exists".to_owned())
    );
    let answer = app.post("/api/v1/rollouts/x/launch", json!({})).await;
    assert_eq!(answer.code(), "unknown_command");
    let answer = app.get("/api/v1/rollouts/nope").await;
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::NOT_FOUND, "rollout_not_found".to_owned())
    );
}

#[tokio::test]
async fn a_device_created_after_the_start_joins_a_dynamic_rollouts_new_group() {
    let app = TestApp::new().await;
    fleet(&app, "dyn", 10).await;
    app.upload("title=fw&version=2", b"two").await;
    let created = app
        .post(
            "/api/v1/rollouts",
            json!({"name": "d1", "artifact": "fw@2", "filter": "id==dyn-*", "groups": "5,rest",
                   "dynamic": true, "start": "auto"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    assert_eq!(pass(&app.state, T0).await.unwrap(), 5);
    // Six newcomers: five fill a group shaped like the last (5), the sixth opens another.
    fleet(&app, "dyn-late", 6).await;
    let rollout = show(&app, "d1").await;
    let sizes: Vec<u64> = rollout["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [5, 5, 5, 1], "{rollout}");
    assert!(rollout["groups"][2]["started_at"].is_null());
    for (step, expect) in [(1, 5), (2, 5), (3, 5), (4, 1)] {
        let queued = actions_in(&app, "dyn", 10, UpdateState::Queued).await;
        let late = actions_in(&app, "dyn-late", 6, UpdateState::Queued).await;
        assert_eq!(queued.len() + late.len(), expect, "group {step}");
        report(&app, &queued, Report::Succeeded).await;
        report(&app, &late, Report::Succeeded).await;
        pass(&app.state, T0 + step * MINUTE).await.unwrap();
    }
    let rollout = show(&app, "d1").await;
    assert_eq!(rollout["states"]["UPDATED"], 16);
    assert_eq!(
        rollout["state"], "RUNNING",
        "a dynamic rollout waits for more"
    );
}

#[tokio::test]
async fn a_rule_fires_when_a_device_comes_to_match_without_scanning_the_fleet() {
    let app = TestApp::new().await;
    fleet(&app, "r", 3).await;
    app.upload("title=fw&version=2", b"two").await;
    let scans = || {
        app.state
            .metrics
            .fleet_scans
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let created = app
        .post(
            "/api/v1/rules",
            json!({"name": "beta", "filter": "attr.channel==beta", "artifact": "fw@2"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    assert_eq!(created.json()["devices"], 0);
    assert_eq!(scans(), 1, "the rule looked at the fleet once");
    fleet(&app, "many", 1000).await;
    assert_eq!(scans(), 1, "creating devices scans nothing");
    pass(&app.state, T0).await.unwrap();
    assert!(
        actions_in(&app, "r", 3, UpdateState::Queued)
            .await
            .is_empty()
    );

    // r-0001's attribute changes: it alone joins, and the next pass starts it.
    let tenant = default_tenant(&app).await;
    let device = app
        .state
        .store
        .device(tenant, &DeviceId::parse("r-0001").unwrap())
        .await
        .unwrap()
        .unwrap();
    let beta = [("channel".to_owned(), "beta".to_owned())].into();
    app.state
        .store
        .update_attributes(device.key, updraft_store::AttributeMode::Merge, &beta)
        .await
        .unwrap();
    assert_eq!(pass(&app.state, T0 + 1_000).await.unwrap(), 1);
    assert_eq!(actions_in(&app, "r", 3, UpdateState::Queued).await.len(), 1);
    // A device created matching joins too.
    let made = app
        .post(
            "/api/v1/devices",
            json!({"id": "fresh", "attributes": {"channel": "beta"}}),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.json());
    assert_eq!(pass(&app.state, T0 + 2_000).await.unwrap(), 1);
    let listed = app.get("/api/v1/rules").await.json();
    assert_eq!(listed[0]["devices"], 2, "{listed}");
    assert_eq!(app.get("/api/v1/rollouts").await.json(), json!([]));
    assert_eq!(scans(), 1);

    // Deleted, the rule takes no one more; what it gave stays.
    let answer = app
        .call(Method::DELETE, "/api/v1/rules/beta", &app.admin, None)
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let other = app
        .state
        .store
        .device(tenant, &DeviceId::parse("r-0002").unwrap())
        .await
        .unwrap()
        .unwrap();
    app.state
        .store
        .update_attributes(other.key, updraft_store::AttributeMode::Merge, &beta)
        .await
        .unwrap();
    assert_eq!(pass(&app.state, T0 + 3_000).await.unwrap(), 0);
    assert_eq!(actions_in(&app, "r", 3, UpdateState::Queued).await.len(), 1);
}

/// Two replicas on one PostgreSQL: passes racing on both create each action once; one holds the
/// scheduler lease, and when it goes the other takes over and finishes from the stored state.
#[tokio::test]
async fn two_schedulers_on_one_postgresql_never_double_and_hand_over() {
    let Some(url) = updraft_test_support::postgres::fresh_database().await else {
        return;
    };
    let a = TestApp::on_database(&url).await;
    let b = TestApp::on_database(&url).await;
    fleet(&a, "rep", 200).await;
    a.upload("title=fw&version=2", b"two").await;
    let created = a
        .post(
            "/api/v1/rollouts",
            json!({"name": "ha", "artifact": "fw@2", "filter": "id==rep-*", "groups": "50%,50%",
                   "start": "auto"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());

    let lease_a = a
        .state
        .store
        .lease(updraft_store::Singleton::Scheduler)
        .await
        .unwrap();
    assert!(lease_a.is_some());
    assert!(
        b.state
            .store
            .lease(updraft_store::Singleton::Scheduler)
            .await
            .unwrap()
            .is_none()
    );
    // Even passes that race (no lease checked) queue each member's action once.
    for step in 0..3 {
        let (x, y) = tokio::join!(pass(&a.state, T0 + step), pass(&b.state, T0 + step));
        x.unwrap();
        y.unwrap();
    }
    let queued = actions_in(&a, "rep", 200, UpdateState::Queued).await;
    assert_eq!(queued.len(), 100);
    let tenant = default_tenant(&a).await;
    for i in 0..200 {
        let id = DeviceId::parse(&format!("rep-{i:04}")).unwrap();
        let actions = a.state.store.actions_for_device(tenant, &id).await.unwrap();
        assert!(actions.len() <= 1, "{id}: {actions:?}");
    }
    let rollout = show(&a, "ha").await;
    assert_eq!(group_state(&rollout, 0, "QUEUED"), 100, "{rollout}");

    // Replica A goes away mid-rollout; B takes the lease and finishes from what is stored.
    report(&a, &queued, Report::Succeeded).await;
    lease_a.unwrap().release().await;
    drop(a);
    let lease_b = b
        .state
        .store
        .lease(updraft_store::Singleton::Scheduler)
        .await
        .unwrap();
    assert!(lease_b.is_some(), "the lease is free once A is gone");
    assert_eq!(pass(&b.state, T0 + MINUTE).await.unwrap(), 100);
    let rest = actions_in(&b, "rep", 200, UpdateState::Queued).await;
    report(&b, &rest, Report::Succeeded).await;
    pass(&b.state, T0 + 2 * MINUTE).await.unwrap();
    let rollout = show(&b, "ha").await;
    assert_eq!(rollout["state"], "FINISHED");
    assert_eq!(rollout["states"]["UPDATED"], 200);
}

#[tokio::test]
async fn deleting_devices_mid_rollout_lets_their_groups_finish() {
    let app = TestApp::new().await;
    fleet(&app, "gone", 4).await;
    app.upload("title=fw&version=2", b"two").await;
    let created = app
        .post(
            "/api/v1/rollouts",
            json!({"name": "g", "artifact": "fw@2", "filter": "id==gone-*", "groups": "2,rest",
                   "start": "auto"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(pass(&app.state, T0).await.unwrap(), 2);
    let queued = actions_in(&app, "gone", 4, UpdateState::Queued).await;
    report(&app, &queued[..1], Report::Succeeded).await;
    // One device of group 1 with its queued action, and one of group 2 not yet started, go.
    let tenant = default_tenant(&app).await;
    let rollout = show(&app, "g").await;
    let (mut queued_one, mut waiting_one) = (None, None);
    for i in 0..4 {
        let id = DeviceId::parse(&format!("gone-{i:04}")).unwrap();
        let status = app
            .state
            .store
            .device_status(tenant, &id)
            .await
            .unwrap()
            .unwrap();
        match &status.active {
            Some(a) if a.state == UpdateState::Queued => queued_one = Some(id),
            None if status.device.firmware.is_none() => waiting_one = Some(id),
            _ => {}
        }
    }
    let mut deleted = 0;
    for id in [queued_one.unwrap(), waiting_one.unwrap()] {
        let answer = app
            .call(
                Method::DELETE,
                &format!("/api/v1/devices/{id}"),
                &app.admin,
                None,
            )
            .await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{rollout}");
        deleted += 1;
    }
    assert_eq!(deleted, 2);
    let rollout = show(&app, "g").await;
    assert_eq!(group_state(&rollout, 0, "CANCELED"), 1, "{rollout}");
    assert_eq!(group_state(&rollout, 1, "SKIPPED"), 1, "{rollout}");
    assert_eq!(pass(&app.state, T0 + 1_000).await.unwrap(), 1);
    let last = actions_in(&app, "gone", 4, UpdateState::Queued).await;
    report(&app, &last, Report::Succeeded).await;
    pass(&app.state, T0 + 2_000).await.unwrap();
    assert_eq!(show(&app, "g").await["state"], "FINISHED");
}

#[tokio::test]
async fn a_rule_on_seen_fires_at_a_devices_first_check_in() {
    let app = TestApp::new().await;
    fleet(&app, "new", 2).await;
    app.upload("title=fw&version=2", b"two").await;
    let created = app
        .post(
            "/api/v1/rules",
            json!({"name": "fresh", "filter": "seen<1h", "artifact": "fw@2"}),
        )
        .await;
    assert_eq!(created.json()["devices"], 0, "never seen: no match");
    let tenant = default_tenant(&app).await;
    let device = app
        .state
        .store
        .device(tenant, &DeviceId::parse("new-0000").unwrap())
        .await
        .unwrap()
        .unwrap();
    app.state.store.touch_device(device.key).await.unwrap();
    app.state.store.touch_device(device.key).await.unwrap();
    assert_eq!(pass(&app.state, T0).await.unwrap(), 1);
    assert_eq!(
        actions_in(&app, "new", 2, UpdateState::Queued).await.len(),
        1
    );
    assert_eq!(app.get("/api/v1/rules").await.json()[0]["devices"], 1);
}
