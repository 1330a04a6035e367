//! Reading times people write: RFC 3339 timestamps (`2026-12-01T10:00:00Z`, with an offset or
//! fractional seconds) as milliseconds since the Unix epoch. No clock is read here.

/// Days from 1970-01-01 to the civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn number(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)` in milliseconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let text = text.trim();
    if text.len() < 20 || !text.is_char_boundary(10) || !text.is_char_boundary(19) {
        return None;
    }
    let (date, rest) = text.split_at(10);
    let mut parts = date.split('-');
    let (year, month, day) = (
        number(parts.next()?)?,
        number(parts.next()?)?,
        number(parts.next()?)?,
    );
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (clock, mut zone) = rest.split_at(8);
    let mut hms = clock.split(':');
    let (hour, minute, second) = (
        number(hms.next()?)?,
        number(hms.next()?)?,
        number(hms.next()?)?,
    );
    let mut millis = 0;
    if let Some(fraction) = zone.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        let (frac, tail) = fraction.split_at(digits);
        let first3: String = frac.chars().chain("000".chars()).take(3).collect();
        millis = number(&first3)?;
        zone = tail;
    }
    let offset_minutes = match zone {
        "Z" | "z" => 0,
        _ => {
            let sign = match zone.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = zone.get(1..)?.split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m) = (number(h)?, number(m)?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 60 + m)
        }
    };
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 60;
    if !valid {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1_000 + millis)
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;

    #[test]
    fn rfc3339_reads_as_epoch_milliseconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-12-01T10:00:00Z"),
            Some(1_796_119_200_000)
        );
        assert_eq!(
            parse_rfc3339("2026-12-01T11:00:00.5+01:00"),
            Some(1_796_119_200_500)
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00-00:30"),
            Some(951_784_200_000)
        );
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-12-01",
            "2026-12-01T10:00:00",
            "x026-12-01T10:00:00Z",
            "2026-12-01T10:00:00+1:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
