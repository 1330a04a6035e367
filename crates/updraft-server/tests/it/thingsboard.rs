//! ThingsBoard's HTTP device API: attributes, chunked firmware, `fw_state` telemetry.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::{Answer, TestApp};

async fn device_call(app: &TestApp, method: Method, path: &str, body: Option<&str>) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    let body = body
        .map(|b| Body::from(b.to_owned()))
        .unwrap_or_else(Body::empty);
    app.send(request.body(body).unwrap()).await
}

async fn shared(app: &TestApp, token: &str) -> Value {
    let answer = device_call(app, Method::GET, &format!("/api/v1/{token}/attributes?sharedKeys=fw_title,fw_version,fw_size,fw_checksum,fw_checksum_algorithm"), None).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.json()["shared"].clone()
}

/// DESIGN.md's ThingsBoard example: D1, D2 in profile P1; F1 → P1, F2 → D1, F3 → P1.
#[tokio::test]
async fn thingsboards_documented_example_through_the_attributes() {
    let app = TestApp::new().await;
    app.post("/api/v1/profiles", json!({"name": "P1"})).await;
    let d1 = app
        .post("/api/v1/devices", json!({"id": "D1", "profile": "P1"}))
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let d2 = app
        .post("/api/v1/devices", json!({"id": "D2", "profile": "P1"}))
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for version in ["1", "2", "3"] {
        app.upload(
            &format!("title=F&version={version}&profiles=P1"),
            format!("firmware {version}").as_bytes(),
        )
        .await;
    }
    let steps = [
        (json!({"profile": "P1", "artifact": "F@1"}), "1", "1"),
        (json!({"device": "D1", "artifact": "F@2"}), "2", "1"),
        (json!({"profile": "P1", "artifact": "F@3"}), "2", "3"),
    ];
    for (assignment, want_d1, want_d2) in steps {
        assert_eq!(
            app.post("/api/v1/assignments", assignment).await.status,
            StatusCode::CREATED
        );
        assert_eq!(shared(&app, &d1).await["fw_version"], want_d1);
        assert_eq!(shared(&app, &d2).await["fw_version"], want_d2);
    }
}

#[tokio::test]
async fn a_device_reads_downloads_in_chunks_and_reports_its_states() {
    let app = TestApp::new().await;
    let token = app.device("tb-1").await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 256) as u8).collect();
    let artifact = app
        .upload("title=myFirmware&version=1.2.3", &data)
        .await
        .json();
    app.post(
        "/api/v1/assignments",
        json!({"device": "tb-1", "artifact": "myFirmware@1.2.3"}),
    )
    .await;

    let attributes = shared(&app, &token).await;
    assert_eq!(
        attributes,
        json!({"fw_title": "myFirmware", "fw_version": "1.2.3", "fw_size": 100000, "fw_checksum": artifact["checksums"]["sha256"], "fw_checksum_algorithm": "SHA256"})
    );
    assert_eq!(
        app.get("/api/v1/devices/tb-1").await.json()["active_action"]["state"],
        "INITIATED"
    );

    device_call(
        &app,
        Method::POST,
        &format!("/api/v1/{token}/telemetry"),
        Some(r#"{"current_fw_title":"old","current_fw_version":"0.9","fw_state":"DOWNLOADING"}"#),
    )
    .await;
    let mut received = Vec::new();
    for index in 0.. {
        let answer = device_call(
            &app,
            Method::GET,
            &format!(
                "/api/v1/{token}/firmware?title=myFirmware&version=1.2.3&size=16384&chunk={index}"
            ),
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
        if answer.body.is_empty() {
            break;
        }
        received.extend_from_slice(&answer.body);
    }
    assert_eq!(received, data);
    let whole = device_call(
        &app,
        Method::GET,
        &format!("/api/v1/{token}/firmware?title=myFirmware&version=1.2.3"),
        None,
    )
    .await;
    assert_eq!(whole.body.as_ref(), data.as_slice());
    for state in ["DOWNLOADED", "VERIFIED", "UPDATING"] {
        let body = json!({"fw_state": state}).to_string();
        assert_eq!(
            device_call(
                &app,
                Method::POST,
                &format!("/api/v1/{token}/telemetry"),
                Some(&body)
            )
            .await
            .status,
            StatusCode::OK
        );
    }
    let done = r#"[{"ts": 1700000000000, "values": {"current_fw_title":"myFirmware","current_fw_version":"1.2.3","fw_state":"UPDATED"}}]"#;
    device_call(
        &app,
        Method::POST,
        &format!("/api/v1/{token}/telemetry"),
        Some(done),
    )
    .await;
    let device = app.get("/api/v1/devices/tb-1").await.json();
    assert_eq!(
        device["firmware"],
        json!({"title": "myFirmware", "version": "1.2.3"})
    );
    assert!(device["active_action"].is_null());
    let history = app.get("/api/v1/devices/tb-1/history").await.json();
    let states: Vec<&str> = history[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "QUEUED",
            "INITIATED",
            "DOWNLOADING",
            "DOWNLOADED",
            "VERIFIED",
            "UPDATING",
            "UPDATED"
        ]
    );
}

