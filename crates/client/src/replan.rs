//! When to ask the selector for sources again, and when to give up: a pure
//! state machine (time and observations in, a verdict out), so the
//! download driver only carries it out.
//!
//! - No usable source: ask at once (at most every [`REPLAN_EVERY_MS`]); with
//!   none for [`NO_SOURCE_GRACE_MS`], or at once without a selector, give up
//!   (the part file keeps what arrived).
//! - The committed bitrate not held: after [`RATE_WARMUP_MS`] from the start
//!   and [`BELOW_BITRATE_FOR_MS`] below it, ask, at most every
//!   [`BITRATE_REPLAN_EVERY_MS`] (each plan reserves capacity).
//! - One question at a time: a new one only after the answer.

/// Replacement plans are asked for at most this often.
pub const REPLAN_EVERY_MS: u64 = 500;
/// Plans asked for because the committed bitrate is not held, at most this
/// often (each plan reserves capacity at the selector).
pub const BITRATE_REPLAN_EVERY_MS: u64 = 5_000;
/// With no usable source left, how long to keep asking for new ones.
pub const NO_SOURCE_GRACE_MS: u64 = 10_000;
/// The rate is not judged before this (connections are still ramping up).
pub const RATE_WARMUP_MS: u64 = 2_000;
/// How long the rate must stay below the committed bitrate.
pub const BELOW_BITRATE_FOR_MS: u64 = 2_000;

/// What the driver observes at each tick.
#[derive(Clone, Copy, Debug)]
pub struct Observed {
    pub now_ms: u64,
    pub usable_sources: usize,
    /// Recent aggregate rate.
    pub rate_mbps: f64,
    pub committed_mbps: Option<f64>,
    /// The sources came from a selector (else a plain server: nobody to
    /// ask).
    pub has_selector: bool,
    /// Room for more sources.
    pub room: bool,
}

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    /// Ask the selector for a plan (the policy now counts it as pending).
    Ask,
    /// No source for too long (or none and no selector): stop.
    GiveUp,
}

#[derive(Clone, Debug, Default)]
pub struct ReplanPolicy {
    no_source_since_ms: Option<u64>,
    below_bitrate_since_ms: Option<u64>,
    last_asked_ms: Option<u64>,
    pending: bool,
}

impl ReplanPolicy {
    /// The verdict for this tick.
    pub fn tick(&mut self, seen: Observed) -> Verdict {
        let now = seen.now_ms;
        let mut every_ms = None;
        if seen.usable_sources == 0 {
            let since = *self.no_source_since_ms.get_or_insert(now);
            if now.saturating_sub(since) > NO_SOURCE_GRACE_MS || !seen.has_selector {
                return Verdict::GiveUp;
            }
            every_ms = Some(REPLAN_EVERY_MS);
        } else {
            self.no_source_since_ms = None;
        }
        match seen.committed_mbps {
            Some(committed) if now > RATE_WARMUP_MS && seen.rate_mbps < committed => {
                let since = *self.below_bitrate_since_ms.get_or_insert(now);
                if now.saturating_sub(since) > BELOW_BITRATE_FOR_MS && every_ms.is_none() {
                    every_ms = Some(BITRATE_REPLAN_EVERY_MS);
                }
            }
            _ => self.below_bitrate_since_ms = None,
        }
        match every_ms {
            Some(every_ms) if seen.has_selector && seen.room && self.may_ask(now, every_ms) => {
                self.asked(now);
                Verdict::Ask
            }
            _ => Verdict::Wait,
        }
    }

    /// Whether a question may go now (none pending, the last one old
    /// enough).
    pub fn may_ask(&self, now_ms: u64, every_ms: u64) -> bool {
        !self.pending
            && self
                .last_asked_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= every_ms)
    }

    /// A question went out (from here or from a source's loss).
    pub fn asked(&mut self, now_ms: u64) {
        self.pending = true;
        self.last_asked_ms = Some(now_ms);
    }

    /// Its answer came back (plan or error).
    pub fn answered(&mut self) {
        self.pending = false;
    }

    pub fn pending(&self) -> bool {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(now_ms: u64, usable_sources: usize, rate_mbps: f64) -> Observed {
        Observed {
            now_ms,
            usable_sources,
            rate_mbps,
            committed_mbps: Some(8.0),
            has_selector: true,
            room: true,
        }
    }

    #[test]
    fn no_source_asks_at_once_then_every_half_second_then_gives_up() {
        let mut p = ReplanPolicy::default();
        assert_eq!(p.tick(seen(100, 0, 0.0)), Verdict::Ask);
        assert_eq!(p.tick(seen(200, 0, 0.0)), Verdict::Wait, "one at a time");
        p.answered();
        assert_eq!(
            p.tick(seen(400, 0, 0.0)),
            Verdict::Wait,
            "not before 500 ms"
        );
        assert_eq!(p.tick(seen(600, 0, 0.0)), Verdict::Ask);
        p.answered();
        assert_eq!(p.tick(seen(10_101, 0, 0.0)), Verdict::GiveUp);
        // A source back resets the grace.
        let mut p = ReplanPolicy::default();
        p.tick(seen(0, 0, 0.0));
        p.answered();
        p.tick(seen(9_000, 1, 50.0));
        assert_ne!(p.tick(seen(12_000, 0, 0.0)), Verdict::GiveUp);
    }

    #[test]
    fn without_a_selector_no_source_means_giving_up_at_once() {
        let mut p = ReplanPolicy::default();
        let mut s = seen(100, 0, 0.0);
        s.has_selector = false;
        assert_eq!(p.tick(s), Verdict::GiveUp);
        // With a selector but no room for more sources: wait out the grace.
        let mut p = ReplanPolicy::default();
        let mut s = seen(100, 0, 0.0);
        s.room = false;
        assert_eq!(p.tick(s), Verdict::Wait);
        s.now_ms = 10_200;
        assert_eq!(p.tick(s), Verdict::GiveUp);
    }

    #[test]
    fn a_rate_below_the_committed_bitrate_asks_after_warmup_and_two_seconds_then_every_five() {
        let mut p = ReplanPolicy::default();
        assert_eq!(p.tick(seen(1_000, 2, 1.0)), Verdict::Wait, "warming up");
        assert_eq!(
            p.tick(seen(2_100, 2, 1.0)),
            Verdict::Wait,
            "below since 2.1 s"
        );
        assert_eq!(p.tick(seen(4_000, 2, 1.0)), Verdict::Wait);
        assert_eq!(p.tick(seen(4_200, 2, 1.0)), Verdict::Ask);
        p.answered();
        assert_eq!(p.tick(seen(8_000, 2, 1.0)), Verdict::Wait, "5 s between");
        assert_eq!(p.tick(seen(9_200, 2, 1.0)), Verdict::Ask);
        p.answered();
        // Held again: the clock restarts.
        assert_eq!(p.tick(seen(9_300, 2, 20.0)), Verdict::Wait);
        assert_eq!(p.tick(seen(15_000, 2, 1.0)), Verdict::Wait);
        // Without a committed bitrate, the rate never asks.
        let mut p = ReplanPolicy::default();
        let mut s = seen(60_000, 2, 0.1);
        s.committed_mbps = None;
        assert_eq!(p.tick(s), Verdict::Wait);
    }
}
