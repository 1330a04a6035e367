//! The dashboard's defences over plain HTTP: sign-in and sign-out, the CSRF token on every
//! change (forms and the API calls its script makes), roles, and tenants. The browser test
//! (`dashboard_browser.rs`) drives the pages themselves.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::{Answer, TestApp};

/// A signed-in browser: its cookie and the page's CSRF token.
pub(crate) struct Browser {
    pub cookie: String,
    pub csrf: String,
}

pub(crate) async fn sign_in(app: &TestApp, key: &str) -> Browser {
    let answer = form(app, "/ui/login", None, &[("key", key)]).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{:?}", answer.body);
    let set = answer.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = get(app, "/", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    let csrf = html
        .split("<meta name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    Browser { cookie, csrf }
}

async fn get(app: &TestApp, path: &str, cookie: Option<&str>) -> Answer {
    let mut request = Request::builder().method(Method::GET).uri(path);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    app.send(request.body(Body::empty()).unwrap()).await
}

fn urlencoded(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            let enc = |s: &str| {
                s.bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect::<String>()
            };
            format!("{}={}", enc(k), enc(v))
        })
        .collect::<Vec<_>>()
        .join("&")
}

async fn form(app: &TestApp, path: &str, cookie: Option<&str>, fields: &[(&str, &str)]) -> Answer {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    app.send(request.body(Body::from(urlencoded(fields))).unwrap())
        .await
}