#[tokio::test]
async fn bad_device_input_gets_clear_errors() {
    let app = TestApp::new().await;
    let token = app.device("tb-1").await;
    app.upload("title=fw&version=1", b"tiny").await;
    app.post(
        "/api/v1/assignments",
        json!({"device": "tb-1", "artifact": "fw@1"}),
    )
    .await;
    let t = token.as_str();
    let cases: Vec<(Method, String, Option<&str>, StatusCode, &str)> = vec![
        (
            Method::GET,
            "/api/v1/wrongtoken/attributes".into(),
            None,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            Method::POST,
            "/api/v1/wrongtoken/telemetry".into(),
            Some("{}"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            Method::POST,
            format!("/api/v1/{t}/telemetry"),
            Some("not json"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            Method::POST,
            format!("/api/v1/{t}/telemetry"),
            Some("42"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            Method::POST,
            format!("/api/v1/{t}/telemetry"),
            Some(r#"{"fw_state":"EXPLODED"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            format!("/api/v1/{t}/firmware?title=other&version=1"),
            None,
            StatusCode::NOT_FOUND,
            "artifact_not_found",
        ),
        (
            Method::GET,
            format!("/api/v1/{t}/software"),
            None,
            StatusCode::NOT_FOUND,
            "artifact_not_found",
        ),
        (
            Method::GET,
            format!("/api/v1/{t}/firmware?size=abc"),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let answer = device_call(&app, method.clone(), &path, body).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (status, code),
            "{method} {path}"
        );
    }
    for query in [
        "size=2&chunk=2",
        "size=4&chunk=18446744073709551615",
        "size=18446744073709551615&chunk=2",
    ] {
        let answer = device_call(
            &app,
            Method::GET,
            &format!("/api/v1/{t}/firmware?{query}"),
            None,
        )
        .await;
        assert_eq!(
            (answer.status, answer.body.len()),
            (StatusCode::OK, 0),
            "{query}: past the end is empty"
        );
    }
    let last = device_call(
        &app,
        Method::GET,
        &format!("/api/v1/{t}/firmware?size=3&chunk=1"),
        None,
    )
    .await;
    assert_eq!(last.body.as_ref(), b"y");
    let huge = device_call(
        &app,
        Method::GET,
        &format!("/api/v1/{t}/firmware?size=18446744073709551615&chunk=0"),
        None,
    )
    .await;
    assert_eq!(huge.body.as_ref(), b"tiny");
    // Client attributes come back as the device set them.
    device_call(
        &app,
        Method::POST,
        &format!("/api/v1/{t}/attributes"),
        Some(r#"{"model":"X1","batch":7}"#),
    )
    .await;
    let client = device_call(
        &app,
        Method::GET,
        &format!("/api/v1/{t}/attributes?clientKeys=model,batch"),
        None,
    )
    .await
    .json();
    assert_eq!(client, json!({"client": {"model": "X1", "batch": "7"}}));
}
