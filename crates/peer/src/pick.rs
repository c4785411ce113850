//! Which piece to ask a peer for next: a pure function of what we have,
//! what is in flight, what the peer has and how many peers have each
//! piece.
//!
//! Pieces already started come first (a half-finished piece is memory
//! held and nothing anyone can use). Then, for a download, the *rarest*
//! piece the peer has (ties broken by a per-peer rotation so peers do not
//! all chase the same one), which keeps every piece available in the swarm
//! and gives peers something to trade. For a stream the pieces inside the
//! playhead window go first, in order — a rare piece a minute ahead is
//! worth less than the next second of video — and rarest-first applies
//! beyond it; pieces before the window are not asked of peers (too close
//! to their deadline: a cache brings them).

use shoal_core::bitfield::PieceSet;
use shoal_core::PieceIndex;

/// What the picker knows.
pub struct PickContext<'a> {
    pub have: &'a PieceSet,
    /// Pieces being downloaded now (started, or requested from someone).
    pub in_flight: &'a PieceSet,
    /// Pieces started and not finished (their blocks partly here).
    pub partial: &'a [u32],
    /// How many connected peers have each piece.
    pub availability: &'a [u32],
    /// Stream mode: pieces from the window's start up to (not including)
    /// its end are wanted in order first; none before its start.
    pub playhead: Option<(u32, u32)>,
    /// A number that differs per peer (its key), to spread ties.
    pub salt: u64,
}

/// The next piece to request from a peer that has `peer_has`, if any.
pub fn next_piece(ctx: &PickContext<'_>, peer_has: &PieceSet) -> Option<u32> {
    let wanted =
        |piece: u32| peer_has.contains(PieceIndex(piece)) && !ctx.have.contains(PieceIndex(piece));
    // Finish what is started (its other blocks may come from this peer).
    if let Some(piece) = ctx.partial.iter().copied().find(|p| wanted(*p)) {
        return Some(piece);
    }
    let fresh = |piece: u32| {
        wanted(piece)
            && !ctx.in_flight.contains(PieceIndex(piece))
            && ctx.playhead.is_none_or(|(from, _)| piece >= from)
    };
    if let Some((from, end)) = ctx.playhead {
        if let Some(piece) = (from..end.min(ctx.have.piece_count())).find(|p| fresh(*p)) {
            return Some(piece);
        }
    }
    let count = ctx.have.piece_count();
    (0..count).filter(|p| fresh(*p)).min_by_key(|p| {
        let rarity = ctx.availability.get(*p as usize).copied().unwrap_or(0);
        // Spread ties: each peer walks the pieces from its own offset.
        let rotated = (u64::from(*p) + ctx.salt) % u64::from(count.max(1));
        (rarity, rotated)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(count: u32, pieces: &[u32]) -> PieceSet {
        let mut s = PieceSet::new(count);
        for p in pieces {
            s.insert(PieceIndex(*p));
        }
        s
    }

    #[test]
    fn started_pieces_then_the_rarest_the_peer_has() {
        let have = set(8, &[0]);
        let in_flight = set(8, &[5]);
        let availability = [9, 3, 1, 3, 1, 1, 2, 4];
        let peer = set(8, &[0, 1, 2, 3, 4, 5, 7]);
        let mut ctx = PickContext {
            have: &have,
            in_flight: &in_flight,
            partial: &[5],
            availability: &availability,
            playhead: None,
            salt: 0,
        };
        assert_eq!(next_piece(&ctx, &peer), Some(5), "finish the partial one");
        ctx.partial = &[];
        // 2 and 4 are rarest (1 peer each); 5 is in flight; 6 the peer lacks.
        assert_eq!(next_piece(&ctx, &peer), Some(2));
        ctx.salt = 5;
        assert_eq!(
            next_piece(&ctx, &peer),
            Some(4),
            "another peer starts elsewhere"
        );
        // Nothing the peer has that we lack and nobody fetches.
        let seedless = set(8, &[0, 5]);
        assert_eq!(next_piece(&ctx, &seedless), None);
    }

    #[test]
    fn a_stream_takes_the_playhead_window_in_order_first() {
        let have = set(10, &[0, 1]);
        let in_flight = set(10, &[2]);
        let availability = [5, 5, 5, 5, 5, 5, 5, 5, 5, 1];
        let peer = set(10, &(0..10).collect::<Vec<_>>());
        let ctx = PickContext {
            have: &have,
            in_flight: &in_flight,
            partial: &[],
            availability: &availability,
            playhead: Some((1, 5)),
            salt: 3,
        };
        assert_eq!(
            next_piece(&ctx, &peer),
            Some(3),
            "next in order, not rare 9"
        );
        let behind = PickContext {
            playhead: Some((8, 8)),
            ..ctx
        };
        assert_eq!(next_piece(&behind, &peer), Some(9), "beyond it: rarest");
        let late = PickContext {
            playhead: Some((9, 10)),
            availability: &[1; 10],
            ..ctx
        };
        assert_eq!(
            next_piece(&late, &peer),
            Some(9),
            "nothing before the window"
        );
        let past = PickContext {
            playhead: Some((10, 10)),
            ..late
        };
        assert_eq!(next_piece(&past, &peer), None);
    }
}
