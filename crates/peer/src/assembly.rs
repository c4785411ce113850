//! Pieces put together from 16 KiB blocks sent by several peers, and
//! smart-ban: who to blame when a piece fails verification.
//!
//! A piece is checked whole against the manifest (BLAKE3) before anything
//! uses it, so a bad block shows only as a bad piece, not as the block or
//! the peer that spoiled it. [`Assembly`] records which peer sent each
//! block. When a piece fails, [`SmartBan`] keeps a hash of every block and
//! its sender; once the piece verifies (from peers or from a cache), each
//! recorded block is compared with the good bytes: a peer whose block
//! differs sent bad data — proof, so it is banned after
//! [`SmartBanLimits::bad_blocks_max`] such blocks — and a peer whose
//! blocks matched is cleared. A peer is never banned on suspicion alone,
//! so an honest peer that happened to share a piece with a liar is never
//! banned.

use crate::wire::{BlockRef, BLOCK_BYTES};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;

/// Who sent a block: the swarm's own number for a connection.
pub type PeerKey = u64;

/// Pieces being put together at once, at most (a bound on memory: a piece
/// is allocated whole when its first block arrives).
pub const PIECES_IN_PROGRESS_MAX: usize = 64;

/// A piece being put together.
#[derive(Debug)]
struct Partial {
    data: BytesMut,
    /// Per block: who sent it, if it is here.
    senders: Vec<Option<PeerKey>>,
    received: usize,
}

/// What adding a block did.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// More blocks are missing.
    Incomplete,
    /// The piece is whole (not verified yet): its bytes and each block's
    /// sender, in block order.
    Complete {
        piece: u32,
        data: Bytes,
        senders: Vec<PeerKey>,
    },
    /// A block already here, or one that does not fit the piece: dropped.
    Ignored,
    /// Too many pieces in progress: the block is dropped (ask again later).
    Full,
}

/// Blocks of pieces in progress.
#[derive(Debug, Default)]
pub struct Assembly {
    pieces: HashMap<u32, Partial>,
}

impl Assembly {
    /// Adds `data` for `block` of a piece of `piece_bytes` bytes, from
    /// `peer`. Blocks start at multiples of [`BLOCK_BYTES`] and are whole
    /// blocks (the last one of a piece may be shorter).
    pub fn add(&mut self, peer: PeerKey, block: BlockRef, data: &[u8], piece_bytes: u32) -> Added {
        let blocks = piece_bytes.div_ceil(BLOCK_BYTES) as usize;
        let index = (block.begin / BLOCK_BYTES) as usize;
        let expected = BLOCK_BYTES.min(piece_bytes.saturating_sub(block.begin));
        if !block.begin.is_multiple_of(BLOCK_BYTES)
            || index >= blocks
            || data.len() as u32 != expected
        {
            return Added::Ignored;
        }
        if !self.pieces.contains_key(&block.piece) && self.pieces.len() >= PIECES_IN_PROGRESS_MAX {
            return Added::Full;
        }
        let partial = self.pieces.entry(block.piece).or_insert_with(|| Partial {
            data: BytesMut::zeroed(piece_bytes as usize),
            senders: vec![None; blocks],
            received: 0,
        });
        if partial.data.len() != piece_bytes as usize || partial.senders[index].is_some() {
            return Added::Ignored;
        }
        let start = block.begin as usize;
        partial.data[start..start + data.len()].copy_from_slice(data);
        partial.senders[index] = Some(peer);
        partial.received += 1;
        if partial.received < blocks {
            return Added::Incomplete;
        }
        let Some(done) = self.pieces.remove(&block.piece) else {
            return Added::Incomplete;
        };
        Added::Complete {
            piece: block.piece,
            data: done.data.freeze(),
            senders: done.senders.into_iter().flatten().collect(),
        }
    }

    /// Blocks of `piece` still missing (to request), from its first.
    pub fn missing(&self, piece: u32, piece_bytes: u32) -> Vec<BlockRef> {
        let blocks = piece_bytes.div_ceil(BLOCK_BYTES);
        (0..blocks)
            .filter(|b| {
                self.pieces
                    .get(&piece)
                    .is_none_or(|p| p.senders.get(*b as usize).is_some_and(Option::is_none))
            })
            .map(|b| BlockRef {
                piece,
                begin: b * BLOCK_BYTES,
                length: BLOCK_BYTES.min(piece_bytes - b * BLOCK_BYTES),
            })
            .collect()
    }

    /// Forgets what a peer sent of pieces in progress (it was banned or
    /// left mid-piece and its blocks are not trusted to stay).
    pub fn drop_peer(&mut self, peer: PeerKey) {
        for partial in self.pieces.values_mut() {
            for sender in partial.senders.iter_mut() {
                if *sender == Some(peer) {
                    *sender = None;
                    partial.received -= 1;
                }
            }
        }
    }

