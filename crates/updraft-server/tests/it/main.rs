//! The server's integration tests: the management API in-process through `Router::oneshot`,
//! over a real SQLite store and blob directory in a temporary data directory.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used)]

mod api;
mod artifacts;
mod aws;
mod coap;
mod cross_tenant;
mod dashboard;
mod dashboard_browser;
mod ddi;
mod dfu;
mod frugal;
mod frugal_keys;
mod http_limits;
mod lwm2m;
mod lwm2m_attacks;
mod mqtt;
mod mqtt_limits;
mod rollout_windows;
mod rollouts;
mod rustot;
mod storage;
mod thingsboard;
mod tls;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use updraft_server::server::{ServerConfig, prepare};
use updraft_server::{AppState, Limits, Node};

pub struct TestApp {
    pub router: Router,
    pub state: AppState,
    pub node: Node,
    pub admin: String,
    pub dir: tempfile::TempDir,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The stable error code of an error answer.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// The store the tests run on: SQLite in the data directory, or with `UPDRAFT_TEST_STORE=postgres`
/// a fresh PostgreSQL database (the test command runs the device-protocol tests both ways).
pub(crate) async fn test_database() -> Option<String> {
    match std::env::var("UPDRAFT_TEST_STORE").as_deref() {
        Ok("postgres") => {
            let url = updraft_test_support::postgres::fresh_database().await;
            if url.is_none() {
                eprintln!(
                    "note: UPDRAFT_TEST_STORE=postgres but no PostgreSQL: this test runs on SQLite"
                );
            }
            url
        }
        _ => None,
    }
}

/// Local blobs, or S3 (SeaweedFS) when `UPDRAFT_TEST_BLOBS=s3`.
pub fn test_storage() -> updraft_server::server::Storage {
    let mut storage = updraft_server::server::Storage::default();
    if std::env::var("UPDRAFT_TEST_BLOBS").as_deref() == Ok("s3") {
        match updraft_test_support::s3::fresh_bucket() {
            Some(bucket) => {
                storage.blobs = updraft_server::server::BlobsAt::S3(s3_config(&bucket));
            }
            None => eprintln!("note: UPDRAFT_TEST_BLOBS=s3 but no S3 engine: blobs on local disk"),
        }
    }
    storage
}

/// The store's settings for a test bucket.
pub fn s3_config(bucket: &updraft_test_support::s3::Bucket) -> updraft_store::S3Config {
    updraft_store::S3Config::at_endpoint(
        &bucket.url(),
        &bucket.endpoint,
        &bucket.access_key,
        &bucket.secret_key,
    )
    .unwrap()
}

impl TestApp {
    pub async fn new() -> TestApp {
        Self::with_limit(64 * 1024 * 1024).await
    }

    /// An app whose links (`--public-url`) point at a real loopback HTTP listener serving it, for
    /// devices that download from URLs they are given.
    pub async fn served() -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Self::prepared(64 * 1024 * 1024, url, Limits::default()).await;
        tokio::spawn(
            app.node
                .clone()
                .serve_http(listener, std::future::pending()),
        );
        app
    }

    pub async fn with_limit(max_upload_bytes: u64) -> TestApp {
        Self::prepared(
            max_upload_bytes,
            "http://updraft.test".to_owned(),
            Limits::default(),
        )
        .await
    }

    /// An app with other bounds than the defaults.
    pub async fn with_limits(limits: Limits) -> TestApp {
        Self::prepared(64 * 1024 * 1024, "http://updraft.test".to_owned(), limits).await
    }

    /// An app on the given database (a second replica of another app).
    pub async fn on_database(url: &str) -> TestApp {
        Self::prepared_on(
            Some(url.to_owned()),
            64 * 1024 * 1024,
            "http://updraft.test".to_owned(),
            Limits::default(),
        )
        .await
    }

    async fn prepared(max_upload_bytes: u64, public_url: String, limits: Limits) -> TestApp {
        Self::prepared_on(test_database().await, max_upload_bytes, public_url, limits).await
    }

    pub(crate) async fn prepared_on(
        database_url: Option<String>,
        max_upload_bytes: u64,
        public_url: String,
        limits: Limits,
    ) -> TestApp {
        Self::prepared_with(
            database_url,
            max_upload_bytes,
            public_url,
            limits,
            test_storage(),
        )
        .await
    }

