//! Manifests: the versioned, self-describing list of piece hashes of an object.
//!
//! # Wire format (version 1), all integers big-endian
//!
//! ```text
//! magic            8 bytes  "SHOALMF\0"
//! version          u16      1
//! object_size      u64
//! piece_size_log2  u8       18..=22
//! flags            u8       0 (reserved)
//! piece_count      u32      must equal ceil(object_size / piece_size)
//! piece hashes     piece_count × 32 bytes (BLAKE3 of each piece)
//! extension_count  u16      at most 64
//! extensions       extension_count × { tag u16, len u32, value[len] }
//! ```
//!
//! Extensions appear in strictly increasing tag order, so every manifest has
//! exactly one encoding (and so one id). Known extension tags: 1 = entity tag (the origin's ETag, ASCII, ≤ 256
//! bytes), 2 = last-modified (u64 seconds since the Unix epoch). An unknown
//! tag with the high bit clear is skipped, so later versions can add fields
//! (a SHA-1 per piece for a BitTorrent face, for instance); an unknown tag
//! with the high bit set means "you must understand me" and is refused.
//!
//! The [`ObjectId`] of an object is the BLAKE3 hash of its encoded manifest:
//! a manifest can always be checked against the id it was asked for.

use crate::piece::{PieceIndex, PieceLayout, PieceSize, PieceSizeError};
use rayon::prelude::*;
use std::fmt;

pub const MAGIC: &[u8; 8] = b"SHOALMF\0";
pub const FORMAT_VERSION: u16 = 1;
/// At most this many extensions per manifest.
pub const EXTENSION_COUNT_MAX: u16 = 64;
/// An extension value may not be longer than this.
pub const EXTENSION_LEN_MAX_BYTES: u32 = 64 * 1024;
/// An entity tag may not be longer than this.
pub const ETAG_LEN_MAX_BYTES: usize = 256;

const TAG_ETAG: u16 = 1;
const TAG_LAST_MODIFIED: u16 = 2;
const TAG_MUST_UNDERSTAND: u16 = 0x8000;

/// A BLAKE3 hash of one piece.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceHash(pub [u8; 32]);

impl PieceHash {
    pub fn of(data: &[u8]) -> Self {
        PieceHash(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        ObjectId::from_hex(text).map(|id| PieceHash(id.0))
    }
}

impl fmt::Debug for PieceHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PieceHash({})", hex(&self.0))
    }
}

impl fmt::Display for PieceHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// The identity of an object version: the BLAKE3 hash of its manifest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        hex32(text).map(ObjectId)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Decodes exactly 64 hex digits into 32 bytes.
pub(crate) fn hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// The origin's validators for the object this manifest describes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    /// The origin's entity tag, quotes included (`"abc"` or `W/"abc"`).
    pub etag: Option<String>,
    /// Last modification time, seconds since the Unix epoch.
    pub last_modified_unix_s: Option<u64>,
}

/// A decoded, internally consistent manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    layout: PieceLayout,
    hashes: Vec<PieceHash>,
    validators: Validators,
    /// Extensions this version does not understand, kept so re-encoding
    /// gives back the same bytes (and so the same id).
    unknown_extensions: Vec<(u16, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("not a shoal manifest (bad magic)")]
    BadMagic,
    #[error(
        "manifest format version {0} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u16),
    #[error("manifest is truncated: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("manifest has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error(transparent)]
    PieceSize(#[from] PieceSizeError),
    #[error("manifest flags {0:#x} are reserved")]
    ReservedFlags(u8),
    #[error("manifest says {stated} pieces but the object size implies {implied}")]
    PieceCountMismatch { stated: u32, implied: u32 },
    #[error("manifest has {0} extensions (at most {EXTENSION_COUNT_MAX})")]
    TooManyExtensions(u16),
    #[error("manifest extension {tag} is {len} bytes (at most {EXTENSION_LEN_MAX_BYTES})")]
    ExtensionTooLong { tag: u16, len: u32 },
    #[error("manifest extension {0} is required but not understood by this build")]
    UnknownRequiredExtension(u16),
    #[error("manifest extension {0} is malformed")]
    MalformedExtension(u16),
    #[error("manifest extension {0} is out of order or repeated (tags must strictly increase)")]
    ExtensionOrder(u16),
    #[error("manifest has {hashes} hashes for {pieces} pieces")]
    HashCountMismatch { hashes: usize, pieces: u32 },
}

/// A piece did not match its manifest hash.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("piece {index} failed verification: expected {expected}, got {actual} ({len} bytes)")]
pub struct VerifyError {
    pub index: PieceIndex,
    pub expected: PieceHash,
    pub actual: PieceHash,
    pub len: usize,
}

impl Manifest {
    /// Builds a manifest from known piece hashes.
    pub fn new(
        object_size: u64,
        piece_size: PieceSize,
        hashes: Vec<PieceHash>,
        validators: Validators,
    ) -> Result<Self, ManifestError> {
        let layout = PieceLayout::new(object_size, piece_size)?;
        if hashes.len() != layout.piece_count() as usize {
            return Err(ManifestError::HashCountMismatch {
                hashes: hashes.len(),
                pieces: layout.piece_count(),
            });
        }
        if let Some(etag) = &validators.etag {
            if !valid_etag_text(etag.as_bytes()) {
                return Err(ManifestError::MalformedExtension(TAG_ETAG));
            }
        }
        Ok(Self {
            layout,
            hashes,
            validators,
            unknown_extensions: Vec::new(),
        })
    }

