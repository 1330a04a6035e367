//! The agent's view of an update server, and its hawkBit DDI implementation over HTTP.

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::AgentError;
use crate::state::Release;

/// What a poll says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollAnswer {
    pub sleep: Duration,
    /// URL of an update to fetch.
    pub deployment: Option<String>,
    /// URL of a cancellation to honour.
    pub cancel: Option<String>,
}

/// An update the server offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub action: String,
    pub feedback_url: String,
    pub download_url: String,
    pub release: Release,
    pub sha256: String,
    pub size: u64,
}

/// A report on an action, in DDI's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    pub execution: &'static str,
    pub finished: &'static str,
    pub progress: Option<(u64, u64)>,
    pub details: Vec<String>,
}

impl Feedback {
    pub fn progress(
        execution: &'static str,
        progress: Option<(u64, u64)>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            execution,
            finished: "none",
            progress,
            details: vec![detail.into()],
        }
    }

    pub fn closed(success: bool, detail: impl Into<String>) -> Self {
        Self {
            execution: "closed",
            finished: if success { "success" } else { "failure" },
            progress: None,
            details: vec![detail.into()],
        }
    }
}

/// Whether the server took a final report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The action is closed or unknown already (a repeat after a power loss, or superseded).
    Gone,
}

/// A download in progress: the bytes from `offset`, and whether the server honoured the range.
pub struct Download {
    pub from: u64,
    pub bytes: Pin<Box<dyn Stream<Item = Result<Bytes, AgentError>> + Send>>,
}

#[async_trait]
pub trait UpdateServer: Send + Sync {
    async fn poll(&self) -> Result<PollAnswer, AgentError>;
    async fn deployment(&self, url: &str) -> Result<Offer, AgentError>;
    /// The artifact from `offset` (a `Range` request); the answer says where it really starts.
    async fn download(&self, url: &str, offset: u64) -> Result<Download, AgentError>;
    async fn feedback(&self, url: &str, feedback: &Feedback) -> Result<Delivery, AgentError>;
    /// The action a cancellation stops.
    async fn cancel_target(&self, url: &str) -> Result<String, AgentError>;
    /// Tells the server whether the action `stop` was canceled.
    async fn cancel_answer(&self, url: &str, stop: &str, accepted: bool) -> Result<(), AgentError>;
}

/// hawkBit DDI over HTTP(S).
pub struct DdiClient {
    http: reqwest::Client,
    base: String,
    auth: String,
}

/// A request whose answer stops arriving for this long fails (a download then resumes where it
/// stopped) instead of holding the device forever.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The HTTP client settings of an agent: bounded connect, and a stalled answer ends.
pub fn http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(STALL_TIMEOUT)
}

fn network(err: reqwest::Error) -> AgentError {
    AgentError::Network(err.to_string())
}

impl DdiClient {
    /// `server` is the base URL (`http://host:8080`); `token` the device's TargetToken.
    pub fn new(server: &str, tenant: &str, device: &str, token: &str) -> Result<Self, AgentError> {
        let http = http_client().build().map_err(network)?;
        Ok(Self::with_http(http, server, tenant, device, token))
    }

    /// The same over a shared HTTP client (a simulator runs thousands of devices over one pool).
    pub fn with_http(
        http: reqwest::Client,
        server: &str,
        tenant: &str,
        device: &str,
        token: &str,
    ) -> Self {
        Self {
            http,
            base: format!(
                "{}/{tenant}/controller/v1/{device}",
                server.trim_end_matches('/')
            ),
            auth: format!("TargetToken {token}"),
        }
    }

    async fn get_json(&self, url: &str) -> Result<Value, AgentError> {
        let response = self
            .http
            .get(url)
            .header("authorization", &self.auth)
            .send()
            .await
            .map_err(network)?;
        if !response.status().is_success() {
            return Err(AgentError::Protocol(format!(
                "GET {url} answered {}",
                response.status()
            )));
        }
        response
            .json()
            .await
            .map_err(|e| AgentError::Protocol(format!("GET {url}: {e}")))
    }

