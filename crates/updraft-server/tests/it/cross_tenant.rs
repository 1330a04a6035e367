//! The cross-tenant matrix: tenants `default` and `b` each have a device `same`, one token of its
//! own, one token the other tenant holds as well, the LwM2M endpoint name `ep-same`, the same
//! client certificate, and an artifact of their own assigned to it. Every device protocol and the
//! management routes are tried with each; nothing of one tenant is reached from the other.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use coap_lite::{MessageClass, ResponseType};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
use serde_json::{Value, json};

use crate::{Answer, TestApp};

const WAIT: Duration = Duration::from_secs(60);
const SHARED: &str = "token-held-by-both-tenants";

struct Tenant {
    name: &'static str,
    ddi: &'static str,
    admin: String,
    own_token: String,
    artifact: i64,
}

async fn as_key(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    app.call(method, path, key, body).await
}

async fn setup(
    app: &TestApp,
    name: &'static str,
    ddi: &'static str,
    admin: String,
    cert: &str,
) -> Tenant {
    let own = as_key(
        app,
        &admin,
        Method::POST,
        "/api/v1/devices",
        Some(json!({"id": "same", "lwm2m_endpoint": "ep-same", "certificate": cert})),
    )
    .await;
    assert_eq!(own.status, StatusCode::CREATED, "{:?}", own.json());
    let own_token = own.json()["token"].as_str().unwrap().to_owned();
    let shared = as_key(
        app,
        &admin,
        Method::POST,
        "/api/v1/devices",
        Some(json!({"id": "shared-holder", "token": SHARED})),
    )
    .await;
    assert_eq!(
        shared.status,
        StatusCode::CREATED,
        "no cross-tenant conflict: {:?}",
        shared.json()
    );
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/artifacts?title=fw-{name}&version=1"))
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/octet-stream")
        .body(Body::from(format!("firmware of {name}")))
        .unwrap();
    let artifact = app.send(request).await.json();
    for device in ["same", "shared-holder"] {
        let assigned = as_key(
            app,
            &admin,
            Method::POST,
            "/api/v1/assignments",
            Some(json!({"device": device, "artifact": format!("fw-{name}@1")})),
        )
        .await;
        assert!(assigned.status.is_success(), "{:?}", assigned.json());
    }
    Tenant {
        name,
        ddi,
        admin,
        own_token,
        artifact: artifact["id"].as_i64().unwrap(),
    }
}

async fn ddi_poll(app: &TestApp, tenant_url: &str, device: &str, token: &str) -> StatusCode {
    let request = Request::builder()
        .uri(format!("/{tenant_url}/controller/v1/{device}"))
        .header("authorization", format!("TargetToken {token}"))
        .body(Body::empty())
        .unwrap();
    app.send(request).await.status
}

async fn tb_attributes(app: &TestApp, token: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .uri(format!("/api/v1/{token}/attributes?sharedKeys=fw_title"))
        .body(Body::empty())
        .unwrap();
    let answer = app.send(request).await;
    let json = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status, json)
}

