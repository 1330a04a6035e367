//! `updraft sim`: many virtual devices in one process against a server, for demos and load tests.
//! Over DDI each device is a real `updraft-agent` (its state machine, in-memory A/B slots); over
//! the other protocols each is a small loop that behaves like that protocol's clients
//! (ThingsBoard's SDK, ESP httpUpdate, embedded-update, an LwM2M client, an AWS IoT OTA agent).
//! Failures are injected per device from a seed: a connection dropped mid-download, corrupted
//! data, a new image that fails its health check.

mod aws;
mod ddi;
mod faults;
mod loops;
mod lwm2m;
mod rollout;

use self::aws::*;
use self::ddi::*;
use self::faults::*;
use self::loops::*;
use self::lwm2m::*;
use self::rollout::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use updraft_agent::AgentError;
use updraft_agent::agent::{Agent, AgentConfig, Hooks, Outcome};
use updraft_agent::flash::{Flash, HashFlash};
use updraft_agent::server::{
    DdiClient, Delivery, Download, Feedback, Offer, PollAnswer, UpdateServer,
};
use updraft_agent::state::Release;
use updraft_agent::state::Slot;

use crate::client::Client;

/// What `updraft sim` was asked to do.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// How many devices.
    #[arg(long, default_value_t = 50)]
    pub devices: usize,
    /// ddi, drogue, frugal, thingsboard (MQTT), lwm2m (CoAP), aws (AWS IoT Jobs over MQTT), or
    /// mixed: the fleet split among all six in turn.
    #[arg(long, default_value = "ddi")]
    pub protocol: String,
    /// The server's device MQTT address, for thingsboard and aws (default: the server's host,
    /// port 1883).
    #[arg(long)]
    pub mqtt: Option<String>,
    /// The server's LwM2M (CoAP, UDP) address, for lwm2m (default: the server's host, port 5685).
    #[arg(long)]
    pub lwm2m: Option<String>,
    /// Seconds between polls.
    #[arg(long, default_value_t = 5.0)]
    pub poll: f64,
    /// Random share of the poll interval added or taken away (0 to 1).
    #[arg(long, default_value_t = 0.2)]
    pub jitter: f64,
    /// Device ids are PREFIX-0, PREFIX-1, …; existing devices are reused only if created by sim.
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Profile for new devices (created if missing).
    #[arg(long)]
    pub profile: Option<String>,
    /// Tag for new devices.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Assign this artifact (TITLE@VERSION) to the simulated devices' profile (or the tenant)
    /// once they run.
    #[arg(long, conflicts_with = "rollout")]
    pub assign: Option<String>,
    /// Run against this rollout (created over the simulated devices): start it if it is READY,
    /// follow its groups, and with --until-done stop when it finishes, halts or is canceled.
    #[arg(long)]
    pub rollout: Option<String>,
    /// Create (or check) the simulated devices and exit, so that a rollout can target them.
    #[arg(long)]
    pub create_only: bool,
    /// Share of devices whose connection drops once mid-download.
    #[arg(long, default_value_t = 0.0)]
    pub drop_download: f64,
    /// Share of devices that receive corrupted data.
    #[arg(long, default_value_t = 0.0)]
    pub corrupt: f64,
    /// Share of devices whose new image fails its health check.
    #[arg(long, default_value_t = 0.0)]
    pub fail_health: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop once every simulated device's update has ended (or after --timeout seconds).
    #[arg(long)]
    pub until_done: bool,
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// Measurements shared by every device.
#[derive(Default)]
struct Stats {
    poll_latencies: Mutex<Vec<Duration>>,
    time_to_updated: Mutex<Vec<Duration>>,
    bytes: AtomicU64,
    errors: AtomicU64,
}

fn percentile(values: &mut [Duration], p: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort();
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(index).copied()
}

struct DeviceSpec {
    id: String,
    token: String,
    faults: Faults,
    sleep: Duration,
}

