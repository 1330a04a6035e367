//! Rollouts' decisions, as pure functions: how a target splits into groups, which lifecycle
//! commands are allowed when, when the next group starts or the rollout halts or finishes, and how
//! many devices pacing lets start now. The scheduler that drives them from the store brings the
//! clock (`now`, milliseconds) and the counts; nothing here does IO or reads time.

use std::fmt;

/// A rollout decision refused: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutError {
    pub code: &'static str,
    pub message: String,
}

impl RolloutError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for RolloutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for RolloutError {}

/// One group's share of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSize {
    /// A percentage of the whole target (of 100).
    Percent(u32),
    /// A number of devices.
    Count(u64),
    /// Whatever the groups before and after leave.
    Rest,
}

/// At most this many groups per rollout.
pub const MAX_GROUPS: usize = 100;

/// Parses `10%,40%,50%` or `5,100,rest`.
pub fn parse_groups(text: &str) -> Result<Vec<GroupSize>, RolloutError> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if parts.len() > MAX_GROUPS {
        return Err(RolloutError::new(
            "bad_groups",
            format!("at most {MAX_GROUPS} groups"),
        ));
    }
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let bad = || {
                RolloutError::new(
                    "bad_groups",
                    format!(
                        "group {}: {part:?} is not a share (like 10%), a count (like 100) or `rest`",
                        i + 1
                    ),
                )
            };
            if part.eq_ignore_ascii_case("rest") {
                Ok(GroupSize::Rest)
            } else if let Some(pct) = part.strip_suffix('%') {
                match pct.trim().parse::<u32>() {
                    Ok(p) if (1..=100).contains(&p) => Ok(GroupSize::Percent(p)),
                    _ => Err(bad()),
                }
            } else {
                match part.parse::<u64>() {
                    Ok(n) if n > 0 => Ok(GroupSize::Count(n)),
                    _ => Err(bad()),
                }
            }
        })
        .collect()
}

/// The size of each group for a target of `total` devices. Percentages round down, and what
/// rounding leaves goes to the last percentage group, so the groups always cover the target
/// exactly; without a `rest` group the shares must add up to the whole target.
pub fn group_sizes(total: u64, groups: &[GroupSize]) -> Result<Vec<u64>, RolloutError> {
    if total == 0 {
        return Err(RolloutError::new(
            "empty_target",
            "the target matches no device",
        ));
    }
    if groups.is_empty() {
        return Err(RolloutError::new("bad_groups", "no groups"));
    }
    let rests = groups.iter().filter(|g| **g == GroupSize::Rest).count();
    if rests > 1 {
        return Err(RolloutError::new("bad_groups", "at most one `rest` group"));
    }
    let percent: u64 = groups
        .iter()
        .map(|g| match g {
            GroupSize::Percent(p) => u64::from(*p),
            _ => 0,
        })
        .sum();
    if percent > 100 {
        return Err(RolloutError::new(
            "bad_groups",
            format!("the shares add up to {percent}%, more than the whole target"),
        ));
    }
    let mut sizes: Vec<u64> = groups
        .iter()
        .map(|g| match g {
            GroupSize::Percent(p) => total * u64::from(*p) / 100,
            GroupSize::Count(n) => *n,
            GroupSize::Rest => 0,
        })
        .collect();
    let fixed: u64 = sizes.iter().sum();
    if fixed > total {
        return Err(RolloutError::new(
            "bad_groups",
            format!("the groups hold {fixed} devices, the target {total}"),
        ));
    }
    let left = total - fixed;
    if let Some(rest) = groups.iter().position(|g| *g == GroupSize::Rest) {
        sizes[rest] = left;
    } else if left > 0 {
        let only_counts = percent == 0;
        let last_percent = groups
            .iter()
            .rposition(|g| matches!(g, GroupSize::Percent(_)));
        match last_percent {
            // Rounding remainders of shares that add up to 100%.
            Some(last) if percent == 100 => sizes[last] += left,
            _ if only_counts => {
                return Err(RolloutError::new(
                    "bad_groups",
                    format!("the groups hold {fixed} of {total} devices: add `rest`"),
                ));
            }
            _ => {
                return Err(RolloutError::new(
                    "bad_groups",
                    format!("the shares add up to {percent}%, not 100%: add `rest`"),
                ));
            }
        }
    }
    if let Some(empty) = sizes.iter().position(|s| *s == 0) {
        return Err(RolloutError::new(
            "bad_groups",
            format!("group {} would hold no device of {total}", empty + 1),
        ));
    }
    Ok(sizes)
}

