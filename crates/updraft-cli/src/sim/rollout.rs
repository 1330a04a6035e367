//! `updraft sim --rollout`: how the simulation shows the rollout it drives.

use serde_json::{Value, json};

use crate::client::Client;

pub(super) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `  [1] 10/10 [2] 12/40 …`: how far each group of the rollout got (ended of size).
pub(super) fn group_progress(rollout: &Value) -> String {
    let Some(groups) = rollout["groups"].as_array() else {
        return String::new();
    };
    let mut line = format!("  {}:", text(&rollout["state"]));
    for group in groups {
        let ended: u64 = ["UPDATED", "FAILED", "CANCELED", "SKIPPED"]
            .iter()
            .map(|s| group["states"][s].as_u64().unwrap_or(0))
            .sum();
        line.push_str(&format!(
            " [{}] {ended}/{}",
            text(&group["group"]),
            text(&group["size"])
        ));
    }
    line
}

/// The server's `updraft_rollout_downloads_in_flight` gauge, if `/metrics` answers.
pub(super) async fn downloads_in_flight(client: &Client) -> Option<u64> {
    let response = client
        .send(client.request(reqwest::Method::GET, "/metrics"))
        .await
        .ok()?;
    let text = response.text().await.ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("updraft_rollout_downloads_in_flight "))
        .and_then(|n| n.trim().parse().ok())
}

/// The rollout's name, state and per-group counts for the summary (null without a rollout),
/// with the most updates the server counted in flight at once while the simulation watched.
pub(super) fn rollout_summary(rollout: &Value, max_in_flight: u64) -> Value {
    if rollout.is_null() {
        return Value::Null;
    }
    json!({
        "name": rollout["name"],
        "state": rollout["state"],
        "max_downloads_in_flight": max_in_flight,
        "groups": rollout["groups"].as_array().map(|groups| groups
            .iter()
            .map(|g| json!({"group": g["group"], "size": g["size"], "states": g["states"], "started_at": g["started_at"]}))
            .collect::<Vec<_>>()),
    })
}