/// The profile the simulated devices take so that `release` reaches them: the one asked for if
/// the artifact runs on it, else the artifact's first profile. An artifact that runs on named
/// profiles only would never reach profile-less devices: say so now, not after `--timeout`.
async fn profile_for(
    client: &Client,
    release: &str,
    asked: Option<String>,
) -> Result<Option<String>> {
    let artifact = client.artifact(release).await?;
    let profiles: Vec<String> = artifact["profiles"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if profiles.is_empty() {
        return Ok(asked);
    }
    match asked {
        Some(profile) if profiles.contains(&profile) => Ok(Some(profile)),
        Some(profile) => bail!(
            "{release} runs on profile {} only, not on {profile:?}: assigned, it would reach none \
             of the simulated devices (artifact_incompatible); pass --profile {} or none",
            profiles.join(", "),
            profiles[0]
        ),
        None => {
            eprintln!(
                "simulated devices take profile {} ({release} runs on {})",
                profiles[0],
                profiles.join(", ")
            );
            Ok(Some(profiles[0].clone()))
        }
    }
}

async fn ensure_devices(client: &Client, args: &SimArgs) -> Result<Vec<(String, String)>> {
    if let Some(profile) = &args.profile {
        let _ = client
            .post("/api/v1/profiles", &json!({"name": profile}))
            .await;
    }
    let mut devices = Vec::with_capacity(args.devices);
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..args.devices {
        let id = format!("{}-{i}", args.prefix);
        // A known token per simulated device, so that a second run reuses the devices.
        let token = format!("{}-token-{i:08}", args.prefix);
        let body = json!({"id": id, "token": token, "profile": args.profile, "tags": args.tags});
        let request = client
            .request(reqwest::Method::POST, "/api/v1/devices")
            .json(&body);
        // A Frugal node's credential is an OTA key of its own, made anew each run.
        let frugal_key = (protocol_of(&args.protocol, i) == "frugal").then(|| {
            client.request(
                reqwest::Method::POST,
                &format!("/api/v1/devices/{id}/frugal-key"),
            )
        });
        let limit = limit.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await;
            let status = request.send().await?.status();
            let key = match frugal_key {
                Some(request) => {
                    let answer = request.send().await?.error_for_status()?;
                    let key: serde_json::Value = answer.json().await?;
                    key["secret"].as_str().map(str::to_owned)
                }
                None => None,
            };
            Ok::<_, reqwest::Error>((status, key))
        }));
        devices.push((id, token));
    }
    for (task, device) in tasks.into_iter().zip(devices.iter_mut()) {
        let (status, key) = task.await?.context("creating a simulated device")?;
        if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
            bail!("creating a simulated device answered {status}");
        }
        if let Some(key) = key {
            device.1 = key;
        }
    }
    Ok(devices)
}

/// The protocols `--protocol mixed` deals the fleet out to, device by device.
const MIXED: [&str; 6] = ["ddi", "thingsboard", "frugal", "drogue", "lwm2m", "aws"];

/// The protocol simulated device `i` speaks.
fn protocol_of(protocol: &str, i: usize) -> &str {
    if protocol == "mixed" {
        MIXED[i % MIXED.len()]
    } else {
        protocol
    }
}

/// How often a simulation not on a terminal prints a progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

const STATES: [&str; 9] = [
    "QUEUED",
    "INITIATED",
    "DOWNLOADING",
    "DOWNLOADED",
    "VERIFIED",
    "UPDATING",
    "UPDATED",
    "FAILED",
    "CANCELED",
];

