//! Whom to upload to: the choker, as a pure function of what the swarm
//! knows of its peers and the time.
//!
//! BitTorrent's reciprocation: a downloading peer unchokes the
//! [`ChokeLimits::regular_slots`] interested peers that send it the most
//! (tit-for-tat), plus one *optimistic* slot that rotates every
//! [`ChokeLimits::optimistic_every_ms`] among the others, so a newcomer
//! with nothing to give yet gets its first pieces and can start giving.
//! A peer that has everything (a seed, or a viewer seeding after its
//! download) has nothing to receive: it unchokes those it uploads to
//! fastest, which spreads pieces quickest. Peers that are not interested
//! are never unchoked (a slot would sit idle).

/// The choker's limits.
#[derive(Clone, Copy, Debug)]
pub struct ChokeLimits {
    pub regular_slots: usize,
    pub optimistic_every_ms: u64,
}

impl Default for ChokeLimits {
    fn default() -> Self {
        Self {
            regular_slots: 4,
            optimistic_every_ms: 30_000,
        }
    }
}

/// What the choker knows of one peer.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    /// The swarm's number for the connection.
    pub peer: u64,
    pub interested: bool,
    /// What it sent us lately, bytes per second.
    pub download_bytes_per_s: u64,
    /// What we sent it lately, bytes per second.
    pub upload_bytes_per_s: u64,
}

/// The choker's memory: the optimistic pick and when it was made.
#[derive(Clone, Debug, Default)]
pub struct Choker {
    optimistic: Option<u64>,
    picked_at_ms: u64,
    /// Rotates through peers by number, so every one gets its turn.
    cursor: u64,
}

impl Choker {
    /// The peers to unchoke now (every other is choked), in no order.
    /// `seeding`: we have every piece.
    pub fn unchoke(
        &mut self,
        peers: &[Candidate],
        seeding: bool,
        limits: &ChokeLimits,
        now_ms: u64,
    ) -> Vec<u64> {
        let mut interested: Vec<&Candidate> = peers.iter().filter(|p| p.interested).collect();
        // Fastest first; ties by number, so the choice is deterministic.
        interested.sort_by_key(|p| {
            let rate = if seeding {
                p.upload_bytes_per_s
            } else {
                p.download_bytes_per_s
            };
            (std::cmp::Reverse(rate), p.peer)
        });
        let mut chosen: Vec<u64> = interested
            .iter()
            .take(limits.regular_slots)
            .map(|p| p.peer)
            .collect();
        let others: Vec<u64> = interested
            .iter()
            .map(|p| p.peer)
            .filter(|p| !chosen.contains(p))
            .collect();
        let due = now_ms.saturating_sub(self.picked_at_ms) >= limits.optimistic_every_ms;
        let current = self.optimistic.filter(|p| others.contains(p));
        let optimistic = match current {
            Some(peer) if !due => Some(peer),
            _ => {
                // The next peer by number after the last pick, wrapping.
                let next = others
                    .iter()
                    .copied()
                    .filter(|p| *p > self.cursor)
                    .min()
                    .or_else(|| others.iter().copied().min());
                if let Some(peer) = next {
                    self.cursor = peer;
                    self.picked_at_ms = now_ms;
                }
                next
            }
        };
        self.optimistic = optimistic;
        chosen.extend(optimistic);
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(peer: u64, interested: bool, down: u64, up: u64) -> Candidate {
        Candidate {
            peer,
            interested,
            download_bytes_per_s: down,
            upload_bytes_per_s: up,
        }
    }

    #[test]
    fn the_fastest_senders_are_unchoked_plus_one_optimistic_that_rotates() {
        let limits = ChokeLimits {
            regular_slots: 2,
            optimistic_every_ms: 30_000,
        };
        let peers = [
            peer(1, true, 100, 0),
            peer(2, true, 500, 0),
            peer(3, true, 300, 0),
            peer(4, true, 0, 0),
            peer(5, false, 900, 0),
            peer(6, true, 0, 0),
        ];
        let mut choker = Choker::default();
        let mut first = choker.unchoke(&peers, false, &limits, 0);
        first.sort();
        assert_eq!(first, [1, 2, 3], "2 and 3 by rate, 1 optimistic");
        // Within the period the optimistic pick stays.
        let mut again = choker.unchoke(&peers, false, &limits, 10_000);
        again.sort();
        assert_eq!(again, [1, 2, 3]);
        // Then it moves on to the next peer, so each gets its turn.
        let picks: Vec<u64> = (1..=3)
            .map(|k| {
                let chosen = choker.unchoke(&peers, false, &limits, k * 30_000);
                *chosen.last().unwrap()
            })
            .collect();
        assert_eq!(picks, [4, 6, 1]);
        assert!(
            !choker.unchoke(&peers, false, &limits, 200_000).contains(&5),
            "never a peer that is not interested"
        );
    }

    #[test]
    fn a_seed_unchokes_those_it_uploads_to_fastest() {
        let limits = ChokeLimits {
            regular_slots: 1,
            optimistic_every_ms: 30_000,
        };
        let peers = [
            peer(1, true, 0, 10),
            peer(2, true, 0, 900),
            peer(3, true, 0, 50),
        ];
        let chosen = Choker::default().unchoke(&peers, true, &limits, 0);
        assert_eq!(chosen[0], 2);
        assert_eq!(chosen.len(), 2, "plus the optimistic slot");
    }
}
