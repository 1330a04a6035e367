//! The command line: every subcommand's arguments, as clap parses them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

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
    pub(super) server: String,
    /// API key; read from ./updraft-data/admin.token when absent.
    #[arg(long, global = true, env = "UPDRAFT_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub(super) json: bool,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand)]
pub(super) enum Command {
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
    /// Staged rollouts: groups, thresholds, pacing, pause/resume/cancel.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Auto-assignment rules: a filter and an artifact, applied as devices come to match.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Simulate many devices against the server (DDI agents or Drogue DFU devices).
    Sim(crate::sim::SimArgs),
    /// Frugal-IoT developer workflow: push binaries for a node or an OTA key, promote them.
    #[command(subcommand)]
    Frugal(FrugalCommand),
}

#[derive(Subcommand)]
pub(super) enum FrugalCommand {
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
    /// Make a project key: the OTA key (`SYSTEM_OTA_KEY`) nodes of a project and profile enroll
    /// with. Printed once.
    Key {
        #[arg(long)]
        project: String,
        /// The nodes' profile (Frugal-IoT's firmware type).
        #[arg(long)]
        profile: String,
        /// At most this many nodes enroll with it (default 10000).
        #[arg(long)]
        max_nodes: Option<u64>,
    },
    /// Give one node an OTA key of its own (replacing its previous one). Printed once.
    NodeKey { node: String },
}

