//! Rollouts at fleet scale, in-process, for `bench/rollouts.sh`:
//!
//! `rollout_scale STORE DEVICES [DATABASE_URL]` — prepares a server on SQLite (in a temporary
//! data directory) or on DATABASE_URL, writes DEVICES devices straight into its `devices` table
//! (multi-row INSERTs: making a million devices through the API is not what is measured), then
//! through the management API (the router, no sockets) times creating a rollout over all of them
//! (`1%,9%,90%`: the filter scan and the member snapshot), starting it, the scheduler's first
//! pass (activating the first group), and the progress overview (`GET /api/v1/rollouts/{name}`,
//! median of 21). Prints one Markdown table row, STORE being its first cell.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::Row;
use tower::ServiceExt;
use updraft_server::server::{ServerConfig, prepare};

async fn call(
    router: &axum::Router,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    let body = match body {
        Some(json) => {
            request = request.header("content-type", "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let response = router
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let store = args.get(1).cloned().unwrap_or_else(|| "sqlite".into());
    let devices: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let database_url = args.get(3).cloned();
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        http: "127.0.0.1:0".parse().unwrap(),
        database_url: database_url.clone(),
        max_upload_bytes: 1 << 20,
        public_url: None,
        mqtt: None,
        coap: None,
        mqtts: None,
        lwm2m: None,
        lwm2m_dtls: None,
        tls: None,
        notify_per_second: 1000,
        limits: Default::default(),
        storage: Default::default(),
    };
    let node = prepare(&config, "http://bench".into()).await.unwrap();
    let router = node.router();
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let token = token.trim();

    // The fleet, written in bulk.
    sqlx::any::install_default_drivers();
    let url = database_url
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("updraft.db").display()));
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let tenant: i64 = sqlx::query("SELECT id FROM tenants WHERE name = 'default'")
        .fetch_one(&pool)
        .await
        .unwrap()
        .try_get("id")
        .unwrap();
    let started = Instant::now();
    for batch in (0..devices).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<String> = batch
            .iter()
            .map(|i| format!("({tenant}, 'dev-{i:07}', '[]', '{{}}', 0)"))
            .collect();
        sqlx::query(&format!(
            "INSERT INTO devices (tenant_id, device_id, tags, attributes, created_at) VALUES {}",
            values.join(",")
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    eprintln!(
        "{devices} devices written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let fw = dir.path().join("fw.bin");
    std::fs::write(&fw, b"firmware").unwrap();
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/artifacts?title=fw&version=2")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/octet-stream")
        .body(Body::from(&b"firmware"[..]))
        .unwrap();
    assert_eq!(
        router.clone().oneshot(request).await.unwrap().status(),
        StatusCode::CREATED
    );

    let body =
        json!({"name": "bench", "artifact": "fw@2", "filter": "id==dev-*", "groups": "1%,9%,90%"});
    let t = Instant::now();
    let (status, created) =
        call(&router, token, Method::POST, "/api/v1/rollouts", Some(body)).await;
    let create = t.elapsed();
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["devices"], devices);
    let t = Instant::now();
    let (status, _) = call(
        &router,
        token,
        Method::POST,
        "/api/v1/rollouts/bench/start",
        Some(json!({})),
    )
    .await;
    let start = t.elapsed();
    assert_eq!(status, StatusCode::OK);
    let t = Instant::now();
    let activated = updraft_server::kernel::scheduler::pass(
        &node.state,
        updraft_server::kernel::clock::now_millis(),
    )
    .await
    .unwrap();
    let first_pass = t.elapsed();
    let mut shows = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let (status, shown) =
            call(&router, token, Method::GET, "/api/v1/rollouts/bench", None).await;
        shows.push(t.elapsed());
        assert_eq!(status, StatusCode::OK);
        assert_eq!(shown["devices"], devices);
    }
    shows.sort();
    println!(
        "| {store} | {devices} | {} | {} | {} | {} ({activated} devices) | {} |",
        ms(create),
        ms(start),
        ms(create + start),
        ms(first_pass),
        ms(shows[shows.len() / 2])
    );
}
