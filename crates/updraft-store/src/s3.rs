//! Blobs in S3-compatible object storage (AWS S3, SeaweedFS, MinIO, Ceph RGW, R2…), through the
//! `object_store` crate.
//!
//! Layout under the configured prefix: `staging/<random>` while an upload streams in (a multipart
//! upload, so memory stays bounded by the part size), `sha256/<hex>` once committed. Committing
//! completes the staging object, copies it server-side to its content address and deletes the
//! staging object; a copy over an existing blob refreshes its modification time, which is what
//! keeps garbage collection (which spares young objects) off a blob an upload is about to
//! reference. An upload interrupted by a crash leaves at worst an incomplete multipart upload
//! (invisible; the bucket's `AbortIncompleteMultipartUpload` lifecycle rule removes it) or a
//! completed staging object that garbage collection removes once it is older than its grace.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart,
};

use crate::blob::{BlobReader, BlobStore, BlobWriter, ListedBlob, random_name, valid_sha256};

/// Bytes buffered per multipart part (S3 wants at least 5 MiB for every part but the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one upload sent at once; with the one being filled, an upload holds at most
/// `(PARTS_IN_FLIGHT + 1) × PART_SIZE` bytes.
const PARTS_IN_FLIGHT: usize = 2;

/// Where the bucket is and how to reach it. Anything left `None` comes from the environment the
/// AWS way (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`, instance credentials…).
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`); may be empty.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl S3Config {
    /// Reads `s3://BUCKET/PREFIX` (the prefix is optional); the rest from the environment.
    pub fn from_url(url: &str) -> io::Result<Self> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "an S3 location is s3://BUCKET/PREFIX",
            )
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an S3 location names its bucket: s3://BUCKET/PREFIX",
            ));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            ..Self::default()
        })
    }

    /// `s3://BUCKET/PREFIX` at an explicit endpoint with a static key pair (region `us-east-1`,
    /// which S3-compatible engines accept): what a test or a tool that starts its own engine has.
    pub fn at_endpoint(url: &str, endpoint: &str, key: &str, secret: &str) -> io::Result<Self> {
        Ok(Self {
            endpoint: Some(endpoint.to_owned()),
            region: Some("us-east-1".into()),
            access_key_id: Some(key.to_owned()),
            secret_access_key: Some(secret.to_owned()),
            ..Self::from_url(url)?
        })
    }
}

/// The object store client's timeouts. Its default (30 s for a whole request, body included)
/// would cut every device download streamed from the bucket that lasts longer — a large image,
/// a slow link, a loaded server — so the bound is a stall instead: no byte for
/// [`STALL_TIMEOUT`] ends a request; a whole request is bounded by [`REQUEST_TIMEOUT`], the
/// longest a device may take to download one image through the server.
fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_read_timeout(STALL_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
}

/// No byte from the object store for this long ends a request.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest one request to the object store may take (a download streamed to a slow device).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

/// Blobs in one bucket under one prefix.
#[derive(Clone)]
pub struct S3BlobStore {
    store: Arc<AmazonS3>,
    prefix: String,
    where_: String,
}

impl std::fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3BlobStore")
            .field("at", &self.where_)
            .finish_non_exhaustive()
    }
}

fn to_io(err: object_store::Error) -> io::Error {
    match err {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, err),
        other => io::Error::other(other),
    }
}

impl S3BlobStore {
    /// Connects to the bucket `config` names (nothing is sent until it is used).
    pub fn open(config: &S3Config) -> io::Result<Self> {
        // As `AmazonS3Builder::from_env`, over our client timeouts (an `AWS_*` client setting in
        // the environment still wins).
        let mut builder = AmazonS3Builder::new().with_client_options(client_options());
        for (key, value) in std::env::vars_os() {
            if let (Some(key), Some(value)) = (key.to_str(), value.to_str())
                && key.starts_with("AWS_")
                && let Ok(key) = key.to_ascii_lowercase().parse()
            {
                builder = builder.with_config(key, value);
            }
        }
        let mut builder = builder.with_bucket_name(&config.bucket);
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(endpoint) = &endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder.build().map_err(io::Error::other)?;
        Ok(Self {
            store: Arc::new(store),
            prefix: config.prefix.clone(),
            where_: format!("s3://{}/{}", config.bucket, config.prefix),
        })
    }

    fn key(&self, rest: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.prefix))
        }
    }

    fn blob_key(&self, sha256: &str) -> io::Result<Path> {
        valid_sha256(sha256)?;
        Ok(self.key(&format!("sha256/{sha256}")))
    }

    /// Every object under `folder` with its modification time (epoch milliseconds).
    async fn listing(&self, folder: &str) -> io::Result<Vec<(String, i64)>> {
        let prefix = self.key(folder);
        let mut out = Vec::new();
        let mut objects = self.store.list(Some(&prefix));
        while let Some(meta) = objects.next().await {
            let meta = meta.map_err(to_io)?;
            if let Some(name) = meta.location.filename() {
                out.push((name.to_owned(), meta.last_modified.timestamp_millis()));
            }
        }
        Ok(out)
    }
}