    /// An app whose blobs are where `storage` says.
    pub(crate) async fn prepared_with(
        database_url: Option<String>,
        max_upload_bytes: u64,
        public_url: String,
        limits: Limits,
        storage: updraft_server::server::Storage,
    ) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            data_dir: dir.path().to_path_buf(),
            http: "127.0.0.1:0".parse().unwrap(),
            database_url,
            max_upload_bytes,
            public_url: None,
            mqtt: None,
            coap: None,
            mqtts: None,
            lwm2m: None,
            lwm2m_dtls: None,
            tls: None,
            notify_per_second: 1000,
            limits,
            storage,
        };
        let node = prepare(&config, public_url).await.unwrap();
        let state = node.state.clone();
        let admin = std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        TestApp {
            router: node.router(),
            state,
            node,
            admin,
            dir,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        json: Option<Value>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if !token.is_empty() {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = match json {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, &self.admin.clone(), None)
            .await
    }

    pub async fn post(&self, path: &str, json: Value) -> Answer {
        self.call(Method::POST, path, &self.admin.clone(), Some(json))
            .await
    }

    /// Uploads `data` raw with the given query string, as the admin.
    pub async fn upload(&self, query: &str, data: &[u8]) -> Answer {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("/api/v1/artifacts?{query}"))
            .header("authorization", format!("Bearer {}", self.admin))
            .header("content-type", "application/octet-stream")
            .header("content-length", data.len())
            .body(Body::from(data.to_vec()))
            .unwrap();
        self.send(request).await
    }

    /// Serves the app on a real loopback socket (port 0); returns its base URL.
    pub async fn listen(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            self.node
                .clone()
                .serve_http(listener, std::future::pending()),
        );
        format!("http://{addr}")
    }

    /// Runs the device MQTT endpoint and its notification queue on a loopback port; returns
    /// `(host, port)`.
    pub async fn listen_mqtt(&self) -> (String, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(self.node.clone().serve_mqtt(listener));
        tokio::spawn(self.node.clone().notify(1000));
        ("127.0.0.1".to_owned(), port)
    }

    /// Runs the LwM2M listener (and the notification queue) on a loopback UDP port.
    pub async fn listen_lwm2m(&self) -> std::net::SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(self.node.clone().serve_lwm2m(socket));
        tokio::spawn(self.node.clone().notify(1000));
        addr
    }

    /// Runs the LwM2M DTLS-PSK listener (and the notification queue) on a loopback UDP port.
    pub async fn listen_lwm2m_dtls(&self) -> std::net::SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(self.node.clone().serve_lwm2m_dtls(socket));
        addr
    }

    /// Runs the MQTT endpoint over TLS on a loopback port with the given server certificate and
    /// key (PEM files), and the notification queue.
    pub async fn listen_mqtts(&self, cert: &std::path::Path, key: &std::path::Path) -> u16 {
        let config = updraft_server::transport::tls::server_config(cert, key).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(self.node.clone().serve_mqtts(listener, config));
        tokio::spawn(self.node.clone().notify(1000));
        port
    }

    /// Runs the CoAP transport (and the notification queue) on a loopback UDP port.
    pub async fn listen_coap(&self) -> std::net::SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(self.node.clone().serve_coap(socket));
        tokio::spawn(self.node.clone().notify(1000));
        addr
    }

    /// Creates a device and returns its access token.
    pub async fn device(&self, id: &str) -> String {
        let created = self
            .post("/api/v1/devices", serde_json::json!({"id": id}))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
        created.json()["token"].as_str().unwrap().to_owned()
    }

    /// Files in the blob store's staging directory and committed blobs.
    pub async fn blob_files(&self) -> (usize, usize) {
        let staging = std::fs::read_dir(self.dir.path().join("blobs/staging"))
            .unwrap()
            .count();
        let committed = self.state.blobs.list().await.unwrap().len();
        (staging, committed)
    }
}

/// The `default` tenant's key.
pub async fn default_tenant(app: &TestApp) -> updraft_core::TenantKey {
    app.state
        .store
        .tenant_by_name("default")
        .await
        .unwrap()
        .unwrap()
        .key
}

/// The states an action went through (refused reports left out, repeats folded), from one entry
/// of `/api/v1/devices/{id}/history`.
pub fn applied_states(action: &serde_json::Value) -> Vec<String> {
    let mut states: Vec<String> = action["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["refused"] == false)
        .map(|e| e["to"].as_str().unwrap().to_owned())
        .collect();
    states.dedup();
    states
}
