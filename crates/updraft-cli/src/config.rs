//! `updraft serve`'s settings: flags, then `UPDRAFT_*` environment variables (clap reads both),
//! then an optional TOML file (`--config`), then the embedded defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;
use updraft_server::ServerConfig;

/// The TOML file's keys mirror the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub http: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub max_upload_bytes: Option<u64>,
    pub public_url: Option<String>,
    pub mqtt: Option<String>,
    pub coap: Option<String>,
    pub lwm2m: Option<String>,
    pub lwm2m_dtls: Option<String>,
    pub mqtts: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub notify_per_second: Option<u32>,
    pub max_connections: Option<usize>,
    /// A directory or `s3://BUCKET/PREFIX`.
    pub blobs: Option<String>,
    pub download_redirect: Option<bool>,
    pub gc_grace_secs: Option<u64>,
    /// How to reach S3-compatible storage (`[s3]`); what is absent comes from `AWS_*`.
    pub s3: Option<FileS3>,
    /// The other bounds of the listeners (`[limits]`); each key is optional.
    pub limits: Option<FileLimits>,
}

/// `[s3]` in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileS3 {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// `[limits]` in the TOML file: the listeners' bounds other than `max-connections`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileLimits {
    pub handshake_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub max_connections_per_device: Option<usize>,
    pub max_subscriptions: Option<usize>,
    pub max_ranges: Option<usize>,
    pub max_dtls_sessions: Option<usize>,
    pub registrations_burst: Option<u32>,
    pub registrations_per_minute: Option<u32>,
}

