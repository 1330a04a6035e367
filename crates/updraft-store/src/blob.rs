//! Artifact bytes, content-addressed by SHA-256. [`BlobStore`] is shaped so that an S3-compatible
//! backend can follow without touching callers: bytes are staged first, then committed under
//! their hash once the caller has checked them, or dropped.
//!
//! [`LocalBlobStore`] layout under its root: `staging/<random>` while an upload streams in,
//! `sha256/<first two hex digits>/<hex>` once committed (write, fsync, rename, fsync directory).
//! A crash leaves at worst a staging file or an unreferenced blob; [`collect_garbage`] at start-up
//! removes both.

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
    /// Every committed blob's SHA-256.
    async fn list(&self) -> io::Result<Vec<String>>;
    /// Removes what uploads that never finished left behind; returns how many.
    async fn clear_staging(&self) -> io::Result<u64>;
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

fn valid_sha256(sha256: &str) -> io::Result<()> {
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

    fn random_name() -> String {
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
        let staging_path = self.root.join("staging").join(Self::random_name());
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

    async fn list(&self) -> io::Result<Vec<String>> {
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
                    out.push(name.to_owned());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn clear_staging(&self) -> io::Result<u64> {
        let mut removed = 0;
        let mut entries = tokio::fs::read_dir(self.root.join("staging")).await?;
        while let Some(entry) = entries.next_entry().await? {
            tokio::fs::remove_file(entry.path()).await?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcReport {
    pub staging_removed: u64,
    pub orphans_removed: u64,
}

/// Removes staged leftovers and every blob no artifact refers to. Run it before serving: a blob
/// committed by an upload still in flight has no artifact row yet and would be taken for an orphan.
pub async fn collect_garbage(store: &dyn Store, blobs: &dyn BlobStore) -> StoreResult<GcReport> {
    let staging_removed = blobs.clear_staging().await?;
    let referenced: HashSet<String> = store.blob_references().await?;
    let mut orphans_removed = 0;
    for sha256 in blobs.list().await? {
        if !referenced.contains(&sha256) && blobs.delete(&sha256).await? {
            orphans_removed += 1;
        }
    }
    Ok(GcReport {
        staging_removed,
        orphans_removed,
    })
}