    /// Hashes `data` piece by piece on every core.
    pub fn from_data(
        data: &[u8],
        piece_size: PieceSize,
        validators: Validators,
    ) -> Result<Self, ManifestError> {
        let hashes = hash_pieces(data, piece_size);
        Self::new(data.len() as u64, piece_size, hashes, validators)
    }

    pub fn layout(&self) -> PieceLayout {
        self.layout
    }

    pub fn object_size(&self) -> u64 {
        self.layout.object_size()
    }

    pub fn piece_size(&self) -> PieceSize {
        self.layout.piece_size()
    }

    pub fn piece_count(&self) -> u32 {
        self.layout.piece_count()
    }

    pub fn piece_hash(&self, index: PieceIndex) -> Option<PieceHash> {
        self.hashes.get(index.0 as usize).copied()
    }

    pub fn piece_hashes(&self) -> &[PieceHash] {
        &self.hashes
    }

    pub fn validators(&self) -> &Validators {
        &self.validators
    }

    /// Checks that `data` is exactly piece `index`.
    pub fn verify_piece(&self, index: PieceIndex, data: &[u8]) -> Result<(), VerifyError> {
        let expected = self.piece_hash(index).unwrap_or(PieceHash([0; 32]));
        let actual = PieceHash::of(data);
        if self.layout.piece_len(index) == data.len() as u64
            && actual == expected
            && self.piece_hash(index).is_some()
        {
            Ok(())
        } else {
            Err(VerifyError {
                index,
                expected,
                actual,
                len: data.len(),
            })
        }
    }

    /// The id of this manifest: BLAKE3 of its encoding.
    pub fn id(&self) -> ObjectId {
        ObjectId(*blake3::hash(&self.encode()).as_bytes())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.hashes.len() * 32 + 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&self.object_size().to_be_bytes());
        out.push(self.piece_size().log2());
        out.push(0);
        out.extend_from_slice(&self.piece_count().to_be_bytes());
        for hash in &self.hashes {
            out.extend_from_slice(&hash.0);
        }
        let mut extensions: Vec<(u16, Vec<u8>)> = Vec::new();
        if let Some(etag) = &self.validators.etag {
            extensions.push((TAG_ETAG, etag.as_bytes().to_vec()));
        }
        if let Some(lm) = self.validators.last_modified_unix_s {
            extensions.push((TAG_LAST_MODIFIED, lm.to_be_bytes().to_vec()));
        }
        extensions.extend(self.unknown_extensions.iter().cloned());
        // Canonical order (decode insists on it), so one manifest has one
        // encoding and one id.
        extensions.sort_by_key(|(tag, _)| *tag);
        out.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        for (tag, value) in extensions {
            out.extend_from_slice(&tag.to_be_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(&value);
        }
        out
    }

    /// Parses a manifest. Every length is checked before anything is
    /// allocated, so hostile input costs at most its own size.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let mut reader = Reader { bytes, offset: 0 };
        if reader.take(8)? != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let version = reader.u16()?;
        if version != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion(version));
        }
        let object_size = reader.u64()?;
        let piece_size = PieceSize::from_log2(reader.u8()?)?;
        let flags = reader.u8()?;
        if flags != 0 {
            return Err(ManifestError::ReservedFlags(flags));
        }
        let layout = PieceLayout::new(object_size, piece_size)?;
        let stated = reader.u32()?;
        if stated != layout.piece_count() {
            return Err(ManifestError::PieceCountMismatch {
                stated,
                implied: layout.piece_count(),
            });
        }
        let hash_bytes = reader.take(stated as usize * 32)?;
        let hashes = hash_bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                PieceHash(h)
            })
            .collect();
        let extension_count = reader.u16()?;
        if extension_count > EXTENSION_COUNT_MAX {
            return Err(ManifestError::TooManyExtensions(extension_count));
        }
        let mut validators = Validators::default();
        let mut unknown_extensions = Vec::new();
        let mut previous_tag: Option<u16> = None;
        for _ in 0..extension_count {
            let tag = reader.u16()?;
            let len = reader.u32()?;
            if len > EXTENSION_LEN_MAX_BYTES {
                return Err(ManifestError::ExtensionTooLong { tag, len });
            }
            let value = reader.take(len as usize)?;
            if previous_tag.is_some_and(|previous| tag <= previous) {
                return Err(ManifestError::ExtensionOrder(tag));
            }
            previous_tag = Some(tag);
            match tag {
                TAG_ETAG => {
                    if !valid_etag_text(value) {
                        return Err(ManifestError::MalformedExtension(tag));
                    }
                    // valid_etag_text guarantees ASCII.
                    validators.etag = Some(String::from_utf8_lossy(value).into_owned());
                }
                TAG_LAST_MODIFIED => {
                    let array: [u8; 8] = value
                        .try_into()
                        .map_err(|_| ManifestError::MalformedExtension(tag))?;
                    validators.last_modified_unix_s = Some(u64::from_be_bytes(array));
                }
                t if t & TAG_MUST_UNDERSTAND != 0 => {
                    return Err(ManifestError::UnknownRequiredExtension(t))
                }
                t => unknown_extensions.push((t, value.to_vec())),
            }
        }
        if reader.offset != bytes.len() {
            return Err(ManifestError::TrailingBytes(bytes.len() - reader.offset));
        }
        Ok(Self {
            layout,
            hashes,
            validators,
            unknown_extensions,
        })
    }
}

