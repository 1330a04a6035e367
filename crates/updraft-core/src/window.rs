//! Maintenance windows: a cron schedule (five fields, local time) that opens a window of a
//! duration. Whether a window is open is a pure function of the instant and of the time zone's
//! UTC offset at an instant, which the caller brings (the server reads the time zone database).

use crate::rollout::RolloutError;

/// The longest window: a week.
pub const MAX_WINDOW_MILLIS: i64 = 7 * 86_400_000;

/// A five-field cron schedule: minute hour day-of-month month day-of-week (0 or 7 is Sunday),
/// each `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a comma list of those. As in
/// Vixie cron, when both day fields are restricted a day matching either is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_any: bool,
    weekdays_any: bool,
}

fn bad(message: String) -> RolloutError {
    RolloutError {
        code: "bad_window",
        message,
    }
}

/// The bit set of one field's values within `lo..=hi`.
fn field(text: &str, name: &str, lo: u32, hi: u32) -> Result<u64, RolloutError> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    bad(format!("{name}: step {step:?} is not a positive number"))
                })?;
                (range, step)
            }
            None => (part, 1),
        };
        let number = |t: &str| -> Result<u32, RolloutError> {
            t.parse::<u32>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| bad(format!("{name}: {t:?} is not a number from {lo} to {hi}")))
        };
        let (from, to) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return Err(bad(format!("{name}: range {range:?} runs backwards")));
            }
            (a, b)
        } else {
            let n = number(range)?;
            (n, if step > 1 { hi } else { n })
        };
        let mut value = from;
        while value <= to {
            bits |= 1 << value;
            value += step;
        }
    }
    Ok(bits)
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, RolloutError> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(bad(format!(
                "a schedule has five fields (minute hour day month weekday), not {}",
                fields.len()
            )));
        };
        let mut weekdays = field(weekday, "weekday", 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Cron {
            minutes: field(minute, "minute", 0, 59)?,
            hours: field(hour, "hour", 0, 23)?,
            days: field(day, "day", 1, 31)?,
            months: field(month, "month", 1, 12)?,
            weekdays,
            days_any: day == "*",
            weekdays_any: weekday == "*",
        })
    }

    /// Whether the schedule fires at this local minute.
    pub fn matches(&self, at: &Civil) -> bool {
        let has = |bits: u64, v: u32| bits & (1 << v) != 0;
        let day_ok = match (self.days_any, self.weekdays_any) {
            (false, false) => has(self.days, at.day) || has(self.weekdays, at.weekday),
            _ => has(self.days, at.day) && has(self.weekdays, at.weekday),
        };
        has(self.minutes, at.minute)
            && has(self.hours, at.hour)
            && has(self.months, at.month)
            && day_ok
    }
}

/// A local date and time to the minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    /// 0 is Sunday.
    pub weekday: u32,
}

impl Civil {
    /// The civil time of `millis` since the epoch, read at UTC + 0 (shift first for a zone).
    pub fn of(millis: i64) -> Civil {
        let minutes = millis.div_euclid(60_000);
        let days = minutes.div_euclid(1_440);
        let in_day = minutes.rem_euclid(1_440);
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Civil {
            month: month as u32,
            day: day as u32,
            hour: (in_day / 60) as u32,
            minute: (in_day % 60) as u32,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as u32,
        }
    }
}

/// A maintenance window: opens when the schedule fires (local time) and stays open for
/// `duration_millis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub cron: Cron,
    pub duration_millis: i64,
}

impl Window {
    pub fn new(cron: &str, duration_millis: i64) -> Result<Window, RolloutError> {
        if !(60_000..=MAX_WINDOW_MILLIS).contains(&duration_millis) {
            return Err(bad(
                "a window lasts from one minute to seven days".to_owned()
            ));
        }
        Ok(Window {
            cron: Cron::parse(cron)?,
            duration_millis,
        })
    }

    /// Whether the window is open at `now`: the schedule fired at a minute within the last
    /// `duration`. `offset_secs(t)` is the zone's UTC offset at instant `t`.
    pub fn open_at(&self, now: i64, offset_secs: impl Fn(i64) -> i64) -> bool {
        let minute = now.div_euclid(60_000) * 60_000;
        let mut at = minute;
        while now - at < self.duration_millis {
            let local = at + offset_secs(at) * 1_000;
            if self.cron.matches(&Civil::of(local)) {
                return true;
            }
            at -= 60_000;
        }
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn utc(_: i64) -> i64 {
        0
    }

    /// 2026-12-01T00:00:00Z, a Tuesday.
    const DEC1: i64 = 1_796_083_200_000;
    const HOUR: i64 = 3_600_000;

    #[test]
    fn civil_times_and_weekdays() {
        assert_eq!(
            Civil::of(DEC1 + 2 * HOUR + 5 * 60_000),
            Civil {
                month: 12,
                day: 1,
                hour: 2,
                minute: 5,
                weekday: 2
            }
        );
        assert_eq!(Civil::of(0).weekday, 4);
    }

    #[test]
    fn a_nightly_window_opens_at_two_for_two_hours() {
        let w = Window::new("0 2 * * *", 2 * HOUR).unwrap();
        assert!(!w.open_at(DEC1 + HOUR, utc));
        assert!(w.open_at(DEC1 + 2 * HOUR, utc));
        assert!(w.open_at(DEC1 + 4 * HOUR - 1, utc));
        assert!(!w.open_at(DEC1 + 4 * HOUR, utc));
        // In Berlin (UTC+1 in December) two o'clock is one o'clock UTC.
        let berlin = |_: i64| 3_600;
        assert!(w.open_at(DEC1 + HOUR, berlin));
        assert!(!w.open_at(DEC1 + 3 * HOUR, berlin));
    }

    #[test]
    fn day_fields_lists_ranges_and_steps() {
        // Weekends only, every 15 minutes' start.
        let w = Window::new("*/15 * * * 6,0", 60_000).unwrap();
        let saturday = DEC1 + 4 * 86_400_000;
        assert!(w.open_at(saturday + 30 * 60_000, utc));
        assert!(!w.open_at(saturday + 31 * 60_000, utc));
        assert!(!w.open_at(DEC1 + 30 * 60_000, utc), "a Tuesday");
        // Both day fields restricted: either matches (the 1st, or Fridays).
        let c = Cron::parse("0 0 1 * 5").unwrap();
        assert!(c.matches(&Civil::of(DEC1)));
        assert!(c.matches(&Civil::of(DEC1 + 3 * 86_400_000)));
        assert!(!c.matches(&Civil::of(DEC1 + 86_400_000)));
        assert!(Cron::parse("0 9-17/2 * 1-6 1-5").is_ok());
        assert!(
            Cron::parse("0 0 * * 7")
                .unwrap()
                .matches(&Civil::of(DEC1 - 2 * 86_400_000))
        );
    }

    #[test]
    fn bad_schedules_are_refused_with_the_field() {
        for (text, says) in [
            ("0 2 * *", "five fields"),
            ("61 * * * *", "minute"),
            ("0 24 * * *", "hour"),
            ("0 0 0 * *", "day"),
            ("0 0 * 13 *", "month"),
            ("0 0 * * 8", "weekday"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
        ] {
            let err = Cron::parse(text).unwrap_err();
            assert_eq!(err.code, "bad_window");
            assert!(err.message.contains(says), "{text}: {}", err.message);
        }
        assert!(Window::new("* * * * *", 0).is_err());
        assert!(Window::new("* * * * *", MAX_WINDOW_MILLIS + 1).is_err());
    }
}
