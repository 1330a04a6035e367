//! The subcommands and what each does.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::client::Client;
use crate::config::{self, FileConfig};
use crate::table;

#[derive(Parser)]
#[command(
    name = "updraft",
    version,
    about = "Over-the-air updates for IoT fleets: server and client"
)]
pub struct Cli {
    /// Server URL.
    #[arg(
        long,
        global = true,
        env = "UPDRAFT_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// API key; read from ./updraft-data/admin.token when absent.
    #[arg(long, global = true, env = "UPDRAFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded defaults: SQLite and blobs in ./updraft-data, HTTP on 127.0.0.1:8080).
    Serve(ServeArgs),
    /// Upload, list, show, download and delete artifacts.
    #[command(subcommand)]
    Artifact(ArtifactCommand),
    /// Device profiles (hardware types).
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Projects (groups of devices).
    #[command(subcommand)]
    Project(NamedCommand),
    /// Devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Assign an artifact to a device, profile, project or the whole tenant.
    Assign(AssignArgs),
    /// Remove an assignment.
    Unassign(UnassignArgs),
    /// Fleet summary.
    Status,
    /// Tenants (server admin only).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Simulate many devices against the server (DDI agents or Drogue DFU devices).
    Sim(crate::sim::SimArgs),
    /// Frugal-IoT developer workflow: push binaries for a node or an OTA key, promote them.
    #[command(subcommand)]
    Frugal(FrugalCommand),
}

