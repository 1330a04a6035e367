//! The device filter language, after hawkBit's RSQL: what a rollout targets, what an
//! auto-assignment rule matches, what `device list --filter` shows.
//!
//! ```text
//! profile==esp32;tag==beta,attr.region==eu      (`;` is and, `,` is or; and binds tighter)
//! fw.version<2.0;(project==plant-a,project==plant-b)
//! id==sensor-*;seen<1h                           (`*` matches any run of characters)
//! profile=in=(esp32,esp8266);tag=out=(lab)
//! ```
//!
//! Fields: `id`, `project`, `profile`, `tag` (any of the device's tags), `attr.NAME`,
//! `fw.title`, `fw.version` (also `version`), `sw.title`, `sw.version`, and `seen` (time since the
//! device was last seen: `seen<10m` means within ten minutes, `seen>24h` not for a day or never).
//! Operators: `==`, `!=`, `=in=`, `=out=`, and `<`, `<=`, `>`, `>=` on versions and `seen`.
//! Values are bare words or quoted (`"a b"`, `'x;y'`). A parse error names its column.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use crate::names::compare_versions;

/// The longest filter accepted, and the deepest nesting: a filter comes from the network.
pub const MAX_FILTER_LEN: usize = 4096;
const MAX_DEPTH: usize = 32;

/// A filter that does not parse: where (1-based column, in characters) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for FilterError {}

/// What a comparison looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Id,
    Project,
    Profile,
    Tag,
    Attribute(String),
    FirmwareTitle,
    FirmwareVersion,
    SoftwareTitle,
    SoftwareVersion,
    Seen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    In,
    Out,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Compare {
        field: Field,
        op: Op,
        values: Vec<String>,
        /// `seen`'s duration in milliseconds.
        millis: Option<i64>,
    },
}

/// What the filter language can see of a device. `now` is the caller's clock (milliseconds), for
/// `seen`.
#[derive(Debug, Clone, Copy)]
pub struct DeviceFacts<'a> {
    pub id: &'a str,
    pub project: Option<&'a str>,
    pub profile: Option<&'a str>,
    pub tags: &'a [String],
    pub attributes: &'a BTreeMap<String, String>,
    /// (title, version) of the running firmware and software.
    pub firmware: Option<(&'a str, &'a str)>,
    pub software: Option<(&'a str, &'a str)>,
    pub last_seen: Option<i64>,
    pub now: i64,
}

impl Filter {
    /// Every field the filter looks at (a store reads only those columns).
    pub fn fields(&self) -> Vec<&Field> {
        match self {
            Filter::All(parts) | Filter::Any(parts) => {
                parts.iter().flat_map(Filter::fields).collect()
            }
            Filter::Compare { field, .. } => vec![field],
        }
    }

    /// Parses a filter expression.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.chars().count() > MAX_FILTER_LEN {
            return Err(FilterError {
                column: MAX_FILTER_LEN + 1,
                message: format!("a filter is at most {MAX_FILTER_LEN} characters"),
            });
        }
        let mut parser = Parser {
            chars: text.chars().collect(),
            at: 0,
            depth: 0,
        };
        parser.skip_space();
        if parser.at == parser.chars.len() {
            return Err(parser.error("an empty filter"));
        }
        let filter = parser.or()?;
        parser.skip_space();
        if parser.at < parser.chars.len() {
            return Err(parser.error(&format!(
                "unexpected {:?}: expected `;`, `,` or the end",
                parser.chars[parser.at]
            )));
        }
        Ok(filter)
    }

    /// Whether a device matches.
    pub fn matches(&self, device: &DeviceFacts<'_>) -> bool {
        match self {
            Filter::All(parts) => parts.iter().all(|p| p.matches(device)),
            Filter::Any(parts) => parts.iter().any(|p| p.matches(device)),
            Filter::Compare {
                field,
                op,
                values,
                millis,
            } => compare(device, field, *op, values, *millis),
        }
    }
}

