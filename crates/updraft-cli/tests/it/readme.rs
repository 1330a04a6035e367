//! The README's CLI tour and rollout walkthrough, run as written: every `sh` block of their sections against
//! a real server (the server start itself is the harness's, and `updraft` is this build).

use std::process::Command;

use crate::binary;

/// The shell blocks of the README section that starts with `heading`.
fn tour(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"),
    )
    .unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .expect("the README has the section");
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```sh" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(block.join("\n"));
        }
    }
    blocks
}

#[test]
fn the_readme_cli_tour_runs_as_written() {
    runs_as_written("Five minutes with the CLI", 3);
}

#[test]
fn the_readme_rollout_walkthrough_runs_as_written() {
    runs_as_written("Rollouts", 1);
}

/// Runs the `sh` blocks of the section (at least `blocks`) against a fresh server.
fn runs_as_written(heading: &str, at_least: usize) {
    let blocks = tour(heading);
    assert!(blocks.len() >= at_least, "{blocks:?}");
    let dir = tempfile::tempdir().unwrap();
    let server = crate::serve(dir.path());
    let token = server.admin_token().unwrap();
    for block in blocks {
        // The server is running already; `updraft` is the binary under test.
        let script: Vec<&str> = block
            .lines()
            .filter(|l| !l.starts_with("scripts/serve.sh") && !l.starts_with("alias "))
            .collect();
        let script = format!(
            "set -euo pipefail\nupdraft() {{ {:?} \"$@\"; }}\n{}\n",
            binary(),
            script.join("\n")
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .env("UPDRAFT_SERVER", &server.url)
            .env("UPDRAFT_TOKEN", &token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the README's block failed:\n{script}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    server.kill().unwrap();
}