#[derive(Subcommand)]
enum FrugalCommand {
    /// Upload a binary and assign it to one node or to an OTA key (in a project, or org-wide).
    Push {
        file: PathBuf,
        #[arg(long)]
        org: String,
        #[arg(long)]
        project: Option<String>,
        #[arg(long, conflicts_with = "ota_key", required_unless_present = "ota_key")]
        node: Option<String>,
        #[arg(long)]
        ota_key: Option<String>,
        /// The binary's version (default: from its MD5).
        #[arg(long)]
        version: Option<String>,
    },
    /// Move a node's own binary to its OTA key in the project: every matching node updates once.
    Promote {
        #[arg(long)]
        org: String,
        #[arg(long)]
        project: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        ota_key: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Where the SQLite database, blobs and admin key live.
    #[arg(long, env = "UPDRAFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP listen address (port 0 picks a free port).
    #[arg(long, env = "UPDRAFT_HTTP")]
    http: Option<SocketAddr>,
    /// postgres://… to keep the fleet in PostgreSQL instead of SQLite.
    #[arg(long, env = "UPDRAFT_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Largest artifact accepted, in bytes.
    #[arg(long, env = "UPDRAFT_MAX_UPLOAD_BYTES")]
    max_upload_bytes: Option<u64>,
    /// Base URL written into links (default: from --http).
    #[arg(long, env = "UPDRAFT_PUBLIC_URL")]
    public_url: Option<String>,
    /// Device MQTT listener address, or `off` (default 127.0.0.1:1883).
    #[arg(long, env = "UPDRAFT_MQTT")]
    mqtt: Option<String>,
    /// Device CoAP listener address (UDP), or `off` (default 127.0.0.1:5683).
    #[arg(long, env = "UPDRAFT_COAP")]
    coap: Option<String>,
    /// LwM2M listener address (UDP, NoSec), or `off` (default 127.0.0.1:5685).
    #[arg(long, env = "UPDRAFT_LWM2M")]
    lwm2m: Option<String>,
    /// LwM2M over DTLS 1.2 with pre-shared keys (UDP, e.g. 0.0.0.0:5686), or `off` (the default).
    #[arg(long, env = "UPDRAFT_LWM2M_DTLS")]
    lwm2m_dtls: Option<String>,
    /// Device MQTT-over-TLS listener address (e.g. 0.0.0.0:8883), or `off` (the default).
    /// Devices authenticate with a registered client certificate or their token.
    #[arg(long, env = "UPDRAFT_MQTTS")]
    mqtts: Option<String>,
    /// PEM certificate chain of the server, for TLS listeners.
    #[arg(long, env = "UPDRAFT_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the server, for TLS listeners.
    #[arg(long, env = "UPDRAFT_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Devices told of a new firmware per second by the notification queue.
    #[arg(long, env = "UPDRAFT_NOTIFY_PER_SECOND")]
    notify_per_second: Option<u32>,
    /// A TOML file with the same keys as these flags (data-dir, http, …); flags and env win.
    #[arg(long, env = "UPDRAFT_CONFIG")]
    config: Option<PathBuf>,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ArtifactCommand {
    /// Upload a file (streams it; shows progress on a terminal).
    Upload {
        file: PathBuf,
        #[arg(long)]
        title: String,
        #[arg(long)]
        version: String,
        /// firmware or software.
        #[arg(long = "type", default_value = "firmware")]
        kind: String,
        /// A profile it runs on (repeat for several; none means any).
        #[arg(long = "profile")]
        profiles: Vec<String>,
        #[arg(long, requires = "checksum")]
        checksum_algorithm: Option<String>,
        /// The checksum the server must find, or it refuses the upload.
        #[arg(long)]
        checksum: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Name devices download it as (default: TITLE-VERSION.bin).
        #[arg(long)]
        filename: Option<String>,
        /// Detached signature of the file: DER (as `openssl dgst -sha256 -sign` writes it) or
        /// its base64. Checked against the signing certificates of the compatible profiles.
        #[arg(long)]
        signature_file: Option<PathBuf>,
        #[arg(long, requires = "signature_file")]
        signature_algorithm: Option<String>,
    },
    List,
    /// Show one artifact, TITLE@VERSION.
    Show {
        release: String,
    },
    /// Download TITLE@VERSION to a file; its SHA-256 is checked.
    Download {
        release: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    Delete {
        release: String,
    },
}

#[derive(Subcommand)]
enum NamedCommand {
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
}

#[derive(Subcommand)]
enum ProfileCommand {
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// The profile's devices speak Drogue DFU (versions of at most 16 bytes).
        #[arg(long)]
        drogue_dfu: bool,
        /// AWS IoT OTA job documents offer the file over HTTP too (a one-time URL).
        #[arg(long)]
        aws_http_delivery: bool,
        /// How LwM2M devices get the package: http (a one-time URL), coap (Block2) or push
        /// (written into /5/0/0, Block1).
        #[arg(long)]
        lwm2m_delivery: Option<String>,
        /// Write only the URL's path into /5/0/1 (the device prepends a fixed host).
        #[arg(long)]
        lwm2m_path_only: bool,
        /// PEM certificate (ECDSA P-256) that artifact signatures for this profile must verify with.
        #[arg(long)]
        signing_cert: Option<PathBuf>,
        /// The name the devices know the certificate by (AWS OTA `certfile`; default code-sign.crt).
        #[arg(long, requires = "signing_cert")]
        signing_cert_name: Option<String>,
    },
    List,
    /// Change what the profile's devices speak.
    Set {
        name: String,
        /// true when the profile's devices speak Drogue DFU.
        #[arg(long, action = clap::ArgAction::Set)]
        drogue_dfu: Option<bool>,
        /// true when AWS IoT OTA job documents offer the file over HTTP too.
        #[arg(long, action = clap::ArgAction::Set)]
        aws_http_delivery: Option<bool>,
        /// http, coap or push.
        #[arg(long)]
        lwm2m_delivery: Option<String>,
        #[arg(long, action = clap::ArgAction::Set)]
        lwm2m_path_only: Option<bool>,
        /// A new PEM signing certificate.
        #[arg(long)]
        signing_cert: Option<PathBuf>,
        #[arg(long)]
        signing_cert_name: Option<String>,
        /// Remove the signing certificate.
        #[arg(long, conflicts_with = "signing_cert")]
        no_signing_cert: bool,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Create a device; prints its access token once.
    Create {
        id: String,
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        project: Option<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Use this access token instead of a generated one.
        #[arg(long = "device-token")]
        device_token: Option<String>,
        /// The token is a gateway's: it may speak for the tenant's other devices (Drogue DFU).
        #[arg(long)]
        gateway: bool,
        /// A PEM client certificate that authenticates the device over TLS (MQTT `--mqtts`).
        #[arg(long)]
        certificate: Option<PathBuf>,
        /// The LwM2M endpoint name the device registers with, when it is not its id.
        #[arg(long)]
        lwm2m_endpoint: Option<String>,
        /// The device's LwM2M DTLS PSK identity (it then registers over DTLS only).
        #[arg(long)]
        lwm2m_psk_identity: Option<String>,
        /// The PSK in hex; generated and shown once when absent.
        #[arg(long, requires = "lwm2m_psk_identity")]
        lwm2m_psk_key: Option<String>,
    },
    List {
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// What the device runs, should run, and its active update.
    Show {
        id: String,
    },
    /// Every update of the device with its history.
    History {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Args)]
#[group(id = "scope", required = true, multiple = true)]
struct ScopeArgs {
    #[arg(long, group = "scope", conflicts_with_all = ["project", "profile", "tenant_default"])]
    device: Option<String>,
    #[arg(long, group = "scope")]
    project: Option<String>,
    #[arg(long, group = "scope")]
    profile: Option<String>,
    /// Every compatible device of the tenant.
    #[arg(long, group = "scope", conflicts_with_all = ["project", "profile"])]
    tenant_default: bool,
}

impl ScopeArgs {
    fn to_json(&self) -> Value {
        json!({
            "device": self.device,
            "project": self.project,
            "profile": self.profile,
            "tenant_default": self.tenant_default,
        })
    }
}

#[derive(Args)]
struct AssignArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// TITLE@VERSION.
    #[arg(long)]
    artifact: String,
}

#[derive(Args)]
struct UnassignArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    #[arg(long = "type", default_value = "firmware")]
    kind: String,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant (server admin).
    Create { name: String },
    /// List tenants (server admin).
    List,
    /// The caller's tenant and its device-API settings.
    Show,
    /// Change the caller's tenant's device-API settings.
    Set {
        /// Seconds devices wait between polls.
        #[arg(long)]
        poll_interval: Option<u32>,
        /// Register unknown controllers that present the gateway token.
        #[arg(long)]
        auto_register: Option<bool>,
        /// Register unknown Frugal-IoT nodes on their first check-in.
        #[arg(long)]
        frugal_auto_register: Option<bool>,
    },
    /// Create (or replace) the tenant's DDI gateway token; prints it once.
    GatewayToken {
        /// Revoke it instead.
        #[arg(long)]
        revoke: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create an API key; prints it once.
    Create {
        name: String,
        /// admin, maintainer or viewer.
        #[arg(long)]
        role: String,
        /// Create it in this tenant (server admin only); default: the caller's tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    List,
    Delete {
        id: i64,
    },
}

pub async fn run(cli: Cli) -> Result<()> {
    if let Command::Serve(args) = cli.command {
        return serve(args).await;
    }
    let token = match cli.token {
        Some(token) => token,
        None => {
            let path = Path::new(config::DEFAULT_DATA_DIR).join("admin.token");
            std::fs::read_to_string(&path)
                .map(|t| t.trim().to_owned())
                .with_context(|| {
                    format!(
                        "no API key: pass --token or UPDRAFT_TOKEN (or run where {} exists)",
                        path.display()
                    )
                })?
        }
    };
    let client = Client::new(&cli.server, token)?;
    let out = Output { json: cli.json };
    match cli.command {
        Command::Serve(_) => Ok(()),
        Command::Artifact(command) => artifact(&client, &out, command).await,
        Command::Profile(command) => profile(&client, &out, command).await,
        Command::Project(command) => named(&client, &out, "projects", command).await,
        Command::Device(command) => device(&client, &out, command).await,
        Command::Assign(args) => {
            let mut body = args.scope.to_json();
            body["artifact"] = json!(args.artifact);
            let assignment = client.post("/api/v1/assignments", &body).await?;
            out.show(&assignment, || {
                println!(
                    "assigned {}@{} at {} level",
                    text(&assignment["title"]),
                    text(&assignment["version"]),
                    text(&assignment["level"])
                )
            });
            Ok(())
        }
        Command::Unassign(args) => {
            let scope = args.scope.to_json();
            let mut query: Vec<(&str, String)> = vec![("type", args.kind.clone())];
            for key in ["device", "project", "profile"] {
                if let Some(value) = scope[key].as_str() {
                    query.push((key, value.to_owned()));
                }
            }
            if args.scope.tenant_default {
                query.push(("tenant_default", "true".to_owned()));
            }
            client
                .json(
                    client
                        .request(Method::DELETE, "/api/v1/assignments")
                        .query(&query),
                )
                .await?;
            out.show(&json!({"unassigned": true}), || println!("unassigned"));
            Ok(())
        }
        Command::Status => {
            let status = client.get("/api/v1/status").await?;
            out.show(&status, || {
                println!("tenant     {}", text(&status["tenant"]));
                println!("devices    {}", text(&status["devices"]));
                println!("artifacts  {}", text(&status["artifacts"]));
                if let Some(actions) = status["actions"].as_object() {
                    let rows: Vec<Vec<String>> = actions
                        .iter()
                        .map(|(state, n)| vec![state.clone(), text(n)])
                        .collect();
                    if !rows.is_empty() {
                        println!();
                        table::print(&["latest update", "devices"], &rows);
                    }
                }
            });
            Ok(())
        }
        Command::Tenant(TenantCommand::Create { name }) => {
            let tenant = client
                .post("/api/v1/tenants", &json!({"name": name}))
                .await?;
            out.show(&tenant, || {
                println!("created tenant {}", text(&tenant["name"]))
            });
            Ok(())
        }
        Command::Tenant(TenantCommand::List) => {
            let tenants = client.get("/api/v1/tenants").await?;
            out.show(&tenants, || {
                table::print(&["name"], &rows(&tenants, &["name"]))
            });
            Ok(())
        }
        Command::Tenant(TenantCommand::Show) => {
            let tenant = client.get("/api/v1/tenant").await?;
            out.show(&tenant, || {
                for key in [
                    "name",
                    "poll_interval_secs",
                    "auto_register",
                    "frugal_auto_register",
                ] {
                    println!("{key:<20} {}", text(&tenant[key]));
                }
            });
            Ok(())
        }
        Command::Tenant(TenantCommand::Set {
            poll_interval,
            auto_register,
            frugal_auto_register,
        }) => {
            let body = json!({
                "poll_interval_secs": poll_interval,
                "auto_register": auto_register,
                "frugal_auto_register": frugal_auto_register,
            });
            let tenant = client
                .json(
                    client
                        .request(Method::PUT, "/api/v1/tenant/settings")
                        .json(&body),
                )
                .await?;
            out.show(&tenant, || {
                println!(
                    "tenant {}: poll every {} s, auto-register {}",
                    text(&tenant["name"]),
                    text(&tenant["poll_interval_secs"]),
                    text(&tenant["auto_register"])
                )
            });
            Ok(())
        }
        Command::Tenant(TenantCommand::GatewayToken { revoke: true }) => {
            client.delete("/api/v1/tenant/gateway-token").await?;
            out.show(&json!({"revoked": true}), || {
                println!("gateway token revoked")
            });
            Ok(())
        }
        Command::Tenant(TenantCommand::GatewayToken { revoke: false }) => {
            let token = client
                .post("/api/v1/tenant/gateway-token", &json!({}))
                .await?;
            out.show(&token, || {
                println!("gateway token (shown once): {}", text(&token["token"]))
            });
            Ok(())
        }
        Command::Key(command) => key(&client, &out, command).await,
        Command::Frugal(command) => frugal(&client, &out, command).await,
        Command::Sim(args) => crate::sim::run(&client, args, out.json).await,
    }
}

async fn frugal(client: &Client, out: &Output, command: FrugalCommand) -> Result<()> {
    match command {
        FrugalCommand::Push {
            file,
            org,
            project,
            node,
            ota_key,
            version,
        } => {
            let bytes = tokio::fs::read(&file)
                .await
                .with_context(|| format!("reading {}", file.display()))?;
            let mut query: Vec<(&str, String)> = vec![("org", org)];
            let optional = [
                ("project", project),
                ("node", node),
                ("ota_key", ota_key),
                ("version", version),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    query.push((key, value));
                }
            }
            let request = client
                .request(Method::POST, "/api/v1/frugal/push")
                .query(&query)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes);
            let pushed = client.json(request).await?;
            out.show(&pushed, || {
                let assignment = &pushed["assignment"];
                let target = match (
                    assignment["device"].as_str(),
                    assignment["project"].as_str(),
                    assignment["profile"].as_str(),
                ) {
                    (Some(node), _, _) => format!("node {node}"),
                    (None, Some(project), Some(key)) => {
                        format!("OTA key {key} in project {project}")
                    }
                    (None, None, Some(key)) => format!("OTA key {key} in the whole org"),
                    _ => "?".to_owned(),
                };
                println!(
                    "pushed {}@{} (md5 {}) for {target}",
                    text(&pushed["artifact"]["title"]),
                    text(&pushed["artifact"]["version"]),
                    text(&pushed["artifact"]["checksums"]["md5"])
                );
            });
        }
        FrugalCommand::Promote {
            org,
            project,
            node,
            ota_key,
        } => {
            let body = json!({"org": org, "project": project, "node": node, "ota_key": ota_key});
            let promoted = client.post("/api/v1/frugal/promote", &body).await?;
            out.show(&promoted, || {
                println!(
                    "promoted {}@{} from node {node} to OTA key {ota_key} in project {project}",
                    text(&promoted["title"]),
                    text(&promoted["version"])
                )
            });
        }
    }
    Ok(())
}

struct Output {
    json: bool,
}

impl Output {
    fn show(&self, value: &Value, human: impl FnOnce()) {
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
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn rows(list: &Value, columns: &[&str]) -> Vec<Vec<String>> {
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

async fn serve(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UPDRAFT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let given = config::Given {
        data_dir: args.data_dir,
        http: args.http,
        database_url: args.database_url,
        max_upload_bytes: args.max_upload_bytes,
        public_url: args.public_url,
        mqtt: args.mqtt,
        coap: args.coap,
        mqtts: args.mqtts,
        lwm2m: args.lwm2m,
        lwm2m_dtls: args.lwm2m_dtls,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        notify_per_second: args.notify_per_second,
    };
    let config = config::merge(given, file)?;
    updraft_server::run(config, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing open requests");
}

fn progress_bar(len: u64) -> ProgressBar {
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

async fn artifact(client: &Client, out: &Output, command: ArtifactCommand) -> Result<()> {
    match command {
        ArtifactCommand::Upload {
            file,
            title,
            version,
            kind,
            profiles,
            checksum_algorithm,
            checksum,
            description,
            filename,
            signature_file,
            signature_algorithm,
        } => {
            let signature = match &signature_file {
                Some(path) => {
                    let raw = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    // DER starts with a SEQUENCE; anything else is taken as base64 text.
                    Some(if raw.first() == Some(&0x30) {
                        base64::engine::general_purpose::STANDARD.encode(&raw)
                    } else {
                        String::from_utf8_lossy(&raw).trim().to_owned()
                    })
                }
                None => None,
            };
            let handle = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let len = handle.metadata().await?.len();
            let default_name = file.file_name().and_then(|n| n.to_str()).map(str::to_owned);
            let mut query: Vec<(&str, String)> =
                vec![("title", title), ("version", version), ("type", kind)];
            if !profiles.is_empty() {
                query.push(("profiles", profiles.join(",")));
            }
            let optional = [
                ("checksum_algorithm", checksum_algorithm),
                ("checksum", checksum),
                ("description", description),
                ("filename", filename.or(default_name)),
                ("signature", signature),
                ("signature_algorithm", signature_algorithm),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    query.push((key, value));
                }
            }
            let bar = progress_bar(len);
            let counted = bar.clone();
            let stream = tokio_util::io::ReaderStream::with_capacity(handle, 256 * 1024).inspect(
                move |chunk| {
                    if let Ok(bytes) = chunk {
                        counted.inc(bytes.len() as u64);
                    }
                },
            );
            let request = client
                .request(Method::POST, "/api/v1/artifacts")
                .query(&query)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(stream));
            let result = client.json(request).await;
            bar.finish_and_clear();
            let artifact = result?;
            out.show(&artifact, || {
                println!(
                    "uploaded {}@{} (id {}, {} bytes, sha256 {})",
                    text(&artifact["title"]),
                    text(&artifact["version"]),
                    text(&artifact["id"]),
                    text(&artifact["size"]),
                    text(&artifact["checksums"]["sha256"])
                )
            });
            Ok(())
        }
        ArtifactCommand::List => {
            let mut all = Vec::new();
            let mut offset = 0u64;
            loop {
                let page = client
                    .json(
                        client
                            .request(Method::GET, "/api/v1/artifacts")
                            .query(&[("offset", offset), ("limit", 500)]),
                    )
                    .await?;
                let items = page["items"].as_array().cloned().unwrap_or_default();
                offset += items.len() as u64;
                let done = items.is_empty() || offset >= page["total"].as_u64().unwrap_or(0);
                all.extend(items);
                if done {
                    break;
                }
            }
            let list = Value::Array(all);
            out.show(&list, || {
                table::print(
                    &["id", "title", "version", "type", "size", "profiles"],
                    &rows(
                        &list,
                        &["id", "title", "version", "type", "size", "profiles"],
                    ),
                )
            });
            Ok(())
        }
        ArtifactCommand::Show { release } => {
            let artifact = client.artifact(&release).await?;
            out.show(&artifact, || {
                for key in [
                    "id",
                    "title",
                    "version",
                    "type",
                    "size",
                    "filename",
                    "profiles",
                    "description",
                    "uploaded_by",
                    "download_url",
                ] {
                    println!("{key:<12} {}", text(&artifact[key]));
                }
                if let Some(sums) = artifact["checksums"].as_object() {
                    for (alg, value) in sums {
                        println!("{alg:<12} {}", text(value));
                    }
                }
            });
            Ok(())
        }
        ArtifactCommand::Download { release, output } => {
            let artifact = client.artifact(&release).await?;
            let id = artifact["id"]
                .as_i64()
                .ok_or_else(|| anyhow!("the server gave no artifact id"))?;
            let expected = text(&artifact["checksums"]["sha256"]);
            let response = client
                .send(client.request(Method::GET, &format!("/api/v1/artifacts/{id}/download")))
                .await?;
            let bar = progress_bar(response.content_length().unwrap_or(0));
            let partial = output.with_extension("part");
            let mut file = tokio::fs::File::create(&partial)
                .await
                .with_context(|| format!("creating {}", partial.display()))?;
            let mut hasher = Sha256::new();
            let mut body = response.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.context("the download broke off")?;
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
                bar.inc(chunk.len() as u64);
            }
            file.sync_all().await?;
            bar.finish_and_clear();
            let got = hex::encode(hasher.finalize());
            if got != expected {
                let _ = tokio::fs::remove_file(&partial).await;
                bail!("the download's sha256 is {got}, not {expected}: nothing was written");
            }
            tokio::fs::rename(&partial, &output).await?;
            out.show(&json!({"path": output, "sha256": got}), || {
                println!("wrote {} (sha256 {got})", output.display())
            });
            Ok(())
        }
        ArtifactCommand::Delete { release } => {
            let artifact = client.artifact(&release).await?;
            client
                .delete(&format!("/api/v1/artifacts/{}", text(&artifact["id"])))
                .await?;
            out.show(&json!({"deleted": release}), || {
                println!("deleted {release}")
            });
            Ok(())
        }
    }
}

async fn named(
    client: &Client,
    out: &Output,
    collection: &str,
    command: NamedCommand,
) -> Result<()> {
    match command {
        NamedCommand::Create { name, description } => {
            let created = client
                .post(
                    &format!("/api/v1/{collection}"),
                    &json!({"name": name, "description": description}),
                )
                .await?;
            out.show(&created, || println!("created {}", text(&created["name"])));
        }
        NamedCommand::List => {
            let list = client.get(&format!("/api/v1/{collection}")).await?;
            out.show(&list, || {
                table::print(
                    &["name", "description"],
                    &rows(&list, &["name", "description"]),
                )
            });
        }
    }
    Ok(())
}

fn read_text(path: Option<&Path>) -> Result<Option<String>> {
    path.map(|path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    })
    .transpose()
}

async fn profile(client: &Client, out: &Output, command: ProfileCommand) -> Result<()> {
    let show = |profile: &Value| {
        let dfu = if profile["drogue_dfu"] == true {
            " (Drogue DFU)"
        } else {
            ""
        };
        let cert = match profile["signing_cert_name"].as_str() {
            Some(name) => format!(", signing certificate {name}"),
            None => String::new(),
        };
        format!("{}{dfu}{cert}", text(&profile["name"]))
    };
    match command {
        ProfileCommand::Create {
            name,
            description,
            drogue_dfu,
            aws_http_delivery,
            lwm2m_delivery,
            lwm2m_path_only,
            signing_cert,
            signing_cert_name,
        } => {
            let cert = read_text(signing_cert.as_deref())?;
            let body = json!({"name": name, "description": description, "drogue_dfu": drogue_dfu,
                "aws_http_delivery": aws_http_delivery, "lwm2m_delivery": lwm2m_delivery,
                "lwm2m_path_only": lwm2m_path_only,
                "signing_cert": cert, "signing_cert_name": signing_cert_name});
            let created = client.post("/api/v1/profiles", &body).await?;
            out.show(&created, || println!("created {}", show(&created)));
        }
        ProfileCommand::List => {
            let list = client.get("/api/v1/profiles").await?;
            out.show(&list, || {
                table::print(
                    &["name", "description", "drogue_dfu"],
                    &rows(&list, &["name", "description", "drogue_dfu"]),
                )
            });
        }
        ProfileCommand::Set {
            name,
            drogue_dfu,
            aws_http_delivery,
            lwm2m_delivery,
            lwm2m_path_only,
            signing_cert,
            signing_cert_name,
            no_signing_cert,
        } => {
            let path = format!("/api/v1/profiles/{name}");
            let mut body = json!({"drogue_dfu": drogue_dfu, "aws_http_delivery": aws_http_delivery,
                "lwm2m_delivery": lwm2m_delivery, "lwm2m_path_only": lwm2m_path_only,
                "signing_cert_name": signing_cert_name});
            if no_signing_cert {
                body["signing_cert"] = json!("");
            } else if let Some(cert) = read_text(signing_cert.as_deref())? {
                body["signing_cert"] = json!(cert);
            }
            let profile = client
                .json(client.request(Method::PUT, &path).json(&body))
                .await?;
            out.show(&profile, || println!("profile {}", show(&profile)));
        }
    }
    Ok(())
}

async fn device(client: &Client, out: &Output, command: DeviceCommand) -> Result<()> {
    match command {
        DeviceCommand::Create {
            id,
            profile,
            project,
            tags,
            device_token,
            gateway,
            certificate,
            lwm2m_endpoint,
            lwm2m_psk_identity,
            lwm2m_psk_key,
        } => {
            let certificate = read_text(certificate.as_deref())?;
            let body = json!({"id": id, "profile": profile, "project": project, "tags": tags,
                "token": device_token, "gateway": gateway, "certificate": certificate,
                "lwm2m_endpoint": lwm2m_endpoint,
                "lwm2m_psk_identity": lwm2m_psk_identity, "lwm2m_psk_key": lwm2m_psk_key});
            let created = client.post("/api/v1/devices", &body).await?;
            out.show(&created, || {
                println!("created device {}", text(&created["id"]));
                println!("access token (shown once): {}", text(&created["token"]));
                if let Some(key) = created["lwm2m_psk_key"].as_str() {
                    println!("LwM2M PSK key (shown once): {key}");
                }
            });
        }
        DeviceCommand::List { offset, limit } => {
            let list = client
                .json(
                    client
                        .request(Method::GET, "/api/v1/devices")
                        .query(&[("offset", offset), ("limit", limit)]),
                )
                .await?;
            out.show(&list, || {
                let rows: Vec<Vec<String>> = list["items"]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .map(|d| {
                                let running = match d["firmware"].as_object() {
                                    Some(fw) => {
                                        format!("{}@{}", text(&fw["title"]), text(&fw["version"]))
                                    }
                                    None => "-".to_owned(),
                                };
                                vec![
                                    text(&d["id"]),
                                    text(&d["profile"]),
                                    text(&d["project"]),
                                    running,
                                    text(&d["tags"]),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table::print(&["id", "profile", "project", "firmware", "tags"], &rows);
            });
        }
        DeviceCommand::Show { id } => {
            let device = client.get(&format!("/api/v1/devices/{id}")).await?;
            out.show(&device, || {
                let release = |v: &Value| match v.as_object() {
                    Some(r) => format!("{}@{}", text(&r["title"]), text(&r["version"])),
                    None => "-".to_owned(),
                };
                println!("id                {}", text(&device["id"]));
                println!("profile           {}", text(&device["profile"]));
                println!("project           {}", text(&device["project"]));
                println!("running firmware  {}", release(&device["firmware"]));
                let desired = &device["desired_firmware"];
                let level = if desired.is_null() {
                    String::new()
                } else {
                    format!(" ({} level)", text(&desired["level"]))
                };
                println!("desired firmware  {}{level}", release(desired));
                println!("running software  {}", release(&device["software"]));
                println!("desired software  {}", release(&device["desired_software"]));
                let action = &device["active_action"];
                if action.is_null() {
                    println!("active update     -");
                } else {
                    println!(
                        "active update     #{} {}@{} {}",
                        text(&action["id"]),
                        text(&action["title"]),
                        text(&action["version"]),
                        text(&action["state"])
                    );
                }
            });
        }
        DeviceCommand::History { id } => {
            let history = client.get(&format!("/api/v1/devices/{id}/history")).await?;
            out.show(&history, || {
                let mut rows = Vec::new();
                for action in history.as_array().into_iter().flatten() {
                    for event in action["history"].as_array().into_iter().flatten() {
                        let refused = if event["refused"].as_bool() == Some(true) {
                            "refused: "
                        } else {
                            ""
                        };
                        rows.push(vec![
                            text(&action["id"]),
                            format!("{}@{}", text(&action["title"]), text(&action["version"])),
                            text(&event["at"]),
                            format!(
                                "{refused}{} -> {}",
                                text(&event["from"]),
                                text(&event["to"])
                            ),
                            text(&event["source"]),
                            text(&event["detail"]),
                        ]);
                    }
                }
                table::print(
                    &["action", "artifact", "at", "transition", "source", "detail"],
                    &rows,
                );
            });
        }
        DeviceCommand::Delete { id } => {
            client.delete(&format!("/api/v1/devices/{id}")).await?;
            out.show(&json!({"deleted": id}), || println!("deleted device {id}"));
        }
    }
    Ok(())
}

async fn key(client: &Client, out: &Output, command: KeyCommand) -> Result<()> {
    match command {
        KeyCommand::Create { name, role, tenant } => {
            let path = match tenant {
                Some(tenant) => format!("/api/v1/tenants/{tenant}/api-keys"),
                None => "/api/v1/api-keys".to_owned(),
            };
            let created = client
                .post(&path, &json!({"name": name, "role": role}))
                .await?;
            out.show(&created, || {
                println!(
                    "created {} key {} in tenant {}",
                    text(&created["role"]),
                    text(&created["name"]),
                    text(&created["tenant"])
                );
                println!("key (shown once): {}", text(&created["token"]));
            });
        }
        KeyCommand::List => {
            let list = client.get("/api/v1/api-keys").await?;
            out.show(&list, || {
                table::print(
                    &["id", "name", "role", "server_admin"],
                    &rows(&list, &["id", "name", "role", "server_admin"]),
                )
            });
        }
        KeyCommand::Delete { id } => {
            client.delete(&format!("/api/v1/api-keys/{id}")).await?;
            out.show(&json!({"deleted": id}), || println!("deleted key {id}"));
        }
    }
    Ok(())
}
