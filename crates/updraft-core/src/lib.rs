//! Updraft's domain: names and identifiers, the fleet model, the resolution rule that decides which
//! artifact a device should run, the update state machine every protocol shares, and the streaming
//! checksums computed on upload. Pure logic only: no IO, no clock, no async.

pub mod action;
pub mod checksum;
pub mod filter;
pub mod model;
pub mod names;
pub mod reconcile;
pub mod resolve;
pub mod rollout;
pub mod signing;
pub mod time;
pub mod window;

pub use action::{
    ActiveAction, Failure, FailureCode, KindStatus, Plan, Progress, Refusal, Release, Report,
    UpdateState, plan, told, transition,
};
pub use checksum::{ChecksumAlgorithm, Checksums, MultiHasher};
pub use filter::{DeviceFacts, Filter, FilterError, duration};
pub use model::{
    ActionKey, ArtifactKey, ArtifactKind, DeviceKey, ProfileKey, ProjectKey, Role, RolloutKey,
    Scope, TenantKey,
};
pub use names::{DeviceId, Filename, Name, NameError, Title, Version, compare_versions};
pub use reconcile::{Active, Cancel, Changes, Facts, Retry, reconcile};
pub use resolve::{Candidate, DeviceTarget, Resolved, resolve};
