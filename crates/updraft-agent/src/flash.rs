//! Where the agent keeps its two image slots and its state file: files in a directory
//! ([`DirFlash`], for a Linux device or a simulation) or memory ([`MemFlash`], for tests and the
//! fleet simulator, with power cuts injected at a chosen operation).
//!
//! Each operation is durable when it returns (files are fsynced, the state file is replaced
//! atomically). In memory a power cut happens between operations; on a [`DirFlash`] given a
//! [`PowerCut`] it may also tear the operation it hits, as a real power loss does: half of a slot
//! write reaches the file, a state file is left half written beside the one it was to replace.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::AgentError;
use crate::state::Slot;

/// Storage for two image slots and the state file.
pub trait Flash: Send {
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, AgentError>;
    /// Replaces the state file atomically.
    fn store_state(&mut self, bytes: &[u8]) -> Result<(), AgentError>;
    fn slot_len(&mut self, slot: Slot) -> Result<u64, AgentError>;
    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), AgentError>;
    /// Empties the slot.
    fn truncate_slot(&mut self, slot: Slot) -> Result<(), AgentError>;
    /// SHA-256 (hex) of the slot's first `len` bytes.
    fn slot_sha256(&mut self, slot: Slot, len: u64) -> Result<String, AgentError>;
    /// A file holding the slot's image, for an install hook; `None` in memory.
    fn slot_path(&self, slot: Slot) -> Option<PathBuf>;
}

/// Counts interruption points and cuts the power at one of them. Shared by everything that can be
/// interrupted (flash operations, reports), so that one number names one point of a whole run.
#[derive(Debug, Default)]
pub struct PowerCut {
    at: Mutex<Option<u64>>,
    count: AtomicU64,
    off: AtomicBool,
    /// A cut happened (at some point since creation).
    fired: AtomicBool,
}

/// What one interruption point found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Power is on: go ahead.
    On,
    /// Power goes off right here: the operation may be torn.
    CutHere,
    /// Power was off already: nothing happens.
    Off,
}

impl PowerCut {
    /// Power fails at the `at`-th interruption point (0-based) from now on.
    pub fn at(at: u64) -> Arc<Self> {
        Arc::new(Self {
            at: Mutex::new(Some(at)),
            ..Default::default()
        })
    }

    pub fn never() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// One interruption point: fails if the power is (or goes) off here.
    pub fn tick(&self) -> Result<(), AgentError> {
        match self.point() {
            Point::On => Ok(()),
            Point::CutHere | Point::Off => Err(AgentError::PowerLost),
        }
    }

    /// One interruption point, saying whether the power goes off at this very one.
    pub fn point(&self) -> Point {
        if self.off.load(Ordering::SeqCst) {
            return Point::Off;
        }
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        let at = self.at.lock().map(|at| *at).unwrap_or(None);
        if at == Some(n) {
            self.off.store(true, Ordering::SeqCst);
            self.fired.store(true, Ordering::SeqCst);
            return Point::CutHere;
        }
        Point::On
    }

    /// Power comes back, and stays on.
    pub fn restore(&self) {
        if let Ok(mut at) = self.at.lock() {
            *at = None;
        }
        self.off.store(false, Ordering::SeqCst);
    }

    /// Power comes back, and fails again at the `after`-th interruption point from here (a cut
    /// during the recovery from a cut).
    pub fn restore_and_cut_after(&self, after: u64) {
        if let Ok(mut at) = self.at.lock() {
            *at = Some(self.count.load(Ordering::SeqCst) + after);
        }
        self.off.store(false, Ordering::SeqCst);
    }

    /// Whether the power is off now.
    pub fn is_off(&self) -> bool {
        self.off.load(Ordering::SeqCst)
    }

    /// Whether a cut happened.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Interruption points passed so far.
    pub fn points(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

/// Slots and state as files in a directory: `slot-a.img`, `slot-b.img`, `state.json`.
pub struct DirFlash {
    dir: PathBuf,
    /// Power cuts to inject (tests): each mutating operation is an interruption point, and the
    /// one a cut hits is torn.
    power: Option<Arc<PowerCut>>,
}

impl DirFlash {
    pub fn open(dir: &Path) -> Result<Self, AgentError> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            power: None,
        })
    }

    /// A directory flash whose operations `power` can cut, tearing the one it hits.
    pub fn with_power(dir: &Path, power: Arc<PowerCut>) -> Result<Self, AgentError> {
        Ok(Self {
            power: Some(power),
            ..Self::open(dir)?
        })
    }

    fn point(&self) -> Point {
        self.power.as_ref().map_or(Point::On, |p| p.point())
    }

    fn path(&self, slot: Slot) -> PathBuf {
        self.dir.join(match slot {
            Slot::A => "slot-a.img",
            Slot::B => "slot-b.img",
        })
    }

    fn open_slot(&self, slot: Slot) -> std::io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.path(slot))
    }
}