/// A rollout's lifecycle (hawkBit's, with PAUSED and HALTED kept apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lifecycle {
    Creating,
    Ready,
    Running,
    Paused,
    Finished,
    Halted,
    Canceled,
}

impl Lifecycle {
    pub const ALL: [Lifecycle; 7] = [
        Lifecycle::Creating,
        Lifecycle::Ready,
        Lifecycle::Running,
        Lifecycle::Paused,
        Lifecycle::Finished,
        Lifecycle::Halted,
        Lifecycle::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Creating => "CREATING",
            Lifecycle::Ready => "READY",
            Lifecycle::Running => "RUNNING",
            Lifecycle::Paused => "PAUSED",
            Lifecycle::Finished => "FINISHED",
            Lifecycle::Halted => "HALTED",
            Lifecycle::Canceled => "CANCELED",
        }
    }

    pub fn parse(text: &str) -> Option<Lifecycle> {
        Lifecycle::ALL.into_iter().find(|l| l.as_str() == text)
    }

    /// No command moves it any more.
    pub fn is_final(self) -> bool {
        matches!(self, Lifecycle::Finished | Lifecycle::Canceled)
    }
}

/// How a rollout's devices are asked to install (hawkBit's action types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpdateType {
    /// Download and install at once.
    #[default]
    Forced,
    /// Download; the device (or its user) decides when to install.
    Soft,
    /// Download only; installing waits for another rollout or command.
    DownloadOnly,
}

impl UpdateType {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateType::Forced => "forced",
            UpdateType::Soft => "soft",
            UpdateType::DownloadOnly => "download-only",
        }
    }

    pub fn parse(text: &str) -> Result<UpdateType, RolloutError> {
        match text {
            "forced" => Ok(UpdateType::Forced),
            "soft" => Ok(UpdateType::Soft),
            "download-only" => Ok(UpdateType::DownloadOnly),
            other => Err(RolloutError::new(
                "bad_type",
                format!("unknown update type {other:?}: use forced, soft or download-only"),
            )),
        }
    }
}

/// What an operator asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Start,
    Pause,
    Resume,
    Cancel,
}

/// The lifecycle a command leads to, or why it may not be given now. A halted rollout resumes
/// (the operator looked at the failures and goes on); a canceled or finished one takes nothing.
pub fn command(now: Lifecycle, command: Command) -> Result<Lifecycle, RolloutError> {
    use Lifecycle as L;
    let refused = |what: &str| {
        Err(RolloutError::new(
            "rollout_state",
            format!("a {} rollout cannot be {what}", now.as_str()),
        ))
    };
    match (command, now) {
        (Command::Start, L::Ready) => Ok(L::Running),
        (Command::Start, _) => refused("started"),
        (Command::Pause, L::Running) => Ok(L::Paused),
        (Command::Pause, _) => refused("paused"),
        (Command::Resume, L::Paused | L::Halted) => Ok(L::Running),
        (Command::Resume, _) => refused("resumed"),
        (Command::Cancel, L::Finished | L::Canceled) => refused("canceled"),
        (Command::Cancel, _) => Ok(L::Canceled),
    }
}

/// When a group moves the rollout on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Percent of a group UPDATED before the next group starts.
    pub success_pct: u8,
    /// Percent of a group FAILED beyond which the rollout halts.
    pub error_pct: u8,
    /// How long after reaching the success threshold the next group waits (ms).
    pub soak_millis: i64,
}