/// An entity tag as it appears in a header: visible ASCII, bounded length.
fn valid_etag_text(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= ETAG_LEN_MAX_BYTES
        && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// BLAKE3 of every piece of `data`, computed in parallel across pieces.
pub fn hash_pieces(data: &[u8], piece_size: PieceSize) -> Vec<PieceHash> {
    data.par_chunks(piece_size.bytes() as usize)
        .map(PieceHash::of)
        .collect()
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], ManifestError> {
        let available = self.bytes.len() - self.offset;
        if len > available {
            return Err(ManifestError::Truncated {
                offset: self.offset,
                needed: len - available,
            });
        }
        let slice = &self.bytes[self.offset..self.offset + len];
        self.offset += len;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, ManifestError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ManifestError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ManifestError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, ManifestError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(size: usize) -> Manifest {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let validators = Validators {
            etag: Some("\"abc\"".into()),
            last_modified_unix_s: Some(1_700_000_000),
        };
        Manifest::from_data(&data, PieceSize::MIN, validators).unwrap()
    }

    #[test]
    fn round_trips_edge_sizes() {
        let p = PieceSize::MIN.bytes() as usize;
        for size in [0, 1, p - 1, p, p + 1, 3 * p] {
            let m = sample(size);
            let decoded = Manifest::decode(&m.encode()).unwrap();
            assert_eq!(decoded, m);
            assert_eq!(decoded.id(), m.id());
        }
    }

    #[test]
    fn verifies_pieces() {
        let p = PieceSize::MIN.bytes() as usize;
        let data: Vec<u8> = (0..p + 10).map(|i| i as u8).collect();
        let m = Manifest::from_data(&data, PieceSize::MIN, Validators::default()).unwrap();
        assert!(m.verify_piece(PieceIndex(0), &data[..p]).is_ok());
        assert!(m.verify_piece(PieceIndex(1), &data[p..]).is_ok());
        assert!(m.verify_piece(PieceIndex(1), &data[p..p + 9]).is_err());
        let mut bad = data[..p].to_vec();
        bad[17] ^= 1;
        assert!(m.verify_piece(PieceIndex(0), &bad).is_err());
        assert!(m.verify_piece(PieceIndex(2), &[]).is_err());
    }

    #[test]
    fn unknown_optional_extension_is_kept_required_is_refused() {
        let m = sample(10);
        let mut bytes = m.encode();
        let count_at = bytes.len() - (2 + 4 + 5) - (2 + 4 + 8) - 2;
        bytes[count_at + 1] += 1;
        bytes.extend_from_slice(&7u16.to_be_bytes());
        bytes.extend_from_slice(&3u32.to_be_bytes());
        bytes.extend_from_slice(b"xyz");
        let decoded = Manifest::decode(&bytes).unwrap();
        assert_eq!(decoded.encode(), bytes);
        let len = bytes.len();
        bytes[len - 9] |= 0x80;
        assert_eq!(
            Manifest::decode(&bytes),
            Err(ManifestError::UnknownRequiredExtension(0x8007))
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(
            Manifest::decode(b""),
            Err(ManifestError::Truncated {
                offset: 0,
                needed: 8
            })
        );
        assert_eq!(Manifest::decode(b"NOTSHOAL"), Err(ManifestError::BadMagic));
        let mut bytes = sample(1000).encode();
        bytes.push(0);
        assert_eq!(
            Manifest::decode(&bytes),
            Err(ManifestError::TrailingBytes(1))
        );
        // A huge stated piece count with a tiny body must not allocate.
        let mut huge = Vec::new();
        huge.extend_from_slice(MAGIC);
        huge.extend_from_slice(&1u16.to_be_bytes());
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        huge.push(22);
        huge.push(0);
        huge.extend_from_slice(&(1u32 << 18).to_be_bytes());
        assert!(matches!(
            Manifest::decode(&huge),
            Err(ManifestError::Truncated { .. })
        ));
    }

    #[test]
    fn object_id_hex_round_trip() {
        let id = sample(5).id();
        assert_eq!(ObjectId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ObjectId::from_hex("zz"), None);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::decode(&bytes);
        }

        #[test]
        fn decode_of_mutated_manifest_never_panics(flip in 0usize..2000, bit in 0u8..8) {
            let mut bytes = sample(3 * 262_144 + 5).encode();
            let at = flip % bytes.len();
            bytes[at] ^= 1 << bit;
            let _ = Manifest::decode(&bytes);
        }
    }
}
