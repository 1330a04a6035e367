//! `updraft sim` at a thousand devices over every protocol it speaks: with no fault injected every
//! device ends UPDATED, and with faults exactly the devices whose faults that protocol turns into a
//! failure end FAILED (the summary's `expected_failed`), the others UPDATED.

use serde_json::Value;

use crate::{Cli, serve};

const DEVICES: u64 = 1000;

/// One campaign on a fresh server (the simulator counts the tenant's updates): `image` bytes of
/// firmware assigned to `DEVICES` simulated devices, run to the end; the summary.
fn campaign(protocol: &str, image: usize, faults: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let cli = Cli::admin(&server, dir.path());
    // AWS IoT devices take signed updates only.
    let signature = stand_in_signature(dir.path());
    let signed = ["--signature-file", signature.as_str()];
    cli.upload(
        image,
        "fw",
        "2",
        if protocol == "aws" { &signed } else { &[] },
    );
    let devices = DEVICES.to_string();
    let mut args = vec![
        "sim",
        "--protocol",
        protocol,
        "--devices",
        &devices,
        "--poll",
        "0.5",
        "--assign",
        "fw@2",
        "--until-done",
        "--timeout",
        "280",
        "--seed",
        "7",
    ];
    let mqtt = server.mqtt.clone().unwrap_or_default();
    let lwm2m = server.lwm2m.clone().unwrap_or_default();
    args.extend(["--mqtt", &mqtt, "--lwm2m", &lwm2m]);
    args.extend(faults);
    let summary = cli.json(&args);
    server.kill().unwrap();
    summary
}

/// A file holding a stand-in code signature (base64 of DER-shaped bytes): the server keeps an
/// artifact's signature unchecked when no compatible profile has a signing certificate, and the
/// simulated devices do not verify it.
pub(crate) fn stand_in_signature(dir: &std::path::Path) -> String {
    let path = dir.join("fw.sig");
    std::fs::write(
        &path,
        "MEUCIQDkZmFrZS1zaWduYXR1cmUtZm9yLXRlc3RzAiB0aGUtZGV2aWNlLWNoZWNrcy1pdA==\n",
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn count(summary: &Value, state: &str) -> u64 {
    summary["final_states"][state].as_u64().unwrap_or(0)
}

/// One thousand-device campaign at a time: four at once on two cores measure the machine, not the
/// simulator.
pub(crate) static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn at_a_thousand_devices(protocol: &str, image: usize) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let clean = campaign(protocol, image, &[]);
    assert_eq!(count(&clean, "UPDATED"), DEVICES, "{protocol}: {clean}");
    assert!(
        clean["bytes"].as_u64().unwrap() >= DEVICES * image as u64,
        "{clean}"
    );

    let faulty = campaign(
        protocol,
        image,
        &[
            "--drop-download",
            "0.05",
            "--corrupt",
            "0.05",
            "--fail-health",
            "0.05",
        ],
    );
    let expected = faulty["expected_failed"].as_u64().unwrap();
    assert_eq!(count(&faulty, "FAILED"), expected, "{protocol}: {faulty}");
    assert_eq!(
        count(&faulty, "UPDATED"),
        DEVICES - expected,
        "{protocol}: {faulty}"
    );
}

#[test]
fn ddi_agents_at_a_thousand_devices() {
    at_a_thousand_devices("ddi", 20_000);
}

/// The case: 300 devices, a 1 MB image, all ended FAILED when attribute messages were
/// hashed as firmware. Here 1,000 devices, 64 KiB in four chunks each.
#[test]
fn thingsboard_devices_at_a_thousand_devices() {
    at_a_thousand_devices("thingsboard", 64 * 1024);
}

#[test]
fn frugal_nodes_at_a_thousand_devices() {
    at_a_thousand_devices("frugal", 20_000);
}

#[test]
fn drogue_devices_at_a_thousand_devices() {
    at_a_thousand_devices("drogue", 2_000);
}

/// LwM2M clients on UDP: observed State and Update Result, an HTTP Package URI, Execute, and a
/// new registration after the restart.
#[test]
fn lwm2m_clients_at_a_thousand_devices() {
    at_a_thousand_devices("lwm2m", 20_000);
}

/// AWS IoT OTA devices: jobs, an MQTT stream in JSON blocks, the self test after a restart.
#[test]
fn aws_iot_devices_at_a_thousand_devices() {
    at_a_thousand_devices("aws", 20_000);
}

/// An artifact for named profiles never reaches devices of another profile: the simulator says so
/// at once instead of waiting out its timeout; with no profile given its devices take the
/// artifact's.
#[test]
fn the_simulator_refuses_an_assignment_that_reaches_none_of_its_devices() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let cli = Cli::admin(&server, dir.path());
    cli.ok(&["profile", "create", "esp32"]);
    cli.upload(5_000, "fw", "1", &["--profile", "esp32"]);
    let sim = |profile: Option<&str>| {
        let mut args = vec![
            "sim",
            "--devices",
            "3",
            "--poll",
            "0.2",
            "--assign",
            "fw@1",
            "--until-done",
            "--timeout",
            "120",
        ];
        if let Some(profile) = profile {
            args.extend(["--profile", profile]);
        }
        cli.run(&args)
    };
    let refused = sim(Some("esp8266"));
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("artifact_incompatible"), "{said}");
    let ran = sim(None);
    assert!(ran.status.success());
    let said = String::from_utf8_lossy(&ran.stderr);
    assert!(said.contains("take profile esp32"), "{said}");
    let out = String::from_utf8_lossy(&ran.stdout);
    assert!(out.contains("\"UPDATED\":3"), "{out}");
    // Once its update ended, `device show` still says how (and when, in RFC 3339).
    let shown = cli.json(&["device", "show", "sim-0"]);
    assert!(shown["active_action"].is_null(), "{shown}");
    assert_eq!(shown["latest_action"]["state"], "UPDATED", "{shown}");
    let text = cli.ok(&["device", "show", "sim-0"]);
    assert!(text.contains("last update"), "{text}");
    assert!(text.contains("fw@1 UPDATED at 20"), "{text}");
    server.kill().unwrap();
}

