//! Updraft's domain: names and identifiers, the fleet model, the resolution rule that decides which
//! artifact a device should run, the update state machine every protocol shares, and the streaming
//! checksums computed on upload. Pure logic only: no IO, no clock, no async.

pub mod action;
pub mod checksum;
pub mod model;
pub mod names;
pub mod resolve;

pub use action::{Failure, FailureCode, Plan, Progress, Refusal, Report, UpdateState};
pub use checksum::{ChecksumAlgorithm, Checksums, MultiHasher};
pub use model::{ArtifactKind, Role, Scope};
pub use names::{DeviceId, Filename, Name, NameError, Title, Version};
pub use resolve::{Candidate, DeviceTarget, Resolved, resolve};