/// Runs the simulation; prints a summary at the end.
pub async fn run(client: &Client, mut args: SimArgs, json_output: bool) -> Result<()> {
    if !matches!(
        args.protocol.as_str(),
        "ddi" | "drogue" | "frugal" | "thingsboard" | "lwm2m" | "aws" | "mixed"
    ) {
        bail!(
            "unknown protocol {:?}: use ddi, drogue, frugal, thingsboard, lwm2m, aws or mixed",
            args.protocol
        );
    }
    let host = client
        .base
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let host = host.split(['/', ':']).next().unwrap_or("127.0.0.1");
    let mqtt = args.mqtt.clone().unwrap_or_else(|| format!("{host}:1883"));
    let lwm2m = lwm2m_address(args.lwm2m.as_deref(), host).await?;
    let rollout_path = args
        .rollout
        .as_ref()
        .map(|name| format!("/api/v1/rollouts/{name}"));
    let release = match &rollout_path {
        Some(path) => {
            let rollout = client.get(path).await.context("finding the rollout")?;
            Some(rollout["artifact"].as_str().unwrap_or_default().to_owned())
        }
        None => args.assign.clone(),
    };
    if let Some(release) = &release {
        args.profile = profile_for(client, release, args.profile.take()).await?;
        if (0..args.devices).any(|i| protocol_of(&args.protocol, i) == "aws") {
            require_signed(client, release).await?;
        }
    }
    let devices = ensure_devices(client, &args).await?;
    if args.create_only {
        if json_output {
            println!(
                "{}",
                json!({"devices": devices.len(), "prefix": args.prefix})
            );
        } else {
            println!("{} {} devices ready", devices.len(), args.prefix);
        }
        return Ok(());
    }
    let stats = Arc::new(Stats::default());
    // Spread the seed's bits so that small seeds do not start from small states.
    let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    for _ in 0..8 {
        rng.next();
    }
    let mut injected = [0u64; 3];
    let mut expected_failed = 0u64;
    let http = updraft_agent::server::http_client()
        .pool_max_idle_per_host(args.devices.max(1))
        .build()?;
    let started = Instant::now();
    for (i, (id, token)) in devices.into_iter().enumerate() {
        let protocol = protocol_of(&args.protocol, i);
        let (applies, failing) = Faults::model(protocol);
        // Drawn for every protocol alike, so that a seed picks the same devices whatever it runs.
        let faults = Faults {
            drop_download: rng.unit() < args.drop_download,
            corrupt: rng.unit() < args.corrupt,
            fail_health: rng.unit() < args.fail_health,
        }
        .within(applies);
        expected_failed += u64::from(faults.fails(failing));
        injected[0] += u64::from(faults.drop_download);
        injected[1] += u64::from(faults.corrupt);
        injected[2] += u64::from(faults.fail_health);
        let jitter = 1.0 + args.jitter.clamp(0.0, 1.0) * (rng.unit() * 2.0 - 1.0);
        let sleep = Duration::from_secs_f64((args.poll * jitter).max(0.01));
        let spec = DeviceSpec {
            id,
            token,
            faults,
            sleep,
        };
        let (server, http, stats) = (client.base.clone(), http.clone(), stats.clone());
        match protocol {
            "drogue" => tokio::spawn(drogue_device(server, http, spec, stats, started)),
            "thingsboard" => tokio::spawn(thingsboard_device(mqtt.clone(), spec, stats, started)),
            "frugal" => tokio::spawn(frugal_device(server, http, spec, stats, started)),
            "lwm2m" => tokio::spawn(lwm2m_device(lwm2m, http, spec, stats, started)),
            "aws" => tokio::spawn(aws_device(mqtt.clone(), spec, stats, started)),
            _ => tokio::spawn(ddi_device(server, http, spec, stats, started)),
        };
    }
    if let Some(release) = &args.assign {
        let mut body = json!({"artifact": release});
        match &args.profile {
            Some(profile) => body["profile"] = json!(profile),
            None => body["tenant_default"] = json!(true),
        }
        client
            .post("/api/v1/assignments", &body)
            .await
            .context("assigning")?;
    }
    if let Some(path) = &rollout_path {
        let rollout = client.get(path).await?;
        if rollout["state"] == "READY" {
            client
                .post(&format!("{path}/start"), &json!({}))
                .await
                .context("starting the rollout")?;
        }
    }

    let bars = MultiProgress::new();
    // Not on a terminal (CI logs, pipes): a progress line every few seconds instead of bars.
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !on_terminal {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last_line = Instant::now();
    let style = ProgressStyle::with_template("{prefix:>12} {bar:40} {pos}/{len}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let by_state: Vec<ProgressBar> = STATES
        .iter()
        .map(|state| {
            let bar = bars.add(ProgressBar::new(args.devices as u64));
            bar.set_style(style.clone());
            bar.set_prefix(*state);
            bar
        })
        .collect();
    let deadline = started + Duration::from_secs(args.timeout);
    let mut counts;
    let mut rollout = Value::Null;
    let mut max_in_flight = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let history = device_states(client, &args).await.unwrap_or_default();
        counts = serde_json::Map::new();
        for state in &history {
            let n = counts.get(state).and_then(Value::as_u64).unwrap_or(0);
            counts.insert(state.clone(), json!(n + 1));
        }
        for (bar, state) in by_state.iter().zip(STATES) {
            bar.set_position(counts.get(state).and_then(Value::as_u64).unwrap_or(0));
        }
        let finished = history
            .iter()
            .filter(|s| matches!(s.as_str(), "UPDATED" | "FAILED" | "CANCELED"))
            .count();
        if let Some(path) = &rollout_path {
            rollout = client.get(path).await.unwrap_or(rollout);
            // The server's own gauge of what pacing bounds.
            if let Some(n) = downloads_in_flight(client).await {
                max_in_flight = max_in_flight.max(n);
            }
        }
        if !on_terminal && last_line.elapsed() >= PROGRESS_EVERY {
            last_line = Instant::now();
            eprintln!(
                "{:>6.1} s  {finished}/{} ended  {}{}",
                started.elapsed().as_secs_f64(),
                args.devices,
                Value::Object(counts.clone()),
                group_progress(&rollout)
            );
        }
        let done = if rollout_path.is_some() {
            args.until_done
                && matches!(
                    rollout["state"].as_str(),
                    Some("FINISHED" | "HALTED" | "CANCELED")
                )
        } else {
            args.until_done && args.assign.is_some() && finished == args.devices
        };
        if done || (args.until_done && Instant::now() > deadline) {
            break;
        }
    }
    for bar in by_state {
        bar.finish_and_clear();
    }
    let duration = started.elapsed();
    let mut polls = stats
        .poll_latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let mut updated = stats
        .time_to_updated
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let summary = json!({
        "devices": args.devices,
        "protocol": args.protocol,
        "final_states": counts,
        "campaign_seconds": duration.as_secs_f64(),
        "poll_latency_ms": {"p50": ms(percentile(&mut polls, 0.5)), "p99": ms(percentile(&mut polls, 0.99)), "count": polls.len()},
        "time_to_updated_ms": {"p50": ms(percentile(&mut updated, 0.5)), "p99": ms(percentile(&mut updated, 0.99)), "count": updated.len()},
        "bytes": stats.bytes.load(Ordering::Relaxed),
        "errors": stats.errors.load(Ordering::Relaxed),
        "injected": {"drop_download": injected[0], "corrupt": injected[1], "fail_health": injected[2]},
        // Devices whose injected faults end their update FAILED on this protocol.
        "expected_failed": expected_failed,
        "rollout": rollout_summary(&rollout, max_in_flight),
    });
    if json_output {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        println!(
            "{} {} devices, {:.1} s",
            args.devices,
            args.protocol,
            duration.as_secs_f64()
        );
        println!(
            "final states   {}",
            Value::Object(
                summary["final_states"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
            )
        );
        let show = |v: &Value| {
            v.as_f64()
                .map(|ms| format!("{ms:.1} ms"))
                .unwrap_or_else(|| "-".to_owned())
        };
        let line = |name: &str, key: &str| {
            println!(
                "{name:<14} p50 {}, p99 {}",
                show(&summary[key]["p50"]),
                show(&summary[key]["p99"])
            );
        };
        line("poll latency", "poll_latency_ms");
        line("to UPDATED", "time_to_updated_ms");
        println!("bytes          {}", summary["bytes"]);
        println!("errors         {}", summary["errors"]);
        println!(
            "injected       {} ({} should end FAILED)",
            summary["injected"], expected_failed
        );
        if !rollout.is_null() {
            println!(
                "rollout        {} {}",
                text(&rollout["name"]),
                text(&rollout["state"])
            );
            for group in rollout["groups"].as_array().into_iter().flatten() {
                println!(
                    "  group {:<3} {:>6} devices  {}",
                    text(&group["group"]),
                    text(&group["size"]),
                    group["states"]
                );
            }
        }
    }
    Ok(())
}

/// The state of each device's latest update in the tenant, as the server counts them (the
/// simulated devices are the fleet the simulation watches).
async fn device_states(client: &Client, _args: &SimArgs) -> Result<Vec<String>> {
    let status = client.get("/api/v1/status").await?;
    let mut states = Vec::new();
    if let Some(actions) = status["actions"].as_object() {
        for (state, n) in actions {
            for _ in 0..n.as_u64().unwrap_or(0) {
                states.push(state.clone());
            }
        }
    }
    Ok(states)
}