#[derive(Args)]
pub(super) struct ServeArgs {
    /// Where the SQLite database, blobs and admin key live.
    #[arg(long, env = "UPDRAFT_DATA_DIR")]
    pub(super) data_dir: Option<PathBuf>,
    /// HTTP listen address (port 0 picks a free port).
    #[arg(long, env = "UPDRAFT_HTTP")]
    pub(super) http: Option<SocketAddr>,
    /// postgres://… to keep the fleet in PostgreSQL instead of SQLite.
    #[arg(long, env = "UPDRAFT_DATABASE_URL", hide_env_values = true)]
    pub(super) database_url: Option<String>,
    /// Largest artifact accepted, in bytes.
    #[arg(long, env = "UPDRAFT_MAX_UPLOAD_BYTES")]
    pub(super) max_upload_bytes: Option<u64>,
    /// Base URL written into links (default: from --http).
    #[arg(long, env = "UPDRAFT_PUBLIC_URL")]
    pub(super) public_url: Option<String>,
    /// Device MQTT listener address, or `off` (default 127.0.0.1:1883).
    #[arg(long, env = "UPDRAFT_MQTT")]
    pub(super) mqtt: Option<String>,
    /// Device CoAP listener address (UDP), or `off` (default 127.0.0.1:5683).
    #[arg(long, env = "UPDRAFT_COAP")]
    pub(super) coap: Option<String>,
    /// LwM2M listener address (UDP, NoSec), or `off` (default 127.0.0.1:5685).
    #[arg(long, env = "UPDRAFT_LWM2M")]
    pub(super) lwm2m: Option<String>,
    /// LwM2M over DTLS 1.2 with pre-shared keys (UDP, e.g. 0.0.0.0:5686), or `off` (the default).
    #[arg(long, env = "UPDRAFT_LWM2M_DTLS")]
    pub(super) lwm2m_dtls: Option<String>,
    /// Device MQTT-over-TLS listener address (e.g. 0.0.0.0:8883), or `off` (the default).
    /// Devices authenticate with a registered client certificate or their token.
    #[arg(long, env = "UPDRAFT_MQTTS")]
    pub(super) mqtts: Option<String>,
    /// PEM certificate chain of the server, for TLS listeners.
    #[arg(long, env = "UPDRAFT_TLS_CERT")]
    pub(super) tls_cert: Option<PathBuf>,
    /// PEM private key of the server, for TLS listeners.
    #[arg(long, env = "UPDRAFT_TLS_KEY")]
    pub(super) tls_key: Option<PathBuf>,
    /// Devices told of a new firmware per second by the notification queue.
    #[arg(long, env = "UPDRAFT_NOTIFY_PER_SECOND")]
    pub(super) notify_per_second: Option<u32>,
    /// Open connections across the TCP listeners (default 15000); keep it below `ulimit -n`.
    #[arg(long, env = "UPDRAFT_MAX_CONNECTIONS")]
    pub(super) max_connections: Option<usize>,
    /// Where artifact bytes live: a directory (default: `blobs` in the data directory) or
    /// `s3://BUCKET/PREFIX` (S3-compatible storage; endpoint, region and keys from
    /// AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or the file's [s3]).
    #[arg(long, env = "UPDRAFT_BLOBS")]
    pub(super) blobs: Option<String>,
    /// hawkBit DDI devices (whose clients follow redirects) download from a short-lived
    /// presigned object-storage URL instead of through the server (with s3:// blobs).
    #[arg(long, env = "UPDRAFT_DOWNLOAD_REDIRECT")]
    pub(super) download_redirect: bool,
    /// Age below which garbage collection spares unreferenced blobs and staging leftovers
    /// (default 3600: longer than any upload in flight on any replica).
    #[arg(long, env = "UPDRAFT_GC_GRACE_SECS")]
    pub(super) gc_grace_secs: Option<u64>,
    /// A TOML file with the same keys as these flags (data-dir, http, …); flags and env win.
    #[arg(long, env = "UPDRAFT_CONFIG")]
    pub(super) config: Option<PathBuf>,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(super) enum ArtifactCommand {
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
pub(super) enum NamedCommand {
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
}

#[derive(Subcommand)]
pub(super) enum ProfileCommand {
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
pub(super) enum DeviceCommand {
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
        /// Only devices matching a filter, e.g. `profile==esp32;tag==beta,attr.region==eu`
        /// (`;` and, `,` or; `==` `!=` `=in=(a,b)` `=out=(a,b)`; `<` `>` on `fw.version` and
        /// `seen`, e.g. `seen>24h`; `*` in a value matches anything).
        #[arg(long)]
        filter: Option<String>,
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
pub(super) struct ScopeArgs {
    #[arg(long, group = "scope", conflicts_with_all = ["project", "profile", "tenant_default"])]
    pub(super) device: Option<String>,
    #[arg(long, group = "scope")]
    pub(super) project: Option<String>,
    #[arg(long, group = "scope")]
    pub(super) profile: Option<String>,
    /// Every compatible device of the tenant.
    #[arg(long, group = "scope", conflicts_with_all = ["project", "profile"])]
    pub(super) tenant_default: bool,
}

impl ScopeArgs {
    pub(super) fn to_json(&self) -> Value {
        json!({
            "device": self.device,
            "project": self.project,
            "profile": self.profile,
            "tenant_default": self.tenant_default,
        })
    }
}

#[derive(Args)]
pub(super) struct AssignArgs {
    #[command(flatten)]
    pub(super) scope: ScopeArgs,
    /// TITLE@VERSION.
    #[arg(long)]
    pub(super) artifact: String,
}

#[derive(Args)]
pub(super) struct UnassignArgs {
    #[command(flatten)]
    pub(super) scope: ScopeArgs,
    #[arg(long = "type", default_value = "firmware")]
    pub(super) kind: String,
}

#[derive(Subcommand)]
pub(super) enum TenantCommand {
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
pub(super) enum KeyCommand {
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

#[derive(Subcommand)]
pub(super) enum RolloutCommand {
    /// Create a rollout over a snapshot of its target.
    Create(Box<RolloutCreateArgs>),
    /// Start a READY rollout.
    Start { name: String },
    /// Pause a running rollout (devices already told go on).
    Pause { name: String },
    /// Resume a paused rollout, or a halted one (accepting its failures so far).
    Resume { name: String },
    /// Cancel: still-active actions are withdrawn through each device's protocol.
    Cancel { name: String },
    /// Every rollout of the tenant.
    List,
    /// A rollout's groups, counts and failures.
    Show {
        name: String,
        /// Follow it live, one progress bar per group, until it ends or halts.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Args)]
pub(super) struct RolloutCreateArgs {
    pub(super) name: String,
    /// The artifact as TITLE@VERSION.
    #[arg(long)]
    pub(super) artifact: String,
    /// The target as a device filter, e.g. 'profile==esp32;tag==beta'.
    #[arg(long, conflicts_with = "devices", required_unless_present = "devices")]
    pub(super) filter: Option<String>,
    /// The target as device ids: A,B,C.
    #[arg(long, value_delimiter = ',')]
    pub(super) devices: Option<Vec<String>>,
    /// Group sizes: 10%,40%,50% or 5,100,rest (one group when absent).
    #[arg(long)]
    pub(super) groups: Option<String>,
    /// Percent of a group UPDATED before the next starts (default 100).
    #[arg(long)]
    pub(super) success_threshold: Option<u8>,
    /// Percent of a group FAILED beyond which the rollout halts (default 0).
    #[arg(long)]
    pub(super) error_threshold: Option<u8>,
    /// Wait this long after a group passes before the next starts (30m).
    #[arg(long)]
    pub(super) soak: Option<String>,
    /// forced, soft or download-only.
    #[arg(long = "type")]
    pub(super) update_type: Option<String>,
    /// manual (default), auto or an RFC 3339 time.
    #[arg(long)]
    pub(super) start: Option<String>,
    /// At most N devices started per minute.
    #[arg(long)]
    pub(super) max_per_minute: Option<u64>,
    /// At most N devices downloading at once.
    #[arg(long)]
    pub(super) max_downloads: Option<u64>,
    /// Spread each device's start over this long (10m).
    #[arg(long)]
    pub(super) jitter: Option<String>,
    /// Leave out target devices the artifact does not run on instead of refusing.
    #[arg(long)]
    pub(super) skip_incompatible: bool,
    /// Devices created later, or that come to match the filter, join new groups.
    #[arg(long, requires = "filter")]
    pub(super) dynamic: bool,
    /// Maintenance window for installing, as a cron schedule: '0 2 * * *'.
    #[arg(long)]
    pub(super) window: Option<String>,
    /// How long the window stays open (default 1h).
    #[arg(long, requires = "window")]
    pub(super) window_duration: Option<String>,
    /// The window's time zone (default UTC): Europe/Berlin.
    #[arg(long, requires = "window")]
    pub(super) tz: Option<String>,
}

#[derive(Subcommand)]
pub(super) enum RuleCommand {
    /// Give an artifact to every device matching a filter, now and whenever one comes to match.
    Create {
        name: String,
        #[arg(long)]
        filter: String,
        /// TITLE@VERSION.
        #[arg(long)]
        artifact: String,
        /// forced, soft or download-only.
        #[arg(long = "type")]
        update_type: Option<String>,
        #[arg(long)]
        max_per_minute: Option<u64>,
        #[arg(long)]
        max_downloads: Option<u64>,
    },
    /// Every rule of the tenant.
    List,
    /// Stop the rule: no device joins it any more (those it reached keep their update).
    Delete { name: String },
}

impl RolloutCreateArgs {
    pub(super) fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "artifact": self.artifact,
            "filter": self.filter,
            "devices": self.devices,
            "groups": self.groups,
            "success_threshold": self.success_threshold,
            "error_threshold": self.error_threshold,
            "soak": self.soak,
            "type": self.update_type,
            "start": self.start,
            "max_per_minute": self.max_per_minute,
            "max_downloads": self.max_downloads,
            "jitter": self.jitter,
            "skip_incompatible": self.skip_incompatible,
            "dynamic": self.dynamic,
            "window": self.window,
            "window_duration": self.window_duration,
            "tz": self.tz,
        })
    }
}
