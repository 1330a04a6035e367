//! Frugal-IoT check-ins as an attacker would try them: no key, another node's key, a key of
//! another project or tenant, a flood of enrollments. None changes a device it may not.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;
use updraft_server::Limits;

use crate::frugal::project_key;
use crate::{Answer, TestApp};

async fn esp(app: &TestApp, path: &str, extra: &[(&str, &str)]) -> Answer {
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("user-agent", "ESP8266-http-Update")
        .header("x-ESP8266-sketch-md5", "00000000000000000000000000000000");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    app.send(request.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn an_unauthenticated_check_in_changes_nothing() {
    let app = TestApp::new().await;
    app.post("/api/v1/profiles", json!({"name": "p1"})).await;
    let created = app
        .post(
            "/api/v1/devices",
            json!({"id": "victim", "profile": "p1", "attributes": {"hw": "rev2"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let uploaded = app
        .upload(
            "title=fw&version=1&filename=fw.bin&profiles=p1",
            b"firmware one",
        )
        .await;
    assert_eq!(uploaded.status, StatusCode::CREATED);
    let assigned = app
        .post(
            "/api/v1/assignments",
            json!({"level": "device", "device": "victim", "artifact": "fw@1"}),
        )
        .await;
    assert_eq!(
        assigned.status,
        StatusCode::CREATED,
        "{:?}",
        assigned.json()
    );
    let before = app.get("/api/v1/devices/victim").await.json();
    let history_before = app.get("/api/v1/devices/victim/history").await.json();
    assert_eq!(history_before[0]["state"], "QUEUED");

    // Whatever the OTA key — none of the victim's, a project key of the tenant, another
    // node's own key — the victim, a DDI device, is not a Frugal node: nothing changes.
    let other_project = project_key(&app, "evil", "anykey").await;
    let enrolled = esp(
        &app,
        &format!("/ota_update/default/evil/frugal-1/{other_project}"),
        &[],
    )
    .await;
    assert_eq!(enrolled.status, StatusCode::NOT_MODIFIED);
    let own = app
        .post("/api/v1/devices/frugal-1/frugal-key", json!({}))
        .await
        .json();
    let own = own["secret"].as_str().unwrap().to_owned();
    for key in ["anykey", other_project.as_str(), own.as_str()] {
        let answer = esp(
            &app,
            &format!("/ota_update/default/evil/victim/{key}"),
            &[("x-ESP8266-free-space", "0"), ("x-ESP8266-hw", "evil")],
        )
        .await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{key}"
        );
    }
    let after = app.get("/api/v1/devices/victim").await.json();
    assert_eq!(
        before, after,
        "placement, attributes and last_seen unchanged"
    );
    let history_after = app.get("/api/v1/devices/victim/history").await.json();
    assert_eq!(history_before, history_after, "the update is still QUEUED");
    // An unknown node with a made-up key registers nothing either.
    let stranger = esp(&app, "/ota_update/default/lotus/stranger/anykey", &[]).await;
    assert_eq!(stranger.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.get("/api/v1/devices/stranger").await.status,
        StatusCode::NOT_FOUND
    );
    let projects = app.get("/api/v1/projects").await.json();
    assert!(
        !projects.to_string().contains("lotus"),
        "no project made from the URL: {projects}"
    );
}

#[tokio::test]
async fn keys_are_per_node_per_project_and_die_when_deleted() {
    let app = TestApp::new().await;
    let key = project_key(&app, "lotus", "sht").await;
    let a = format!("/ota_update/default/lotus/node-a/{key}");
    assert_eq!(esp(&app, &a, &[]).await.status, StatusCode::NOT_MODIFIED);
    // The URL never moves an enrolled node.
    let moved = esp(&app, &format!("/ota_update/default/rose/node-a/{key}"), &[]).await;
    assert_eq!(moved.status, StatusCode::NOT_MODIFIED);
    let node = app.get("/api/v1/devices/node-a").await.json();
    assert_eq!(
        (node["project"].as_str(), node["profile"].as_str()),
        (Some("lotus"), Some("sht"))
    );

    // A key of node a's own works for node a, not for node b; the project key still works.
    let own = app
        .post("/api/v1/devices/node-a/frugal-key", json!({}))
        .await;
    assert_eq!(own.status, StatusCode::CREATED);
    let own = own.json()["secret"].as_str().unwrap().to_owned();
    assert_ne!(own, key);
    let with_own = format!("/ota_update/default/lotus/node-a/{own}");
    assert_eq!(
        esp(&app, &with_own, &[]).await.status,
        StatusCode::NOT_MODIFIED
    );
    let b = format!("/ota_update/default/lotus/node-b/{key}");
    assert_eq!(esp(&app, &b, &[]).await.status, StatusCode::NOT_MODIFIED);
    let b_with_a = format!("/ota_update/default/lotus/node-b/{own}");
    assert_eq!(
        esp(&app, &b_with_a, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Listing shows no secret; deleting the project key ends node b's membership, not a's.
    let keys = app.get("/api/v1/frugal/keys").await.json();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert!(keys[0].get("secret").is_none());
    assert!(!keys.to_string().contains(&key));
    let id = keys[0]["id"].as_i64().unwrap();
    let deleted = app
        .call(
            Method::DELETE,
            &format!("/api/v1/frugal/keys/{id}"),
            &app.admin.clone(),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(esp(&app, &b, &[]).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(esp(&app, &a, &[]).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        esp(&app, &with_own, &[]).await.status,
        StatusCode::NOT_MODIFIED
    );

    // A viewer cannot make keys.
    let viewer = app
        .post(
            "/api/v1/tenants/default/api-keys",
            json!({"name": "v", "role": "viewer"}),
        )
        .await
        .json();
    let refused = app
        .call(
            Method::POST,
            "/api/v1/frugal/keys",
            viewer["token"].as_str().unwrap(),
            Some(json!({"project": "lotus", "profile": "sht"})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_key_of_another_tenant_opens_nothing_here() {
    let app = TestApp::new().await;
    app.post("/api/v1/tenants", json!({"name": "other"})).await;
    let other_admin = app
        .post(
            "/api/v1/tenants/other/api-keys",
            json!({"name": "o", "role": "admin"}),
        )
        .await
        .json();
    let other_admin = other_admin["token"].as_str().unwrap();
    let theirs = app
        .call(
            Method::POST,
            "/api/v1/frugal/keys",
            other_admin,
            Some(json!({"project": "lotus", "profile": "sht"})),
        )
        .await
        .json();
    let theirs = theirs["secret"].as_str().unwrap();
    let mine = project_key(&app, "lotus", "sht").await;
    assert_eq!(
        esp(&app, &format!("/ota_update/default/lotus/n1/{mine}"), &[])
            .await
            .status,
        StatusCode::NOT_MODIFIED
    );
    // Their key on my org, for a new node and for my node: refused, nothing created.
    for node in ["n2", "n1"] {
        let answer = esp(
            &app,
            &format!("/ota_update/default/lotus/{node}/{theirs}"),
            &[],
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{node}");
    }
    assert_eq!(
        app.get("/api/v1/devices/n2").await.status,
        StatusCode::NOT_FOUND
    );
    // My key on their org: refused as well.
    let answer = esp(&app, &format!("/ota_update/other/lotus/n1/{mine}"), &[]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn enrollment_is_bounded_per_key_and_rate_limited_per_tenant() {
    let app = TestApp::with_limits(Limits {
        registrations_burst: 3,
        registrations_per_minute: 0,
        ..Limits::default()
    })
    .await;
    let small = app
        .post(
            "/api/v1/frugal/keys",
            json!({"project": "lotus", "profile": "sht", "max_nodes": 2}),
        )
        .await
        .json();
    let small = small["secret"].as_str().unwrap().to_owned();
    let mut answers = Vec::new();
    for n in 0..3 {
        answers.push(
            esp(
                &app,
                &format!("/ota_update/default/lotus/s{n}/{small}"),
                &[],
            )
            .await,
        );
    }
    assert_eq!(answers[0].status, StatusCode::NOT_MODIFIED);
    assert_eq!(answers[1].status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        (answers[2].status, answers[2].code().as_str()),
        (StatusCode::FORBIDDEN, "key_full")
    );
    // Three enrollments used the tenant's burst (the refused one too: it was tried); the next
    // waits, and a node already enrolled is not held back.
    let big = project_key(&app, "lotus", "sht").await;
    let limited = esp(&app, &format!("/ota_update/default/lotus/b1/{big}"), &[]).await;
    assert_eq!(
        (limited.status, limited.code().as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert_eq!(
        app.get("/api/v1/devices/b1").await.status,
        StatusCode::NOT_FOUND
    );
    let known = esp(&app, &format!("/ota_update/default/lotus/s0/{small}"), &[]).await;
    assert_eq!(known.status, StatusCode::NOT_MODIFIED);
}
