//! Frugal-IoT check-ins exactly as the ESP8266 and ESP32 `httpUpdate` clients send them, and the
//! developer workflows (push, promote) end to end. Nodes carry an OTA key that is a secret: a
//! project key they enroll with, or a key of their own.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;
use updraft_core::MultiHasher;

use crate::{Answer, TestApp};

fn md5(data: &[u8]) -> String {
    let mut hasher = MultiHasher::new();
    hasher.update(data);
    hasher.finish().md5
}

/// A check-in with the headers of the Arduino core for `chip` ("ESP8266" or "ESP32").
async fn check_in(
    app: &TestApp,
    path: &str,
    chip: &str,
    running_md5: &str,
    extra: &[(&str, &str)],
) -> Answer {
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("user-agent", format!("{chip}-http-Update"))
        .header(format!("x-{chip}-STA-MAC"), "5C:CF:7F:95:A7:54")
        .header(format!("x-{chip}-AP-MAC"), "5E:CF:7F:95:A7:54")
        .header(format!("x-{chip}-free-space"), "2000000")
        .header(format!("x-{chip}-sketch-size"), "400000")
        .header(format!("x-{chip}-sketch-md5"), running_md5)
        .header(format!("x-{chip}-chip-size"), "4194304")
        .header(format!("x-{chip}-sdk-version"), "2.2.2-dev(38a443e)")
        .header(format!("x-{chip}-mode"), "sketch");
    for (name, value) in extra {
        request = request.header(format!("x-{chip}-{name}"), *value);
    }
    app.send(request.body(Body::empty()).unwrap()).await
}

/// Pushes `data` through the developer endpoint with `token`.
async fn push(app: &TestApp, token: &str, query: &str, data: &[u8]) -> Answer {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/frugal/push?{query}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(data.to_vec()))
        .unwrap();
    app.send(request).await
}

const OLD: &str = "00000000000000000000000000000000";