impl FileLimits {
    fn apply(&self, limits: &mut updraft_server::Limits) {
        use std::time::Duration;
        if let Some(secs) = self.handshake_timeout_secs {
            limits.handshake_timeout = Duration::from_secs(secs.max(1));
        }
        if let Some(secs) = self.idle_timeout_secs {
            limits.idle_timeout = Duration::from_secs(secs.max(1));
        }
        let set = |target: &mut usize, value: Option<usize>| {
            if let Some(value) = value {
                *target = value.max(1);
            }
        };
        set(
            &mut limits.max_connections_per_device,
            self.max_connections_per_device,
        );
        set(&mut limits.max_subscriptions, self.max_subscriptions);
        set(&mut limits.max_ranges, self.max_ranges);
        set(&mut limits.max_dtls_sessions, self.max_dtls_sessions);
        if let Some(burst) = self.registrations_burst {
            limits.registrations_burst = burst;
        }
        if let Some(rate) = self.registrations_per_minute {
            limits.registrations_per_minute = rate;
        }
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

pub const DEFAULT_DATA_DIR: &str = "./updraft-data";
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_UPLOAD: u64 = 4 * 1024 * 1024 * 1024;
pub const DEFAULT_MQTT: &str = "127.0.0.1:1883";
pub const DEFAULT_COAP: &str = "127.0.0.1:5683";
pub const DEFAULT_LWM2M: &str = "127.0.0.1:5685";
pub const DEFAULT_NOTIFY_PER_SECOND: u32 = 5000;

/// The values given on the command line or in the environment (`None`: not given).
#[derive(Debug, Default)]
pub struct Given {
    pub data_dir: Option<PathBuf>,
    pub http: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub max_upload_bytes: Option<u64>,
    pub public_url: Option<String>,
    /// An address, or `off`.
    pub mqtt: Option<String>,
    /// An address, or `off`.
    pub coap: Option<String>,
    /// An address, or `off`.
    pub lwm2m: Option<String>,
    /// An address, or `off` (the default).
    pub lwm2m_dtls: Option<String>,
    /// An address, or `off` (the default).
    pub mqtts: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub notify_per_second: Option<u32>,
    pub max_connections: Option<usize>,
    pub blobs: Option<String>,
    /// Set by the flag (a flag can only turn it on; the file may too).
    pub download_redirect: bool,
    pub gc_grace_secs: Option<u64>,
}

/// Where the blobs go, from `--blobs` / `blobs =` and the file's `[s3]`.
fn storage(given: &Given, file: &FileConfig) -> Result<updraft_server::server::Storage> {
    use updraft_server::server::{BlobsAt, Storage};
    let blobs = match given.blobs.clone().or(file.blobs.clone()) {
        None => BlobsAt::DataDir,
        Some(text) if text.is_empty() => BlobsAt::DataDir,
        Some(text) if text.starts_with("s3://") => {
            let mut s3 = updraft_server::server::S3Config::from_url(&text)
                .with_context(|| format!("--blobs {text:?}"))?;
            if let Some(file_s3) = &file.s3 {
                s3.endpoint = file_s3.endpoint.clone();
                s3.region = file_s3.region.clone();
                s3.access_key_id = file_s3.access_key_id.clone();
                s3.secret_access_key = file_s3.secret_access_key.clone();
            }
            BlobsAt::S3(s3)
        }
        Some(text) if text.contains("://") => {
            anyhow::bail!("--blobs {text:?}: a directory or s3://BUCKET/PREFIX")
        }
        Some(dir) => BlobsAt::Dir(PathBuf::from(dir)),
    };
    let mut storage = Storage {
        blobs,
        ..Storage::default()
    };
    storage.download_redirect = given.download_redirect || file.download_redirect == Some(true);
    if storage.download_redirect && !matches!(storage.blobs, BlobsAt::S3(_)) {
        anyhow::bail!("--download-redirect needs object storage (--blobs s3://BUCKET/PREFIX)");
    }
    if let Some(secs) = given.gc_grace_secs.or(file.gc_grace_secs) {
        storage.gc_grace = std::time::Duration::from_secs(secs);
    }
    Ok(storage)
}

/// Flag/env values merged over the file and the defaults.
pub fn merge(given: Given, file: FileConfig) -> Result<ServerConfig> {
    let default_http: SocketAddr = DEFAULT_HTTP.parse().context("default address")?;
    let listener =
        |text: Option<String>, default: &str, flag: &str| -> Result<Option<SocketAddr>> {
            match text.unwrap_or_else(|| default.to_owned()).as_str() {
                "off" | "" => Ok(None),
                addr => Ok(Some(addr.parse().with_context(|| {
                    format!("--{flag} {addr:?} is not an address (or off)")
                })?)),
            }
        };
    let storage = storage(&given, &file)?;
    let mqtt = listener(given.mqtt.or(file.mqtt), DEFAULT_MQTT, "mqtt")?;
    let coap = listener(given.coap.or(file.coap), DEFAULT_COAP, "coap")?;
    let mqtts = listener(given.mqtts.or(file.mqtts), "off", "mqtts")?;
    let lwm2m = listener(given.lwm2m.or(file.lwm2m), DEFAULT_LWM2M, "lwm2m")?;
    let lwm2m_dtls = listener(given.lwm2m_dtls.or(file.lwm2m_dtls), "off", "lwm2m-dtls")?;
    let tls = match (
        given.tls_cert.or(file.tls_cert),
        given.tls_key.or(file.tls_key),
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    if mqtts.is_some() && tls.is_none() {
        anyhow::bail!("--mqtts needs --tls-cert and --tls-key (PEM files)");
    }
    Ok(ServerConfig {
        data_dir: given
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        http: given.http.or(file.http).unwrap_or(default_http),
        database_url: given
            .database_url
            .or(file.database_url)
            .filter(|url| !url.is_empty()),
        max_upload_bytes: given
            .max_upload_bytes
            .or(file.max_upload_bytes)
            .unwrap_or(DEFAULT_MAX_UPLOAD),
        public_url: given
            .public_url
            .or(file.public_url)
            .map(|url| url.trim_end_matches('/').to_owned()),
        mqtt,
        coap,
        mqtts,
        lwm2m,
        lwm2m_dtls,
        tls,
        notify_per_second: given
            .notify_per_second
            .or(file.notify_per_second)
            .unwrap_or(DEFAULT_NOTIFY_PER_SECOND),
        limits: {
            let mut limits = updraft_server::Limits::default();
            if let Some(max) = given.max_connections.or(file.max_connections) {
                limits.max_connections = max;
            }
            if let Some(file_limits) = &file.limits {
                file_limits.apply(&mut limits);
            }
            limits
        },
        storage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let file: FileConfig = toml::from_str(
            "http = \"0.0.0.0:9000\"\ndata-dir = \"/var/lib/updraft\"\nmax-upload-bytes = 10\n",
        )
        .unwrap_or_default();
        let given = Given {
            http: Some(SocketAddr::from(([127, 0, 0, 1], 1))),
            mqtt: Some("off".into()),
            ..Given::default()
        };
        let merged = merge(given, file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(merged.mqtt, None);
        assert_eq!(merged.http.port(), 1);
        assert_eq!(merged.data_dir, PathBuf::from("/var/lib/updraft"));
        assert_eq!(merged.max_upload_bytes, 10);
        let defaults =
            merge(Given::default(), FileConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            defaults.mqtt.map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_MQTT)
        );
        assert_eq!(defaults.http.to_string(), DEFAULT_HTTP);
        assert_eq!(defaults.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(defaults.database_url.is_none());
    }

    #[test]
    fn blobs_go_to_a_directory_or_a_bucket_with_the_files_s3_settings() {
        use updraft_server::server::BlobsAt;
        let file: FileConfig = toml::from_str(
            "blobs = \"s3://fleet/firmware/\"\n[s3]\nendpoint = \"http://127.0.0.1:8333\"\nregion = \"eu-west-1\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let merged = merge(Given::default(), file).unwrap_or_else(|e| panic!("{e}"));
        let BlobsAt::S3(s3) = merged.storage.blobs else {
            panic!("not S3: {:?}", merged.storage.blobs)
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_str()),
            ("fleet", "firmware")
        );
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!(s3.region.as_deref(), Some("eu-west-1"));
        let given = Given {
            blobs: Some("/srv/blobs".into()),
            ..Given::default()
        };
        let merged = merge(given, FileConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(merged.storage.blobs, BlobsAt::Dir(_)));
        // A redirect needs object storage; other URLs are refused.
        let given = Given {
            download_redirect: true,
            ..Given::default()
        };
        assert!(merge(given, FileConfig::default()).is_err());
        let given = Given {
            blobs: Some("gs://bucket".into()),
            ..Given::default()
        };
        assert!(merge(given, FileConfig::default()).is_err());
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        assert!(toml::from_str::<FileConfig>("htp = \"x\"").is_err());
        assert!(toml::from_str::<FileConfig>("[limits]\nmax-sessions = 3").is_err());
    }

    #[test]
    fn the_file_sets_the_listeners_bounds() {
        let file: FileConfig = toml::from_str(
            "max-connections = 900\n[limits]\nhandshake-timeout-secs = 3\nmax-subscriptions = 8\nregistrations-per-minute = 60\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let merged = merge(Given::default(), file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(merged.limits.max_connections, 900);
        assert_eq!(
            merged.limits.handshake_timeout,
            std::time::Duration::from_secs(3)
        );
        assert_eq!(merged.limits.max_subscriptions, 8);
        assert_eq!(merged.limits.registrations_per_minute, 60);
        assert_eq!(
            merged.limits.max_ranges,
            updraft_server::Limits::default().max_ranges
        );
    }
}
