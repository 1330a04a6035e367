//! The agent against a real Updraft server (in-process, on a loopback socket): the happy path,
//! a connection cut mid-download, a corrupted artifact, a failing new image, a cancellation, and
//! a power loss at every interruption point of a whole update.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used)]

mod dfu;
mod faults;
mod flows;
mod power;

use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use updraft_server::AppState;
use updraft_server::server::{ServerConfig, prepare};

/// A running Updraft server and an admin client for it.
pub struct Server {
    pub url: String,
    pub admin: String,
    pub state: AppState,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            data_dir: dir.path().to_path_buf(),
            http: "127.0.0.1:0".parse().unwrap(),
            database_url: None,
            max_upload_bytes: 1 << 30,
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let node = prepare(&config, url.clone()).await.unwrap();
        let state = node.state.clone();
        let router = node.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let admin = std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Server {
            url,
            admin,
            state,
            http: reqwest::Client::new(),
            dir,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Creates a device; returns its token.
    pub async fn device(&self, id: &str) -> String {
        self.post("/api/v1/devices", json!({"id": id})).await["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn upload(&self, title: &str, version: &str, data: &[u8]) -> Value {
        let response = self
            .http
            .post(format!(
                "{}/api/v1/artifacts?title={title}&version={version}",
                self.url
            ))
            .bearer_auth(&self.admin)
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        response.json().await.unwrap()
    }

    pub async fn assign(&self, device: &str, release: &str) {
        self.post(
            "/api/v1/assignments",
            json!({"device": device, "artifact": release}),
        )
        .await;
    }

    /// The states of the device's newest action, oldest first, and its failure code.
    pub async fn latest_action(&self, device: &str) -> (Vec<String>, Value) {
        let history = self.get(&format!("/api/v1/devices/{device}/history")).await;
        let newest = &history[0];
        let states = newest["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["refused"] == false)
            .map(|e| e["to"].as_str().unwrap().to_owned())
            .collect();
        (states, newest.clone())
    }
}

/// Deterministic image bytes.
pub fn image(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub type Shared<T> = Arc<std::sync::Mutex<T>>;

/// A download's bytes in fixed 4 KiB pieces, however the network cut them: a run has the same
/// interruption points every time, so that a power cut at point N is the same cut in every run.
pub async fn in_fixed_pieces(
    mut download: updraft_agent::server::Download,
) -> Result<updraft_agent::server::Download, updraft_agent::AgentError> {
    let mut body = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut download.bytes).await {
        body.extend_from_slice(&chunk?);
    }
    let pieces: Vec<Result<bytes::Bytes, updraft_agent::AgentError>> = body
        .chunks(4 * 1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    download.bytes = Box::pin(futures_util::stream::iter(pieces));
    Ok(download)
}
