//! Piece math: piece sizes, indices and the spans they cover.
//!
//! A piece size is a power of two between 256 KiB and 4 MiB. Every piece of
//! an object has that size except the last, which holds the remainder; an
//! empty object has no pieces at all.

use crate::span::ByteSpan;
use std::fmt;

/// The index of a piece within its object (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PieceIndex(pub u32);

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A valid piece size: `2^log2` bytes with `log2` in `18..=22`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceSize {
    log2: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PieceSizeError {
    #[error("piece size {0} bytes is not a power of two between 256 KiB and 4 MiB")]
    OutOfRange(u64),
    #[error("an object of {size} bytes would have more than {max} pieces of {piece} bytes")]
    TooManyPieces { size: u64, piece: u64, max: u64 },
}

impl PieceSize {
    pub const MIN_LOG2: u8 = 18;
    pub const MAX_LOG2: u8 = 22;
    pub const MIN: PieceSize = PieceSize {
        log2: Self::MIN_LOG2,
    };
    pub const MAX: PieceSize = PieceSize {
        log2: Self::MAX_LOG2,
    };
    /// The piece count an automatically chosen size aims to stay under.
    pub const TARGET_PIECES_MAX: u64 = 4000;
    /// Objects may not have more pieces than this (bounds manifest size:
    /// 2^24 pieces of 4 MiB is 64 TiB, and a 512 MiB manifest).
    pub const PIECE_COUNT_MAX: u64 = 1 << 24;

    pub fn from_log2(log2: u8) -> Result<Self, PieceSizeError> {
        if (Self::MIN_LOG2..=Self::MAX_LOG2).contains(&log2) {
            Ok(Self { log2 })
        } else {
            Err(PieceSizeError::OutOfRange(
                1u64.checked_shl(log2 as u32).unwrap_or(0),
            ))
        }
    }

    pub fn from_bytes(bytes: u64) -> Result<Self, PieceSizeError> {
        if bytes.is_power_of_two() {
            Self::from_log2(bytes.trailing_zeros() as u8)
        } else {
            Err(PieceSizeError::OutOfRange(bytes))
        }
    }

    /// Picks the smallest size that keeps the object under
    /// [`Self::TARGET_PIECES_MAX`] pieces, clamped to 256 KiB..=4 MiB.
    pub fn for_object_size(object_size: u64) -> Self {
        let mut log2 = Self::MIN_LOG2;
        while log2 < Self::MAX_LOG2 && object_size.div_ceil(1u64 << log2) > Self::TARGET_PIECES_MAX
        {
            log2 += 1;
        }
        Self { log2 }
    }

    pub fn log2(self) -> u8 {
        self.log2
    }

    pub fn bytes(self) -> u64 {
        1u64 << self.log2
    }
}

/// The piece layout of one object: its size and piece size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PieceLayout {
    object_size: u64,
    piece_size: PieceSize,
}

impl PieceLayout {
    pub fn new(object_size: u64, piece_size: PieceSize) -> Result<Self, PieceSizeError> {
        let count = object_size.div_ceil(piece_size.bytes());
        if count > PieceSize::PIECE_COUNT_MAX {
            return Err(PieceSizeError::TooManyPieces {
                size: object_size,
                piece: piece_size.bytes(),
                max: PieceSize::PIECE_COUNT_MAX,
            });
        }
        Ok(Self {
            object_size,
            piece_size,
        })
    }

    pub fn object_size(&self) -> u64 {
        self.object_size
    }

    pub fn piece_size(&self) -> PieceSize {
        self.piece_size
    }

    /// Number of pieces; 0 for an empty object.
    pub fn piece_count(&self) -> u32 {
        // Bounded by PIECE_COUNT_MAX in `new`.
        self.object_size.div_ceil(self.piece_size.bytes()) as u32
    }

    /// The bytes piece `index` covers, or `None` past the last piece.
    pub fn piece_span(&self, index: PieceIndex) -> Option<ByteSpan> {
        if index.0 >= self.piece_count() {
            return None;
        }
        let start = (index.0 as u64) << self.piece_size.log2();
        let end = (start + self.piece_size.bytes()).min(self.object_size);
        ByteSpan::new(start, end)
    }

