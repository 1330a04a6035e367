//! Test harness shared by Updraft's test suites: a throwaway PostgreSQL started from the
//! system's binaries (or the one `DATABASE_URL` names), and helpers to require external tools.
//! Absence of a required tool is loud; under `CI=true` it fails the test instead of skipping.

pub mod haproxy;
pub mod postgres;
pub mod s3;
pub mod server;

/// How long a test waits on the network for one thing before it fails.
pub const NETWORK_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

/// How long a device client run as a process (an SDK's whole update, a CoAP download) may take.
pub const PROCESS_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Runs a device client to its end within [`PROCESS_WAIT`]; a client that hangs is killed and
/// the test fails naming it. `Err` when the program cannot be started (missing).
#[track_caller]
pub fn run_bounded(
    command: &mut tokio::process::Command,
) -> impl std::future::Future<Output = std::io::Result<std::process::Output>> + '_ {
    let caller = std::panic::Location::caller();
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    command.kill_on_drop(true);
    async move {
        match tokio::time::timeout(PROCESS_WAIT, command.output()).await {
            Ok(output) => output,
            Err(_) => panic!("{program} did not finish within {PROCESS_WAIT:?} at {caller}"),
        }
    }
}

/// Awaits `wait` for at most [`NETWORK_WAIT`]: a hang is a failure that says where, not CI's
/// 90-minute limit.
#[track_caller]
pub fn within<F: std::future::Future>(wait: F) -> impl std::future::Future<Output = F::Output> {
    let caller = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(NETWORK_WAIT, wait).await {
            Ok(output) => output,
            Err(_) => panic!("no answer within {NETWORK_WAIT:?} at {caller}"),
        }
    }
}

/// Whether we run under CI, where a missing tool is a failure and never a skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports that `what` is missing: panics under CI, otherwise prints a loud warning and returns
/// so the caller can skip.
pub fn missing(what: &str, how_to_fix: &str) {
    let message = format!("{what} is not available: {how_to_fix}");
    if under_ci() {
        panic!("CI=true and {message}");
    }
    eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
}

/// The Python with the interop clients (`scripts/test.sh` makes it: `UPDRAFT_TEST_PYTHON`, or
/// `.venv-interop/bin/python` at the workspace root), or `None` after a loud warning (a failure
/// under CI).
pub fn interop_python() -> Option<std::path::PathBuf> {
    let candidate = match std::env::var_os("UPDRAFT_TEST_PYTHON") {
        Some(path) => std::path::PathBuf::from(path),
        None => std::path::Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
        )
        .join("../../.venv-interop/bin/python"),
    };
    if candidate.exists() {
        return Some(candidate);
    }
    missing(
        "the Python interop clients",
        "run scripts/test.sh, which creates .venv-interop with tb-mqtt-client",
    );
    None
}

/// `node` and the `node_modules` directory with the interop clients (`scripts/test.sh` installs
/// them into `.node-interop` at the workspace root), or `None` after a loud warning (a failure
/// under CI).
pub fn interop_node() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let modules = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
    )
    .join("../../.node-interop/node_modules");
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if node && modules.join("lwm2m-node-lib").exists() {
        return Some((std::path::PathBuf::from("node"), modules));
    }
    missing(
        "Node.js with lwm2m-node-lib",
        "run scripts/test.sh, which installs lwm2m-node-lib@1.4.0 into .node-interop",
    );
    None
}

/// `curl` fetching `url` (with a `Range` header if given) and printing the body, then the
/// status on a line of its own; [`curl_answer`] splits its output. (A real HTTP client with no
/// opinion about redirects or ranges: what a device or a script sees.)
pub fn curl_get(url: &str, range: Option<&str>) -> std::process::Command {
    let mut command = std::process::Command::new("curl");
    command.args(["-s", "-o", "-", "-w", "\n%{http_code}"]);
    if let Some(range) = range {
        command.args(["-H", &format!("Range: {range}")]);
    }
    command.arg(url);
    command
}

/// (status, body) from the output of [`curl_get`].
pub fn curl_answer(mut stdout: Vec<u8>) -> (u16, Vec<u8>) {
    let split = stdout
        .iter()
        .rposition(|b| *b == b'\n')
        .expect("curl printed its status line");
    let status = String::from_utf8_lossy(&stdout[split + 1..])
        .parse()
        .expect("curl's status is a number");
    stdout.truncate(split);
    (status, stdout)
}
