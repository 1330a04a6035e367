//! Which devices suffer which faults: drawn from a seed, and modelled per protocol (what each
//! protocol's clients can suffer, and which of those end the update FAILED).

/// A small deterministic generator (xorshift64*), so that a seed reproduces a run.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What one device will suffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Faults {
    pub(super) drop_download: bool,
    pub(super) corrupt: bool,
    pub(super) fail_health: bool,
}

impl Faults {
    /// The faults `protocol`'s simulated devices suffer, and of those the ones that end the
    /// update FAILED. DDI: all three (a dropped download resumes, so it does not fail);
    /// ThingsBoard: corrupted data and a failed health check; Drogue DFU: a failed health check
    /// (its blocks carry no checksum to corrupt); Frugal: a dropped or corrupted download, once —
    /// `httpUpdate` cannot report a failure, so the node retries at its next check-in; LwM2M:
    /// all three, and each fails (Update Result 4 connection lost, 5 integrity check failure, 8
    /// update failed); AWS IoT: all three, a dropped connection resumes from the blocks it has.
    pub(super) fn model(protocol: &str) -> (Faults, Faults) {
        let all = |drop_download, corrupt, fail_health| Faults {
            drop_download,
            corrupt,
            fail_health,
        };
        match protocol {
            "ddi" => (all(true, true, true), all(false, true, true)),
            "thingsboard" => (all(false, true, true), all(false, true, true)),
            "drogue" => (all(false, false, true), all(false, false, true)),
            "frugal" => (all(true, true, false), all(false, false, false)),
            "lwm2m" => (all(true, true, true), all(true, true, true)),
            "aws" => (all(true, true, true), all(false, true, true)),
            _ => (Faults::default(), Faults::default()),
        }
    }

    /// Only what `applies` allows.
    pub(super) fn within(self, applies: Faults) -> Faults {
        Faults {
            drop_download: self.drop_download && applies.drop_download,
            corrupt: self.corrupt && applies.corrupt,
            fail_health: self.fail_health && applies.fail_health,
        }
    }

    /// Whether one of these faults ends the update FAILED.
    pub(super) fn fails(self, failing: Faults) -> bool {
        self.within(failing) != Faults::default()
    }
}
