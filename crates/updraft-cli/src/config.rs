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
            limits
        },
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
    fn unknown_keys_in_the_file_are_refused() {
        assert!(toml::from_str::<FileConfig>("htp = \"x\"").is_err());
    }
}
