//! Artifact bytes, content-addressed by SHA-256. [`BlobStore`] is shaped so that an S3-compatible
//! backend can follow without touching callers: bytes are staged first, then committed under
//! their hash once the caller has checked them, or dropped.
//!
//! [`LocalBlobStore`] layout under its root: `staging/<random>` while an upload streams in,
//! `sha256/<first two hex digits>/<hex>` once committed (write, fsync, rename, fsync directory).
//! A crash leaves at worst a staging file or an unreferenced blob; [`collect_garbage`] removes
//! both once they are older than its grace (committing refreshes a blob's time, so one an upload
//! is about to reference is young). `s3.rs` keeps blobs in object storage the same way.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::Store;
use crate::error::StoreResult;
use crate::mapped::{MapCache, Mapped};

/// A stream of a blob's bytes (or of a range of them).
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// Where artifact bytes live.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Starts a new blob; nothing is visible until [`BlobWriter::commit`].
    async fn stage(&self) -> io::Result<Box<dyn BlobWriter>>;
    /// Reads `len` bytes (to the end when `None`) from `offset` of the blob `sha256`.
    async fn open(&self, sha256: &str, offset: u64, len: Option<u64>) -> io::Result<BlobReader>;
    /// The committed blob mapped into memory, to serve slices of it without copying; `None`
    /// where this store cannot (the caller then streams [`BlobStore::open`]).
    async fn mapped(&self, _sha256: &str) -> io::Result<Option<Arc<Mapped>>> {
        Ok(None)
    }
    /// The blob's size, or `None` if there is no such blob.
    async fn size(&self, sha256: &str) -> io::Result<Option<u64>>;
    /// Deletes the blob; says whether it existed.
    async fn delete(&self, sha256: &str) -> io::Result<bool>;
    /// Every committed blob's SHA-256 and when it was last committed.
    async fn list_blobs(&self) -> io::Result<Vec<ListedBlob>>;
    /// Every committed blob's SHA-256.
    async fn list(&self) -> io::Result<Vec<String>> {
        Ok(self
            .list_blobs()
            .await?
            .into_iter()
            .map(|b| b.sha256)
            .collect())
    }
    /// Removes what uploads that never finished left behind, last written before `before`
    /// (epoch milliseconds; an upload in flight writes all the time); returns how many.
    async fn clear_staging(&self, before: i64) -> io::Result<u64>;
    /// A URL that lets anyone read the blob for `ttl` without asking Updraft, where the store
    /// can make one (object storage's presigned URLs).
    async fn presign(
        &self,
        _sha256: &str,
        _ttl: std::time::Duration,
    ) -> io::Result<Option<String>> {
        Ok(None)
    }
    /// Whether the store answers (for `/readyz`).
    async fn check(&self) -> io::Result<()>;
    /// Where the blobs are, for logs.
    fn describe(&self) -> String;
}

/// A committed blob as [`BlobStore::list_blobs`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedBlob {
    pub sha256: String,
    /// When it was last committed (epoch milliseconds).
    pub modified_at: i64,
}

/// A blob being written. Dropping it without committing discards the bytes.
#[async_trait]
pub trait BlobWriter: Send {
    async fn write(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes the bytes durable and visible as `sha256`, which the caller computed from them. If
    /// that blob exists already the new copy is discarded (content addressing deduplicates).
    async fn commit(self: Box<Self>, sha256: &str) -> io::Result<()>;
}

/// Blobs in a directory on local disk.
#[derive(Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
    maps: Arc<MapCache>,
    ticks: Arc<AtomicU64>,
}

impl std::fmt::Debug for LocalBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBlobStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

pub(crate) fn valid_sha256(sha256: &str) -> io::Result<()> {
    let ok = sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a lowercase hex sha-256: {sha256:?}"),
        ))
    }
}

impl LocalBlobStore {
    /// Opens (creating) the blob directory `root`.
    pub async fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        tokio::fs::create_dir_all(root.join("staging")).await?;
        tokio::fs::create_dir_all(root.join("sha256")).await?;
        Ok(Self {
            root,
            maps: Arc::new(MapCache::new()),
            ticks: Arc::new(AtomicU64::new(0)),
        })
    }

    fn path_of(&self, sha256: &str) -> io::Result<PathBuf> {
        valid_sha256(sha256)?;
        Ok(self.root.join("sha256").join(&sha256[..2]).join(sha256))
    }
}

/// A staging name no other upload uses.
pub(crate) fn random_name() -> String {
    let mut bytes = [0u8; 12];
    // Without OS randomness a clash only costs a failed upload (create_new refuses).
    if getrandom::fill(&mut bytes).is_err() {
        bytes = std::process::id()
            .to_le_bytes()
            .repeat(3)
            .try_into()
            .unwrap_or([7; 12]);
    }
    hex::encode(bytes)
}

