use super::*;
use UpdateState::*;

fn check(
    execution: &str,
    finished: Option<&str>,
    details: &[&str],
    current: UpdateState,
    expected: Report,
) {
    let details: Vec<String> = details.iter().map(|d| d.to_string()).collect();
    let got =
        report_of(execution, finished, None, &details, current).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        got, expected,
        "{execution}/{finished:?} {details:?} at {current}"
    );
}

fn reached(state: UpdateState) -> Report {
    Report::Reached {
        state,
        progress: None,
    }
}

#[test]
fn feedback_maps_onto_the_shared_states() {
    check("closed", Some("success"), &[], Initiated, Report::Succeeded);
    check(
        "proceeding",
        Some("none"),
        &["Downloading 40%"],
        Initiated,
        reached(Downloading),
    );
    check("proceeding", None, &[], Verified, reached(Verified));
    check(
        "download",
        Some("none"),
        &[],
        Initiated,
        reached(Downloading),
    );
    check(
        "downloaded",
        Some("none"),
        &[],
        Downloading,
        reached(Downloaded),
    );
    check(
        "proceeding",
        Some("none"),
        &["Verified sha256"],
        Downloaded,
        reached(Verified),
    );
    check(
        "proceeding",
        Some("none"),
        &["Installing: /dev/mmcblk0p2"],
        Verified,
        reached(Updating),
    );
    check("scheduled", Some("none"), &[], Queued, reached(Initiated));
    check(
        "resumed",
        Some("none"),
        &[],
        Initiated,
        reached(Downloading),
    );
    check(
        "canceled",
        Some("success"),
        &[],
        Downloading,
        Report::Canceled,
    );
    let integrity = Report::Failed(Failure {
        code: FailureCode::IntegrityCheckFailed,
        reason: "sha256 mismatch".into(),
    });
    check(
        "closed",
        Some("failure"),
        &["sha256 mismatch"],
        Downloading,
        integrity,
    );
    let generic = Report::Failed(Failure {
        code: FailureCode::UpdateFailed,
        reason: "the device reported a failure".into(),
    });
    check("proceeding", Some("failure"), &[], Downloading, generic);
    let rejected = Report::Failed(Failure {
        code: FailureCode::UnsupportedPackage,
        reason: "rejected: wrong board".into(),
    });
    check(
        "rejected",
        Some("none"),
        &["wrong board"],
        Initiated,
        rejected,
    );
    assert!(report_of("exploded", None, None, &[], Initiated).is_err());
}

#[test]
fn failure_texts_map_to_codes() {
    for (text, code) in [
        (
            "integrity check failed: sha256 differs",
            FailureCode::IntegrityCheckFailed,
        ),
        (
            "Signature verification failed",
            FailureCode::IntegrityCheckFailed,
        ),
        ("No space left on device", FailureCode::NotEnoughStorage),
        ("out of memory", FailureCode::OutOfMemory),
        ("connection reset by peer", FailureCode::ConnectionLost),
        (
            "rolled back after 3 failed boots",
            FailureCode::UpdateFailed,
        ),
    ] {
        assert_eq!(FailureCode::from_text(text), code, "{text}");
    }
}

#[test]
fn sleep_is_hours_minutes_seconds() {
    assert_eq!(sleep_text(300), "00:05:00");
    assert_eq!(sleep_text(3661), "01:01:01");
    assert_eq!(sleep_text(5), "00:00:05");
}
