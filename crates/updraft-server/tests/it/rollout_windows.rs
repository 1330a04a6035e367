//! Rollouts' update types and maintenance windows as devices see them: DDI downloads at once and
//! is told to install only inside the window (`maintenanceWindow`, `update: skip`); a protocol
//! that installs what it downloads (ThingsBoard here) is not offered the update outside it.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use updraft_server::kernel::scheduler::pass;

use crate::TestApp;

/// A window that never opens (February 30th) and one that is always open.
const CLOSED: &str = "0 0 30 2 *";
const OPEN: &str = "* * * * *";

async fn rollout(app: &TestApp, name: &str, device: &str, extra: Value) {
    let mut body = json!({"name": name, "artifact": "fw@2", "devices": [device], "start": "auto"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let created = app.post("/api/v1/rollouts", body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
}

async fn get(app: &TestApp, path: &str, auth: Option<&str>) -> Value {
    let mut request = Request::builder().method(Method::GET).uri(path);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let answer = app.send(request.body(Body::empty()).unwrap()).await;
    assert_eq!(answer.status, StatusCode::OK, "{path}");
    answer.json()
}

/// The DDI deployment a device is given: poll, then follow `deploymentBase`.
async fn deployment(app: &TestApp, id: &str, token: &str) -> Value {
    let auth = format!("TargetToken {token}");
    let poll = get(app, &format!("/DEFAULT/controller/v1/{id}"), Some(&auth)).await;
    let href = poll["_links"]["deploymentBase"]["href"]
        .as_str()
        .unwrap_or_else(|| panic!("no deployment for {id}: {poll}"))
        .to_owned();
    let path = href.split_once("updraft.test").unwrap().1.to_owned();
    get(app, &path, Some(&auth)).await["deployment"].clone()
}

#[tokio::test]
async fn ddi_downloads_outside_the_window_and_installs_inside_it() {
    let app = TestApp::new().await;
    app.upload("title=fw&version=2", b"two").await;
    let mut tokens = Vec::new();
    for id in ["closed", "open", "soft", "dl", "plain"] {
        tokens.push((id, app.device(id).await));
    }
    rollout(
        &app,
        "r-closed",
        "closed",
        json!({"window": CLOSED, "window_duration": "1m", "tz": "Europe/Berlin"}),
    )
    .await;
    rollout(
        &app,
        "r-open",
        "open",
        json!({"window": OPEN, "window_duration": "1m"}),
    )
    .await;
    rollout(&app, "r-soft", "soft", json!({"type": "soft"})).await;
    rollout(&app, "r-dl", "dl", json!({"type": "download-only"})).await;
    rollout(&app, "r-plain", "plain", json!({})).await;
    pass(&app.state, updraft_server::kernel::clock::now_millis())
        .await
        .unwrap();
    let expect = [
        ("closed", "forced", "skip", Some("unavailable")),
        ("open", "forced", "forced", Some("available")),
        ("soft", "attempt", "attempt", None),
        ("dl", "forced", "skip", None),
        ("plain", "forced", "forced", None),
    ];
    for ((id, token), (_, download, update, window)) in tokens.iter().zip(expect) {
        let d = deployment(&app, id, token).await;
        assert_eq!(d["download"], download, "{id}: {d}");
        assert_eq!(d["update"], update, "{id}: {d}");
        assert_eq!(d["maintenanceWindow"].as_str(), window, "{id}: {d}");
    }
    let shown = app.get("/api/v1/rollouts/r-closed").await.json();
    assert_eq!(shown["window"], CLOSED);
    assert_eq!(shown["tz"], "Europe/Berlin");
}

#[tokio::test]
async fn a_protocol_that_installs_what_it_downloads_is_offered_inside_the_window_only() {
    let app = TestApp::new().await;
    app.upload("title=fw&version=2", b"two").await;
    let closed = app.device("tb-closed").await;
    let open = app.device("tb-open").await;
    rollout(
        &app,
        "c",
        "tb-closed",
        json!({"window": CLOSED, "window_duration": "1m"}),
    )
    .await;
    rollout(
        &app,
        "o",
        "tb-open",
        json!({"window": OPEN, "window_duration": "1m"}),
    )
    .await;
    pass(&app.state, updraft_server::kernel::clock::now_millis())
        .await
        .unwrap();
    let keys = "sharedKeys=fw_title,fw_version";
    let shared = get(&app, &format!("/api/v1/{closed}/attributes?{keys}"), None).await;
    assert_eq!(shared["shared"], json!({}), "held back: {shared}");
    let shown = app.get("/api/v1/devices/tb-closed").await.json();
    assert_eq!(
        shown["active_action"]["state"], "QUEUED",
        "not offered, so not told"
    );
    let shared = get(&app, &format!("/api/v1/{open}/attributes?{keys}"), None).await;
    assert_eq!(shared["shared"]["fw_version"], "2", "{shared}");
    let shown = app.get("/api/v1/devices/tb-open").await.json();
    assert_eq!(shown["active_action"]["state"], "INITIATED");
}

#[tokio::test]
async fn bad_windows_are_refused() {
    let app = TestApp::new().await;
    app.upload("title=fw&version=2", b"two").await;
    app.device("d").await;
    for (extra, code) in [
        (json!({"window": "0 25 * * *"}), "bad_window"),
        (json!({"window": "0 2 * *"}), "bad_window"),
        (
            json!({"window": OPEN, "window_duration": "8d"}),
            "bad_window",
        ),
        (
            json!({"window": OPEN, "window_duration": "soon"}),
            "bad_duration",
        ),
        (
            json!({"window": OPEN, "tz": "Mars/Olympus"}),
            "bad_timezone",
        ),
        (json!({"tz": "UTC"}), "bad_window"),
    ] {
        let mut body = json!({"name": "w", "artifact": "fw@2", "devices": ["d"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let answer = app.post("/api/v1/rollouts", body.clone()).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::BAD_REQUEST, code.to_owned()),
            "{body}"
        );
    }
}
