//! How answers are shown: tables and text for people, JSON for scripts, progress bars.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

pub(super) struct Output {
    pub(super) json: bool,
}

impl Output {
    pub(super) fn show(&self, value: &Value, human: impl FnOnce()) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            human();
        }
    }
}

/// A JSON value as a table cell.
pub(super) fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub(super) fn rows(list: &Value, columns: &[&str]) -> Vec<Vec<String>> {
    let items = list.get("items").unwrap_or(list);
    items
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| columns.iter().map(|c| text(&item[*c])).collect())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

pub(super) fn read_text(path: Option<&Path>) -> Result<Option<String>> {
    path.map(|path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    })
    .transpose()
}

/// Milliseconds since the Unix epoch as an RFC 3339 UTC time (`2026-11-30T21:52:07.123Z`);
/// anything that is not a number is shown as it is.
pub(super) fn rfc3339(millis: &Value) -> String {
    let Some(millis) = millis.as_i64() else {
        return text(millis);
    };
    let (days, rest) = (millis.div_euclid(86_400_000), millis.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days: days since 1970-01-01 to a proleptic Gregorian date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (hours, minutes) = (rest / 3_600_000, rest / 60_000 % 60);
    let (seconds, ms) = (rest / 1000 % 60, rest % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hours:02}:{minutes:02}:{seconds:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::rfc3339;

    #[test]
    fn epoch_milliseconds_read_as_rfc3339() {
        for (millis, expected) in [
            (0_i64, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_796_075_527_123, "2026-11-30T21:52:07.123Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339(&json!(millis)), expected, "{millis}");
        }
        assert_eq!(rfc3339(&json!("soon")), "soon");
    }
}
