//! A thin client of the management API: JSON in and out, API errors turned into one-line
//! messages with their stable code.

use anyhow::{Context, Result, anyhow};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    token: String,
}

impl Client {
    pub fn new(base: &str, token: String) -> Result<Self> {
        let http = reqwest::Client::builder()
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends the request; a non-2xx answer becomes an error carrying the API's message and code.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<Value>(&text) {
            Ok(body) if body.get("code").is_some() => Err(anyhow!(
                "{} ({}, HTTP {})",
                body["message"].as_str().unwrap_or("no message"),
                body["code"].as_str().unwrap_or("?"),
                status.as_u16()
            )),
            _ => Err(anyhow!(
                "the server answered HTTP {status}: {}",
                text.trim()
            )),
        }
    }

    pub async fn json(&self, request: RequestBuilder) -> Result<Value> {
        let response = self.send(request).await?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        response
            .json()
            .await
            .context("the server's answer is not JSON")
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.json(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.json(self.request(Method::POST, path).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.json(self.request(Method::DELETE, path)).await
    }

    /// The artifact named `TITLE@VERSION`.
    pub async fn artifact(&self, release: &str) -> Result<Value> {
        let (title, version) = release
            .rsplit_once('@')
            .ok_or_else(|| anyhow!("name the artifact as TITLE@VERSION, not {release:?}"))?;
        let found = self
            .json(
                self.request(Method::GET, "/api/v1/artifacts")
                    .query(&[("title", title), ("version", version)]),
            )
            .await?;
        found["items"]
            .as_array()
            .and_then(|items| items.first())
            .cloned()
            .ok_or_else(|| anyhow!("no artifact {release} (artifact_not_found)"))
    }
}
