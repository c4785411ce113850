//! [`VerifiedPiece`]: piece bytes that are known to match a hash.
//!
//! The store and every server path accept only this type, so "a byte that did
//! not verify is never stored or served" is checked by the compiler: the only
//! ways to make one are to verify bytes against a manifest, or to hash bytes
//! as they are first ingested from a trusted origin (for objects with no
//! published manifest, whose manifest is being built).

use crate::manifest::{Manifest, PieceHash, VerifyError};
use crate::piece::{PieceIndex, PieceLayout};
use bytes::Bytes;

#[derive(Clone, Debug)]
pub struct VerifiedPiece {
    index: PieceIndex,
    hash: PieceHash,
    data: Bytes,
}

/// The bytes are the wrong length for the piece.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("piece {index} should be {expected} bytes, got {actual}")]
pub struct PieceLengthError {
    pub index: PieceIndex,
    pub expected: u64,
    pub actual: u64,
}

impl VerifiedPiece {
    /// Verifies `data` as piece `index` of `manifest`.
    pub fn verify(
        manifest: &Manifest,
        index: PieceIndex,
        data: Bytes,
    ) -> Result<Self, VerifyError> {
        manifest.verify_piece(index, &data)?;
        let hash = manifest
            .piece_hash(index)
            .expect("verify_piece checked the index");
        Ok(Self { index, hash, data })
    }

    /// Verifies `data` against a hash recorded earlier for this piece.
    pub fn verify_against(
        index: PieceIndex,
        expected: PieceHash,
        data: Bytes,
    ) -> Result<Self, VerifyError> {
        let actual = PieceHash::of(&data);
        if actual == expected {
            Ok(Self {
                index,
                hash: expected,
                data,
            })
        } else {
            Err(VerifyError {
                index,
                expected,
                actual,
                len: data.len(),
            })
        }
    }

    /// Accepts bytes first ingested from the origin for an object without a
    /// published manifest: their hash becomes the reference from now on.
    pub fn ingest(
        layout: &PieceLayout,
        index: PieceIndex,
        data: Bytes,
    ) -> Result<Self, PieceLengthError> {
        let expected = layout.piece_len(index);
        if expected != data.len() as u64 || layout.piece_span(index).is_none() {
            return Err(PieceLengthError {
                index,
                expected,
                actual: data.len() as u64,
            });
        }
        Ok(Self {
            index,
            hash: PieceHash::of(&data),
            data,
        })
    }

    pub fn index(&self) -> PieceIndex {
        self.index
    }

    pub fn hash(&self) -> PieceHash {
        self.hash
    }

    pub fn data(&self) -> &Bytes {
        &self.data
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn into_data(self) -> Bytes {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Validators;
    use crate::piece::PieceSize;

    #[test]
    fn only_matching_bytes_verify() {
        let data = Bytes::from(vec![7u8; 300_000]);
        let m = Manifest::from_data(&data, PieceSize::MIN, Validators::default()).unwrap();
        let first = data.slice(0..262_144);
        let piece = VerifiedPiece::verify(&m, PieceIndex(0), first.clone()).unwrap();
        assert_eq!(piece.data(), &first);
        assert!(VerifiedPiece::verify(&m, PieceIndex(1), first.clone()).is_err());
        assert!(
            VerifiedPiece::verify_against(PieceIndex(0), piece.hash(), first.slice(1..)).is_err()
        );
        let layout = m.layout();
        assert!(VerifiedPiece::ingest(&layout, PieceIndex(1), data.slice(262_144..)).is_ok());
        assert!(VerifiedPiece::ingest(&layout, PieceIndex(1), data.slice(262_143..)).is_err());
        assert!(VerifiedPiece::ingest(&layout, PieceIndex(2), Bytes::new()).is_err());
    }
}
