//! The resolution rule: which artifact a device should run. The most specific assignment whose
//! artifact is compatible with the device's profile wins: device > rollout membership (the newest
//! rollout first) > profile within the device's project > project default > profile anywhere in the tenant > tenant default. Every protocol
//! asks this one function; none has a lookup of its own.

use crate::model::{ArtifactKey, DeviceKey, ProfileKey, ProjectKey, Scope};

/// What resolution needs to know of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTarget {
    pub device: DeviceKey,
    pub project: Option<ProjectKey>,
    pub profile: Option<ProfileKey>,
}

/// One assignment of one artifact kind, with the profiles its artifact runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub scope: Scope,
    pub artifact: ArtifactKey,
    /// Profiles the artifact declares itself compatible with; empty means any.
    pub compatible_profiles: Vec<ProfileKey>,
}

/// The winning assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub artifact: ArtifactKey,
    pub scope: Scope,
}

/// The desired artifact for `device` among `candidates` (assignments of one artifact kind), or
/// `None` when nothing applies. Candidates may include assignments for other devices, projects
/// and profiles; those are skipped. When two candidates have the same scope (which the store's
/// uniqueness forbids) the later one in the slice wins.
pub fn resolve(device: &DeviceTarget, candidates: &[Candidate]) -> Option<Resolved> {
    let mut best: Option<Resolved> = None;
    for candidate in candidates {
        if !candidate.scope.covers(device) || !compatible(device, candidate) {
            continue;
        }
        let beats_best = match best {
            None => true,
            Some(current) => match (candidate.scope, current.scope) {
                // A device in two rollouts runs the newer one.
                (Scope::Rollout(new, _), Scope::Rollout(old, _)) => new >= old,
                _ => candidate.scope.rank() <= current.scope.rank(),
            },
        };
        if beats_best {
            best = Some(Resolved {
                artifact: candidate.artifact,
                scope: candidate.scope,
            });
        }
    }
    best
}

impl Scope {
    /// Whether an assignment with this scope is about `device` (compatibility aside).
    pub fn covers(self, device: &DeviceTarget) -> bool {
        match self {
            Scope::Device(key) | Scope::Rollout(_, key) => key == device.device,
            Scope::ProjectProfile(project, profile) => {
                device.project == Some(project) && device.profile == Some(profile)
            }
            Scope::Project(project) => device.project == Some(project),
            Scope::Profile(profile) => device.profile == Some(profile),
            Scope::Tenant => true,
        }
    }
}