async fn mqtt_login(port: u16, user: &str, password: &str) -> bool {
    let mut options = MqttOptions::new("x", "127.0.0.1", port);
    options.set_credentials(user, password);
    let (_client, mut events) = AsyncClient::new(options, 4);
    loop {
        match tokio::time::timeout(WAIT, events.poll())
            .await
            .expect("MQTT hung")
        {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return ack.code == rumqttc::ConnectReturnCode::Success;
            }
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_crosses_between_tenants() {
    let app = TestApp::new().await;
    let pki = crate::tls::Pki::new();
    let (cert, _) = pki.device("same");
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
    let a = setup(&app, "default", "DEFAULT", app.admin.clone(), &cert).await;
    let b = setup(&app, "b", "b", b_admin, &cert).await;

    // DDI: a token opens its own tenant's controller only; the shared one, each its own.
    for (mine, other) in [(&a, &b), (&b, &a)] {
        assert_eq!(
            ddi_poll(&app, mine.ddi, "same", &mine.own_token).await,
            StatusCode::OK
        );
        assert_eq!(
            ddi_poll(&app, other.ddi, "same", &mine.own_token).await,
            StatusCode::UNAUTHORIZED,
            "{}'s token on {}'s URL",
            mine.name,
            other.name
        );
        assert_eq!(
            ddi_poll(&app, mine.ddi, "shared-holder", SHARED).await,
            StatusCode::OK
        );
    }

    // ThingsBoard over HTTP: a token alone names its tenant's device; one both hold names none.
    for tenant in [&a, &b] {
        let (status, body) = tb_attributes(&app, &tenant.own_token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["shared"]["fw_title"], format!("fw-{}", tenant.name));
    }
    assert_eq!(
        tb_attributes(&app, SHARED).await.0,
        StatusCode::UNAUTHORIZED
    );

    // MQTT: the same, and `{device}@{tenant}` logins stay in the tenant named.
    let (_, port) = app.listen_mqtt().await;
    assert!(mqtt_login(port, &a.own_token, "").await);
    assert!(
        !mqtt_login(port, SHARED, "").await,
        "a token both hold opens nothing"
    );
    assert!(mqtt_login(port, "same@b", &b.own_token).await);
    assert!(!mqtt_login(port, "same@b", &a.own_token).await);
    assert!(
        !mqtt_login(port, "same", &b.own_token).await,
        "`same` alone is the default tenant's"
    );
    assert!(mqtt_login(port, "shared-holder@b", SHARED).await);

    // A client certificate both tenants registered opens neither.
    let tls_port = app
        .listen_mqtts(&pki.path("server.pem"), &pki.path("server.key"))
        .await;
    let (accepted, _, _) = crate::tls::connect(&pki, tls_port, "same").await;
    assert!(
        !accepted,
        "a certificate held by two tenants names no device"
    );

    // LwM2M over NoSec: the endpoint name both use is the default tenant's device.
    let server = app.listen_lwm2m().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let registered = crate::lwm2m::coap(
        &socket,
        server,
        1,
        &["rd"],
        &["ep=ep-same", "lt=60"],
        b"</5/0>",
    )
    .await;
    assert_eq!(
        registered.header.code,
        MessageClass::Response(ResponseType::Created)
    );
    let registration = app
        .node
        .protocols
        .lwm2m
        .lwm2m
        .registration("ep-same")
        .unwrap();
    let default = app
        .state
        .store
        .tenant_by_name("default")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(registration.tenant, default.key);

    // Management: each key sees its own `same`, and the other's artifact is not found.
    for (mine, other) in [(&a, &b), (&b, &a)] {
        let history = as_key(
            &app,
            &mine.admin,
            Method::GET,
            "/api/v1/devices/same/history",
            None,
        )
        .await
        .json();
        assert_eq!(
            history[0]["title"],
            format!("fw-{}", mine.name),
            "{history}"
        );
        for (method, path) in [
            (Method::GET, format!("/api/v1/artifacts/{}", other.artifact)),
            (
                Method::GET,
                format!("/api/v1/artifacts/{}/download", other.artifact),
            ),
            (
                Method::DELETE,
                format!("/api/v1/artifacts/{}", other.artifact),
            ),
        ] {
            let answer = as_key(&app, &mine.admin, method.clone(), &path, None).await;
            assert_eq!(
                answer.status,
                StatusCode::NOT_FOUND,
                "{} {method} {path}",
                mine.name
            );
        }
        let assign = as_key(
            &app,
            &mine.admin,
            Method::POST,
            "/api/v1/assignments",
            Some(json!({"device": "same", "artifact": format!("fw-{}@1", other.name)})),
        )
        .await;
        assert!(assign.status.is_client_error(), "{:?}", assign.json());
        let listed = as_key(&app, &mine.admin, Method::GET, "/api/v1/artifacts", None)
            .await
            .json();
        assert_eq!(listed["total"], 1, "{listed}");
    }
    // The other tenant's artifact is still there, untouched.
    let kept = as_key(
        &app,
        &b.admin,
        Method::GET,
        &format!("/api/v1/artifacts/{}", b.artifact),
        None,
    )
    .await;
    assert_eq!(kept.status, StatusCode::OK);
}
