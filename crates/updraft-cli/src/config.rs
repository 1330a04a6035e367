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

/// Flag/env values (`None` when neither was given) merged over the file and the defaults.
pub fn merge(
    data_dir: Option<PathBuf>,
    http: Option<SocketAddr>,
    database_url: Option<String>,
    max_upload_bytes: Option<u64>,
    public_url: Option<String>,
    file: FileConfig,
) -> Result<ServerConfig> {
    let default_http: SocketAddr = DEFAULT_HTTP.parse().context("default address")?;
    Ok(ServerConfig {
        data_dir: data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        http: http.or(file.http).unwrap_or(default_http),
        database_url: database_url
            .or(file.database_url)
            .filter(|url| !url.is_empty()),
        max_upload_bytes: max_upload_bytes
            .or(file.max_upload_bytes)
            .unwrap_or(DEFAULT_MAX_UPLOAD),
        public_url: public_url
            .or(file.public_url)
            .map(|url| url.trim_end_matches('/').to_owned()),
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
        let merged = merge(
            None,
            Some(
                "127.0.0.1:1"
                    .parse()
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 1))),
            ),
            None,
            None,
            None,
            file,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(merged.http.port(), 1);
        assert_eq!(merged.data_dir, PathBuf::from("/var/lib/updraft"));
        assert_eq!(merged.max_upload_bytes, 10);
        let defaults = merge(None, None, None, None, None, FileConfig::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(defaults.http.to_string(), DEFAULT_HTTP);
        assert_eq!(defaults.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(defaults.database_url.is_none());
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        assert!(toml::from_str::<FileConfig>("htp = \"x\"").is_err());
    }
}