    /// The length of piece `index` (0 past the end).
    pub fn piece_len(&self, index: PieceIndex) -> u64 {
        self.piece_span(index).map_or(0, |s| s.len())
    }

    /// The piece that holds byte `offset`, if `offset` is inside the object.
    pub fn piece_of(&self, offset: u64) -> Option<PieceIndex> {
        (offset < self.object_size).then(|| PieceIndex((offset >> self.piece_size.log2()) as u32))
    }

    /// The inclusive range of pieces that a non-empty span inside the object
    /// touches, or `None` for an empty span or one past the end.
    pub fn pieces_covering(&self, span: ByteSpan) -> Option<std::ops::RangeInclusive<u32>> {
        let last = span.last()?;
        if last >= self.object_size {
            return None;
        }
        let first = self.piece_of(span.start())?;
        let last = self.piece_of(last)?;
        Some(first.0..=last.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;

    #[test]
    fn chosen_sizes() {
        assert_eq!(PieceSize::for_object_size(0).bytes(), 256 * KIB);
        assert_eq!(PieceSize::for_object_size(1).bytes(), 256 * KIB);
        assert_eq!(PieceSize::for_object_size(1 << 30).bytes(), 512 * KIB);
        assert_eq!(PieceSize::for_object_size(10 << 30).bytes(), 4 * MIB);
        assert_eq!(PieceSize::for_object_size(1 << 40).bytes(), 4 * MIB);
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(PieceSize::from_bytes(3 * MIB).is_err());
        assert!(PieceSize::from_bytes(128 * KIB).is_err());
        assert!(PieceSize::from_bytes(8 * MIB).is_err());
        assert!(PieceSize::from_log2(64).is_err());
        assert!(PieceSize::from_bytes(0).is_err());
    }

    #[test]
    fn edge_sizes() {
        let ps = PieceSize::MIN;
        let p = ps.bytes();
        for (size, count, last_len) in [
            (0, 0, 0),
            (1, 1, 1),
            (p - 1, 1, p - 1),
            (p, 1, p),
            (p + 1, 2, 1),
        ] {
            let layout = PieceLayout::new(size, ps).unwrap();
            assert_eq!(layout.piece_count(), count, "size {size}");
            if count > 0 {
                assert_eq!(
                    layout.piece_len(PieceIndex(count - 1)),
                    last_len,
                    "size {size}"
                );
            }
            assert_eq!(layout.piece_span(PieceIndex(count)), None);
        }
    }

    proptest! {
        #[test]
        fn pieces_tile_the_object(size in 0u64..(64 * MIB), log2 in 18u8..=22) {
            let layout = PieceLayout::new(size, PieceSize::from_log2(log2).unwrap()).unwrap();
            let mut next = 0;
            for i in 0..layout.piece_count() {
                let span = layout.piece_span(PieceIndex(i)).unwrap();
                prop_assert_eq!(span.start(), next);
                prop_assert!(!span.is_empty());
                prop_assert!(span.len() <= layout.piece_size().bytes());
                next = span.end();
            }
            prop_assert_eq!(next, size);
        }

        #[test]
        fn covering_is_exact(size in 1u64..(64 * MIB), a in any::<u64>(), b in any::<u64>()) {
            let layout = PieceLayout::new(size, PieceSize::MIN).unwrap();
            let (a, b) = (a % size, b % size);
            let span = ByteSpan::new(a.min(b), a.max(b) + 1).unwrap();
            let pieces = layout.pieces_covering(span).unwrap();
            let first = layout.piece_span(PieceIndex(*pieces.start())).unwrap();
            let last = layout.piece_span(PieceIndex(*pieces.end())).unwrap();
            prop_assert!(first.start() <= span.start() && span.start() < first.end());
            prop_assert!(last.start() < span.end() && span.end() <= last.end());
        }
    }
}
