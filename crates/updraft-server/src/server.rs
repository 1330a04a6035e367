//! What `updraft serve` does: open the data directory's store and blobs (or PostgreSQL), collect
//! garbage left by a crash, make sure the `default` tenant and a server admin key exist, then
//! serve HTTP until asked to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use updraft_core::{Name, Role};
pub use updraft_store::S3Config;
use updraft_store::{BlobStore, LocalBlobStore, NewApiKey, S3BlobStore, SqlStore, collect_garbage};

use crate::kernel::channel::Adapters;
use crate::kernel::limit::RateLimit;
use crate::kernel::metrics::Metrics;
use crate::kernel::secret;
use crate::kernel::state::{AppConfig, AppState, Limits, Shared};
use crate::protocols::Protocols;
use updraft_store::prelude::*;

/// Everything `updraft serve` needs to know.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    /// `postgres://…` to use PostgreSQL; SQLite in the data directory otherwise.
    pub database_url: Option<String>,
    pub max_upload_bytes: u64,
    /// Base URL for links; derived from `http` when absent.
    pub public_url: Option<String>,
    /// The device MQTT listener; `None` turns it off.
    pub mqtt: Option<SocketAddr>,
    /// The CoAP listener (UDP); `None` turns it off.
    pub coap: Option<SocketAddr>,
    /// The LwM2M listener (UDP, NoSec); `None` turns it off.
    pub lwm2m: Option<SocketAddr>,
    /// The LwM2M listener over DTLS 1.2 with pre-shared keys (off unless set).
    pub lwm2m_dtls: Option<SocketAddr>,
    /// The device MQTT listener over TLS (off unless set); needs `tls`.
    pub mqtts: Option<SocketAddr>,
    /// The server certificate chain and private key (PEM files) for TLS listeners.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Devices the notification queue tells of a new firmware per second.
    pub notify_per_second: u32,
    /// Every listener's bounds.
    pub limits: Limits,
    /// Where artifact bytes live and how they are collected.
    pub storage: Storage,
}

/// Where artifact bytes live.
#[derive(Debug, Clone, Default)]
pub enum BlobsAt {
    /// A directory on local disk (`blobs` in the data directory unless named).
    #[default]
    DataDir,
    Dir(PathBuf),
    /// S3-compatible object storage.
    S3(S3Config),
}

/// The blob store's settings.
#[derive(Debug, Clone)]
pub struct Storage {
    pub blobs: BlobsAt,
    /// HTTP-pull devices that follow redirects get a presigned object-storage URL (S3 only).
    pub download_redirect: bool,
    /// How old an unreferenced blob or staging leftover must be before garbage collection
    /// removes it (uploads in flight on any replica are younger).
    pub gc_grace: Duration,
    /// How often garbage collection runs (on one replica at a time).
    pub gc_every: Duration,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            blobs: BlobsAt::DataDir,
            download_redirect: false,
            gc_grace: Duration::from_secs(3600),
            gc_every: Duration::from_secs(3600),
        }
    }
}

pub use crate::kernel::DEFAULT_TENANT;

/// The file, in the data directory, that holds the server admin key.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// A prepared server: the shared state and the protocol adapters, ready to serve.
#[derive(Clone)]
pub struct Node {
    pub state: AppState,
    pub protocols: Protocols,
}

impl Node {
    /// The whole HTTP surface.
    pub fn router(&self) -> axum::Router {
        crate::api::router(self.state.clone(), crate::dashboard::routes())
    }

    /// Serves the HTTP surface on `listener`, with the listener's bounds, until `shutdown`.
    pub async fn serve_http(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let router = self.router();
        crate::transport::http::serve(listener, router, self.state, shutdown).await;
    }

    /// Starts shutting down: `/readyz` answers 503 so that a load balancer sends nothing new, the
    /// MQTT listeners accept no more devices, and connected MQTT devices are disconnected (they
    /// reconnect to another replica); open HTTP requests are left to finish.
    pub fn drain(&self) {
        self.state
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let closed = self.protocols.mqtt.sessions().close_all();
        tracing::info!(mqtt_closed = closed, "draining: finishing open requests");
    }

    /// Serves device MQTT on `listener`.
    pub async fn serve_mqtt(self, listener: TcpListener) {
        self.protocols.mqtt.clone().serve(listener).await;
    }

    /// Serves device MQTT over TLS on `listener`.
    pub async fn serve_mqtts(self, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        self.protocols.mqtt.clone().serve_tls(listener, tls).await;
    }

    /// Serves ThingsBoard's CoAP on `socket`.
    pub async fn serve_coap(self, socket: tokio::net::UdpSocket) {
        crate::protocols::thingsboard::coap::serve(socket, self.protocols.coap.clone()).await;
    }

