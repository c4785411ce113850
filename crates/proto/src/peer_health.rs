//! Whether a sibling cache may be asked now, as a pure state machine: the
//! caller passes the time (ms on its own monotonic clock), so tests drive
//! it without sleeping and the async peer code only reports what happened.
//!
//! A peer is *usable* until it fails to answer (then *suspect* for
//! `suspect_ms`, until gossip tells everyone whether it is gone) or sends
//! `corrupt_pieces_max` pieces that fail verification (then *quarantined*
//! for `quarantine_ms`, and its count starts again). Both expire on their
//! own; quarantine wins while both hold. A suspicion holds against one
//! process only: when gossip shows the peer under a new generation (it
//! restarted), it is usable at once. A quarantine outlasts a restart (bad
//! bytes on its disk are still there).

use std::collections::HashMap;

/// Peers tracked at most (more than any mesh has); beyond it, peers with
/// nothing against them are forgotten first, then the one whose penalty
/// ends soonest.
pub const PEERS_TRACKED_MAX: usize = 4_096;

/// The limits of the machine.
#[derive(Clone, Copy, Debug)]
pub struct PeerHealthLimits {
    /// Wrong pieces a peer may send before it is quarantined.
    pub corrupt_pieces_max: u32,
    pub quarantine_ms: u64,
    pub suspect_ms: u64,
}

/// What a peer is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    Usable,
    /// It did not answer usefully; skipped until `until_ms`.
    Suspect {
        until_ms: u64,
    },
    /// It sent pieces that failed verification; skipped until `until_ms`.
    Quarantined {
        until_ms: u64,
    },
}

#[derive(Clone, Copy, Debug, Default)]
struct Record {
    corrupt_pieces: u32,
    quarantined_until_ms: Option<u64>,
    suspect_until_ms: Option<u64>,
    /// The generation (process start, from gossip) the suspicion is about
    /// (0: not known then).
    suspect_generation: u64,
}

impl Record {
    fn state(&self, now_ms: u64, generation: u64) -> PeerState {
        // Only a newer process than the one suspected clears a suspicion;
        // an unknown generation (0, e.g. a peer gossip has just dropped
        // and brought back) does not.
        let restarted = self.suspect_generation != 0 && generation > self.suspect_generation;
        match (self.quarantined_until_ms, self.suspect_until_ms) {
            (Some(until_ms), _) if until_ms > now_ms => PeerState::Quarantined { until_ms },
            (_, Some(until_ms)) if until_ms > now_ms && !restarted => {
                PeerState::Suspect { until_ms }
            }
            _ => PeerState::Usable,
        }
    }

    /// When whatever holds against it ends (for choosing what to forget).
    fn ends_ms(&self) -> u64 {
        self.quarantined_until_ms
            .unwrap_or(0)
            .max(self.suspect_until_ms.unwrap_or(0))
    }
}

/// Every peer's health.
#[derive(Debug)]
pub struct PeerHealth {
    limits: PeerHealthLimits,
    peers: HashMap<String, Record>,
}

impl PeerHealth {
    pub fn new(limits: PeerHealthLimits) -> Self {
        Self {
            limits,
            peers: HashMap::new(),
        }
    }

    /// Its state now, for the process gossip shows as `generation`.
    pub fn state(&self, node_id: &str, now_ms: u64, generation: u64) -> PeerState {
        self.peers
            .get(node_id)
            .map_or(PeerState::Usable, |r| r.state(now_ms, generation))
    }

    pub fn usable(&self, node_id: &str, now_ms: u64, generation: u64) -> bool {
        self.state(node_id, now_ms, generation) == PeerState::Usable
    }

    /// It (the process of `generation`) did not answer, or answered
    /// something useless.
    pub fn on_no_answer(&mut self, node_id: &str, now_ms: u64, generation: u64) {
        let suspect_ms = self.limits.suspect_ms;
        let record = self.record(node_id, now_ms);
        record.suspect_until_ms = Some(now_ms.saturating_add(suspect_ms));
        record.suspect_generation = generation;
    }

    /// It sent a piece that failed verification. True if that put it in
    /// quarantine (the caller says so, once).
    pub fn on_corrupt_piece(&mut self, node_id: &str, now_ms: u64) -> bool {
        let limits = self.limits;
        let record = self.record(node_id, now_ms);
        record.corrupt_pieces += 1;
        if record.corrupt_pieces < limits.corrupt_pieces_max.max(1) {
            return false;
        }
        record.corrupt_pieces = 0;
        record.quarantined_until_ms = Some(now_ms.saturating_add(limits.quarantine_ms));
        true
    }