/// A rollout paced to 50 downloads over 300 simulated DDI agents: the server's own gauge
/// (`updraft_rollout_downloads_in_flight`, sampled by the simulator all along) never passes 50,
/// and every device ends UPDATED.
#[test]
fn a_paced_rollout_never_has_more_downloads_in_flight_than_it_allows() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let cli = Cli::admin(&server, dir.path());
    cli.upload(200_000, "fw", "2", &[]);
    let made = cli.json(&["sim", "--devices", "300", "--create-only"]);
    assert_eq!(made["devices"], 300);
    cli.json(&[
        "rollout",
        "create",
        "paced",
        "--artifact",
        "fw@2",
        "--filter",
        "id==sim-*",
        "--max-downloads",
        "50",
    ]);
    let summary = cli.json(&[
        "sim",
        "--devices",
        "300",
        "--poll",
        "0.5",
        "--rollout",
        "paced",
        "--until-done",
        "--timeout",
        "280",
    ]);
    server.kill().unwrap();
    assert_eq!(count(&summary, "UPDATED"), 300, "{summary}");
    assert_eq!(summary["rollout"]["state"], "FINISHED", "{summary}");
    let max = summary["rollout"]["max_downloads_in_flight"]
        .as_u64()
        .unwrap();
    assert!((1..=50).contains(&max), "{summary}");
}

/// One rollout over a mixed fleet: DDI agents, ThingsBoard MQTT devices, Frugal-IoT nodes, Drogue
/// DFU devices, LwM2M clients and AWS IoT devices, dealt out in turn, go group by group to the
/// same release.
#[test]
fn one_rollout_updates_a_fleet_that_speaks_six_protocols() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let cli = Cli::admin(&server, dir.path());
    let signature = stand_in_signature(dir.path());
    cli.upload(50_000, "fw", "2", &["--signature-file", &signature]);
    let mqtt = server.mqtt.clone().unwrap();
    let lwm2m = server.lwm2m.clone().unwrap();
    let base = [
        "sim",
        "--protocol",
        "mixed",
        "--devices",
        "200",
        "--mqtt",
        &mqtt,
        "--lwm2m",
        &lwm2m,
    ];
    let made = cli.json(&[&base[..], &["--create-only"]].concat());
    assert_eq!(made["devices"], 200);
    cli.json(&[
        "rollout",
        "create",
        "mixed",
        "--artifact",
        "fw@2",
        "--filter",
        "id==sim-*",
        "--groups",
        "10%,40%,50%",
        "--success-threshold",
        "90",
    ]);
    let run = [
        "--poll",
        "0.5",
        "--rollout",
        "mixed",
        "--until-done",
        "--timeout",
        "280",
    ];
    let summary = cli.json(&[&base[..], &run[..]].concat());
    // Device i speaks the i-th protocol in turn; each update's history names its channel.
    let sources = ["ddi", "thingsboard", "frugal", "drogue", "lwm2m", "aws"];
    for (i, source) in sources.iter().enumerate() {
        let history = cli.json(&["device", "history", &format!("sim-{i}")]);
        let updated = history[0]["history"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["to"] == "UPDATED")
            .cloned()
            .unwrap_or_default();
        assert_eq!(updated["source"], *source, "sim-{i}: {history}");
    }
    server.kill().unwrap();
    assert_eq!(summary["protocol"], "mixed");
    assert_eq!(count(&summary, "UPDATED"), 200, "{summary}");
    assert_eq!(summary["rollout"]["state"], "FINISHED", "{summary}");
    let groups = summary["rollout"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    assert!(groups.iter().all(|g| g["started_at"].is_i64()), "{summary}");
}
