//! The fleet model's small value types: keys of stored rows, artifact kinds, roles and the scope
//! an assignment applies to. Rows themselves live in `updraft-store`; these are what logic needs.

use std::fmt;
use std::str::FromStr;

macro_rules! key {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

key!(
    /// A tenant's row key.
    TenantKey
);
key!(
    /// A project's row key.
    ProjectKey
);
key!(
    /// A profile's row key.
    ProfileKey
);
key!(
    /// A device's row key (not its user-visible [`crate::DeviceId`]).
    DeviceKey
);
key!(
    /// An artifact's row key; also its public id in the management API.
    ArtifactKey
);
key!(
    /// An update action's row key; also the DDI action id.
    ActionKey
);
key!(
    /// A rollout's row key.
    RolloutKey
);

/// What an artifact updates: the device's firmware or a software package on it. A device has one
/// desired artifact of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactKind {
    Firmware,
    Software,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Firmware => "firmware",
            ArtifactKind::Software => "software",
        }
    }
}

impl FromStr for ArtifactKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "firmware" | "fw" => Ok(ArtifactKind::Firmware),
            "software" | "sw" => Ok(ArtifactKind::Software),
            other => Err(format!(
                "unknown artifact type {other:?}: use firmware or software"
            )),
        }
    }
}

/// What an API key may do within its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read only.
    Viewer,
    /// Upload, assign, run rollouts.
    Maintainer,
    /// Everything in the tenant, including keys and devices' deletion.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Maintainer => "maintainer",
            Role::Admin => "admin",
        }
    }

    /// Whether a key with this role may do what needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "maintainer" => Ok(Role::Maintainer),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: use admin, maintainer or viewer"
            )),
        }
    }
}

/// Where an assignment applies, from the most specific to the least.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One device.
    Device(DeviceKey),
    /// One device as a member of a rollout whose group reached it. Below a device's own
    /// assignment (the operator's override), above every fleet-wide level.
    Rollout(RolloutKey, DeviceKey),
    /// Devices of one profile within one project (Frugal-IoT's project + OTA key).
    ProjectProfile(ProjectKey, ProfileKey),
    /// Every compatible device of a project.
    Project(ProjectKey),
    /// Devices of one profile anywhere in the tenant (ThingsBoard's profile assignment,
    /// Frugal-IoT's org + OTA key).
    Profile(ProfileKey),
    /// Every compatible device of the tenant.
    Tenant,
}

impl Scope {
    /// 0 for the most specific scope; a lower rank wins.
    pub fn rank(self) -> u8 {
        match self {
            Scope::Device(_) => 0,
            Scope::Rollout(..) => 1,
            Scope::ProjectProfile(..) => 2,
            Scope::Project(_) => 3,
            Scope::Profile(_) => 4,
            Scope::Tenant => 5,
        }
    }
}