    async fn post_json(&self, url: &str, body: &Value) -> Result<StatusCode, AgentError> {
        let response = self
            .http
            .post(url)
            .header("authorization", &self.auth)
            .json(body)
            .send()
            .await
            .map_err(network)?;
        Ok(response.status())
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `HH:MM:SS` (or `MM:SS`) as seconds.
pub fn parse_sleep(text: &str) -> Option<Duration> {
    let mut secs = 0u64;
    for part in text.split(':') {
        secs = secs
            .checked_mul(60)?
            .checked_add(part.trim().parse::<u64>().ok()?)?;
    }
    Some(Duration::from_secs(secs))
}

fn link(value: &Value, name: &str) -> Option<String> {
    value["_links"][name]["href"].as_str().map(str::to_owned)
}

#[async_trait]
impl UpdateServer for DdiClient {
    async fn poll(&self) -> Result<PollAnswer, AgentError> {
        let answer = self.get_json(&self.base).await?;
        let sleep = answer["config"]["polling"]["sleep"]
            .as_str()
            .and_then(parse_sleep)
            .unwrap_or(Duration::from_secs(300));
        Ok(PollAnswer {
            sleep,
            deployment: link(&answer, "deploymentBase"),
            cancel: link(&answer, "cancelAction"),
        })
    }

    async fn deployment(&self, url: &str) -> Result<Offer, AgentError> {
        let answer = self.get_json(url).await?;
        let bad = |what: &str| AgentError::Protocol(format!("deploymentBase has no {what}"));
        let action = text(&answer["id"]).ok_or_else(|| bad("id"))?;
        let chunk = &answer["deployment"]["chunks"][0];
        let artifact = &chunk["artifacts"][0];
        let download_url = artifact["_links"]["download-http"]["href"]
            .as_str()
            .or_else(|| artifact["_links"]["download"]["href"].as_str())
            .ok_or_else(|| bad("download link"))?
            .to_owned();
        Ok(Offer {
            feedback_url: format!("{}/deploymentBase/{action}/feedback", self.base),
            action,
            download_url,
            release: Release {
                title: chunk["name"]
                    .as_str()
                    .ok_or_else(|| bad("chunk name"))?
                    .to_owned(),
                version: chunk["version"]
                    .as_str()
                    .ok_or_else(|| bad("chunk version"))?
                    .to_owned(),
            },
            sha256: artifact["hashes"]["sha256"]
                .as_str()
                .ok_or_else(|| bad("sha256"))?
                .to_ascii_lowercase(),
            size: artifact["size"].as_u64().ok_or_else(|| bad("size"))?,
        })
    }

    async fn download(&self, url: &str, offset: u64) -> Result<Download, AgentError> {
        let mut request = self.http.get(url).header("authorization", &self.auth);
        if offset > 0 {
            request = request.header("range", format!("bytes={offset}-"));
        }
        let response = request.send().await.map_err(network)?;
        let from = match response.status() {
            StatusCode::PARTIAL_CONTENT => offset,
            StatusCode::OK => 0,
            other => return Err(AgentError::Protocol(format!("download answered {other}"))),
        };
        let bytes = response.bytes_stream().map(|chunk| chunk.map_err(network));
        Ok(Download {
            from,
            bytes: Box::pin(bytes),
        })
    }

    async fn feedback(&self, url: &str, feedback: &Feedback) -> Result<Delivery, AgentError> {
        let mut result = json!({"finished": feedback.finished});
        if let Some((cnt, of)) = feedback.progress {
            result["progress"] = json!({"cnt": cnt, "of": of});
        }
        let body = json!({"status": {"execution": feedback.execution, "result": result, "details": feedback.details}});
        match self.post_json(url, &body).await? {
            status if status.is_success() => Ok(Delivery::Delivered),
            StatusCode::GONE | StatusCode::NOT_FOUND => Ok(Delivery::Gone),
            other => Err(AgentError::Protocol(format!("feedback answered {other}"))),
        }
    }

    async fn cancel_target(&self, url: &str) -> Result<String, AgentError> {
        let answer = self.get_json(url).await?;
        text(&answer["cancelAction"]["stopId"])
            .ok_or_else(|| AgentError::Protocol("cancelAction has no stopId".into()))
    }

    async fn cancel_answer(&self, url: &str, stop: &str, accepted: bool) -> Result<(), AgentError> {
        let (execution, finished) = if accepted {
            ("closed", "success")
        } else {
            ("rejected", "none")
        };
        let body = json!({"id": stop, "status": {"execution": execution, "result": {"finished": finished}}});
        let status = self.post_json(&format!("{url}/feedback"), &body).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(AgentError::Protocol(format!(
                "cancel feedback answered {status}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_sleep_parses() {
        assert_eq!(parse_sleep("00:05:00"), Some(Duration::from_secs(300)));
        assert_eq!(parse_sleep("01:00:01"), Some(Duration::from_secs(3601)));
        assert_eq!(parse_sleep("05:05"), Some(Duration::from_secs(305)));
        assert_eq!(parse_sleep("x"), None);
    }
}
