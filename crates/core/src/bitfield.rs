//! [`PieceSet`]: which pieces of an object a node holds, as a bitfield, and
//! its wire form for point-to-point availability queries between caches.
//!
//! Wire format (big-endian): `piece_count u32`, then `ceil(piece_count / 8)`
//! bytes, piece 0 in the high bit of the first byte (as in BitTorrent's
//! bitfield message). Spare bits in the last byte must be zero, so every
//! set has exactly one encoding.

use crate::piece::{PieceIndex, PieceSize};

/// Which pieces of one object are held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceSet {
    piece_count: u32,
    bits: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PieceSetError {
    #[error("piece set is truncated")]
    Truncated,
    #[error("piece set claims {0} pieces (at most {max})", max = PieceSize::PIECE_COUNT_MAX)]
    TooManyPieces(u32),
    #[error("piece set is {actual} bytes, expected {expected}")]
    WrongLength { expected: usize, actual: usize },
    #[error("piece set has bits set past its last piece")]
    SpareBitsSet,
}

impl PieceSet {
    /// An empty set for an object of `piece_count` pieces.
    pub fn new(piece_count: u32) -> Self {
        Self {
            piece_count,
            bits: vec![0; (piece_count as usize).div_ceil(8)],
        }
    }

    pub fn piece_count(&self) -> u32 {
        self.piece_count
    }

    pub fn insert(&mut self, index: PieceIndex) -> bool {
        if index.0 >= self.piece_count {
            return false;
        }
        let (byte, mask) = position(index);
        let was = self.bits[byte] & mask != 0;
        self.bits[byte] |= mask;
        !was
    }

    /// Takes `index` out; `true` if it was in.
    pub fn remove(&mut self, index: PieceIndex) -> bool {
        if index.0 >= self.piece_count {
            return false;
        }
        let (byte, mask) = position(index);
        let was = self.bits[byte] & mask != 0;
        self.bits[byte] &= !mask;
        was
    }

    pub fn contains(&self, index: PieceIndex) -> bool {
        if index.0 >= self.piece_count {
            return false;
        }
        let (byte, mask) = position(index);
        self.bits[byte] & mask != 0
    }

    pub fn len(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|b| *b == 0)
    }

    pub fn is_complete(&self) -> bool {
        self.len() == self.piece_count
    }

    pub fn iter(&self) -> impl Iterator<Item = PieceIndex> + '_ {
        (0..self.piece_count)
            .map(PieceIndex)
            .filter(|i| self.contains(*i))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.bits.len());
        out.extend_from_slice(&self.piece_count.to_be_bytes());
        out.extend_from_slice(&self.bits);
        out
    }

    /// Decodes a set; lengths are checked before anything is allocated.
    pub fn decode(bytes: &[u8]) -> Result<Self, PieceSetError> {
        let header: [u8; 4] = bytes
            .get(..4)
            .ok_or(PieceSetError::Truncated)?
            .try_into()
            .map_err(|_| PieceSetError::Truncated)?;
        let piece_count = u32::from_be_bytes(header);
        if piece_count as u64 > PieceSize::PIECE_COUNT_MAX {
            return Err(PieceSetError::TooManyPieces(piece_count));
        }
        let expected = (piece_count as usize).div_ceil(8);
        let body = &bytes[4..];
        if body.len() != expected {
            return Err(PieceSetError::WrongLength {
                expected,
                actual: body.len(),
            });
        }
        let spare = (expected * 8) as u32 - piece_count;
        if let Some(last) = body.last() {
            if spare > 0 && last & ((1u8 << spare) - 1) != 0 {
                return Err(PieceSetError::SpareBitsSet);
            }
        }
        Ok(Self {
            piece_count,
            bits: body.to_vec(),
        })
    }
}

fn position(index: PieceIndex) -> (usize, u8) {
    ((index.0 / 8) as usize, 0x80 >> (index.0 % 8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basic_operations() {
        let mut set = PieceSet::new(10);
        assert!(set.is_empty());
        assert!(set.insert(PieceIndex(0)));
        assert!(!set.insert(PieceIndex(0)));
        assert!(set.insert(PieceIndex(9)));
        assert!(!set.insert(PieceIndex(10)), "past the end is refused");
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![PieceIndex(0), PieceIndex(9)]
        );
        assert_eq!(set.encode(), vec![0, 0, 0, 10, 0x80, 0x40]);
        assert_eq!(PieceSet::decode(&set.encode()), Ok(set));
        assert!(PieceSet::new(0).is_complete());
    }

    #[test]
    fn refuses_bad_encodings() {
        assert_eq!(PieceSet::decode(&[0, 0]), Err(PieceSetError::Truncated));
        assert_eq!(
            PieceSet::decode(&[0, 0, 0, 10, 0x80]),
            Err(PieceSetError::WrongLength {
                expected: 2,
                actual: 1
            })
        );
        assert_eq!(
            PieceSet::decode(&[0, 0, 0, 10, 0x80, 0x01]),
            Err(PieceSetError::SpareBitsSet)
        );
        assert!(matches!(
            PieceSet::decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(PieceSetError::TooManyPieces(_))
        ));
    }

    proptest! {
        #[test]
        fn round_trip(count in 0u32..5000, picks in proptest::collection::vec(any::<u32>(), 0..200)) {
            let mut set = PieceSet::new(count);
            for p in picks {
                if count > 0 {
                    set.insert(PieceIndex(p % count));
                }
            }
            let decoded = PieceSet::decode(&set.encode()).unwrap();
            prop_assert_eq!(&decoded, &set);
            prop_assert_eq!(decoded.iter().count() as u32, set.len());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = PieceSet::decode(&bytes);
        }
    }
}
