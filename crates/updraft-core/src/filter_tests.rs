#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use super::*;

const NOW: i64 = 1_000_000_000;

struct Device {
    id: &'static str,
    project: Option<&'static str>,
    profile: Option<&'static str>,
    tags: Vec<String>,
    attributes: BTreeMap<String, String>,
    firmware: Option<(&'static str, &'static str)>,
    last_seen: Option<i64>,
}

impl Device {
    fn facts(&self) -> DeviceFacts<'_> {
        DeviceFacts {
            id: self.id,
            project: self.project,
            profile: self.profile,
            tags: &self.tags,
            attributes: &self.attributes,
            firmware: self.firmware,
            software: None,
            last_seen: self.last_seen,
            now: NOW,
        }
    }
}

fn sensor() -> Device {
    Device {
        id: "sensor-17",
        project: Some("plant-a"),
        profile: Some("esp32"),
        tags: vec!["beta".into(), "lab".into()],
        attributes: [("region".to_owned(), "eu".to_owned())].into(),
        firmware: Some(("sensor-fw", "1.10.2")),
        last_seen: Some(NOW - 5 * 60_000),
    }
}

fn matches(filter: &str, device: &Device) -> bool {
    Filter::parse(filter)
        .unwrap_or_else(|e| panic!("{filter}: {e}"))
        .matches(&device.facts())
}

#[test]
fn the_issues_example_and_friends_match_as_written() {
    let d = sensor();
    assert!(matches("profile==esp32;tag==beta,attr.region==eu", &d));
    assert!(
        matches("profile==esp8266;tag==beta,attr.region==eu", &d),
        "or binds looser"
    );
    assert!(!matches("profile==esp8266;(tag==beta,attr.region==eu)", &d));
    assert!(matches("id==sensor-*", &d));
    assert!(matches("id==*-17", &d));
    assert!(matches("id==s*r-*7", &d));
    assert!(!matches("id==sensor-1", &d));
    assert!(matches("project=in=(plant-b, plant-a)", &d));
    assert!(matches("tag=out=(prod)", &d));
    assert!(!matches("tag=out=(prod,lab)", &d));
    assert!(matches("tag!=prod", &d));
    assert!(matches("attr.region!=us", &d));
    assert!(!matches("attr.missing==x", &d));
    assert!(
        matches("attr.missing!=x", &d),
        "an absent attribute is not x"
    );
    assert!(matches("fw.title=='sensor-fw'", &d));
    assert!(matches("  profile == \"esp32\"  ", &d));
}

#[test]
fn versions_compare_part_by_part() {
    let d = sensor();
    assert!(matches("fw.version>1.9", &d), "10 > 9 as numbers");
    assert!(matches("version<2.0", &d));
    assert!(matches("fw.version>=1.10.2;fw.version<=1.10.2", &d));
    assert!(!matches("fw.version<1.10", &d));
    let unknown = Device {
        firmware: None,
        ..sensor()
    };
    assert!(!matches("fw.version<9", &unknown), "no version: no order");
}

#[test]
fn seen_is_time_since_the_device_was_last_seen() {
    let d = sensor();
    assert!(matches("seen<10m", &d));
    assert!(!matches("seen>10m", &d));
    assert!(matches("seen>4m", &d));
    let never = Device {
        last_seen: None,
        ..sensor()
    };
    assert!(matches("seen>24h", &never));
    assert!(!matches("seen<7d", &never));
}

#[test]
fn errors_name_their_column() {
    let error = |text: &str| Filter::parse(text).unwrap_err();
    assert_eq!(error("").column, 1);
    assert_eq!(error("profile").column, 8);
    assert_eq!(error("colour==red").column, 1);
    assert!(error("colour==red").message.contains("unknown field"));
    assert_eq!(error("profile==esp32;").column, 16);
    assert_eq!(error("profile=~esp32").column, 8);
    assert_eq!(error("tag=in=beta").column, 8);
    assert_eq!(error("(profile==a").column, 12);
    assert_eq!(error("profile==a)").column, 11);
    assert_eq!(error("seen<soon").column, 6);
    assert_eq!(error("seen==1h").column, 7);
    assert_eq!(error("fw.version<latest").column, 12);
    assert_eq!(error("tag>beta").column, 5);
    assert_eq!(error("id=='open").column, 5);
    assert_eq!(error("attr.==x").column, 1);
    let deep = "(".repeat(100) + "id==x" + &")".repeat(100);
    assert!(error(&deep).message.contains("deep"));
    let long = "id==".to_owned() + &"x".repeat(MAX_FILTER_LEN);
    assert!(error(&long).message.contains("at most"));
}

#[test]
fn the_error_reads_as_a_sentence() {
    let e = Filter::parse("profile==esp32;colour==red").unwrap_err();
    assert_eq!(e.to_string().split(':').next().unwrap(), "column 16", "{e}");
}
