//! The fleet endpoints, authentication, tenant isolation and the error contract.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::TestApp;

/// A key of a new tenant `name` with `role`, made by the server admin.
async fn tenant_key(app: &TestApp, name: &str, role: &str) -> String {
    let created = app.post("/api/v1/tenants", json!({"name": name})).await;
    assert!(created.status == StatusCode::CREATED || created.status == StatusCode::CONFLICT);
    let key = app
        .post(
            &format!("/api/v1/tenants/{name}/api-keys"),
            json!({"name": format!("{name}-{role}"), "role": role}),
        )
        .await;
    assert_eq!(key.status, StatusCode::CREATED, "{:?}", key.json());
    key.json()["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_device_gets_its_token_once_and_shows_what_it_should_run() {
    let app = TestApp::new().await;
    app.post(
        "/api/v1/profiles",
        json!({"name": "esp32", "description": "ESP32 boards"}),
    )
    .await;
    app.post("/api/v1/projects", json!({"name": "lotus"})).await;
    let created = app
        .post(
            "/api/v1/devices",
            json!({"id": "dev-1", "profile": "esp32", "project": "lotus", "tags": ["lab"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let device = created.json();
    let token = device["token"].as_str().unwrap();
    assert_eq!(token.len(), 32);
    let found = app
        .state
        .store
        .device_by_credential(
            updraft_store::CredentialKind::AccessToken,
            &updraft_server::kernel::secret::hash(token),
        )
        .await
        .unwrap();
    assert_eq!(found.unwrap().id.as_str(), "dev-1");
    let listed = app.get("/api/v1/devices").await.json();
    assert_eq!(listed["total"], 1);
    assert!(
        listed["items"][0].get("token").is_none(),
        "the token is shown once only"
    );

    app.upload("title=fw&version=1.0&profiles=esp32", b"v1")
        .await;
    let assigned = app
        .post(
            "/api/v1/assignments",
            json!({"profile": "esp32", "project": "lotus", "artifact": "fw@1.0"}),
        )
        .await;
    assert_eq!(
        assigned.status,
        StatusCode::CREATED,
        "{:?}",
        assigned.json()
    );
    assert_eq!(assigned.json()["level"], "project_profile");
    let shown = app.get("/api/v1/devices/dev-1").await.json();
    assert_eq!(shown["desired_firmware"]["title"], "fw");
    assert_eq!(shown["desired_firmware"]["version"], "1.0");
    assert_eq!(shown["desired_firmware"]["level"], "project_profile");
    assert_eq!(shown["active_action"]["state"], "QUEUED");
    assert_eq!(shown["tags"], json!(["lab"]));
    let history = app.get("/api/v1/devices/dev-1/history").await.json();
    assert_eq!(history[0]["history"][0]["to"], "QUEUED");
    assert!(
        history[0]["history"][0]["source"]
            .as_str()
            .unwrap()
            .starts_with("user:admin")
    );
    let assignments = app.get("/api/v1/assignments").await.json();
    assert_eq!(assignments[0]["project"], "lotus");
    assert_eq!(assignments[0]["profile"], "esp32");
    let status = app.get("/api/v1/status").await.json();
    assert_eq!(status["devices"], 1);
    assert_eq!(status["actions"]["QUEUED"], 1);
}

/// (method, path, body, expected status, expected code)
type Case = (
    Method,
    &'static str,
    Option<Value>,
    StatusCode,
    &'static str,
);

async fn check(app: &TestApp, token: &str, cases: &[Case]) {
    for (method, path, body, status, code) in cases {
        let answer = app.call(method.clone(), path, token, body.clone()).await;
        assert_eq!(
            answer.status,
            *status,
            "{method} {path}: {:?}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.code(), *code, "{method} {path}");
    }
}

#[tokio::test]
async fn bad_requests_get_a_status_and_a_stable_code() {
    let app = TestApp::new().await;
    app.post("/api/v1/devices", json!({"id": "d1"})).await;
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/api/v1/profiles",
            Some(json!({"nam": "x"})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            Method::POST,
            "/api/v1/profiles",
            Some(json!({"name": "bad name"})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/api/v1/devices",
            Some(json!({"id": "d2", "profile": "nosuch"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_profile",
        ),
        (
            Method::POST,
            "/api/v1/devices",
            Some(json!({"id": "d2", "project": "nosuch"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_project",
        ),
        (
            Method::POST,
            "/api/v1/devices",
            Some(json!({"id": "d1"})),
            StatusCode::CONFLICT,
            "device_exists",
        ),
        (
            Method::POST,
            "/api/v1/devices",
            Some(json!({"id": "d3", "token": "short"})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/api/v1/assignments",
            Some(json!({"device": "d1", "artifact": "nosuch@1"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_artifact",
        ),
        (
            Method::POST,
            "/api/v1/assignments",
            Some(json!({"artifact": "nosuch"})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/api/v1/devices/nosuch",
            None,
            StatusCode::NOT_FOUND,
            "device_not_found",
        ),
        (
            Method::GET,
            "/api/v1/devices/..%2F..",
            None,
            StatusCode::NOT_FOUND,
            "device_not_found",
        ),
        (
            Method::GET,
            "/api/v1/artifacts/12345",
            None,
            StatusCode::NOT_FOUND,
            "artifact_not_found",
        ),
        (
            Method::GET,
            "/api/v1/artifacts/notanumber",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/api/v1/devices?limit=abc",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/api/v1/nosuch",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::DELETE,
            "/api/v1/assignments?device=d1",
            None,
            StatusCode::NOT_FOUND,
            "assignment_not_found",
        ),
        (
            Method::DELETE,
            "/api/v1/assignments",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    check(&app, &app.admin.clone(), &cases).await;
    // A JSON endpoint given something else.
    let request = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/v1/profiles")
        .header("authorization", format!("Bearer {}", app.admin))
        .header("content-type", "text/plain")
        .body(axum::body::Body::from("name=x"))
        .unwrap();
    let answer = app.send(request).await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let malformed = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/v1/profiles")
        .header("authorization", format!("Bearer {}", app.admin))
        .header("content-type", "application/json")
        .body(axum::body::Body::from("{\"name\": "))
        .unwrap();
    let answer = app.send(malformed).await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
}

#[tokio::test]
async fn keys_are_required_and_roles_limit_what_they_do() {
    let app = TestApp::new().await;
    let viewer = tenant_key(&app, "default", "viewer").await;
    let maintainer = tenant_key(&app, "default", "maintainer").await;
    check(
        &app,
        "",
        &[(
            Method::GET,
            "/api/v1/devices",
            None,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )],
    )
    .await;
    check(
        &app,
        "updraft_wrong",
        &[(
            Method::GET,
            "/api/v1/devices",
            None,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )],
    )
    .await;
    check(
        &app,
        &viewer,
        &[
            (
                Method::POST,
                "/api/v1/devices",
                Some(json!({"id": "x"})),
                StatusCode::FORBIDDEN,
                "forbidden",
            ),
            (
                Method::POST,
                "/api/v1/profiles",
                Some(json!({"name": "x"})),
                StatusCode::FORBIDDEN,
                "forbidden",
            ),
            (
                Method::POST,
                "/api/v1/artifacts?title=a&version=1",
                None,
                StatusCode::FORBIDDEN,
                "forbidden",
            ),
            (
                Method::GET,
                "/api/v1/api-keys",
                None,
                StatusCode::FORBIDDEN,
                "forbidden",
            ),
            (
                Method::GET,
                "/api/v1/tenants",
                None,
                StatusCode::FORBIDDEN,
                "forbidden",
            ),
        ],
    )
    .await;
    assert_eq!(
        app.call(Method::GET, "/api/v1/devices", &viewer, None)
            .await
            .status,
        StatusCode::OK
    );
    let created = app
        .call(
            Method::POST,
            "/api/v1/devices",
            &maintainer,
            Some(json!({"id": "m1"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    check(
        &app,
        &maintainer,
        &[
            (
                Method::DELETE,
                "/api/v1/devices/m1",
                None,
                StatusCode::FORBIDDEN,
                "forbidden",
            ),
            (
                Method::POST,
                "/api/v1/api-keys",
                Some(json!({"name": "k", "role": "admin"})),
                StatusCode::FORBIDDEN,
                "forbidden",
            ),
        ],
    )
    .await;
    // Keys are stored hashed: the listing never shows one.
    let keys = app.get("/api/v1/api-keys").await;
    assert!(!String::from_utf8_lossy(&keys.body).contains(&viewer));
    assert_eq!(keys.json().as_array().unwrap().len(), 3);

    // A tenant admin of the default tenant cannot delete the server admin key.
    let tenant_admin = app
        .post(
            "/api/v1/api-keys",
            json!({"name": "default-admin", "role": "admin"}),
        )
        .await
        .json();
    let tenant_admin = tenant_admin["token"].as_str().unwrap();
    let server_admin = keys
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["server_admin"] == true)
        .map(|k| k["id"].as_i64().unwrap())
        .unwrap();
    let refused = app
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{server_admin}"),
            tenant_admin,
            None,
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(app.get("/api/v1/api-keys").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_key_of_another_tenant_finds_nothing() {
    let app = TestApp::new().await;
    let artifact = app
        .upload("title=fw&version=1", b"default's firmware")
        .await
        .json();
    app.post("/api/v1/devices", json!({"id": "d1"})).await;
    app.post("/api/v1/profiles", json!({"name": "p"})).await;
    let other = tenant_key(&app, "other", "admin").await;
    let id = artifact["id"].as_i64().unwrap();
    for (method, path) in [
        (Method::GET, format!("/api/v1/artifacts/{id}")),
        (Method::GET, format!("/api/v1/artifacts/{id}/download")),
        (Method::DELETE, format!("/api/v1/artifacts/{id}")),
        (Method::GET, "/api/v1/devices/d1".to_owned()),
        (Method::GET, "/api/v1/devices/d1/history".to_owned()),
        (Method::DELETE, "/api/v1/devices/d1".to_owned()),
    ] {
        let answer = app.call(method.clone(), &path, &other, None).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    let assign = app
        .call(
            Method::POST,
            "/api/v1/assignments",
            &other,
            Some(json!({"device": "d1", "artifact_id": id})),
        )
        .await;
    assert_eq!(
        (assign.status, assign.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_artifact")
    );
    let listed = app
        .call(Method::GET, "/api/v1/artifacts", &other, None)
        .await
        .json();
    assert_eq!(listed["total"], 0);
    let profiles = app
        .call(Method::GET, "/api/v1/profiles", &other, None)
        .await
        .json();
    assert_eq!(profiles, json!([]));
    let status = app
        .call(Method::GET, "/api/v1/status", &other, None)
        .await
        .json();
    assert_eq!(
        (status["tenant"].as_str(), status["devices"].as_u64()),
        (Some("other"), Some(0))
    );
    // Its own device of the same id is its own.
    let mine = app
        .call(
            Method::POST,
            "/api/v1/devices",
            &other,
            Some(json!({"id": "d1"})),
        )
        .await;
    assert_eq!(mine.status, StatusCode::CREATED);
    // And a tenant admin is not a server admin.
    let tenants = app.call(Method::GET, "/api/v1/tenants", &other, None).await;
    assert_eq!(tenants.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let app = TestApp::new().await;
    let doc = app
        .call(Method::GET, "/api/v1/openapi.json", "", None)
        .await
        .json();
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/api/v1/tenants", &["get", "post"][..]),
        ("/api/v1/tenants/{tenant}/api-keys", &["post"]),
        ("/api/v1/tenant", &["get"]),
        ("/api/v1/tenant/settings", &["put"]),
        ("/api/v1/tenant/gateway-token", &["post", "delete"]),
        ("/api/v1/api-keys", &["get", "post"]),
        ("/api/v1/api-keys/{id}", &["delete"]),
        ("/api/v1/projects", &["get", "post"]),
        ("/api/v1/profiles", &["get", "post"]),
        ("/api/v1/profiles/{name}", &["put"]),
        ("/api/v1/devices", &["get", "post"]),
        ("/api/v1/devices/{id}", &["get", "delete"]),
        ("/api/v1/devices/{id}/history", &["get"]),
        ("/api/v1/devices/{id}/lwm2m", &["post"]),
        ("/api/v1/assignments", &["get", "post", "delete"]),
        ("/api/v1/status", &["get"]),
        ("/api/v1/artifacts", &["get", "post"]),
        ("/api/v1/artifacts/{id}", &["get", "delete"]),
        ("/api/v1/artifacts/{id}/download", &["get"]),
        ("/api/v1/frugal/push", &["post"]),
        ("/api/v1/frugal/promote", &["post"]),
        ("/api/v1/frugal/keys", &["get", "post"]),
        ("/api/v1/frugal/keys/{id}", &["delete"]),
        ("/api/v1/devices/{id}/frugal-key", &["post"]),
        ("/api/v1/rollouts", &["get", "post"]),
        ("/api/v1/rollouts/{name}", &["get"]),
        ("/api/v1/rollouts/{name}/{command}", &["post"]),
        ("/api/v1/rules", &["get", "post"]),
        ("/api/v1/rules/{name}", &["delete"]),
    ];
    assert_eq!(
        paths.len(),
        expected.len(),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    for (path, methods) in expected {
        for method in methods {
            assert!(
                paths[path].get(*method).is_some(),
                "{method} {path} missing from the OpenAPI document"
            );
        }
    }
    assert!(doc["components"]["schemas"].get("ErrorBody").is_some());
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = TestApp::new().await;
    assert_eq!(
        app.call(Method::GET, "/healthz", "", None)
            .await
            .body
            .as_ref(),
        b"ok"
    );
    assert_eq!(
        app.call(Method::GET, "/readyz", "", None)
            .await
            .body
            .as_ref(),
        b"ready"
    );
    app.get("/api/v1/devices").await;
    let metrics = app.call(Method::GET, "/metrics", "", None).await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        text.contains(
            "updraft_http_requests_total{method=\"GET\",route=\"/api/v1/devices\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("# TYPE updraft_upload_bytes_total counter"));
}

/// The data directory, the database and the admin key are the owner's only, whatever the umask
/// and however the directory was made.
#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let open = parent.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mode =
        |path: std::path::PathBuf| std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    for dir in [open.clone(), parent.path().join("new/data")] {
        let config = updraft_server::server::ServerConfig {
            data_dir: dir.clone(),
            http: "127.0.0.1:0".parse().unwrap(),
            database_url: None,
            max_upload_bytes: 1024,
            public_url: None,
            mqtt: None,
            coap: None,
            mqtts: None,
            lwm2m: None,
            lwm2m_dtls: None,
            tls: None,
            notify_per_second: 1,
            limits: Default::default(),
            storage: Default::default(),
        };
        updraft_server::server::prepare(&config, "http://x".into())
            .await
            .unwrap();
        assert_eq!(mode(dir.clone()), 0o700, "{}", dir.display());
        assert_eq!(mode(dir.join("updraft.db")), 0o600);
        assert_eq!(mode(dir.join("admin.token")), 0o600);
    }
}

/// `GET /api/v1/devices?filter=`: the filter language over a fleet larger than one scan batch,
/// paged like the plain list; a filter that does not parse is a 400 naming its column.
#[tokio::test]
async fn devices_are_listed_by_filter() {
    let app = TestApp::new().await;
    app.post("/api/v1/profiles", json!({"name": "esp32"})).await;
    let tenant = crate::default_tenant(&app).await;
    let esp32 = app
        .state
        .store
        .profile_by_name(tenant, &updraft_core::Name::parse("esp32").unwrap())
        .await
        .unwrap()
        .unwrap()
        .key;
    for n in 0..1205u32 {
        let mut attributes = std::collections::BTreeMap::new();
        if n % 5 == 0 {
            attributes.insert("region".to_owned(), "eu".to_owned());
        }
        let device = updraft_store::NewDevice {
            id: updraft_core::DeviceId::parse(&format!("d-{n:04}")).unwrap(),
            project: None,
            profile: (n % 2 == 0).then_some(esp32),
            tags: if n % 3 == 0 {
                vec!["beta".into()]
            } else {
                vec![]
            },
            attributes,
        };
        app.state
            .store
            .create_device(tenant, &device, &[])
            .await
            .unwrap();
    }
    let list = |filter: &str, offset: u32| {
        let path = format!(
            "/api/v1/devices?filter={}&offset={offset}&limit=50",
            filter
                .replace(';', "%3B")
                .replace(',', "%2C")
                .replace('=', "%3D")
        );
        let app = &app;
        async move { app.get(&path).await }
    };
    // Even and a multiple of three: every sixth, 0 to 1200.
    let page = list("profile==esp32;tag==beta", 0).await.json();
    assert_eq!(page["total"], 201);
    assert_eq!(page["items"].as_array().unwrap().len(), 50);
    assert_eq!(page["items"][1]["id"], "d-0006");
    let last = list("profile==esp32;tag==beta", 200).await.json();
    assert_eq!(last["items"].as_array().unwrap().len(), 1);
    assert_eq!(last["items"][0]["id"], "d-1200");
    // `,` is or: multiples of five or of three.
    let either = list("attr.region==eu,tag==beta", 0).await.json();
    assert_eq!(either["total"], 241 + 402 - 81);
    let prefix = list("id==d-12*;profile!=esp32", 0).await.json();
    let ids: Vec<&str> = prefix["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["d-1201", "d-1203"]);

    let bad = list("profile==esp32;colour==red", 0).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.code(), "bad_filter");
    assert!(
        bad.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("column 16:"),
        "{}",
        bad.json()
    );
}
