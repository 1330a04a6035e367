#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn sizes(groups: &str, total: u64) -> Result<Vec<u64>, &'static str> {
    let groups = parse_groups(groups).map_err(|e| e.code)?;
    group_sizes(total, &groups).map_err(|e| e.code)
}

#[test]
fn groups_split_the_target_exactly() {
    assert_eq!(sizes("10%,40%,50%", 1000), Ok(vec![100, 400, 500]));
    assert_eq!(sizes("5,100,rest", 1000), Ok(vec![5, 100, 895]));
    assert_eq!(sizes("1, 10% ,rest", 50), Ok(vec![1, 5, 44]));
    assert_eq!(sizes("rest", 3), Ok(vec![3]));
    // Rounding leftovers go to the last share.
    assert_eq!(sizes("50%,50%", 3), Ok(vec![1, 2]));
    assert_eq!(sizes("33%,33%,34%", 10), Ok(vec![3, 3, 4]));
    let total: u64 = sizes("1%,9%,rest", 123_457).unwrap().iter().sum();
    assert_eq!(total, 123_457);
}

#[test]
fn groups_that_do_not_add_up_are_refused() {
    assert_eq!(sizes("10%,40%", 100), Err("bad_groups"), "only 50%");
    assert_eq!(sizes("60%,50%", 100), Err("bad_groups"), "110%");
    assert_eq!(
        sizes("5,10", 100),
        Err("bad_groups"),
        "15 of 100 without rest"
    );
    assert_eq!(
        sizes("50,60", 100),
        Err("bad_groups"),
        "more than the target"
    );
    assert_eq!(sizes("rest,rest", 10), Err("bad_groups"));
    assert_eq!(
        sizes("10%,40%,50%", 7),
        Err("bad_groups"),
        "an empty first group"
    );
    assert_eq!(sizes("0%,rest", 10), Err("bad_groups"));
    assert_eq!(sizes("101%", 10), Err("bad_groups"));
    assert_eq!(sizes("ten", 10), Err("bad_groups"));
    assert_eq!(sizes("", 10), Err("bad_groups"));
    assert_eq!(sizes("rest", 0), Err("empty_target"));
    let many = vec!["1"; MAX_GROUPS + 1].join(",");
    assert_eq!(sizes(&many, 1000), Err("bad_groups"));
}

#[test]
fn lifecycle_commands_follow_the_state_machine() {
    use Command::*;
    use Lifecycle::*;
    assert_eq!(command(Ready, Start), Ok(Running));
    assert_eq!(command(Running, Pause), Ok(Paused));
    assert_eq!(command(Paused, Resume), Ok(Running));
    assert_eq!(command(Halted, Resume), Ok(Running));
    for from in [Ready, Running, Paused, Halted] {
        assert_eq!(command(from, Cancel), Ok(Canceled));
    }
    // Starting twice, resuming a canceled one, anything of a finished one.
    assert_eq!(command(Running, Start).unwrap_err().code, "rollout_state");
    assert!(command(Canceled, Resume).is_err());
    assert!(command(Canceled, Cancel).is_err());
    assert!(command(Finished, Pause).is_err());
    assert!(command(Creating, Start).is_err());
    for l in Lifecycle::ALL {
        assert_eq!(Lifecycle::parse(l.as_str()), Some(l));
    }
}

const T: Thresholds = Thresholds {
    success_pct: 80,
    error_pct: 10,
    soak_millis: 60_000,
};

fn group(size: u64, updated: u64, failed: u64, started: bool) -> GroupProgress {
    GroupProgress {
        size,
        updated,
        failed,
        failed_accepted: 0,
        dropped: 0,
        started_at: started.then_some(0),
        passed_at: None,
    }
}

