//! A token bucket: how many bytes may go out now, and how long to wait for
//! more. Pure: the caller passes the time, so tests and simulators drive it.

/// Bytes accrue at `rate_bytes_per_s` up to `burst_bytes`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_bytes_per_s: u64,
    burst_bytes: u64,
    tokens: u64,
    last_ns: u64,
}

impl TokenBucket {
    /// A bucket that starts full. A zero rate is clamped to 1 byte/s and a
    /// zero burst to 1 byte, so the bucket always makes progress.
    pub fn new(rate_bytes_per_s: u64, burst_bytes: u64) -> Self {
        let burst_bytes = burst_bytes.max(1);
        Self {
            rate_bytes_per_s: rate_bytes_per_s.max(1),
            burst_bytes,
            tokens: burst_bytes,
            last_ns: 0,
        }
    }

    pub fn rate_bytes_per_s(&self) -> u64 {
        self.rate_bytes_per_s
    }

    /// Changes the rate and burst from now on (tokens already earned are
    /// kept, up to the new burst).
    pub fn set_rate(&mut self, now_ns: u64, rate_bytes_per_s: u64, burst_bytes: u64) {
        self.refill(now_ns);
        self.rate_bytes_per_s = rate_bytes_per_s.max(1);
        self.burst_bytes = burst_bytes.max(1);
        self.tokens = self.tokens.min(self.burst_bytes);
        self.last_ns = self.last_ns.max(now_ns);
    }

    fn refill(&mut self, now_ns: u64) {
        if now_ns <= self.last_ns {
            return;
        }
        let elapsed_ns = (now_ns - self.last_ns) as u128;
        let earned = elapsed_ns * self.rate_bytes_per_s as u128 / 1_000_000_000;
        if earned == 0 {
            return; // keep `last_ns` so fractions of a byte accumulate
        }
        self.tokens = (self.tokens as u128 + earned).min(self.burst_bytes as u128) as u64;
        self.last_ns = now_ns;
    }

    /// Takes up to `want` bytes at time `now_ns`; returns how many were
    /// granted (0 when the bucket is empty).
    pub fn take(&mut self, now_ns: u64, want: u64) -> u64 {
        self.refill(now_ns);
        let granted = want.min(self.tokens);
        self.tokens -= granted;
        granted
    }

    /// Like [`Self::take`], but grants nothing until at least
    /// `min(want, grant_min_bytes)` (capped at the burst) is available, so
    /// that many writers sharing a bucket write in chunks rather than in
    /// the few bytes each finds when it looks.
    pub fn take_chunk(&mut self, now_ns: u64, want: u64, grant_min_bytes: u64) -> u64 {
        self.refill(now_ns);
        let needed = want.min(grant_min_bytes).min(self.burst_bytes);
        if self.tokens < needed {
            return 0;
        }
        let granted = want.min(self.tokens);
        self.tokens -= granted;
        granted
    }

    /// Returns bytes granted but not used.
    pub fn refund(&mut self, bytes: u64) {
        self.tokens = (self.tokens + bytes).min(self.burst_bytes);
    }

    /// Nanoseconds until at least `bytes` (capped at the burst) are available.
    pub fn wait_ns(&mut self, now_ns: u64, bytes: u64) -> u64 {
        self.refill(now_ns);
        let needed = bytes.min(self.burst_bytes).saturating_sub(self.tokens);
        (needed as u128 * 1_000_000_000).div_ceil(self.rate_bytes_per_s as u128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_chunked_take_waits_for_a_whole_chunk() {
        // 1 MB/s, burst 100 kB, starting full.
        let mut bucket = TokenBucket::new(1_000_000, 100_000);
        assert_eq!(bucket.take_chunk(0, 90_000, 64_000), 90_000);
        // 10 kB left: not a chunk yet, but a small want is granted whole.
        assert_eq!(bucket.take_chunk(0, 64_000, 64_000), 0);
        assert_eq!(bucket.take_chunk(0, 5_000, 64_000), 5_000);
        // 5 kB left; 59 ms later (+59 kB) a chunk is there.
        assert_eq!(bucket.take_chunk(58_000_000, 200_000, 64_000), 0);
        assert_eq!(bucket.wait_ns(58_000_000, 64_000), 1_000_000);
        assert_eq!(bucket.take_chunk(59_000_000, 200_000, 64_000), 64_000);
        // A chunk larger than the burst waits only for the burst.
        let mut small = TokenBucket::new(1_000_000, 10_000);
        assert_eq!(small.take_chunk(0, 64_000, 64_000), 10_000);
    }

    #[test]
    fn starts_full_then_paces() {
        let mut bucket = TokenBucket::new(1000, 100);
        assert_eq!(bucket.take(0, 500), 100);
        assert_eq!(bucket.take(0, 1), 0);
        assert_eq!(bucket.wait_ns(0, 50), 50_000_000);
        assert_eq!(bucket.take(50_000_000, 100), 50);
        assert_eq!(
            bucket.take(10_000_000_000, 1000),
            100,
            "never more than the burst"
        );
    }

    proptest! {
        /// Over any schedule, bytes granted never exceed burst + rate × time.
        #[test]
        fn never_exceeds_the_rate(rate in 1u64..10_000_000, burst in 1u64..1_000_000,
                                  steps in proptest::collection::vec((0u64..50_000_000, 0u64..2_000_000), 1..100)) {
            let mut bucket = TokenBucket::new(rate, burst);
            let mut now = 0u64;
            let mut granted = 0u128;
            for (dt, want) in steps {
                now += dt;
                granted += bucket.take(now, want) as u128;
                prop_assert!(granted <= burst as u128 + rate as u128 * now as u128 / 1_000_000_000 + 1);
            }
        }
    }
}
