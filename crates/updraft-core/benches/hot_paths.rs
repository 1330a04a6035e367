//! Micro-benchmarks of the core's hot paths: resolving a device's artifact among many
//! assignments, streaming checksums, and state transitions. `cargo bench -p updraft-core`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use updraft_core::action::transition;
use updraft_core::{
    ArtifactKey, Candidate, DeviceKey, DeviceTarget, MultiHasher, ProfileKey, ProjectKey, Report,
    Scope, UpdateState, resolve,
};

fn resolution(c: &mut Criterion) {
    // A tenant with 1,000 device assignments, 100 project+profile, 10 project and 10 profile
    // defaults and one tenant default; the device under test matches one of each level.
    let mut candidates = Vec::new();
    for d in 0..1000 {
        candidates.push(Candidate {
            scope: Scope::Device(DeviceKey(d)),
            artifact: ArtifactKey(d),
            compatible_profiles: vec![],
        });
    }
    for p in 0..100 {
        candidates.push(Candidate {
            scope: Scope::ProjectProfile(ProjectKey(p % 10), ProfileKey(p / 10)),
            artifact: ArtifactKey(2000 + p),
            compatible_profiles: vec![ProfileKey(p / 10)],
        });
    }
    for k in 0..10 {
        candidates.push(Candidate {
            scope: Scope::Project(ProjectKey(k)),
            artifact: ArtifactKey(3000 + k),
            compatible_profiles: vec![],
        });
        candidates.push(Candidate {
            scope: Scope::Profile(ProfileKey(k)),
            artifact: ArtifactKey(4000 + k),
            compatible_profiles: vec![],
        });
    }
    candidates.push(Candidate {
        scope: Scope::Tenant,
        artifact: ArtifactKey(5000),
        compatible_profiles: vec![],
    });
    let device = DeviceTarget {
        device: DeviceKey(500),
        project: Some(ProjectKey(3)),
        profile: Some(ProfileKey(4)),
    };
    c.bench_function("resolve among 1,121 assignments", |b| {
        b.iter(|| resolve(black_box(&device), black_box(&candidates)))
    });
}

fn checksums(c: &mut Criterion) {
    let data = vec![0x5au8; 1 << 20];
    let mut group = c.benchmark_group("checksums");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("all eight algorithms over 1 MiB in 64 KiB pieces", |b| {
        b.iter(|| {
            let mut hasher = MultiHasher::new();
            for piece in data.chunks(64 * 1024) {
                hasher.update(black_box(piece));
            }
            hasher.finish()
        })
    });
    group.finish();
}

fn transitions(c: &mut Criterion) {
    let reports = [
        Report::Reached {
            state: UpdateState::Downloading,
            progress: None,
        },
        Report::Reached {
            state: UpdateState::Verified,
            progress: None,
        },
        Report::Succeeded,
    ];
    c.bench_function("state transition", |b| {
        b.iter(|| {
            let mut state = UpdateState::Initiated;
            for report in &reports {
                state = transition(black_box(state), black_box(report)).unwrap_or(state);
            }
            state
        })
    });
}

criterion_group!(benches, resolution, checksums, transitions);
criterion_main!(benches);