#[test]
fn the_next_group_starts_after_the_threshold_and_the_soak() {
    let mut groups = vec![group(10, 0, 0, false), group(40, 0, 0, false)];
    assert_eq!(
        next_step(Lifecycle::Running, &groups, &T, 0),
        Step::Start(0)
    );
    assert_eq!(next_step(Lifecycle::Paused, &groups, &T, 0), Step::Wait);
    groups[0].started_at = Some(0);
    groups[0].updated = 7;
    assert_eq!(next_step(Lifecycle::Running, &groups, &T, 1), Step::Wait);
    groups[0].updated = 8;
    assert_eq!(
        next_step(Lifecycle::Running, &groups, &T, 1_000),
        Step::Passed(0)
    );
    groups[0].passed_at = Some(1_000);
    assert_eq!(
        next_step(Lifecycle::Running, &groups, &T, 60_999),
        Step::Wait
    );
    assert_eq!(
        next_step(Lifecycle::Running, &groups, &T, 61_000),
        Step::Start(1)
    );
    groups[1].started_at = Some(61_000);
    groups[1].updated = 40;
    groups[1].passed_at = Some(70_000);
    // The last group passed, but group 0 still has devices under way.
    assert_eq!(
        next_step(Lifecycle::Running, &groups, &T, 200_000),
        Step::Wait
    );
    groups[0].updated = 9;
    groups[0].dropped = 1;
    assert_eq!(
        next_step(Lifecycle::Running, &groups, &T, 200_000),
        Step::Finish
    );
}

#[test]
fn resuming_accepts_the_failures_that_halted_it() {
    let mut groups = vec![group(20, 5, 3, true), group(80, 0, 0, false)];
    assert_eq!(next_step(Lifecycle::Running, &groups, &T, 0), Step::Halt(0));
    groups[0].failed_accepted = 3;
    assert_eq!(next_step(Lifecycle::Running, &groups, &T, 0), Step::Wait);
    // Three more failures are beyond 10% again.
    groups[0].failed = 6;
    assert_eq!(next_step(Lifecycle::Running, &groups, &T, 0), Step::Halt(0));
}

#[test]
fn devices_out_of_the_reckoning_do_not_hold_a_group_back() {
    // 80% of 10, but two were superseded by a newer rollout: 7 of the 8 left pass.
    let mut groups = vec![group(10, 6, 0, true), group(10, 0, 0, false)];
    groups[0].dropped = 2;
    assert_eq!(next_step(Lifecycle::Running, &groups, &T, 0), Step::Wait);
    groups[0].updated = 7;
    assert_eq!(
        next_step(Lifecycle::Running, &groups, &T, 0),
        Step::Passed(0)
    );
}

#[test]
fn failures_beyond_the_error_threshold_halt_with_later_groups_untouched() {
    let mut groups = vec![group(20, 5, 2, true), group(80, 0, 0, false)];
    // 2 of 20 is 10%: at the threshold, not beyond it.
    assert_eq!(next_step(Lifecycle::Running, &groups, &T, 0), Step::Wait);
    groups[0].failed = 3;
    assert_eq!(next_step(Lifecycle::Running, &groups, &T, 0), Step::Halt(0));
    assert_eq!(next_step(Lifecycle::Halted, &groups, &T, 0), Step::Wait);
    // An error threshold of 0%: the first failure halts.
    let strict = Thresholds { error_pct: 0, ..T };
    let one = [group(1000, 0, 1, true)];
    assert_eq!(
        next_step(Lifecycle::Running, &one, &strict, 0),
        Step::Halt(0)
    );
    assert!(
        Thresholds {
            success_pct: 101,
            ..T
        }
        .check()
        .is_err()
    );
}

#[test]
fn pacing_takes_the_tighter_bound() {
    assert_eq!(may_start(None, 0, None, 0), u64::MAX);
    assert_eq!(may_start(Some(100), 30, None, 0), 70);
    assert_eq!(may_start(Some(100), 30, Some(50), 45), 5);
    assert_eq!(may_start(Some(100), 130, Some(50), 0), 0);
    assert_eq!(may_start(None, 0, Some(50), 60), 0);
}

#[test]
fn jitter_is_spread_and_stable() {
    let window = 600_000;
    let delays: Vec<i64> = (0..10_000).map(|d| jitter(7, d, window)).collect();
    assert!(delays.iter().all(|d| (0..window).contains(d)));
    assert_eq!(
        delays,
        (0..10_000)
            .map(|d| jitter(7, d, window))
            .collect::<Vec<_>>()
    );
    // Each tenth of the window gets about a tenth of the devices.
    for tenth in 0..10 {
        let n = delays
            .iter()
            .filter(|d| **d / (window / 10) == tenth)
            .count();
        assert!((800..1200).contains(&n), "tenth {tenth}: {n}");
    }
    assert_eq!(jitter(7, 1, 0), 0);
}