    /// Peers in quarantine now, sorted.
    pub fn quarantined(&self, now_ms: u64) -> Vec<String> {
        let mut out: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, r)| {
                matches!(
                    r.state(now_ms, r.suspect_generation),
                    PeerState::Quarantined { .. }
                )
            })
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    fn record(&mut self, node_id: &str, now_ms: u64) -> &mut Record {
        if self.peers.len() >= PEERS_TRACKED_MAX && !self.peers.contains_key(node_id) {
            // Forget peers with nothing against them now (a count of
            // corrupt pieces below the limit is forgotten with them).
            self.peers.retain(|_, r| r.ends_ms() > now_ms);
            if self.peers.len() >= PEERS_TRACKED_MAX {
                let soonest = self
                    .peers
                    .iter()
                    .min_by_key(|(id, r)| (r.ends_ms(), (*id).clone()))
                    .map(|(id, _)| id.clone());
                if let Some(id) = soonest {
                    self.peers.remove(&id);
                }
            }
        }
        self.peers.entry(node_id.to_string()).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> PeerHealth {
        PeerHealth::new(PeerHealthLimits {
            corrupt_pieces_max: 3,
            quarantine_ms: 60_000,
            suspect_ms: 10_000,
        })
    }

    #[test]
    fn a_silent_peer_is_suspect_for_a_while_then_usable() {
        let mut h = health();
        assert!(h.usable("b", 0, 1));
        h.on_no_answer("b", 1_000, 1);
        assert_eq!(
            h.state("b", 1_000, 1),
            PeerState::Suspect { until_ms: 11_000 }
        );
        assert!(!h.usable("b", 10_999, 1));
        assert!(h.usable("b", 11_000, 1));
        assert!(h.usable("c", 5_000, 1), "other peers are not affected");
    }

    #[test]
    fn a_restarted_peer_is_usable_at_once_but_stays_quarantined() {
        let mut h = health();
        h.on_no_answer("b", 1_000, 7);
        assert!(!h.usable("b", 2_000, 7));
        // Gossip now shows a new process under the same name.
        assert!(h.usable("b", 2_000, 8));
        for _ in 0..3 {
            h.on_corrupt_piece("b", 3_000);
        }
        assert!(!h.usable("b", 4_000, 9), "a quarantine outlasts restarts");
        // Unknown generations clear nothing: suspected while gossip did
        // not show it (0), still suspect when it shows up again.
        h.on_no_answer("c", 1_000, 0);
        assert!(!h.usable("c", 2_000, 5));
        h.on_no_answer("d", 1_000, 5);
        assert!(!h.usable("d", 2_000, 0));
        assert!(
            !h.usable("d", 2_000, 4),
            "an older generation is not a restart"
        );
    }

    #[test]
    fn corrupt_pieces_quarantine_after_the_limit_and_the_count_restarts() {
        let mut h = health();
        assert!(!h.on_corrupt_piece("b", 0));
        assert!(!h.on_corrupt_piece("b", 1));
        assert!(h.usable("b", 2, 1));
        assert!(
            h.on_corrupt_piece("b", 2),
            "the third puts it in quarantine"
        );
        assert_eq!(
            h.state("b", 3, 1),
            PeerState::Quarantined { until_ms: 60_002 }
        );
        assert_eq!(h.quarantined(3), ["b"]);
        // Quarantine wins over a suspicion that ends sooner.
        h.on_no_answer("b", 10, 1);
        assert!(matches!(
            h.state("b", 20_000, 1),
            PeerState::Quarantined { .. }
        ));
        assert!(h.usable("b", 60_002, 1));
        assert!(h.quarantined(60_002).is_empty());
        // Counting starts again: one more bad piece is not enough.
        assert!(!h.on_corrupt_piece("b", 60_003));
        assert!(h.usable("b", 60_004, 1));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_what_ends_soonest() {
        let mut h = health();
        assert!(!h.on_corrupt_piece("bad", 0));
        h.on_corrupt_piece("bad", 0);
        h.on_corrupt_piece("bad", 0);
        for i in 0..PEERS_TRACKED_MAX + 10 {
            h.on_no_answer(&format!("p{i}"), 0, 1);
        }
        assert!(h.peers.len() <= PEERS_TRACKED_MAX);
        // The quarantined peer outlasts the suspects.
        assert!(!h.usable("bad", 30_000, 1));
        // At 20 s every earlier suspicion has expired: room is made.
        h.on_no_answer("late", 20_000, 1);
        assert!(!h.usable("late", 20_001, 1));
        assert!(h.peers.len() <= PEERS_TRACKED_MAX);
    }
}
