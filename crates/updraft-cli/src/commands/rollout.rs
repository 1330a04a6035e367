//! `updraft rollout`: create, start/pause/resume/cancel, list, and show (with `--watch`, one
//! live progress bar per group).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::args::{RolloutCommand, RuleCommand};
use super::output::{Output, rfc3339, text};
use crate::client::Client;
use crate::table;

/// States a rollout is not followed past.
const SETTLED: [&str; 3] = ["FINISHED", "CANCELED", "HALTED"];

pub(super) async fn rollout(client: &Client, out: &Output, command: RolloutCommand) -> Result<()> {
    match command {
        RolloutCommand::Create(args) => {
            let created = client.post("/api/v1/rollouts", &args.to_json()).await?;
            out.show(&created, || {
                let sizes: Vec<String> = created["groups"]
                    .as_array()
                    .map(|groups| groups.iter().map(|g| text(&g["size"])).collect())
                    .unwrap_or_default();
                println!(
                    "created rollout {} of {} over {} devices in groups of {} ({})",
                    text(&created["name"]),
                    text(&created["artifact"]),
                    text(&created["devices"]),
                    sizes.join(", "),
                    text(&created["state"])
                );
            });
            Ok(())
        }
        RolloutCommand::Start { name } => act(client, out, &name, "start").await,
        RolloutCommand::Pause { name } => act(client, out, &name, "pause").await,
        RolloutCommand::Resume { name } => act(client, out, &name, "resume").await,
        RolloutCommand::Cancel { name } => act(client, out, &name, "cancel").await,
        RolloutCommand::List => {
            let list = client.get("/api/v1/rollouts").await?;
            out.show(&list, || {
                let rows: Vec<Vec<String>> = list
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .map(|r| {
                                vec![
                                    text(&r["name"]),
                                    text(&r["artifact"]),
                                    text(&r["state"]),
                                    text(&r["devices"]),
                                    count(&r["states"], "UPDATED").to_string(),
                                    count(&r["states"], "FAILED").to_string(),
                                    text(&r["groups_spec"]),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table::print(
                    &[
                        "name", "artifact", "state", "devices", "updated", "failed", "groups",
                    ],
                    &rows,
                );
            });
            Ok(())
        }
        RolloutCommand::Show { name, watch } => {
            let path = format!("/api/v1/rollouts/{name}");
            if !watch {
                let shown = client.get(&path).await?;
                out.show(&shown, || print_rollout(&shown));
                return Ok(());
            }
            follow(client, out, &path).await
        }
    }
}

pub(super) async fn rule(client: &Client, out: &Output, command: RuleCommand) -> Result<()> {
    match command {
        RuleCommand::Create {
            name,
            filter,
            artifact,
            update_type,
            max_per_minute,
            max_downloads,
        } => {
            let body = json!({"name": name, "filter": filter, "artifact": artifact,
                "type": update_type, "max_per_minute": max_per_minute, "max_downloads": max_downloads});
            let created = client.post("/api/v1/rules", &body).await?;
            out.show(&created, || {
                println!(
                    "created rule {}: {} to devices matching {} ({} now)",
                    text(&created["name"]),
                    text(&created["artifact"]),
                    text(&created["target"]),
                    text(&created["devices"])
                )
            });
            Ok(())
        }
        RuleCommand::List => {
            let list = client.get("/api/v1/rules").await?;
            out.show(&list, || {
                let rows: Vec<Vec<String>> = list
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .map(|r| {
                                vec![
                                    text(&r["name"]),
                                    text(&r["target"]),
                                    text(&r["artifact"]),
                                    text(&r["state"]),
                                    text(&r["devices"]),
                                    count(&r["states"], "UPDATED").to_string(),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table::print(
                    &["name", "filter", "artifact", "state", "devices", "updated"],
                    &rows,
                );
            });
            Ok(())
        }
        RuleCommand::Delete { name } => {
            client
                .json(client.request(reqwest::Method::DELETE, &format!("/api/v1/rules/{name}")))
                .await?;
            out.show(&json!({"deleted": name}), || {
                println!("deleted rule {name}")
            });
            Ok(())
        }
    }
}

async fn act(client: &Client, out: &Output, name: &str, command: &str) -> Result<()> {
    let rollout = client
        .post(&format!("/api/v1/rollouts/{name}/{command}"), &json!({}))
        .await?;
    out.show(&rollout, || {
        println!("rollout {name} is {}", text(&rollout["state"]))
    });
    Ok(())
}

fn count(states: &Value, state: &str) -> u64 {
    states[state].as_u64().unwrap_or(0)
}

/// Devices of a group that ended, one way or another.
fn ended(states: &Value) -> u64 {
    ["UPDATED", "FAILED", "CANCELED", "SKIPPED"]
        .iter()
        .map(|s| count(states, s))
        .sum()
}

fn group_line(group: &Value) -> String {
    let states = &group["states"];
    let started = if group["started_at"].is_null() {
        "waiting".to_owned()
    } else {
        format!("started {}", rfc3339(&group["started_at"]))
    };
    let mut parts = vec![started];
    if let Some(states) = states.as_object() {
        parts.extend(states.iter().map(|(s, n)| format!("{s} {n}")));
    }
    parts.join(", ")
}

fn print_rollout(rollout: &Value) {
    for key in ["name", "artifact", "state", "target", "type", "devices"] {
        println!("{key:<10} {}", text(&rollout[key]));
    }
    println!(
        "{:<10} success {}%, error {}%, soak {} s",
        "thresholds",
        text(&rollout["success_threshold"]),
        text(&rollout["error_threshold"]),
        rollout["soak_ms"].as_i64().unwrap_or(0) / 1000
    );
    println!();
    let rows: Vec<Vec<String>> = rollout["groups"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .map(|g| vec![text(&g["group"]), text(&g["size"]), group_line(g)])
                .collect()
        })
        .unwrap_or_default();
    table::print(&["group", "size", "progress"], &rows);
    if let Some(failures) = rollout["failures"].as_array().filter(|f| !f.is_empty()) {
        println!();
        let rows: Vec<Vec<String>> = failures
            .iter()
            .map(|f| {
                vec![
                    text(&f["device"]),
                    text(&f["group"]),
                    text(&f["code"]),
                    text(&f["reason"]),
                ]
            })
            .collect();
        table::print(&["failed device", "group", "code", "reason"], &rows);
    }
}

/// Follows the rollout until it finishes, is canceled or halts: progress bars on a terminal,
/// otherwise a line whenever something changed.
async fn follow(client: &Client, out: &Output, path: &str) -> Result<()> {
    let terminal = std::io::stderr().is_terminal() && !out.json;
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("group {prefix:>3} {bar:40} {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut bars: Vec<ProgressBar> = Vec::new();
    let mut last = String::new();
    loop {
        let rollout = client.get(path).await?;
        let groups = rollout["groups"].as_array().cloned().unwrap_or_default();
        if terminal {
            if bars.is_empty() {
                for g in &groups {
                    let bar = multi.add(ProgressBar::new(g["size"].as_u64().unwrap_or(0)));
                    bar.set_style(style.clone());
                    bar.set_prefix(text(&g["group"]));
                    bars.push(bar);
                }
            }
            for (bar, g) in bars.iter().zip(&groups) {
                bar.set_position(ended(&g["states"]));
                bar.set_message(group_line(g));
            }
        } else {
            let line = format!(
                "{} {}: {}",
                text(&rollout["name"]),
                text(&rollout["state"]),
                groups
                    .iter()
                    .map(|g| format!(
                        "[{}] {}/{}",
                        text(&g["group"]),
                        ended(&g["states"]),
                        text(&g["size"])
                    ))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            if line != last && !out.json {
                println!("{line}");
                last = line;
            }
        }
        let state = text(&rollout["state"]);
        if SETTLED.contains(&state.as_str()) {
            for bar in &bars {
                bar.finish();
            }
            out.show(&rollout, || print_rollout(&rollout));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