    /// Serves LwM2M (NoSec) on `socket`.
    pub async fn serve_lwm2m(self, socket: tokio::net::UdpSocket) {
        crate::protocols::lwm2m::serve(socket, self.protocols.lwm2m.clone()).await;
    }

    /// Serves LwM2M over DTLS with PSKs on `socket`.
    pub async fn serve_lwm2m_dtls(self, socket: tokio::net::UdpSocket) {
        crate::protocols::lwm2m::serve_dtls(socket, self.protocols.lwm2m.clone()).await;
    }

    /// Runs the rollout scheduler (on whichever replica holds the store's lease).
    pub async fn schedule(self) {
        crate::kernel::scheduler::scheduler(self.state).await;
    }

    /// Collects unreferenced blobs every `every` (on whichever replica holds the lease), sparing
    /// those younger than `grace`.
    pub async fn collect_garbage(self, every: Duration, grace: Duration) {
        crate::kernel::gc::collector(self.state, every, grace).await;
    }

    /// Applies the other replicas' news (returns at once without replicas).
    pub async fn listen(self) {
        crate::kernel::cluster::listen(self.state).await;
    }

    /// Runs the notification queue, telling at most `per_second` devices a second.
    pub async fn notify(self, per_second: u32) {
        let wake = self.state.wake.clone();
        crate::kernel::notifier::notifier(self.state, per_second, wake).await;
    }
}

/// Opens everything and returns the state and adapters to serve with.
pub async fn prepare(config: &ServerConfig, public_url: String) -> Result<Node> {
    private_dir(&config.data_dir)
        .await
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let store = match &config.database_url {
        Some(url) => SqlStore::open(url).await.context("opening the database")?,
        None => SqlStore::open_sqlite(&config.data_dir.join("updraft.db"))
            .await
            .context("opening the SQLite store")?,
    };
    #[cfg(unix)]
    if config.database_url.is_none() {
        // The database holds device secrets' hashes and PSKs: the owner's only.
        use std::os::unix::fs::PermissionsExt;
        let db = config.data_dir.join("updraft.db");
        tokio::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600))
            .await
            .with_context(|| format!("restricting {}", db.display()))?;
    }
    let blobs: Arc<dyn BlobStore> = match &config.storage.blobs {
        BlobsAt::DataDir => Arc::new(
            LocalBlobStore::open(config.data_dir.join("blobs"))
                .await
                .context("opening the blob directory")?,
        ),
        BlobsAt::Dir(dir) => Arc::new(
            LocalBlobStore::open(dir)
                .await
                .with_context(|| format!("opening the blob directory {}", dir.display()))?,
        ),
        BlobsAt::S3(s3) => Arc::new(S3BlobStore::open(s3).context("configuring S3")?),
    };
    blobs
        .check()
        .await
        .with_context(|| format!("reaching the blob store {}", blobs.describe()))?;
    if store.dialect() == updraft_store::Dialect::Sqlite {
        // This process owns the database: nothing is in flight anywhere, whatever its age.
        let gc = collect_garbage(&store, &*blobs, crate::kernel::clock::now_millis())
            .await
            .context("collecting garbage")?;
        if gc.staging_removed + gc.orphans_removed > 0 {
            tracing::info!(
                staging = gc.staging_removed,
                orphans = gc.orphans_removed,
                "removed what an interrupted upload left"
            );
        }
    }
    bootstrap(&store, &config.data_dir).await?;
    let grants = download_key(&store).await?;
    let state = AppState::new(Shared {
        store: Arc::new(store),
        blobs,
        config: Arc::new(AppConfig {
            max_upload_bytes: config.max_upload_bytes,
            public_url,
            limits: config.limits.clone(),
            download_redirect: config.storage.download_redirect,
        }),
        metrics: Arc::new(Metrics::default()),
        blob_lock: Arc::new(tokio::sync::Mutex::new(())),
        wake: Arc::new(tokio::sync::Notify::new()),
        schedule: Arc::new(tokio::sync::Notify::new()),
        windows: Arc::default(),
        grants: Arc::new(grants),
        draining: Arc::default(),
        adapters: Arc::new(Adapters::default()),
        registrations: Arc::new(RateLimit::new(
            config.limits.registrations_burst,
            config.limits.registrations_per_minute,
            100_000,
        )),
        connections: Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections)),
        sessions: Arc::default(),
        overviews: Arc::default(),
    });
    let protocols = Protocols::install(&state);
    Ok(Node { state, protocols })
}

/// The key download URLs are signed with: the one every replica shares, made by the first.
async fn download_key(store: &SqlStore) -> Result<crate::kernel::grants::Grants> {
    let candidate = secret::generate("", 32)?;
    let key = store
        .shared_secret("download_urls", &candidate)
        .await
        .context("reading the download URL key")?;
    Ok(crate::kernel::grants::Grants::new(key.as_bytes()))
}

