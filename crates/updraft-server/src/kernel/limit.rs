//! Rate limits: a token bucket per key, the table of buckets itself bounded.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// At most `burst` events at once and `per_minute` on average, per key.
#[derive(Debug)]
pub struct RateLimit<K> {
    burst: f64,
    per_second: f64,
    /// Keys with a bucket; when full, buckets that have refilled are dropped first.
    max_keys: usize,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Clone> RateLimit<K> {
    pub fn new(burst: u32, per_minute: u32, max_keys: usize) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_minute) / 60.0,
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; false when its bucket is empty.
    pub fn allow(&self, key: &K) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            let (burst, rate) = (self.burst, self.per_second);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
            if buckets.len() >= self.max_keys {
                return false;
            }
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses() {
        let limit = RateLimit::new(3, 0, 10);
        let allowed = (0..10).filter(|_| limit.allow(&"a")).count();
        assert_eq!(allowed, 3);
        assert!(limit.allow(&"b"), "another key has its own bucket");
    }

    #[test]
    fn the_table_of_buckets_is_bounded() {
        let limit = RateLimit::new(1, 0, 2);
        assert!(limit.allow(&1));
        assert!(limit.allow(&2));
        // Both buckets are empty and never refill: a third key finds no room.
        assert!(!limit.allow(&3));
    }
}
