//! Test harness shared by Updraft's test suites: a throwaway PostgreSQL started from the
//! system's binaries (or the one `DATABASE_URL` names), and helpers to require external tools.
//! Absence of a required tool is loud; under `CI=true` it fails the test instead of skipping.

pub mod postgres;
pub mod server;

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
