//! Validated names. Everything a user, a device or a URL can supply is parsed into one of these
//! newtypes at the boundary, so that the rest of the code never sees an unchecked string.

use std::fmt;

/// Why a string was refused as a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {max} characters")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} contains the character {ch:?}, which is not allowed")]
    BadChar { what: &'static str, ch: char },
    #[error("{what} must not be {value:?}")]
    Reserved { what: &'static str, value: String },
}

fn check(
    what: &'static str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.chars().count() > max {
        return Err(NameError::TooLong { what, max });
    }
    if let Some(ch) = value.chars().find(|c| !allowed(*c)) {
        return Err(NameError::BadChar { what, ch });
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// The name of a tenant, project or profile: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with a dot.
    Name
);
string_newtype!(
    /// A device's id, unique within its tenant: 1 to 128 of `[A-Za-z0-9_.:@-]` (LwM2M endpoint
    /// names such as `urn:imei:…` and Frugal-IoT node ids such as `esp8266-95a754` fit).
    DeviceId
);
string_newtype!(
    /// An artifact's title: 1 to 128 printable characters without `/`, `\` or `@`.
    Title
);
string_newtype!(
    /// An artifact's version as the uploader wrote it: 1 to 64 printable characters without `/`
    /// or `\`. Ordering is left to the protocols that need it.
    Version
);
string_newtype!(
    /// A file name offered for download: no path separators, no `..`, no control characters.
    Filename
);

impl Name {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check("name", s, 64, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
        })?;
        if s.starts_with('.') {
            return Err(NameError::BadChar {
                what: "name",
                ch: '.',
            });
        }
        Ok(Self(s.to_owned()))
    }
}

impl DeviceId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check("device id", s, 128, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '@')
        })?;
        if s.starts_with('.') {
            return Err(NameError::BadChar {
                what: "device id",
                ch: '.',
            });
        }
        Ok(Self(s.to_owned()))
    }
}

/// Compares two version strings part by part (split at `.`, `-`, `+` and `_`): numeric parts as
/// numbers, others as text; a leading `v` is ignored. `None` when either has no numeric part, since
/// then "older" means nothing.
pub fn compare_versions(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    fn parts(v: &str) -> Vec<&str> {
        let v = v.trim();
        let v = v.strip_prefix(['v', 'V']).unwrap_or(v);
        v.split(['.', '-', '+', '_'])
            .filter(|p| !p.is_empty())
            .collect()
    }
    let (pa, pb) = (parts(a), parts(b));
    let numeric = |ps: &[&str]| {
        ps.first()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
    };
    if !numeric(&pa) || !numeric(&pb) {
        return None;
    }
    for i in 0..pa.len().max(pb.len()) {
        let (x, y) = (
            pa.get(i).copied().unwrap_or("0"),
            pb.get(i).copied().unwrap_or("0"),
        );
        let order = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if order != std::cmp::Ordering::Equal {
            return Some(order);
        }
    }
    Some(std::cmp::Ordering::Equal)
}

fn printable(c: char) -> bool {
    !c.is_control()
}

impl Title {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check("title", s, 128, |c| {
            printable(c) && !matches!(c, '/' | '\\' | '@')
        })?;
        if s.trim() != s {
            return Err(NameError::BadChar {
                what: "title",
                ch: ' ',
            });
        }
        Ok(Self(s.to_owned()))
    }
}

impl Version {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check("version", s, 64, |c| {
            printable(c) && !matches!(c, '/' | '\\')
        })?;
        if s.trim() != s {
            return Err(NameError::BadChar {
                what: "version",
                ch: ' ',
            });
        }
        Ok(Self(s.to_owned()))
    }
}

impl Filename {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check("file name", s, 255, |c| {
            printable(c) && !matches!(c, '/' | '\\' | '"')
        })?;
        if s == "." || s == ".." {
            return Err(NameError::Reserved {
                what: "file name",
                value: s.to_owned(),
            });
        }
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn versions_compare_part_by_part() {
        for (a, b, expected) in [
            ("1.2.3", "1.2.3", Some(Equal)),
            ("1.2.10", "1.2.9", Some(Greater)),
            ("v1.2", "1.2.0", Some(Equal)),
            ("1.2", "1.10", Some(Less)),
            ("2.0.0-rc1", "2.0.0-rc2", Some(Less)),
            ("0.9", "1", Some(Less)),
            ("main", "1.0", None),
            ("abc123", "abc124", None),
        ] {
            assert_eq!(compare_versions(a, b), expected, "{a} vs {b}");
        }
    }

    #[test]
    fn names_accept_what_devices_use() {
        for ok in ["default", "esp8266-sht", "lotus", "a.b_c-1"] {
            assert!(Name::parse(ok).is_ok(), "{ok}");
        }
        for ok in [
            "esp8266-95a754",
            "urn:imei:356938035643809",
            "D1",
            "node@site",
        ] {
            assert!(DeviceId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn names_refuse_what_would_break_paths() {
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(Name::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "a/b", "a b", "x\u{0}", "..", ".hidden"] {
            assert!(DeviceId::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "..", ".", "../../etc/passwd", "a\\b", "a\nb", "x/y.bin"] {
            assert!(Filename::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Filename::parse("firmware-1.2.bin").is_ok());
        assert!(Title::parse("fw@1").is_err());
        assert!(Title::parse(" padded").is_err());
        assert!(Version::parse("1.2.3-rc.1+build5").is_ok());
    }
}
