//! The dashboard at fleet scale, in-process, for `bench/dashboard.sh`:
//!
//! `fleet_page STORE DEVICES [DATABASE_URL]` — prepares a server on SQLite (in a temporary data
//! directory) or on DATABASE_URL, writes DEVICES devices (three running versions, four protocols,
//! nine in ten seen recently) and one update per device (UPDATED, FAILED with two codes, DOWNLOADING) straight into
//! the database, signs in through `/ui/login`, then times, median of 21 each: the fleet overview
//! computed afresh by the store (what the fleet page costs once per few seconds per tenant), and
//! through the router (no sockets) the fleet page, the first page of devices, a filtered page, and
//! one device's page. Prints one Markdown table row, STORE being its first cell.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use sqlx::Row;
use tower::ServiceExt;
use updraft_server::server::{ServerConfig, prepare};

async fn page(router: &axum::Router, cookie: &str, path: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("cookie", cookie)
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn median(router: &axum::Router, cookie: &str, path: &str, expect: &str) -> Duration {
    let mut times = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let (status, body) = page(router, cookie, path).await;
        times.push(t.elapsed());
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(body.contains(expect), "{path}: no {expect:?}");
    }
    times.sort();
    times[times.len() / 2]
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
    let token = token.trim().to_owned();

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
    let now = updraft_server::kernel::clock::now_millis();
    let started = Instant::now();
    let indexes: Vec<usize> = (0..devices).collect();
    for batch in indexes.chunks(1000) {
        let values: Vec<String> = batch
            .iter()
            .map(|i| {
                let version = ["1.0", "1.1", "2.0"][i % 3];
                let protocol = ["ddi", "thingsboard", "lwm2m", "aws"][i % 4];
                let seen = if i % 10 == 0 {
                    "NULL".to_owned()
                } else {
                    (now - 60_000).to_string()
                };
                format!(
                    "({tenant}, 'dev-{i:07}', '[]', '{{}}', 'fw', '{version}', '{protocol}', \
                     {seen}, {now})"
                )
            })
            .collect();
        sqlx::query(&format!(
            "INSERT INTO devices (tenant_id, device_id, tags, attributes, fw_title, fw_version, \
             protocol, last_seen, created_at) VALUES {}",
            values.join(",")
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    let keys: Vec<i64> = sqlx::query("SELECT id FROM devices WHERE tenant_id = $1 ORDER BY id")
        .bind(tenant)
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("id").unwrap())
        .collect();
    for (n, batch) in keys.chunks(1000).enumerate() {
        let values: Vec<String> = batch
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let (state, code) = match (n * 1000 + i) % 20 {
                    0 => ("FAILED", "'update_failed'"),
                    1 => ("FAILED", "'integrity_check_failed'"),
                    2 => ("DOWNLOADING", "NULL"),
                    _ => ("UPDATED", "NULL"),
                };
                format!(
                    "({tenant}, {key}, 'fw', '2.0', 'firmware', '{state}', {code}, {now}, {now})"
                )
            })
            .collect();
        sqlx::query(&format!(
            "INSERT INTO actions (tenant_id, device_pk, artifact_title, artifact_version, kind, \
             state, failure_code, created_at, updated_at) VALUES {}",
            values.join(",")
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    if store != "sqlite" {
        // What autovacuum does shortly after a bulk write: the planner's statistics.
        sqlx::query("ANALYZE").execute(&pool).await.unwrap();
    }
    eprintln!(
        "{devices} devices and updates written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Sign in as a browser does.
    let request = Request::builder()
        .method(Method::POST)
        .uri("/ui/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(format!("key={token}")))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    // The overview computed afresh (what the fleet page costs once per few seconds per tenant),
    // then the page as viewers get it.
    let mut computations = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let overview = node
            .state
            .store
            .fleet_overview(updraft_core::TenantKey(tenant), now)
            .await
            .unwrap();
        computations.push(t.elapsed());
        assert_eq!(overview.devices, devices as u64);
    }
    computations.sort();
    let computation = computations[computations.len() / 2];
    let fleet = median(&router, &cookie, "/", &format!(">{devices}<")).await;
    let list = median(&router, &cookie, "/ui/devices", "dev-0000049").await;
    let filtered = median(
        &router,
        &cookie,
        "/ui/devices?filter=fw.version%3D%3D2.0",
        "dev-0000002",
    )
    .await;
    let one = format!("/ui/devices/dev-{:07}", devices / 2);
    let device = median(&router, &cookie, &one, "History").await;
    println!(
        "| {store} | {devices} | {} | {} | {} | {} | {} |",
        ms(computation),
        ms(fleet),
        ms(list),
        ms(filtered),
        ms(device)
    );
}