impl Flash for DirFlash {
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        match std::fs::read(self.dir.join("state.json")) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    fn store_state(&mut self, bytes: &[u8]) -> Result<(), AgentError> {
        let point = self.point();
        if point == Point::Off {
            return Err(AgentError::PowerLost);
        }
        let tmp = self.dir.join("state.json.tmp");
        let mut file = File::create(&tmp)?;
        if point == Point::CutHere {
            // Torn: half the new state reaches the disk, the rename never happens.
            file.write_all(&bytes[..bytes.len() / 2])?;
            file.sync_all()?;
            return Err(AgentError::PowerLost);
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("state.json"))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    fn slot_len(&mut self, slot: Slot) -> Result<u64, AgentError> {
        match std::fs::metadata(self.path(slot)) {
            Ok(meta) => Ok(meta.len()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(err) => Err(err.into()),
        }
    }

    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), AgentError> {
        let point = self.point();
        if point == Point::Off {
            return Err(AgentError::PowerLost);
        }
        let mut file = self.open_slot(slot)?;
        file.seek(SeekFrom::Start(offset))?;
        if point == Point::CutHere {
            // Torn: the first half of the block reaches the disk.
            file.write_all(&data[..data.len() / 2])?;
            file.sync_data()?;
            return Err(AgentError::PowerLost);
        }
        file.write_all(data)?;
        file.sync_data()?;
        Ok(())
    }

    fn truncate_slot(&mut self, slot: Slot) -> Result<(), AgentError> {
        if self.point() != Point::On {
            return Err(AgentError::PowerLost);
        }
        let file = self.open_slot(slot)?;
        file.set_len(0)?;
        file.sync_all()?;
        Ok(())
    }

    fn slot_sha256(&mut self, slot: Slot, len: u64) -> Result<String, AgentError> {
        let mut file = self.open_slot(slot)?.take(len);
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    }

    fn slot_path(&self, slot: Slot) -> Option<PathBuf> {
        Some(self.path(slot))
    }
}

/// The contents of a [`MemFlash`], shared so that a test can look at them and hand them to the
/// next "boot".
#[derive(Debug, Default, Clone)]
pub struct MemContents {
    pub slot_a: Vec<u8>,
    pub slot_b: Vec<u8>,
    pub state: Option<Vec<u8>>,
}

impl MemContents {
    pub fn slot(&self, slot: Slot) -> &Vec<u8> {
        match slot {
            Slot::A => &self.slot_a,
            Slot::B => &self.slot_b,
        }
    }

    fn slot_mut(&mut self, slot: Slot) -> &mut Vec<u8> {
        match slot {
            Slot::A => &mut self.slot_a,
            Slot::B => &mut self.slot_b,
        }
    }
}

/// Slots and state in memory; every mutating operation is an interruption point of `power`.
#[derive(Clone)]
pub struct MemFlash {
    pub contents: Arc<Mutex<MemContents>>,
    pub power: Arc<PowerCut>,
}

impl MemFlash {
    pub fn new(contents: MemContents, power: Arc<PowerCut>) -> Self {
        Self {
            contents: Arc::new(Mutex::new(contents)),
            power,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemContents) -> T) -> Result<T, AgentError> {
        let mut contents = self
            .contents
            .lock()
            .map_err(|_| AgentError::State("flash lock poisoned".into()))?;
        Ok(f(&mut contents))
    }
}

impl Flash for MemFlash {
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        self.with(|c| c.state.clone())
    }

    fn store_state(&mut self, bytes: &[u8]) -> Result<(), AgentError> {
        self.power.tick()?;
        self.with(|c| c.state = Some(bytes.to_vec()))
    }

    fn slot_len(&mut self, slot: Slot) -> Result<u64, AgentError> {
        self.with(|c| c.slot(slot).len() as u64)
    }

    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), AgentError> {
        self.power.tick()?;
        self.with(|c| {
            let bytes = c.slot_mut(slot);
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            bytes.truncate(start);
            bytes.extend_from_slice(data);
        })
    }

    fn truncate_slot(&mut self, slot: Slot) -> Result<(), AgentError> {
        self.power.tick()?;
        self.with(|c| c.slot_mut(slot).clear())
    }

    fn slot_sha256(&mut self, slot: Slot, len: u64) -> Result<String, AgentError> {
        self.with(|c| {
            let bytes = c.slot(slot);
            let end = usize::try_from(len).unwrap_or(usize::MAX).min(bytes.len());
            hex::encode(Sha256::digest(&bytes[..end]))
        })
    }

    fn slot_path(&self, _slot: Slot) -> Option<PathBuf> {
        None
    }
}

/// A flash that keeps no image bytes, only each slot's length and running SHA-256: what a
/// simulator of thousands of devices needs. Slots are written front to back (as the agent does,
/// resuming where it stopped); rewriting the middle of a slot is refused.
#[derive(Default)]
pub struct HashFlash {
    slots: [(u64, Sha256); 2],
    state: Option<Vec<u8>>,
}

impl HashFlash {
    fn slot(&mut self, slot: Slot) -> &mut (u64, Sha256) {
        match slot {
            Slot::A => &mut self.slots[0],
            Slot::B => &mut self.slots[1],
        }
    }
}

impl Flash for HashFlash {
    fn load_state(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        Ok(self.state.clone())
    }

    fn store_state(&mut self, bytes: &[u8]) -> Result<(), AgentError> {
        self.state = Some(bytes.to_vec());
        Ok(())
    }

    fn slot_len(&mut self, slot: Slot) -> Result<u64, AgentError> {
        Ok(self.slot(slot).0)
    }

    fn write_slot(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), AgentError> {
        let (len, hasher) = self.slot(slot);
        if offset != *len {
            return Err(AgentError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a hashing flash is written front to back",
            )));
        }
        hasher.update(data);
        *len += data.len() as u64;
        Ok(())
    }

    fn truncate_slot(&mut self, slot: Slot) -> Result<(), AgentError> {
        *self.slot(slot) = (0, Sha256::new());
        Ok(())
    }

    fn slot_sha256(&mut self, slot: Slot, len: u64) -> Result<String, AgentError> {
        let (written, hasher) = self.slot(slot);
        if len != *written {
            return Err(AgentError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "hash of a partial slot",
            )));
        }
        Ok(hex::encode(hasher.clone().finalize()))
    }

    fn slot_path(&self, _slot: Slot) -> Option<PathBuf> {
        None
    }
}
