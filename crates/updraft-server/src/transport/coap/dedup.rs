//! The duplicate cache: confirmable requests seen lately, by (peer, message ID), with their
//! answers, so that a retransmission is answered from the cache and never handled twice.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

/// What the cache knew of a request.
pub enum Seen {
    /// First time: handle it, then call [`Dedup::answered`].
    New,
    /// Being handled: its answer will go out, drop the retransmission.
    InProgress,
    /// Answered: send this again.
    Answered(Vec<u8>),
}

/// When a request was first seen, and its answer once sent.
type Entry = (i64, Option<Vec<u8>>);

/// Requests seen lately, bounded in time (`keep_millis`, RFC 7252's EXCHANGE_LIFETIME is
/// 247 s) and in count (`capacity`): the oldest go first.
pub struct Dedup {
    answers: HashMap<(SocketAddr, u16), Entry>,
    order: VecDeque<(SocketAddr, u16)>,
    keep_millis: i64,
    capacity: usize,
}

impl Dedup {
    pub fn new(keep_millis: i64, capacity: usize) -> Self {
        Self {
            answers: HashMap::new(),
            order: VecDeque::new(),
            keep_millis,
            capacity: capacity.max(1),
        }
    }

    /// Records a request, at `now` (milliseconds), as being handled, unless it was seen before.
    pub fn begin(&mut self, key: (SocketAddr, u16), now: i64) -> Seen {
        while let Some(old) = self.order.front().copied() {
            let stale = self
                .answers
                .get(&old)
                .is_none_or(|(at, _)| now - at > self.keep_millis);
            if !stale && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            self.answers.remove(&old);
        }
        match self.answers.get(&key) {
            Some((_, Some(answer))) => Seen::Answered(answer.clone()),
            Some((_, None)) => Seen::InProgress,
            None => {
                self.answers.insert(key, (now, None));
                self.order.push_back(key);
                Seen::New
            }
        }
    }

    /// Forgets a request that was not handled after all (dropped for want of room), so that its
    /// retransmission is handled.
    pub fn forget(&mut self, key: (SocketAddr, u16)) {
        if matches!(self.answers.get(&key), Some((_, None))) {
            self.answers.remove(&key);
        }
    }

    /// Keeps the answer sent to a request, for its retransmissions.
    pub fn answered(&mut self, key: (SocketAddr, u16), answer: Vec<u8>) {
        if let Some(entry) = self.answers.get_mut(&key) {
            entry.1 = Some(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_retransmission_gets_the_cached_answer_and_the_cache_stays_bounded() {
        let mut dedup = Dedup::new(1000, 2);
        assert!(matches!(dedup.begin((peer(1), 7), 0), Seen::New));
        assert!(matches!(dedup.begin((peer(1), 7), 1), Seen::InProgress));
        dedup.answered((peer(1), 7), b"ack".to_vec());
        assert!(matches!(dedup.begin((peer(1), 7), 2), Seen::Answered(a) if a == b"ack"));
        // Another peer's same message ID is another request.
        assert!(matches!(dedup.begin((peer(2), 7), 3), Seen::New));
        // A third request pushes the oldest out (capacity 2).
        assert!(matches!(dedup.begin((peer(3), 7), 4), Seen::New));
        assert!(matches!(dedup.begin((peer(1), 7), 5), Seen::New));
        // And time does too.
        let mut dedup = Dedup::new(1000, 100);
        assert!(matches!(dedup.begin((peer(1), 1), 0), Seen::New));
        assert!(matches!(dedup.begin((peer(1), 2), 2000), Seen::New));
        assert!(matches!(dedup.begin((peer(1), 1), 2001), Seen::New));
    }
}