    /// Forgets a piece in progress (it came whole from elsewhere, or a
    /// cache took it over).
    pub fn drop_piece(&mut self, piece: u32) {
        self.pieces.remove(&piece);
    }

    /// Bytes here of each piece in progress.
    pub fn received_bytes(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.pieces.iter().map(|(piece, partial)| {
            let blocks = partial.senders.iter().filter(|s| s.is_some()).count() as u64;
            (
                *piece,
                (blocks * u64::from(BLOCK_BYTES)).min(partial.data.len() as u64),
            )
        })
    }

    /// Pieces with some blocks here and some missing.
    pub fn partial_pieces(&self) -> Vec<u32> {
        let mut pieces: Vec<u32> = self.pieces.keys().copied().collect();
        pieces.sort_unstable();
        pieces
    }

    pub fn in_progress(&self) -> usize {
        self.pieces.len()
    }
}

/// Smart-ban's limits.
#[derive(Clone, Copy, Debug)]
pub struct SmartBanLimits {
    /// Blocks proven bad before a peer is banned.
    pub bad_blocks_max: u32,
    /// Failed pieces remembered until they verify, at most.
    pub failed_pieces_max: usize,
}

impl Default for SmartBanLimits {
    fn default() -> Self {
        Self {
            bad_blocks_max: 2,
            failed_pieces_max: 64,
        }
    }
}

/// What smart-ban concluded from a verified piece.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Peers proven to have sent bad blocks, now over the limit: ban them.
    pub ban: Vec<PeerKey>,
    /// Peers whose recorded blocks were all good.
    pub cleared: Vec<PeerKey>,
}

/// Blame for failed pieces, settled by their good bytes.
#[derive(Debug, Default)]
pub struct SmartBan {
    limits: SmartBanLimits,
    /// Failed piece → per block (sender, hash of what it sent), in the
    /// order failures happened (a piece may fail more than once).
    failed: HashMap<u32, Vec<(PeerKey, usize, [u8; 32])>>,
    order: std::collections::VecDeque<u32>,
    bad_blocks: HashMap<PeerKey, u32>,
}

