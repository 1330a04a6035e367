//! The hawkBit DDI API: a real DDI client (the `hawkbit` crate) through a whole update, and the
//! API's rules one by one against `shared/protocols/hawkbit-ddi.md`.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Answer, TestApp};

/// A DDI request with `Authorization: <auth>`.
async fn ddi(app: &TestApp, method: Method, path: &str, auth: &str, body: Option<Value>) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if !auth.is_empty() {
        request = request.header("authorization", auth);
    }
    request = request.header("host", "device-facing.example:8080");
    let body = match body {
        Some(json) => Body::from(json.to_string()),
        None => Body::empty(),
    };
    app.send(request.body(body).unwrap()).await
}

fn href(answer: &Value, link: &str) -> Option<String> {
    answer["_links"][link]["href"].as_str().map(str::to_owned)
}

/// Strips the scheme and host of an absolute link.
fn path_of(url: &str) -> String {
    let after_scheme = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    after_scheme[after_scheme.find('/').unwrap_or(0)..].to_owned()
}

#[tokio::test]
async fn the_hawkbit_crate_updates_a_device_end_to_end() {
    let app = TestApp::new().await;
    let token = app.device("dev01").await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let uploaded = app
        .upload("title=demo-fw&version=1.0.1&filename=fw.bin", &data)
        .await;
    assert_eq!(uploaded.status, StatusCode::CREATED);
    app.post(
        "/api/v1/assignments",
        json!({"device": "dev01", "artifact": "demo-fw@1.0.1"}),
    )
    .await;
    let url = app.listen().await;

    let client = hawkbit::ddi::Client::new(
        &url,
        "DEFAULT",
        "dev01",
        hawkbit::ddi::ClientAuthorization::TargetToken(token),
        None,
        None,
        None,
    )
    .unwrap();
    let reply = updraft_test_support::within(client.poll()).await.unwrap();
    assert_eq!(
        reply.polling_sleep().unwrap(),
        std::time::Duration::from_secs(300)
    );
    let config = reply
        .config_data_request()
        .expect("first contact asks for config data");
    #[derive(serde::Serialize)]
    struct Config {
        #[serde(rename = "hwRevision")]
        hw_revision: String,
    }
    config
        .upload(
            hawkbit::ddi::Execution::Closed,
            hawkbit::ddi::Finished::Success,
            None,
            Config {
                hw_revision: "2".into(),
            },
            vec![],
        )
        .await
        .unwrap();
    let update = reply
        .update()
        .expect("an assigned artifact gives a deploymentBase link")
        .fetch()
        .await
        .unwrap();
    update
        .send_feedback(
            hawkbit::ddi::Execution::Proceeding,
            hawkbit::ddi::Finished::None,
            vec!["Downloading"],
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let artifacts = update.download(dir.path()).await.unwrap();
    assert_eq!(artifacts.len(), 1);
    for artifact in &artifacts {
        artifact.check_sha256().await.unwrap();
    }
    assert!(
        artifacts[0].file().ends_with("demo-fw/fw.bin"),
        "{:?}",
        artifacts[0].file()
    );
    assert_eq!(std::fs::read(artifacts[0].file()).unwrap(), data);
    update
        .send_feedback(
            hawkbit::ddi::Execution::Closed,
            hawkbit::ddi::Finished::Success,
            vec!["Installed"],
        )
        .await
        .unwrap();

    let shown = app.get("/api/v1/devices/dev01").await.json();
    assert_eq!(
        shown["firmware"],
        json!({"title": "demo-fw", "version": "1.0.1"})
    );
    assert_eq!(shown["attributes"]["hwRevision"], "2");
    assert!(shown["active_action"].is_null());
    let history = app.get("/api/v1/devices/dev01/history").await.json();
    let states: Vec<&str> = history[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["QUEUED", "INITIATED", "DOWNLOADING", "UPDATED"]);
    assert!(
        history[0]["history"].as_array().unwrap()[1..]
            .iter()
            .all(|e| e["source"] == "ddi")
    );
    // Nothing more to do; the next poll points at what is installed.
    let reply = updraft_test_support::within(client.poll()).await.unwrap();
    assert!(reply.update().is_none());
}

#[tokio::test]
async fn only_the_right_token_for_the_right_controller_and_tenant_gets_in() {
    let app = TestApp::new().await;
    let token = app.device("dev01").await;
    let other = app.device("dev02").await;
    let target = format!("TargetToken {token}");
    for tenant in ["default", "DEFAULT", "Default"] {
        let answer = ddi(
            &app,
            Method::GET,
            &format!("/{tenant}/controller/v1/dev01"),
            &target,
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{tenant}");
        assert_eq!(
            answer.headers["content-type"],
            "application/hal+json;charset=UTF-8"
        );
    }
    for (path, auth) in [
        ("/default/controller/v1/dev01", String::new()),
        (
            "/default/controller/v1/dev01",
            "TargetToken wrong".to_owned(),
        ),
        (
            "/default/controller/v1/dev01",
            format!("TargetToken {other}"),
        ),
        (
            "/default/controller/v1/dev01",
            format!("Bearer {}", app.admin),
        ),
        (
            "/default/controller/v1/dev01",
            format!("GatewayToken {token}"),
        ),
        ("/nosuch/controller/v1/dev01", target.clone()),
        ("/default/controller/v1/nosuch", target.clone()),
        (
            "/default/controller/v1/dev01/deploymentBase/1",
            "TargetToken wrong".to_owned(),
        ),
        (
            "/default/controller/v1/dev01/softwaremodules/1/artifacts/x.bin",
            String::new(),
        ),
    ] {
        let answer = ddi(&app, Method::GET, path, &auth, None).await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{path} with {auth:?}"
        );
        assert_eq!(answer.code(), "unauthorized");
        assert!(
            !String::from_utf8_lossy(&answer.body).contains("dev0"),
            "nothing leaks"
        );
    }
}

#[tokio::test]
async fn gateway_tokens_act_for_the_tenant_and_register_when_allowed() {
    let app = TestApp::new().await;
    let rotated = app.post("/api/v1/tenant/gateway-token", json!({})).await;
    assert_eq!(rotated.status, StatusCode::CREATED);
    let gateway = format!("GatewayToken {}", rotated.json()["token"].as_str().unwrap());
    let unknown = ddi(
        &app,
        Method::GET,
        "/DEFAULT/controller/v1/new-node",
        &gateway,
        None,
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.code().as_str()),
        (StatusCode::NOT_FOUND, "device_not_found")
    );
    let settings = app
        .call(
            Method::PUT,
            "/api/v1/tenant/settings",
            &app.admin.clone(),
            Some(json!({"auto_register": true, "poll_interval_secs": 42})),
        )
        .await;
    assert_eq!(settings.json()["poll_interval_secs"], 42);
    let polled = ddi(
        &app,
        Method::GET,
        "/DEFAULT/controller/v1/new-node",
        &gateway,
        None,
    )
    .await;
    assert_eq!(polled.status, StatusCode::OK);
    assert_eq!(polled.json()["config"]["polling"]["sleep"], "00:00:42");
    assert_eq!(
        app.get("/api/v1/devices/new-node").await.status,
        StatusCode::OK
    );
    // A rotated token replaces the old one.
    app.post("/api/v1/tenant/gateway-token", json!({})).await;
    let stale = ddi(
        &app,
        Method::GET,
        "/DEFAULT/controller/v1/new-node",
        &gateway,
        None,
    )
    .await;
    assert_eq!(stale.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn deployment_feedback_and_downloads_follow_the_reference() {
    let app = TestApp::new().await;
    let auth = format!("TargetToken {}", app.device("dev01").await);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    let artifact = app
        .upload(
            "title=demo-fw&version=1.0.1&filename=my%20fw%20%231.bin",
            &data,
        )
        .await
        .json();
    app.post(
        "/api/v1/assignments",
        json!({"device": "dev01", "artifact": "demo-fw@1.0.1"}),
    )
    .await;
    let poll = ddi(
        &app,
        Method::GET,
        "/DEFAULT/controller/v1/dev01",
        &auth,
        None,
    )
    .await
    .json();
    let deployment_url = href(&poll, "deploymentBase").unwrap();
    assert!(deployment_url.starts_with(
        "http://device-facing.example:8080/DEFAULT/controller/v1/dev01/deploymentBase/"
    ));
    assert!(deployment_url.contains("?c="));
    assert!(href(&poll, "configData").is_some());
    let shown = app.get("/api/v1/devices/dev01").await.json();
    assert_eq!(
        shown["active_action"]["state"], "INITIATED",
        "a poll that hands out the action notifies"
    );

    let deployment = ddi(
        &app,
        Method::GET,
        &format!("{}&actionHistory=5", path_of(&deployment_url)),
        &auth,
        None,
    )
    .await
    .json();
    let action_id = deployment["id"].as_str().unwrap().to_owned();
    assert_eq!(deployment["deployment"]["download"], "forced");
    assert_eq!(deployment["deployment"]["update"], "forced");
    let chunk = &deployment["deployment"]["chunks"][0];
    assert_eq!(
        (
            chunk["part"].as_str(),
            chunk["name"].as_str(),
            chunk["version"].as_str()
        ),
        (Some("os"), Some("demo-fw"), Some("1.0.1"))
    );
    let file = &chunk["artifacts"][0];
    assert_eq!(file["filename"], "my fw #1.bin");
    assert_eq!(file["size"], data.len());
    assert_eq!(file["hashes"]["sha1"], artifact["checksums"]["sha1"]);
    assert_eq!(file["hashes"]["md5"], artifact["checksums"]["md5"]);
    assert_eq!(file["hashes"]["sha256"], artifact["checksums"]["sha256"]);
    let download = file["_links"]["download-http"]["href"].as_str().unwrap();
    assert!(
        download.ends_with("/artifacts/my%20fw%20%231.bin"),
        "the file name is one percent-encoded segment: {download}"
    );
    assert_eq!(
        file["_links"]["download"]["href"].as_str().unwrap(),
        download,
        "plain HTTP in, plain HTTP links out"
    );
    assert_eq!(
        file["_links"]["md5sum-http"]["href"].as_str().unwrap(),
        format!("{download}.MD5SUM")
    );
    assert_eq!(deployment["actionHistory"]["status"], "RUNNING");

    // Downloads: whole, HEAD, ranges, several ranges, past the end, MD5SUM.
    let path = path_of(download);
    let get = |range: Option<&'static str>, method: Method| {
        let mut request = Request::builder()
            .method(method)
            .uri(path.clone())
            .header("authorization", auth.clone());
        if let Some(range) = range {
            request = request.header("range", range);
        }
        app.send(request.body(Body::empty()).unwrap())
    };
    let whole = get(None, Method::GET).await;
    assert_eq!(
        (whole.status, whole.body.as_ref()),
        (StatusCode::OK, data.as_slice())
    );
    assert!(whole.headers.contains_key("last-modified"));
    let head = get(None, Method::HEAD).await;
    assert_eq!((head.status, head.body.len()), (StatusCode::OK, 0));
    assert_eq!(head.headers["content-length"], data.len().to_string());
    let part = get(Some("bytes=100-199"), Method::GET).await;
    assert_eq!(
        (part.status, part.body.as_ref()),
        (StatusCode::PARTIAL_CONTENT, &data[100..200])
    );
    let several = get(Some("bytes=0-1,9998-"), Method::GET).await;
    assert_eq!(several.status, StatusCode::PARTIAL_CONTENT);
    let content_type = several.headers["content-type"].to_str().unwrap().to_owned();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap();
    let text = several.body.to_vec();
    assert_eq!(several.headers["content-length"], text.len().to_string());
    let mut expected = Vec::new();
    for (start, end) in [(0usize, 1usize), (9998, 9999)] {
        expected.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {start}-{end}/10000\r\n\r\n").as_bytes(),
        );
        expected.extend_from_slice(&data[start..=end]);
    }
    expected.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert_eq!(text, expected);
    let beyond = get(Some("bytes=10000-"), Method::GET).await;
    assert_eq!(beyond.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let md5 = ddi(&app, Method::GET, &format!("{path}.MD5SUM"), &auth, None).await;
    assert_eq!(
        String::from_utf8(md5.body.to_vec()).unwrap(),
        format!(
            "{}  my fw #1.bin\n",
            artifact["checksums"]["md5"].as_str().unwrap()
        )
    );

    // Feedback: id as number or string, progress, then closed; afterwards the action is gone.
    let feedback = format!("/DEFAULT/controller/v1/dev01/deploymentBase/{action_id}/feedback");
    let steps = [
        json!({"id": action_id.parse::<i64>().unwrap(), "status": {"execution": "proceeding", "result": {"finished": "none", "progress": {"cnt": 2, "of": 5}}, "details": ["Downloading 40%"]}}),
        json!({"id": action_id, "time": "20261123T034955", "status": {"execution": "downloaded", "result": {"finished": "none"}}}),
        json!({"id": action_id, "status": {"execution": "closed", "result": {"finished": "success"}}}),
    ];
    for step in steps {
        let answer = ddi(&app, Method::POST, &feedback, &auth, Some(step)).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{:?}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    let late = ddi(&app, Method::POST, &feedback, &auth, Some(json!({"id": action_id, "status": {"execution": "proceeding", "result": {"finished": "none"}}}))).await;
    assert_eq!(
        (late.status, late.code().as_str()),
        (StatusCode::GONE, "action_closed")
    );
    let bad = ddi(
        &app,
        Method::POST,
        &feedback,
        &auth,
        Some(json!({"status": {}})),
    )
    .await;
    assert_eq!(
        (bad.status, bad.code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    let history = app.get("/api/v1/devices/dev01/history").await.json();
    let progress = history[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["to"] == "DOWNLOADING")
        .unwrap()
        .clone();
    assert_eq!(progress["progress"], json!({"done": 2, "total": 5}));
    let poll = ddi(
        &app,
        Method::GET,
        "/DEFAULT/controller/v1/dev01",
        &auth,
        None,
    )
    .await
    .json();
    assert!(href(&poll, "deploymentBase").is_none());
    let installed = href(&poll, "installedBase").unwrap();
    let installed = ddi(&app, Method::GET, &path_of(&installed), &auth, None).await;
    assert_eq!(installed.status, StatusCode::OK);
    assert_eq!(
        installed.json()["deployment"]["chunks"][0]["version"],
        "1.0.1"
    );

    // Another device's token cannot fetch this artifact.
    let stranger = format!("TargetToken {}", app.device("dev02").await);
    let denied = ddi(
        &app,
        Method::GET,
        &path.replace("dev01", "dev02"),
        &stranger,
        None,
    )
    .await;
    assert_eq!(denied.status, StatusCode::NOT_FOUND);

    // configData with hawkBit's modes.
    let config = "/DEFAULT/controller/v1/dev01/configData";
    ddi(
        &app,
        Method::PUT,
        config,
        &auth,
        Some(json!({"mode": null, "data": {"hwRevision": "2", "serial": 17}})),
    )
    .await;
    ddi(
        &app,
        Method::PUT,
        config,
        &auth,
        Some(json!({"mode": "remove", "data": {"serial": ""}})),
    )
    .await;
    let shown = app.get("/api/v1/devices/dev01").await.json();
    assert_eq!(shown["attributes"], json!({"hwRevision": "2"}));
}

#[tokio::test]
async fn a_superseded_action_is_canceled_through_cancel_action() {
    let app = TestApp::new().await;
    let auth = format!("TargetToken {}", app.device("dev01").await);
    app.upload("title=fw&version=1", b"one").await;
    app.upload("title=fw&version=2", b"two").await;
    app.post(
        "/api/v1/assignments",
        json!({"device": "dev01", "artifact": "fw@1"}),
    )
    .await;
    let first = href(
        &ddi(
            &app,
            Method::GET,
            "/DEFAULT/controller/v1/dev01",
            &auth,
            None,
        )
        .await
        .json(),
        "deploymentBase",
    )
    .unwrap();
    app.post(
        "/api/v1/assignments",
        json!({"device": "dev01", "artifact": "fw@2"}),
    )
    .await;
    let poll = ddi(
        &app,
        Method::GET,
        "/DEFAULT/controller/v1/dev01",
        &auth,
        None,
    )
    .await
    .json();
    assert!(
        href(&poll, "deploymentBase").is_none(),
        "the cancel comes first"
    );
    let cancel_url = href(&poll, "cancelAction").unwrap();
    let cancel = ddi(&app, Method::GET, &path_of(&cancel_url), &auth, None)
        .await
        .json();
    let stop_id = cancel["cancelAction"]["stopId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(first.contains(&format!("/deploymentBase/{stop_id}?")));
    let answer = ddi(
        &app,
        Method::POST,
        &format!("{}/feedback", path_of(&cancel_url)),
        &auth,
        Some(json!({"id": stop_id, "status": {"execution": "closed", "result": {"finished": "success"}}})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let poll = ddi(
        &app,
        Method::GET,
        "/DEFAULT/controller/v1/dev01",
        &auth,
        None,
    )
    .await
    .json();
    assert!(href(&poll, "cancelAction").is_none());
    let next = href(&poll, "deploymentBase").unwrap();
    let deployment = ddi(&app, Method::GET, &path_of(&next), &auth, None)
        .await
        .json();
    assert_eq!(deployment["deployment"]["chunks"][0]["version"], "2");
}

/// SWUpdate and others may send feedback with `Transfer-Encoding: chunked`: over a real socket.
#[tokio::test]
async fn chunked_feedback_bodies_are_read() {
    let app = TestApp::new().await;
    let token = app.device("dev01").await;
    app.upload("title=fw&version=1", b"one").await;
    app.post(
        "/api/v1/assignments",
        json!({"device": "dev01", "artifact": "fw@1"}),
    )
    .await;
    let action = app.get("/api/v1/devices/dev01").await.json()["active_action"]["id"]
        .as_i64()
        .unwrap();
    let url = app.listen().await;
    let addr = url.trim_start_matches("http://");
    let body = "{\n  \"id\" : \"1\",\n  \"status\" : {\n    \"execution\" : \"closed\",\n    \"result\" : { \"finished\" : \"success\" }\n  }\n}";
    let (first, second) = body.split_at(20);
    let request = format!(
        "POST /DEFAULT/controller/v1/dev01/deploymentBase/{action}/feedback HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: TargetToken {token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let shown = app.get("/api/v1/devices/dev01").await.json();
    assert_eq!(shown["firmware"]["version"], "1");
}

/// `/metrics` counts the check-in reads the in-memory views answered: a device polling with
/// nothing to do is answered from memory once it is known (on SQLite: there the views are
/// used from the start).
#[tokio::test]
async fn idle_polls_are_counted_as_view_hits_in_the_metrics() {
    let app = TestApp::new().await;
    let token = app.device("dev01").await;
    let lookups = |text: &str, result: &str| -> u64 {
        let prefix = format!("updraft_store_view_lookups_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
            .parse()
            .unwrap()
    };
    let metrics = || async {
        let answer = app.call(Method::GET, "/metrics", "", None).await;
        String::from_utf8(answer.body.to_vec()).unwrap()
    };
    let auth = format!("TargetToken {token}");
    let path = "/DEFAULT/controller/v1/dev01";
    // The first poll reads the database and writes the first sighting, which the second reads.
    let mut counts = Vec::new();
    for _ in 0..5 {
        let poll = ddi(&app, Method::GET, path, &auth, None).await;
        assert_eq!(poll.status, StatusCode::OK);
        let text = metrics().await;
        counts.push((lookups(&text, "hit"), lookups(&text, "miss")));
    }
    let (before, after) = (counts[1], counts[4]);
    if std::env::var("UPDRAFT_TEST_STORE").as_deref() == Ok("postgres") {
        // The views are used once the change feed listens, which this test does not await.
        return;
    }
    assert!(
        after.0 >= before.0 + 3,
        "(hits, misses) after each poll: {counts:?}"
    );
    assert_eq!(
        after.1, before.1,
        "(hits, misses) after each poll: {counts:?}"
    );
}