fn compare(
    device: &DeviceFacts<'_>,
    field: &Field,
    op: Op,
    values: &[String],
    millis: Option<i64>,
) -> bool {
    if let (Field::Seen, Some(limit)) = (field, millis) {
        let Some(seen) = device.last_seen else {
            // Never seen: longer ago than any duration.
            return matches!(op, Op::Gt | Op::Ge);
        };
        let ago = device.now.saturating_sub(seen);
        return ordered(ago.cmp(&limit), op);
    }
    let one = |value: Option<&str>| -> bool {
        match op {
            Op::Eq | Op::In => value.is_some_and(|v| values.iter().any(|p| glob(p, v))),
            Op::Ne | Op::Out => !value.is_some_and(|v| values.iter().any(|p| glob(p, v))),
            Op::Lt | Op::Le | Op::Gt | Op::Ge => value
                .and_then(|v| compare_versions(v, &values[0]))
                .is_some_and(|order| ordered(order, op)),
        }
    };
    match field {
        Field::Id => one(Some(device.id)),
        Field::Project => one(device.project),
        Field::Profile => one(device.profile),
        Field::Attribute(name) => one(device.attributes.get(name).map(String::as_str)),
        Field::FirmwareTitle => one(device.firmware.map(|f| f.0)),
        Field::FirmwareVersion => one(device.firmware.map(|f| f.1)),
        Field::SoftwareTitle => one(device.software.map(|s| s.0)),
        Field::SoftwareVersion => one(device.software.map(|s| s.1)),
        Field::Tag => {
            let any = device
                .tags
                .iter()
                .any(|t| values.iter().any(|p| glob(p, t)));
            match op {
                Op::Ne | Op::Out => !any,
                _ => any,
            }
        }
        Field::Seen => false,
    }
}