fn modified_millis(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

async fn sync_dir(dir: &Path) -> io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

struct LocalWriter {
    file: Option<tokio::fs::File>,
    staging_path: PathBuf,
    store: LocalBlobStore,
    committed: bool,
}

#[async_trait]
impl BlobWriter for LocalWriter {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.write_all(data).await,
            None => Err(io::Error::other("blob writer already closed")),
        }
    }

    async fn commit(mut self: Box<Self>, sha256: &str) -> io::Result<()> {
        let target = self.store.path_of(sha256)?;
        let Some(mut file) = self.file.take() else {
            return Err(io::Error::other("blob writer already closed"));
        };
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        let dir = target
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.store.root.clone());
        tokio::fs::create_dir_all(&dir).await?;
        if tokio::fs::try_exists(&target).await? {
            tokio::fs::remove_file(&self.staging_path).await?;
            // The same bytes are there already: young again, so garbage collection spares them
            // until the caller's artifact refers to them.
            let existing = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&target)
                .await?
                .into_std()
                .await;
            existing.set_modified(std::time::SystemTime::now())?;
        } else {
            tokio::fs::rename(&self.staging_path, &target).await?;
            sync_dir(&dir).await?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a leftover is removed by the next start-up's garbage collection.
            let _ = std::fs::remove_file(&self.staging_path);
        }
    }
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn stage(&self) -> io::Result<Box<dyn BlobWriter>> {
        let staging_path = self.root.join("staging").join(random_name());
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging_path)
            .await?;
        Ok(Box::new(LocalWriter {
            file: Some(file),
            staging_path,
            store: self.clone(),
            committed: false,
        }))
    }

    async fn open(&self, sha256: &str, offset: u64, len: Option<u64>) -> io::Result<BlobReader> {
        let mut file = tokio::fs::File::open(self.path_of(sha256)?).await?;
        file.seek(io::SeekFrom::Start(offset)).await?;
        match len {
            Some(len) => Ok(Box::pin(file.take(len))),
            None => Ok(Box::pin(file)),
        }
    }

    async fn mapped(&self, sha256: &str) -> io::Result<Option<Arc<Mapped>>> {
        let path = self.path_of(sha256)?;
        let tick = self.ticks.fetch_add(1, Ordering::Relaxed);
        if let Some(map) = self.maps.get(sha256, tick) {
            return Ok(Some(map));
        }
        let maps = Arc::clone(&self.maps);
        let sha256 = sha256.to_owned();
        // Opening and mapping may touch the disk: off the async threads (once per blob).
        tokio::task::spawn_blocking(move || maps.map(&sha256, &path, tick))
            .await
            .map_err(io::Error::other)?
    }

    async fn size(&self, sha256: &str) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.path_of(sha256)?).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn delete(&self, sha256: &str) -> io::Result<bool> {
        self.maps.forget(sha256);
        match tokio::fs::remove_file(self.path_of(sha256)?).await {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err),
        }
    }

    async fn list_blobs(&self) -> io::Result<Vec<ListedBlob>> {
        let mut out = Vec::new();
        let mut shards = tokio::fs::read_dir(self.root.join("sha256")).await?;
        while let Some(shard) = shards.next_entry().await? {
            if !shard.file_type().await?.is_dir() {
                continue;
            }
            let mut blobs = tokio::fs::read_dir(shard.path()).await?;
            while let Some(blob) = blobs.next_entry().await? {
                if let Some(name) = blob.file_name().to_str()
                    && valid_sha256(name).is_ok()
                {
                    let modified_at = modified_millis(&blob.metadata().await?);
                    out.push(ListedBlob {
                        sha256: name.to_owned(),
                        modified_at,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        Ok(out)
    }

    async fn clear_staging(&self, before: i64) -> io::Result<u64> {
        let mut removed = 0;
        let mut entries = tokio::fs::read_dir(self.root.join("staging")).await?;
        while let Some(entry) = entries.next_entry().await? {
            if modified_millis(&entry.metadata().await?) < before {
                match tokio::fs::remove_file(entry.path()).await {
                    Ok(()) => removed += 1,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(removed)
    }

    async fn check(&self) -> io::Result<()> {
        tokio::fs::metadata(self.root.join("sha256"))
            .await
            .map(drop)
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcReport {
    pub staging_removed: u64,
    pub orphans_removed: u64,
}

/// Removes staged leftovers and every blob no artifact refers to, of those last written before
/// `before` (epoch milliseconds). With several replicas, `before` lies a grace period in the
/// past: an upload in flight anywhere writes its staging object all the time, and the blob it
/// commits (or refreshes, when the bytes were there already) is young until its artifact row
/// refers to it. A single process that just opened its own store may pass the present.
pub async fn collect_garbage(
    store: &dyn Store,
    blobs: &dyn BlobStore,
    before: i64,
) -> StoreResult<GcReport> {
    let staging_removed = blobs.clear_staging(before).await?;
    // Listed before the references are read: a blob committed after the listing is not
    // considered, and one whose artifact appeared meanwhile is among the references.
    let listed = blobs.list_blobs().await?;
    let referenced: HashSet<String> = store.blob_references().await?;
    let mut orphans_removed = 0;
    for blob in listed {
        if blob.modified_at < before
            && !referenced.contains(&blob.sha256)
            && blobs.delete(&blob.sha256).await?
        {
            orphans_removed += 1;
        }
    }
    Ok(GcReport {
        staging_removed,
        orphans_removed,
    })
}
