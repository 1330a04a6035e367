//! `updraft sim` at a thousand devices over every protocol it speaks: with no fault injected every
//! device ends UPDATED, and with faults exactly the devices whose faults that protocol turns into a
//! failure end FAILED (the summary's `expected_failed`), the others UPDATED.

use serde_json::Value;
use updraft_test_support::server::ServerProcess;

use crate::{Cli, binary, firmware};

const DEVICES: u64 = 1000;

/// One campaign on a fresh server (the simulator counts the tenant's updates): `image` bytes of
/// firmware assigned to `DEVICES` simulated devices, run to the end; the summary.
fn campaign(protocol: &str, image: usize, faults: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&binary(), &dir.path().join("data"), &[]).unwrap();
    let cli = Cli {
        server: &server,
        token: server.admin_token().unwrap(),
        cwd: dir.path().to_path_buf(),
    };
    let file = dir.path().join("fw.bin");
    std::fs::write(&file, firmware(image)).unwrap();
    cli.ok(&[
        "artifact",
        "upload",
        file.to_str().unwrap(),
        "--title",
        "fw",
        "--version",
        "2",
    ]);
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
    if protocol == "thingsboard" {
        args.extend(["--mqtt", &mqtt]);
    }
    args.extend(faults);
    let summary = cli.json(&args);
    server.kill().unwrap();
    summary
}

fn count(summary: &Value, state: &str) -> u64 {
    summary["final_states"][state].as_u64().unwrap_or(0)
}

fn at_a_thousand_devices(protocol: &str, image: usize) {
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