/// A new project key enrolling nodes into `project` with `profile`: the secret.
pub async fn project_key(app: &TestApp, project: &str, profile: &str) -> String {
    let created = app
        .post(
            "/api/v1/frugal/keys",
            json!({"project": project, "profile": profile}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    created.json()["secret"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_most_specific_binary_wins_and_the_same_md5_gets_304() {
    let app = TestApp::new().await;
    let admin = app.admin.clone();
    let org_bin = b"org-wide sht binary".to_vec();
    let project_bin = b"lotus sht binary".to_vec();
    let node_bin = b"binary for one node".to_vec();
    let lotus = project_key(&app, "lotus", "esp8266-sht").await;
    let rose = project_key(&app, "rose", "esp8266-sht").await;
    let node = &format!("/ota_update/default/lotus/esp8266-95a754/{lotus}");
    let sibling = &format!("/ota_update/default/lotus/esp8266-000001/{lotus}");
    let elsewhere = &format!("/ota_update/default/rose/esp32-000002/{rose}");

    // First check-ins enroll the nodes; nothing is assigned yet.
    for (path, chip) in [
        (node, "ESP8266"),
        (sibling, "ESP8266"),
        (elsewhere, "ESP32"),
    ] {
        assert_eq!(
            check_in(&app, path, chip, OLD, &[]).await.status,
            StatusCode::NOT_MODIFIED
        );
    }
    let registered = app.get("/api/v1/devices/esp8266-95a754").await.json();
    assert_eq!(
        (
            registered["project"].as_str(),
            registered["profile"].as_str()
        ),
        (Some("lotus"), Some("esp8266-sht"))
    );
    assert_eq!(registered["attributes"]["sketch-md5"], OLD);
    assert_eq!(registered["attributes"]["free-space"], "2000000");
    assert!(registered["last_seen"].is_i64());

    assert_eq!(
        push(&app, &admin, "org=default&ota_key=esp8266-sht", &org_bin)
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        push(
            &app,
            &admin,
            "org=default&project=lotus&ota_key=esp8266-sht",
            &project_bin
        )
        .await
        .status,
        StatusCode::CREATED
    );
    assert_eq!(
        push(
            &app,
            &admin,
            "org=default&project=lotus&node=esp8266-95a754",
            &node_bin
        )
        .await
        .status,
        StatusCode::CREATED
    );

    for (path, chip, expected) in [
        (node, "ESP8266", &node_bin),
        (sibling, "ESP8266", &project_bin),
        (elsewhere, "ESP32", &org_bin),
    ] {
        let answer = check_in(&app, path, chip, OLD, &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.body.as_ref(), expected.as_slice(), "{path}");
        assert_eq!(answer.headers["x-md5"], md5(expected), "{path}");
        assert_eq!(answer.headers["content-type"], "application/octet-stream");
        assert_eq!(answer.headers["content-length"], expected.len().to_string());
        // After flashing, the node reports the new MD5: nothing more, and the update is done.
        let again = check_in(&app, path, chip, &md5(expected), &[]).await;
        assert_eq!(
            again.status,
            StatusCode::NOT_MODIFIED,
            "{path}: no update loop"
        );
    }
    let history = app
        .get("/api/v1/devices/esp8266-95a754/history")
        .await
        .json();
    let states: Vec<&str> = history[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["QUEUED", "DOWNLOADING", "UPDATED"]);
    let shown = app.get("/api/v1/devices/esp32-000002").await.json();
    assert_eq!(shown["firmware"]["title"], "esp8266-sht");
    // `?md5=` works as well as the header.
    let by_query = app
        .send(
            Request::builder()
                .uri(format!("{node}?md5={}", md5(&node_bin)))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(by_query.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn space_versions_and_bad_urls_are_handled() {
    let app = TestApp::new().await;
    let admin = app.admin.clone();
    let cam = project_key(&app, "lotus", "esp32-cam").await;
    let small = project_key(&app, "lotus", "esp32-small").await;
    let node = &format!("/ota_update/default/lotus/node-1/{cam}");
    let node_2 = &format!("/ota_update/default/lotus/node-2/{small}");
    let node_3 = &format!("/ota_update/default/lotus/node-3/{small}");
    check_in(&app, node, "ESP32", OLD, &[]).await;
    push(
        &app,
        &admin,
        "org=default&project=lotus&ota_key=esp32-cam&version=1.4.0",
        &vec![1u8; 3_000_000],
    )
    .await;
    // Not enough room: an error, not a doomed download, and the update is FAILED.
    let full = check_in(&app, node, "ESP32", OLD, &[]).await;
    assert_eq!(
        (full.status, full.code().as_str()),
        (StatusCode::INSUFFICIENT_STORAGE, "not_enough_space")
    );
    let device = app.get("/api/v1/devices/node-1/history").await.json();
    assert_eq!(device[0]["state"], "FAILED");
    assert_eq!(device[0]["failure"]["code"], "not_enough_storage");

    // A node that says it runs 2.0 is not handed 1.4 by a project-wide assignment…
    check_in(&app, node_2, "ESP32", OLD, &[]).await;
    push(
        &app,
        &admin,
        "org=default&project=lotus&ota_key=esp32-small&version=1.4.0",
        b"small 1.4",
    )
    .await;
    let newer = check_in(&app, node_2, "ESP32", OLD, &[("version", "2.0.0")]).await;
    assert_eq!(newer.status, StatusCode::NOT_MODIFIED);
    let older = check_in(&app, node_2, "ESP32", OLD, &[("version", "1.3.9")]).await;
    assert_eq!(older.status, StatusCode::OK);
    // …but a binary pushed for the node itself says so.
    check_in(&app, node_3, "ESP32", OLD, &[]).await;
    push(
        &app,
        &admin,
        "org=default&project=lotus&node=node-3&version=1.0.0",
        b"rollback build",
    )
    .await;
    let pinned = check_in(&app, node_3, "ESP32", OLD, &[("version", "2.0.0")]).await;
    assert_eq!(pinned.status, StatusCode::OK);

    for (path, code) in [
        (
            format!("/ota_update/default/lotus/..%2F..%2Fetc%2Fpasswd/{cam}"),
            "invalid_request",
        ),
        (
            format!("/ota_update/default/lotus/../{cam}"),
            "invalid_request",
        ),
        (
            format!("/ota_update/default/lotus/.hidden/{cam}"),
            "invalid_request",
        ),
        (
            format!("/ota_update/default/..%2Fx/node/{cam}"),
            "invalid_request",
        ),
        (
            format!("/ota_update/default/{}/node/{cam}", "p".repeat(65)),
            "invalid_request",
        ),
        (
            format!("/ota_update/default/lotus/{}/{cam}", "n".repeat(129)),
            "invalid_request",
        ),
        // An unknown org looks like a wrong key: nothing tells them apart.
        (
            format!("/ota_update/nosuch-org/lotus/node/{cam}"),
            "unauthorized",
        ),
        (
            "/ota_update/default/lotus/node/esp32-cam".to_owned(),
            "unauthorized",
        ),
        // A project key enrolls into its own project only.
        (
            format!("/ota_update/default/rose/node-9/{cam}"),
            "wrong_project",
        ),
    ] {
        let answer = check_in(&app, &path, "ESP8266", OLD, &[]).await;
        assert!(answer.status.is_client_error(), "{path}: {}", answer.status);
        assert_eq!(answer.code(), code, "{path}");
    }
    // With self-registration off, unknown nodes are refused and nothing is created.
    let org = app
        .state
        .store
        .tenant_by_name("default")
        .await
        .unwrap()
        .unwrap();
    let settings = updraft_store::TenantSettings {
        frugal_auto_register: false,
        ..org.settings
    };
    app.state
        .store
        .update_tenant_settings(org.key, settings)
        .await
        .unwrap();
    let unknown = check_in(
        &app,
        &format!("/ota_update/default/lotus/stranger/{cam}"),
        "ESP32",
        OLD,
        &[],
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.code().as_str()),
        (StatusCode::NOT_FOUND, "device_not_found")
    );
    assert_eq!(
        app.get("/api/v1/devices/stranger").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_upload_centric_workflow_updates_one_node_then_all_once() {
    let app = TestApp::new().await;
    let admin = app.admin.clone();
    let key = project_key(&app, "lotus", "sonoff-r2").await;
    let nodes = ["a", "b", "c"].map(|n| format!("/ota_update/default/lotus/{n}/{key}"));
    for node in &nodes {
        check_in(&app, node, "ESP8266", OLD, &[]).await;
    }
    // Each build goes to node a first.
    let build = b"build 17".to_vec();
    let pushed = push(&app, &admin, "org=default&project=lotus&node=a", &build).await;
    assert_eq!(pushed.status, StatusCode::CREATED);
    assert_eq!(pushed.json()["assignment"]["level"], "device");
    let answers: Vec<StatusCode> = futures_util::future::join_all(
        nodes.iter().map(|n| check_in(&app, n, "ESP8266", OLD, &[])),
    )
    .await
    .iter()
    .map(|a| a.status)
    .collect();
    assert_eq!(
        answers,
        [
            StatusCode::OK,
            StatusCode::NOT_MODIFIED,
            StatusCode::NOT_MODIFIED
        ],
        "only node a"
    );
    assert_eq!(
        check_in(&app, &nodes[0], "ESP8266", &md5(&build), &[])
            .await
            .status,
        StatusCode::NOT_MODIFIED
    );

    // Happy with it: promote to the OTA key; every node updates once, a is not sent it again.
    let promoted = app
        .post(
            "/api/v1/frugal/promote",
            json!({"org": "default", "project": "lotus", "node": "a", "ota_key": "sonoff-r2"}),
        )
        .await;
    assert_eq!(
        promoted.status,
        StatusCode::CREATED,
        "{:?}",
        promoted.json()
    );
    assert_eq!(promoted.json()["level"], "project_profile");
    assert_eq!(
        check_in(&app, &nodes[0], "ESP8266", &md5(&build), &[])
            .await
            .status,
        StatusCode::NOT_MODIFIED
    );
    for node in &nodes[1..] {
        let first = check_in(&app, node, "ESP8266", OLD, &[]).await;
        assert_eq!(
            (first.status, first.body.as_ref()),
            (StatusCode::OK, build.as_slice()),
            "{node}"
        );
        assert_eq!(
            check_in(&app, node, "ESP8266", &md5(&build), &[])
                .await
                .status,
            StatusCode::NOT_MODIFIED
        );
    }
    let assignments = app.get("/api/v1/assignments").await.json();
    assert_eq!(
        assignments.as_array().unwrap().len(),
        1,
        "the node-level assignment is gone"
    );
    // Pushing the same bytes again is idempotent.
    assert_eq!(
        push(&app, &admin, "org=default&project=lotus&node=a", &build)
            .await
            .status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_maintainer_pushes_only_to_their_own_org() {
    let app = TestApp::new().await;
    for org in ["dev", "other"] {
        app.post("/api/v1/tenants", json!({"name": org})).await;
    }
    let key = app
        .post(
            "/api/v1/tenants/dev/api-keys",
            json!({"name": "dev-ci", "role": "maintainer"}),
        )
        .await
        .json();
    let token = key["token"].as_str().unwrap();
    let viewer = app
        .post(
            "/api/v1/tenants/dev/api-keys",
            json!({"name": "dev-view", "role": "viewer"}),
        )
        .await
        .json();
    let mine = push(&app, token, "org=dev&ota_key=esp8266-sht", b"dev build").await;
    assert_eq!(mine.status, StatusCode::CREATED);
    let theirs = push(&app, token, "org=other&ota_key=esp8266-sht", b"dev build").await;
    assert_eq!(
        (theirs.status, theirs.code().as_str()),
        (StatusCode::NOT_FOUND, "tenant_not_found")
    );
    let read_only = push(
        &app,
        viewer["token"].as_str().unwrap(),
        "org=dev&ota_key=x",
        b"b",
    )
    .await;
    assert_eq!(read_only.status, StatusCode::FORBIDDEN);
    let both = push(&app, token, "org=dev&ota_key=x&node=n", b"b").await;
    assert_eq!(
        (both.status, both.code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    // Org "other" got nothing.
    let other = app
        .state
        .store
        .tenant_by_name("other")
        .await
        .unwrap()
        .unwrap();
    let listed = app
        .state
        .store
        .list_artifacts(other.key, &Default::default(), Default::default())
        .await
        .unwrap();
    assert_eq!(listed.total, 0);
}