fn compatible(device: &DeviceTarget, candidate: &Candidate) -> bool {
    if candidate.compatible_profiles.is_empty() {
        return true;
    }
    match device.profile {
        Some(profile) => candidate.compatible_profiles.contains(&profile),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: ProfileKey = ProfileKey(1);
    const D1: DeviceTarget = DeviceTarget {
        device: DeviceKey(1),
        project: None,
        profile: Some(P1),
    };
    const D2: DeviceTarget = DeviceTarget {
        device: DeviceKey(2),
        project: None,
        profile: Some(P1),
    };

    fn cand(scope: Scope, artifact: i64) -> Candidate {
        Candidate {
            scope,
            artifact: ArtifactKey(artifact),
            compatible_profiles: vec![],
        }
    }

    fn check(device: &DeviceTarget, assignments: &[Candidate], expected: Option<i64>) {
        let got = resolve(device, assignments).map(|r| r.artifact.0);
        assert_eq!(got, expected, "device {device:?} with {assignments:?}");
    }

    /// DESIGN.md's ThingsBoard table: F1 → P1, then F2 → D1, then F3 → P1 (replacing F1).
    #[test]
    fn device_assignment_overrides_profile_assignment() {
        let (f1, f2, f3) = (1, 2, 3);
        let step1 = [cand(Scope::Profile(P1), f1)];
        check(&D1, &step1, Some(f1));
        check(&D2, &step1, Some(f1));
        let step2 = [
            cand(Scope::Profile(P1), f1),
            cand(Scope::Device(D1.device), f2),
        ];
        check(&D1, &step2, Some(f2));
        check(&D2, &step2, Some(f1));
        let step3 = [
            cand(Scope::Profile(P1), f3),
            cand(Scope::Device(D1.device), f2),
        ];
        check(&D1, &step3, Some(f2));
        check(&D2, &step3, Some(f3));
    }

    /// DESIGN.md's Frugal-IoT example: org `dev`, project `lotus`, node `esp8266-95a754`, OTA key
    /// `esp8266-sht`. Node beats project + key beats org + key.
    #[test]
    fn frugal_node_beats_project_key_beats_org_key() {
        let lotus = ProjectKey(10);
        let sht = ProfileKey(20);
        let node = DeviceTarget {
            device: DeviceKey(30),
            project: Some(lotus),
            profile: Some(sht),
        };
        let other_node = DeviceTarget {
            device: DeviceKey(31),
            project: Some(lotus),
            profile: Some(sht),
        };
        let other_project = DeviceTarget {
            device: DeviceKey(32),
            project: Some(ProjectKey(11)),
            profile: Some(sht),
        };
        let org_key = cand(Scope::Profile(sht), 100);
        let project_key = cand(Scope::ProjectProfile(lotus, sht), 200);
        let for_node = cand(Scope::Device(node.device), 300);

        check(&node, std::slice::from_ref(&org_key), Some(100));
        check(&node, &[org_key.clone(), project_key.clone()], Some(200));
        check(
            &node,
            &[for_node.clone(), org_key.clone(), project_key.clone()],
            Some(300),
        );
        check(
            &other_node,
            &[for_node.clone(), org_key.clone(), project_key.clone()],
            Some(200),
        );
        check(&other_project, &[for_node, org_key, project_key], Some(100));
    }

    #[test]
    fn levels_rank_device_project_profile_project_profile_tenant() {
        let project = ProjectKey(5);
        let device = DeviceTarget {
            device: DeviceKey(9),
            project: Some(project),
            profile: Some(P1),
        };
        let all = [
            cand(Scope::Tenant, 5),
            cand(Scope::Profile(P1), 4),
            cand(Scope::Project(project), 3),
            cand(Scope::ProjectProfile(project, P1), 2),
            cand(Scope::Device(device.device), 1),
        ];
        for n in 0..all.len() {
            // Keep only the n least specific: the most specific of those wins.
            let kept = &all[..all.len() - n];
            check(&device, kept, Some(kept.len() as i64).map(|len| 6 - len));
        }
        check(&device, &[], None);
    }

    #[test]
    fn a_rollout_ranks_below_the_device_and_the_newest_rollout_wins() {
        use crate::model::RolloutKey;
        let older = cand(Scope::Rollout(RolloutKey(1), D1.device), 11);
        let newer = cand(Scope::Rollout(RolloutKey(2), D1.device), 12);
        let profile = cand(Scope::Profile(P1), 13);
        check(&D1, &[profile.clone(), older.clone()], Some(11));
        check(
            &D1,
            &[newer.clone(), older.clone(), profile.clone()],
            Some(12),
        );
        check(&D1, &[older.clone(), newer.clone()], Some(12));
        // Another device's membership is not this one's.
        check(&D2, &[newer.clone(), profile.clone()], Some(13));
        // The device's own assignment is the operator's override.
        check(&D1, &[cand(Scope::Device(D1.device), 14), newer], Some(14));
    }

    #[test]
    fn incompatible_artifacts_are_skipped_at_every_level() {
        let other_profile = ProfileKey(2);
        let mut tenant_wide = cand(Scope::Tenant, 7);
        tenant_wide.compatible_profiles = vec![other_profile];
        check(&D1, &[tenant_wide.clone()], None);
        let fallback = cand(Scope::Profile(P1), 8);
        check(&D1, &[fallback, tenant_wide.clone()], Some(8));
        let no_profile = DeviceTarget {
            device: DeviceKey(3),
            project: None,
            profile: None,
        };
        check(&no_profile, &[tenant_wide], None);
        check(&no_profile, &[cand(Scope::Tenant, 9)], Some(9));
    }

    #[test]
    fn assignments_for_other_devices_and_projects_do_not_apply() {
        let mine = DeviceTarget {
            device: DeviceKey(1),
            project: Some(ProjectKey(1)),
            profile: None,
        };
        check(
            &mine,
            &[
                cand(Scope::Device(DeviceKey(2)), 1),
                cand(Scope::Project(ProjectKey(2)), 2),
                cand(Scope::Profile(P1), 3),
                cand(Scope::ProjectProfile(ProjectKey(1), P1), 4),
            ],
            None,
        );
    }
}