struct S3Writer {
    upload: Option<WriteMultipart>,
    staging: Path,
    blobs: S3BlobStore,
}

#[async_trait]
impl BlobWriter for S3Writer {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(upload) = self.upload.as_mut() else {
            return Err(io::Error::other("blob writer already closed"));
        };
        // Backpressure: the next part is not buffered while too many are on their way.
        upload
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(to_io)?;
        upload.write(data);
        Ok(())
    }

    async fn commit(mut self: Box<Self>, sha256: &str) -> io::Result<()> {
        let target = self.blobs.blob_key(sha256)?;
        let Some(upload) = self.upload.take() else {
            return Err(io::Error::other("blob writer already closed"));
        };
        upload.finish().await.map_err(to_io)?;
        // A copy over an existing blob (the same bytes) refreshes its modification time.
        let copied = self.blobs.store.copy(&self.staging, &target).await;
        let removed = self.blobs.store.delete(&self.staging).await;
        copied.map_err(to_io)?;
        if let Err(err) = removed {
            // Harmless: garbage collection removes it once it is older than its grace.
            tracing::warn!("removing the staging object {}: {err}", self.staging);
        }
        Ok(())
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            // The parts sent so far are dropped by the store; best effort, off the caller.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = upload.abort().await;
                });
            }
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn stage(&self) -> io::Result<Box<dyn BlobWriter>> {
        let staging = self.key(&format!("staging/{}", random_name()));
        let upload = self.store.put_multipart(&staging).await.map_err(to_io)?;
        Ok(Box::new(S3Writer {
            upload: Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)),
            staging,
            blobs: self.clone(),
        }))
    }

    async fn open(&self, sha256: &str, offset: u64, len: Option<u64>) -> io::Result<BlobReader> {
        let key = self.blob_key(sha256)?;
        let range = match len {
            Some(0) => return Ok(Box::pin(tokio::io::empty())),
            Some(len) => GetRange::Bounded(offset..offset.saturating_add(len)),
            None if offset == 0 => {
                let got = self.store.get(&key).await.map_err(to_io)?;
                return Ok(reader(got));
            }
            None => GetRange::Offset(offset),
        };
        let options = GetOptions {
            range: Some(range),
            ..GetOptions::default()
        };
        match self.store.get_opts(&key, options).await {
            Ok(got) => Ok(reader(got)),
            Err(object_store::Error::NotFound { path, source }) => {
                Err(to_io(object_store::Error::NotFound { path, source }))
            }
            // A range that starts past the end reads nothing, as a file does.
            Err(err) => match self.size(sha256).await? {
                Some(size) if offset >= size => Ok(Box::pin(tokio::io::empty())),
                _ => Err(to_io(err)),
            },
        }
    }

    async fn size(&self, sha256: &str) -> io::Result<Option<u64>> {
        match self.store.head(&self.blob_key(sha256)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(to_io(err)),
        }
    }

    async fn delete(&self, sha256: &str) -> io::Result<bool> {
        let existed = self.size(sha256).await?.is_some();
        match self.store.delete(&self.blob_key(sha256)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(existed),
            Err(err) => Err(to_io(err)),
        }
    }

    async fn list_blobs(&self) -> io::Result<Vec<ListedBlob>> {
        let mut out: Vec<ListedBlob> = self
            .listing("sha256")
            .await?
            .into_iter()
            .filter(|(name, _)| valid_sha256(name).is_ok())
            .map(|(sha256, modified_at)| ListedBlob {
                sha256,
                modified_at,
            })
            .collect();
        out.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        Ok(out)
    }

    async fn clear_staging(&self, before: i64) -> io::Result<u64> {
        let mut removed = 0;
        for (name, modified_at) in self.listing("staging").await? {
            if modified_at < before {
                match self
                    .store
                    .delete(&self.key(&format!("staging/{name}")))
                    .await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                    Err(err) => return Err(to_io(err)),
                }
            }
        }
        Ok(removed)
    }

    async fn presign(&self, sha256: &str, ttl: Duration) -> io::Result<Option<String>> {
        let url = self
            .store
            .signed_url(Method::GET, &self.blob_key(sha256)?, ttl)
            .await
            .map_err(to_io)?;
        Ok(Some(url.to_string()))
    }

    async fn check(&self) -> io::Result<()> {
        // Any answer from the bucket but an error will do: a missing key is an answer.
        match self.store.head(&self.key("ready")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(to_io(err)),
        }
    }

    fn describe(&self) -> String {
        self.where_.clone()
    }
}

fn reader(got: object_store::GetResult) -> BlobReader {
    let stream = got.into_stream().map_err(to_io);
    Box::pin(tokio_util::io::StreamReader::new(stream))
}