fn ordered(order: Ordering, op: Op) -> bool {
    match op {
        Op::Lt => order == Ordering::Less,
        Op::Le => order != Ordering::Greater,
        Op::Gt => order == Ordering::Greater,
        Op::Ge => order != Ordering::Less,
        _ => false,
    }
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, value: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == value;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if value.len() < first.len() + last.len() || !value.starts_with(first) || !value.ends_with(last)
    {
        return false;
    }
    // Between the fixed ends, each middle piece in order, as early as it occurs.
    let mut rest = &value[first.len()..value.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

struct Parser {
    chars: Vec<char>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn error(&self, message: &str) -> FilterError {
        FilterError {
            column: self.at + 1,
            message: message.to_owned(),
        }
    }

    fn skip_space(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        if self.chars.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mut parts = vec![self.and()?];
        while self.eat(',') {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Filter::Any(parts)
        })
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut parts = vec![self.term()?];
        while self.eat(';') {
            parts.push(self.term()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Filter::All(parts)
        })
    }

    fn term(&mut self) -> Result<Filter, FilterError> {
        self.skip_space();
        if self.eat('(') {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.error("nested too deep"));
            }
            let inner = self.or()?;
            if !self.eat(')') {
                return Err(self.error("expected `)`"));
            }
            self.depth -= 1;
            return Ok(inner);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Filter, FilterError> {
        self.skip_space();
        let field_at = self.at;
        let name = self.word();
        if name.is_empty() {
            return Err(self
                .error("expected a field (id, project, profile, tag, attr.NAME, fw.version, …)"));
        }
        let field = field(&name).ok_or_else(|| FilterError {
            column: field_at + 1,
            message: format!(
                "unknown field {name:?}: one of id, project, profile, tag, attr.NAME, fw.title, \
                 fw.version, sw.title, sw.version, seen"
            ),
        })?;
        self.skip_space();
        let op_at = self.at;
        let op = self.op().ok_or_else(|| FilterError {
            column: op_at + 1,
            message: "expected an operator: ==, !=, =in=, =out=, <, <=, >, >=".into(),
        })?;
        self.skip_space();
        let value_at = self.at;
        let values = if matches!(op, Op::In | Op::Out) {
            if !self.eat('(') {
                return Err(self.error("expected `(` and a list of values"));
            }
            let mut values = vec![self.value()?];
            while self.eat(',') {
                values.push(self.value()?);
            }
            if !self.eat(')') {
                return Err(self.error("expected `,` or `)`"));
            }
            values
        } else {
            vec![self.value()?]
        };
        let ordering = matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge);
        let at_value = |message: String| FilterError {
            column: value_at + 1,
            message,
        };
        let millis = if field == Field::Seen {
            if !ordering {
                return Err(at_value(
                    "`seen` takes <, <=, > or >= and a duration".into(),
                ));
            }
            Some(duration(&values[0]).ok_or_else(|| {
                at_value(format!(
                    "{:?} is not a duration (like 30s, 10m, 24h, 7d)",
                    values[0]
                ))
            })?)
        } else {
            None
        };
        if ordering && field == Field::Tag {
            return Err(at_value("tags take ==, !=, =in= or =out=".into()));
        }
        if ordering && millis.is_none() && compare_versions(&values[0], &values[0]).is_none() {
            return Err(at_value(format!(
                "{:?} is not a version to compare with (it starts with a number)",
                values[0]
            )));
        }
        Ok(Filter::Compare {
            field,
            op,
            values,
            millis,
        })
    }

    /// A field name: letters, digits, `.`, `_`, `-`.
    fn word(&mut self) -> String {
        let start = self.at;
        while self
            .chars
            .get(self.at)
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    fn op(&mut self) -> Option<Op> {
        let rest: String = self.chars[self.at..].iter().take(5).collect();
        let (op, len) = [
            ("=in=", Op::In),
            ("=out=", Op::Out),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .into_iter()
        .find(|(text, _)| rest.starts_with(text))
        .map(|(text, op)| (op, text.len()))?;
        self.at += len;
        Some(op)
    }

    /// A bare word (up to `;`, `,`, `(`, `)` or a space) or a quoted string.
    fn value(&mut self) -> Result<String, FilterError> {
        self.skip_space();
        let start = self.at;
        match self.chars.get(self.at) {
            Some(&quote @ ('"' | '\'')) => {
                self.at += 1;
                let mut value = String::new();
                loop {
                    match self.chars.get(self.at) {
                        None => {
                            return Err(FilterError {
                                column: start + 1,
                                message: "a quote that is never closed".into(),
                            });
                        }
                        Some('\\') if self.chars.get(self.at + 1).is_some() => {
                            value.push(self.chars[self.at + 1]);
                            self.at += 2;
                        }
                        Some(&c) if c == quote => {
                            self.at += 1;
                            return Ok(value);
                        }
                        Some(&c) => {
                            value.push(c);
                            self.at += 1;
                        }
                    }
                }
            }
            _ => {
                while self.chars.get(self.at).is_some_and(|c| {
                    !c.is_whitespace() && !matches!(c, ';' | ',' | '(' | ')' | '"' | '\'')
                }) {
                    self.at += 1;
                }
                if self.at == start {
                    return Err(self.error("expected a value"));
                }
                Ok(self.chars[start..self.at].iter().collect())
            }
        }
    }
}

fn field(name: &str) -> Option<Field> {
    Some(match name {
        "id" => Field::Id,
        "project" => Field::Project,
        "profile" => Field::Profile,
        "tag" | "tags" => Field::Tag,
        "fw.title" => Field::FirmwareTitle,
        "fw.version" | "version" => Field::FirmwareVersion,
        "sw.title" => Field::SoftwareTitle,
        "sw.version" => Field::SoftwareVersion,
        "seen" => Field::Seen,
        _ => {
            let attr = name.strip_prefix("attr.")?;
            if attr.is_empty() {
                return None;
            }
            Field::Attribute(attr.to_owned())
        }
    })
}

/// `30s`, `10m`, `24h`, `7d` in milliseconds (rollouts' soak, jitter and windows use it too).
pub fn duration(text: &str) -> Option<i64> {
    let unit = text.chars().last()?;
    let number: i64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let scale = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return None,
    };
    number.checked_mul(scale).filter(|m| *m >= 0)
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