fn text(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

async fn key(app: &TestApp, name: &str, role: &str) -> String {
    let made = app
        .post("/api/v1/api-keys", json!({"name": name, "role": role}))
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.json());
    made.json()["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_session_opens_with_a_key_and_ends_at_sign_out() {
    let app = TestApp::new().await;
    let away = get(&app, "/", None).await;
    assert_eq!(away.status, StatusCode::SEE_OTHER);
    assert_eq!(away.headers["location"], "/ui/login");
    let wrong = form(&app, "/ui/login", None, &[("key", "not-a-key")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.headers.get("set-cookie").is_none());

    let browser = sign_in(&app, &app.admin).await;
    for page in [
        "/",
        "/ui/devices",
        "/ui/artifacts",
        "/ui/artifacts/new",
        "/ui/assignments",
        "/ui/rollouts",
    ] {
        let shown = get(&app, page, Some(&browser.cookie)).await;
        assert_eq!(shown.status, StatusCode::OK, "{page}");
        assert!(text(&shown).contains("Sign out"), "{page}");
    }
    // Signing out needs the token too; afterwards the kept cookie opens nothing.
    let refused = form(&app, "/ui/logout", Some(&browser.cookie), &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let out = form(
        &app,
        "/ui/logout",
        Some(&browser.cookie),
        &[("_csrf", &browser.csrf)],
    )
    .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let after = get(&app, "/", Some(&browser.cookie)).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    let api = get(&app, "/api/v1/status", Some(&browser.cookie)).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);

    // A deleted key ends its sessions.
    let maintainer = key(&app, "ops", "maintainer").await;
    let browser = sign_in(&app, &maintainer).await;
    let keys = app.get("/api/v1/api-keys").await.json();
    let id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "ops")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let deleted = app
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            &app.admin.clone(),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let after = get(&app, "/", Some(&browser.cookie)).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn every_change_needs_the_csrf_token_and_the_role() {
    let app = TestApp::new().await;
    let token = app.device("d1").await;
    let uploaded = app.upload("title=fw&version=1", b"firmware bytes").await;
    assert_eq!(uploaded.status, StatusCode::CREATED);
    let browser = sign_in(&app, &app.admin).await;

    // A form without the token (or with another session's) is refused and changes nothing.
    let other = sign_in(&app, &app.admin).await;
    for token in [None, Some(other.csrf.as_str())] {
        let mut fields = vec![("artifact", "fw@1")];
        if let Some(token) = token {
            fields.push(("_csrf", token));
        }
        let refused = form(
            &app,
            "/ui/devices/d1/assign",
            Some(&browser.cookie),
            &fields,
        )
        .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(text(&refused).contains("csrf_token_invalid"));
    }
    assert_eq!(app.get("/api/v1/assignments").await.json(), json!([]));

    // The API through the session cookie: reading is fine, a change needs the header.
    let status = get(&app, "/api/v1/status", Some(&browser.cookie)).await;
    assert_eq!(status.status, StatusCode::OK);
    let body = json!({"device": "d1", "artifact": "fw@1"}).to_string();
    let request = |csrf: Option<&str>| {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/assignments")
            .header("cookie", &browser.cookie)
            .header("content-type", "application/json");
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request.body(Body::from(body.clone())).unwrap()
    };
    let refused = app.send(request(None)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.code(), "csrf_token_invalid");

    // With the token the form assigns, and the device page shows it.
    let done = form(
        &app,
        "/ui/devices/d1/assign",
        Some(&browser.cookie),
        &[("artifact", "fw@1"), ("_csrf", &browser.csrf)],
    )
    .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", text(&done));
    let assignments = app.get("/api/v1/assignments").await.json();
    assert_eq!(assignments[0]["device"], "d1", "{assignments}");
    assert_eq!(
        assignments[0]["created_by"],
        Value::from(format!("user:{}", name_of(&app).await))
    );
    let page = text(&get(&app, "/ui/devices/d1", Some(&browser.cookie)).await);
    assert!(page.contains("fw@1 (from the device assignment)"), "{page}");
    // Its credentials by kind, never the secret.
    assert!(page.contains("access_token"), "{page}");
    assert!(!page.contains(&token));

    // A viewer looks, and may not change: 403 with the right token.
    let viewer_key = key(&app, "watcher", "viewer").await;
    let viewer = sign_in(&app, &viewer_key).await;
    let page = text(&get(&app, "/ui/devices/d1", Some(&viewer.cookie)).await);
    assert!(
        !page.contains("Assign to this device"),
        "no buttons for a viewer"
    );
    let refused = form(
        &app,
        "/ui/devices/d1/cancel",
        Some(&viewer.cookie),
        &[("_csrf", &viewer.csrf)],
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/api/v1/assignments")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn name_of(app: &TestApp) -> String {
    let keys = app.get("/api/v1/api-keys").await.json();
    keys.as_array()
        .unwrap()
        .iter()
        .find(|k| k["server_admin"] == true)
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .unwrap()
}

#[tokio::test]
async fn another_tenants_device_is_not_found() {
    let app = TestApp::new().await;
    app.post("/api/v1/tenants", json!({"name": "b"})).await;
    let b_admin = app
        .post(
            "/api/v1/tenants/b/api-keys",
            json!({"name": "b-admin", "role": "admin"}),
        )
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let created = app
        .call(
            Method::POST,
            "/api/v1/devices",
            &b_admin,
            Some(json!({"id": "b-only"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    app.device("a-only").await;

    let mine = sign_in(&app, &b_admin).await;
    assert_eq!(
        get(&app, "/ui/devices/b-only", Some(&mine.cookie))
            .await
            .status,
        StatusCode::OK
    );
    let theirs = get(&app, "/ui/devices/a-only", Some(&mine.cookie)).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    let list = text(&get(&app, "/ui/devices", Some(&mine.cookie)).await);
    assert!(
        list.contains("b-only") && !list.contains("a-only"),
        "{list}"
    );

    // The server admin may look at tenant b, and then sees its devices only.
    let admin = sign_in(&app, &app.admin).await;
    assert_eq!(
        get(&app, "/ui/devices/b-only", Some(&admin.cookie))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let switched = form(
        &app,
        "/ui/tenant",
        Some(&admin.cookie),
        &[("tenant", "b"), ("_csrf", &admin.csrf)],
    )
    .await;
    assert_eq!(switched.status, StatusCode::SEE_OTHER);
    assert_eq!(
        get(&app, "/ui/devices/b-only", Some(&admin.cookie))
            .await
            .status,
        StatusCode::OK
    );
    // b's own admin may not switch tenants.
    let refused = form(
        &app,
        "/ui/tenant",
        Some(&mine.cookie),
        &[("tenant", "default"), ("_csrf", &mine.csrf)],
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_device_list_filters_and_pages() {
    let app = TestApp::new().await;
    for i in 0..120 {
        app.device(&format!("node-{i:03}")).await;
    }
    app.device("other-1").await;
    let browser = sign_in(&app, &app.admin).await;
    let first = text(&get(&app, "/ui/devices?q=node-", Some(&browser.cookie)).await);
    assert_eq!(first.matches("href=\"/ui/devices/node-").count(), 50);
    assert!(!first.contains("other-1"));
    let next = first
        .split("rel=\"next\" href=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    let second = text(&get(&app, &next, Some(&browser.cookie)).await);
    assert!(
        second.contains("node-050") && !second.contains("node-049"),
        "{next}"
    );
    let filtered = get(
        &app,
        "/ui/devices?filter=id%3D%3Dnode-11*",
        Some(&browser.cookie),
    )
    .await;
    assert_eq!(
        text(&filtered)
            .matches("href=\"/ui/devices/node-11")
            .count(),
        10
    );
    // By the latest update's state: one device with an update, the rest without.
    let uploaded = app.upload("title=fw&version=1", b"firmware").await;
    assert_eq!(uploaded.status, StatusCode::CREATED);
    app.post(
        "/api/v1/assignments",
        json!({"device": "node-007", "artifact": "fw@1"}),
    )
    .await;
    let queued = text(&get(&app, "/ui/devices?state=QUEUED", Some(&browser.cookie)).await);
    assert_eq!(queued.matches("href=\"/ui/devices/").count(), 1, "{queued}");
    assert!(queued.contains("node-007"));
    let none = text(
        &get(
            &app,
            "/ui/devices?state=none&q=node-00",
            Some(&browser.cookie),
        )
        .await,
    );
    assert_eq!(
        none.matches("href=\"/ui/devices/node-00").count(),
        9,
        "{none}"
    );
    let unknown = text(&get(&app, "/ui/devices?protocol=ddi", Some(&browser.cookie)).await);
    assert!(unknown.contains("No device matches."));
    let bad = get(&app, "/ui/devices?filter=id%3D%3D", Some(&browser.cookie)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(text(&bad).contains("invalid_filter"));
}

fn stat(page: &str, name: &str) -> String {
    page.split(&format!("data-stat=\"{name}\">"))
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap()
        .to_owned()
}

/// The fleet page's numbers: counted once, shown while fresh, recounted in the background when
/// stale (the stale count shown meanwhile), counted on the spot when too old to show.
#[tokio::test]
async fn the_fleet_page_recounts_in_the_background() {
    let app = TestApp::new().await;
    let browser = sign_in(&app, &app.admin).await;
    let page = |app: &TestApp| {
        let request = Request::builder()
            .method(Method::GET)
            .uri("/")
            .header("cookie", &browser.cookie)
            .body(Body::empty())
            .unwrap();
        let router = app.router.clone();
        async move {
            use tower::ServiceExt;
            let response = router.oneshot(request).await.unwrap();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            String::from_utf8_lossy(&body).into_owned()
        }
    };
    assert_eq!(stat(&page(&app).await, "devices"), "0");
    app.device("one").await;
    assert_eq!(
        stat(&page(&app).await, "devices"),
        "0",
        "fresh: not recounted"
    );

    let tenant = crate::default_tenant(&app).await;
    let age = |by: i64| {
        let overviews = app.state.overviews.clone();
        async move {
            let mut cached = overviews.lock().await;
            cached.get_mut(&tenant).unwrap().at -= by;
        }
    };
    age(6_000).await;
    assert_eq!(
        stat(&page(&app).await, "devices"),
        "0",
        "stale: shown meanwhile"
    );
    // The recount runs in the background; await it.
    updraft_test_support::within(async {
        loop {
            if !app.state.overviews.lock().await[&tenant].refreshing {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(stat(&page(&app).await, "devices"), "1");

    app.device("two").await;
    age(61_000).await;
    assert_eq!(
        stat(&page(&app).await, "devices"),
        "2",
        "too old to show: counted now"
    );
}