impl SmartBan {
    pub fn new(limits: SmartBanLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// `data` (the whole piece, as its `senders` sent it block by block)
    /// failed verification: remember who sent what. When one peer sent
    /// every block, the bad one is certainly its: that counts at once
    /// (the returned verdict may ban it); otherwise blame waits for the
    /// piece's good bytes.
    pub fn on_failed(&mut self, piece: u32, data: &[u8], senders: &[PeerKey]) -> Verdict {
        let mut verdict = Verdict::default();
        if let Some(&only) = senders.first() {
            if senders.iter().all(|s| *s == only) {
                let count = self.bad_blocks.entry(only).or_default();
                *count += 1;
                if *count >= self.limits.bad_blocks_max {
                    verdict.ban.push(only);
                }
                return verdict;
            }
        }
        if !self.failed.contains_key(&piece) {
            if self.failed.len() >= self.limits.failed_pieces_max {
                if let Some(oldest) = self.order.pop_front() {
                    self.failed.remove(&oldest);
                }
            }
            self.order.push_back(piece);
        }
        let records = self.failed.entry(piece).or_default();
        for (block, (chunk, sender)) in data.chunks(BLOCK_BYTES as usize).zip(senders).enumerate() {
            records.push((*sender, block, *blake3::hash(chunk).as_bytes()));
        }
        verdict
    }

    /// `data` is `piece`'s verified bytes: settle the blame recorded for
    /// it.
    pub fn on_verified(&mut self, piece: u32, data: &[u8]) -> Verdict {
        let Some(records) = self.failed.remove(&piece) else {
            return Verdict::default();
        };
        self.order.retain(|p| *p != piece);
        let good: Vec<[u8; 32]> = data
            .chunks(BLOCK_BYTES as usize)
            .map(|chunk| *blake3::hash(chunk).as_bytes())
            .collect();
        let mut verdict = Verdict::default();
        let mut liars = Vec::new();
        for (sender, block, hash) in &records {
            if good.get(*block) != Some(hash) {
                liars.push(*sender);
                let count = self.bad_blocks.entry(*sender).or_default();
                *count += 1;
                if *count >= self.limits.bad_blocks_max && !verdict.ban.contains(sender) {
                    verdict.ban.push(*sender);
                }
            }
        }
        for (sender, _, _) in &records {
            if !liars.contains(sender) && !verdict.cleared.contains(sender) {
                verdict.cleared.push(*sender);
            }
        }
        verdict
    }

    /// Blocks proven bad from `peer` so far.
    pub fn bad_blocks(&self, peer: PeerKey) -> u32 {
        self.bad_blocks.get(&peer).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIECE: u32 = 3 * BLOCK_BYTES + 100;

    fn block(index: u32) -> BlockRef {
        BlockRef {
            piece: 7,
            begin: index * BLOCK_BYTES,
            length: BLOCK_BYTES.min(PIECE - index * BLOCK_BYTES),
        }
    }

    fn good() -> Vec<u8> {
        (0..PIECE).map(|i| (i % 251) as u8).collect()
    }

    fn slice(data: &[u8], index: u32) -> &[u8] {
        let b = block(index);
        &data[b.begin as usize..(b.begin + b.length) as usize]
    }

    #[test]
    fn a_piece_is_put_together_from_several_peers_in_any_order() {
        let data = good();
        let mut assembly = Assembly::default();
        assert_eq!(assembly.missing(7, PIECE).len(), 4);
        for (peer, index) in [(1, 3), (2, 0), (1, 2)] {
            assert_eq!(
                assembly.add(peer, block(index), slice(&data, index), PIECE),
                Added::Incomplete
            );
        }
        assert_eq!(assembly.missing(7, PIECE), [block(1)]);
        assert_eq!(
            assembly.add(9, block(0), slice(&data, 0), PIECE),
            Added::Ignored,
            "already here"
        );
        assert_eq!(
            assembly.add(3, block(1), &slice(&data, 1)[..100], PIECE),
            Added::Ignored,
            "a short block"
        );
        match assembly.add(3, block(1), slice(&data, 1), PIECE) {
            Added::Complete {
                piece,
                data: whole,
                senders,
            } => {
                assert_eq!(piece, 7);
                assert_eq!(&whole[..], &data[..]);
                assert_eq!(senders, [2, 3, 1, 1]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(assembly.in_progress(), 0);
    }

    #[test]
    fn a_departed_peers_blocks_are_fetched_again() {
        let data = good();
        let mut assembly = Assembly::default();
        assembly.add(1, block(0), slice(&data, 0), PIECE);
        assembly.add(2, block(1), slice(&data, 1), PIECE);
        assembly.drop_peer(1);
        assert_eq!(assembly.missing(7, PIECE), [block(0), block(2), block(3)]);
    }

    #[test]
    fn memory_is_bounded_by_pieces_in_progress() {
        let mut assembly = Assembly::default();
        let data = vec![0u8; BLOCK_BYTES as usize];
        for piece in 0..PIECES_IN_PROGRESS_MAX as u32 {
            let b = BlockRef {
                piece,
                begin: 0,
                length: BLOCK_BYTES,
            };
            assert_eq!(
                assembly.add(1, b, &data, 2 * BLOCK_BYTES),
                Added::Incomplete
            );
        }
        let one_more = BlockRef {
            piece: 999,
            begin: 0,
            length: BLOCK_BYTES,
        };
        assert_eq!(
            assembly.add(1, one_more, &data, 2 * BLOCK_BYTES),
            Added::Full
        );
    }

    #[test]
    fn only_peers_proven_to_have_sent_bad_blocks_are_banned() {
        let data = good();
        let mut bad = data.clone();
        // Peer 66 spoiled block 2; honest peers 1 and 2 sent the rest.
        bad[(2 * BLOCK_BYTES + 5) as usize] ^= 0xff;
        let mut ban = SmartBan::new(SmartBanLimits {
            bad_blocks_max: 2,
            failed_pieces_max: 8,
        });
        let _ = ban.on_failed(7, &bad, &[1, 2, 66, 1]);
        let verdict = ban.on_verified(7, &data);
        assert!(verdict.ban.is_empty(), "one bad block: not yet");
        assert_eq!(verdict.cleared, [1, 2], "the honest senders are cleared");
        assert_eq!(ban.bad_blocks(66), 1);
        assert_eq!(ban.bad_blocks(1), 0);
        // It does it again in another piece: banned.
        let _ = ban.on_failed(8, &bad, &[66, 2, 66, 1]);
        let verdict = ban.on_verified(8, &data);
        assert_eq!(verdict.ban, [66]);
        assert_eq!(verdict.cleared, [2, 1]);
        // A piece that verified without failing first blames nobody.
        assert_eq!(ban.on_verified(9, &data), Verdict::default());
    }

    #[test]
    fn failed_pieces_remembered_are_bounded() {
        let data = good();
        let mut ban = SmartBan::new(SmartBanLimits {
            bad_blocks_max: 1,
            failed_pieces_max: 2,
        });
        let mut bad = data.clone();
        bad[0] ^= 1;
        for piece in 0..3 {
            let _ = ban.on_failed(piece, &bad, &[5, 6, 5, 5]);
        }
        // Piece 0 was forgotten (oldest); 1 and 2 still settle blame.
        assert_eq!(ban.on_verified(0, &data), Verdict::default());
        assert_eq!(ban.on_verified(2, &data).ban, [5]);
        // A piece one peer sent alone is its fault at once.
        let mut alone = SmartBan::new(SmartBanLimits {
            bad_blocks_max: 2,
            failed_pieces_max: 8,
        });
        assert!(alone.on_failed(1, &bad, &[9, 9, 9, 9]).ban.is_empty());
        assert_eq!(alone.on_failed(2, &bad, &[9, 9, 9, 9]).ban, [9]);
    }
}
