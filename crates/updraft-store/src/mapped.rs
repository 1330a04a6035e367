//! Committed blobs mapped into memory for serving: a download's chunks are slices of one shared
//! mapping, so bytes go from the page cache to the socket with no read on a blocking thread, no
//! copy into a buffer of ours, and no memory of ours per download.
//!
//! Mapping a file is `unsafe` because another process could change it under the mapping. A
//! committed blob never changes: it is written under `staging/`, synced, and renamed into place
//! under its own SHA-256; deleting it unlinks the name and leaves open mappings intact. Only
//! someone truncating files in the blob directory by hand could break that (the process would
//! then get SIGBUS) — the same contract nginx's `sendfile` has with the files it serves.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// One committed blob, mapped read-only.
pub struct Mapped {
    map: memmap2::Mmap,
}

impl Mapped {
    /// Maps the file at `path`; `None` for an empty file (nothing to map).
    pub(crate) fn open(path: &Path) -> io::Result<Option<Arc<Mapped>>> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(None);
        }
        // SAFETY: the file is a committed blob, never written or truncated again (module docs).
        let map = unsafe { memmap2::Mmap::map(&file)? };
        // Downloads read front to back: let the kernel read ahead generously.
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Some(Arc::new(Mapped { map })))
    }

    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `len` bytes from `offset` (clamped to the blob), sharing the mapping: no copy.
    pub fn slice(self: &Arc<Self>, offset: u64, len: u64) -> Bytes {
        let size = self.map.len();
        let start = usize::try_from(offset).unwrap_or(size).min(size);
        let end = start
            .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
            .min(size);
        Bytes::from_owner(Window {
            map: Arc::clone(self),
            start,
            end,
        })
    }
}

/// A slice of a mapping that keeps the mapping alive.
struct Window {
    map: Arc<Mapped>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.map.map[self.start..self.end]
    }
}

/// Mappings most recently served, shared by every download of the same blob (so that ten
/// thousand downloads of one image map it once), at most [`MAPS`] of them. A mapping dropped from
/// here stays alive until its last download ends.
pub(crate) struct MapCache {
    maps: Mutex<HashMap<String, (Arc<Mapped>, u64)>>,
}

const MAPS: usize = 32;

impl MapCache {
    pub(crate) fn new() -> Self {
        MapCache {
            maps: Mutex::new(HashMap::new()),
        }
    }

    /// The blob's mapping if it is held.
    pub(crate) fn get(&self, sha256: &str, tick: u64) -> Option<Arc<Mapped>> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let (map, used) = maps.get_mut(sha256)?;
        *used = tick;
        Some(Arc::clone(map))
    }

    /// Maps the blob at `path` and holds the mapping (may block: opens and maps a file).
    pub(crate) fn map(
        &self,
        sha256: &str,
        path: &Path,
        tick: u64,
    ) -> io::Result<Option<Arc<Mapped>>> {
        let Some(map) = Mapped::open(path)? else {
            return Ok(None);
        };
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        if maps.len() >= MAPS
            && let Some(oldest) = maps
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            maps.remove(&oldest);
        }
        maps.insert(sha256.to_owned(), (Arc::clone(&map), tick));
        Ok(Some(map))
    }

    /// Forgets a deleted blob's mapping.
    pub(crate) fn forget(&self, sha256: &str) {
        self.maps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sha256);
    }
}