/// Creates the `default` tenant and, unless `admin.token` exists, a server admin key written there.
async fn bootstrap(store: &SqlStore, data_dir: &Path) -> Result<()> {
    let tenant = match store.tenant_by_name(DEFAULT_TENANT).await? {
        Some(tenant) => tenant,
        None => store.create_tenant(&Name::parse(DEFAULT_TENANT)?).await?,
    };
    let token_path = data_dir.join(ADMIN_TOKEN_FILE);
    if tokio::fs::try_exists(&token_path).await? {
        return Ok(());
    }
    let token = secret::generate("updraft_", 24)?;
    let name = format!("admin-{}", &secret::hash(&token)[..8]);
    let new = NewApiKey {
        name,
        role: Role::Admin,
        server_admin: true,
        secret_hash: secret::hash(&token),
    };
    store.create_api_key(tenant.key, &new).await?;
    write_private(&token_path, &token).await?;
    println!(
        "created the server admin key; it is in {}",
        token_path.display()
    );
    Ok(())
}

/// Creates `dir` (and its parents) readable by the owner only; an existing one is restricted
/// to the owner too: it holds the database and the admin key.
async fn private_dir(dir: &Path) -> Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = tokio::fs::metadata(dir).await?.permissions().mode();
        if mode & 0o077 != 0 {
            tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).await?;
        }
    }
    Ok(())
}

async fn write_private(path: &Path, content: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(&tmp)
        .await
        .with_context(|| format!("writing {}", tmp.display()))?;
    tokio::io::AsyncWriteExt::write_all(&mut file, format!("{content}\n").as_bytes()).await?;
    file.sync_all().await?;
    tokio::fs::rename(&tmp, path).await?;
    Ok(())
}

/// Runs the server until `shutdown` completes, then drains open requests.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("listening on {}", config.http))?;
    let addr = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let node = prepare(&config, public_url).await?;
    if let Some(mqtt) = config.mqtt {
        let listener = TcpListener::bind(mqtt)
            .await
            .with_context(|| format!("listening for MQTT on {mqtt}"))?;
        println!("updraft mqtt on {}", listener.local_addr()?);
        tokio::spawn(node.clone().serve_mqtt(listener));
    }
    if let Some(mqtts) = config.mqtts {
        let Some((cert, key)) = &config.tls else {
            anyhow::bail!("--mqtts needs --tls-cert and --tls-key");
        };
        let tls = crate::transport::tls::server_config(cert, key)?;
        let listener = TcpListener::bind(mqtts)
            .await
            .with_context(|| format!("listening for MQTT over TLS on {mqtts}"))?;
        println!("updraft mqtts on {}", listener.local_addr()?);
        tokio::spawn(node.clone().serve_mqtts(listener, tls));
    }
    if let Some(lwm2m) = config.lwm2m {
        let socket = tokio::net::UdpSocket::bind(lwm2m)
            .await
            .with_context(|| format!("listening for LwM2M on {lwm2m}"))?;
        crate::transport::udp_receive_buffer(&socket);
        println!("updraft lwm2m on {}", socket.local_addr()?);
        tokio::spawn(node.clone().serve_lwm2m(socket));
    }
    if let Some(dtls) = config.lwm2m_dtls {
        let socket = tokio::net::UdpSocket::bind(dtls)
            .await
            .with_context(|| format!("listening for LwM2M over DTLS on {dtls}"))?;
        crate::transport::udp_receive_buffer(&socket);
        println!("updraft lwm2m-dtls on {}", socket.local_addr()?);
        tokio::spawn(node.clone().serve_lwm2m_dtls(socket));
    }
    if config.mqtt.is_some()
        || config.mqtts.is_some()
        || config.coap.is_some()
        || config.lwm2m.is_some()
        || config.lwm2m_dtls.is_some()
    {
        // Tells devices the server can reach (connected, observing, registered) of new updates.
        tokio::spawn(node.clone().notify(config.notify_per_second));
    }
    tokio::spawn(node.clone().schedule());
    tokio::spawn(node.clone().listen());
    tokio::spawn(
        node.clone()
            .collect_garbage(config.storage.gc_every, config.storage.gc_grace),
    );
    if let Some(coap) = config.coap {
        let socket = tokio::net::UdpSocket::bind(coap)
            .await
            .with_context(|| format!("listening for CoAP on {coap}"))?;
        crate::transport::udp_receive_buffer(&socket);
        println!("updraft coap on {}", socket.local_addr()?);
        tokio::spawn(node.clone().serve_coap(socket));
    }
    let app = node.router();
    // Tests and scripts read this line to learn the port; it comes last, when everything listens.
    println!("updraft listening on http://{addr}");
    let draining = node.clone();
    let shutdown = async move {
        shutdown.await;
        draining.drain();
    };
    crate::transport::http::serve(listener, app, node.state.clone(), shutdown).await;
    Ok(())
}