impl Thresholds {
    pub fn check(&self) -> Result<(), RolloutError> {
        if self.success_pct > 100 || self.error_pct > 100 {
            return Err(RolloutError::new(
                "bad_threshold",
                "thresholds are percentages, 0 to 100",
            ));
        }
        if self.soak_millis < 0 {
            return Err(RolloutError::new(
                "bad_threshold",
                "a soak time is not negative",
            ));
        }
        Ok(())
    }
}

/// What the store keeps of a group (counted in the transaction that moves an action).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupProgress {
    pub size: u64,
    pub updated: u64,
    pub failed: u64,
    /// Failures an operator accepted by resuming the halted rollout: they no longer count
    /// towards the error threshold.
    pub failed_accepted: u64,
    /// Canceled or superseded: out of the group's reckoning either way.
    pub dropped: u64,
    /// When the group started; `None` while it waits its turn.
    pub started_at: Option<i64>,
    /// When it first reached its success threshold.
    pub passed_at: Option<i64>,
}

impl GroupProgress {
    /// Every device ended one way or another.
    pub fn done(&self) -> bool {
        self.updated + self.failed + self.dropped >= self.size
    }

    /// Enough of the devices still in the group's reckoning (canceled, superseded and skipped
    /// ones are not) run the artifact.
    fn passed(&self, thresholds: &Thresholds) -> bool {
        let reckoned = self.size.saturating_sub(self.dropped);
        self.updated * 100 >= u64::from(thresholds.success_pct) * reckoned
    }

    fn failing(&self, thresholds: &Thresholds) -> bool {
        let counted = self.failed.saturating_sub(self.failed_accepted);
        counted * 100 > u64::from(thresholds.error_pct) * self.size
    }
}

/// What the scheduler does next for a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet.
    Wait,
    /// Note that group `index` reached its success threshold now (its soak starts).
    Passed(usize),
    /// Start group `index`.
    Start(usize),
    /// Too many failures in group `index`: halt; later groups stay untouched.
    Halt(usize),
    /// Every group done: the rollout is FINISHED.
    Finish,
}

/// The next step of a rollout in `lifecycle` with these groups, at `now`. Only a RUNNING rollout
/// moves; the groups start in order, each once the one before passed its success threshold and
/// soaked.
pub fn next_step(
    lifecycle: Lifecycle,
    groups: &[GroupProgress],
    thresholds: &Thresholds,
    now: i64,
) -> Step {
    if lifecycle != Lifecycle::Running {
        return Step::Wait;
    }
    let Some(current) = groups.iter().rposition(|g| g.started_at.is_some()) else {
        return if groups.is_empty() {
            Step::Finish
        } else {
            Step::Start(0)
        };
    };
    let group = &groups[current];
    if group.failing(thresholds) {
        return Step::Halt(current);
    }
    if !group.passed(thresholds) {
        return Step::Wait;
    }
    let Some(passed_at) = group.passed_at else {
        return Step::Passed(current);
    };
    if current + 1 < groups.len() {
        if now.saturating_sub(passed_at) >= thresholds.soak_millis {
            Step::Start(current + 1)
        } else {
            Step::Wait
        }
    } else if groups.iter().all(GroupProgress::done) {
        Step::Finish
    } else {
        Step::Wait
    }
}

/// Pacing: how many more of a rollout's devices may be told now, given how many were told in the
/// last minute and how many are downloading.
pub fn may_start(
    max_per_minute: Option<u64>,
    told_last_minute: u64,
    max_downloads: Option<u64>,
    downloading: u64,
) -> u64 {
    let by_rate = max_per_minute.map_or(u64::MAX, |m| m.saturating_sub(told_last_minute));
    let by_downloads = max_downloads.map_or(u64::MAX, |m| m.saturating_sub(downloading));
    by_rate.min(by_downloads)
}

/// A device's start delay within `jitter_millis`: spread evenly and the same on every replica
/// and every restart (a hash of the rollout and the device, not a random draw).
pub fn jitter(rollout: i64, device: i64, jitter_millis: i64) -> i64 {
    if jitter_millis <= 0 {
        return 0;
    }
    // SplitMix64's finalizer over the pair.
    let mut x = (rollout as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ device as u64;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x % jitter_millis as u64) as i64
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
