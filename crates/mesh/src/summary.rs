//! A compact, fixed-size summary of the objects a cache holds: a Bloom
//! filter gossiped as the `objs` key.
//!
//! 8,192 bits (1 KiB) with k = 7 hash functions, over at most
//! [`SUMMARY_OBJECTS_MAX`] object ids (those with the most bytes held): about
//! 0.7 % false positives when full. A false positive costs one piece-set
//! request that answers "none"; a false negative cannot happen for the ids
//! that were put in. Object ids are already BLAKE3 hashes, so the k indices
//! come from double hashing of the id's bytes, no rehash.
//!
//! Wire form: `b1.<k>.<base64 of the 1,024 bytes>` (a gossip value is a
//! UTF-8 string).

use base64::Engine;
use shoal_core::ObjectId;

/// Bits in the filter.
pub const SUMMARY_BITS: usize = 8192;
/// Hash functions per id.
pub const SUMMARY_HASHES: u32 = 7;
/// Most object ids put in one summary (more raise the false-positive rate).
pub const SUMMARY_OBJECTS_MAX: usize = 800;
/// Longest wire form accepted (the exact length plus a little slack).
pub const SUMMARY_WIRE_LEN_MAX_BYTES: usize = 1500;

const WORDS: usize = SUMMARY_BITS / 64;

/// Which objects a cache (probably) holds.
#[derive(Clone, PartialEq, Eq)]
pub struct ObjectSummary {
    words: Box<[u64; WORDS]>,
}

impl std::fmt::Debug for ObjectSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set: u32 = self.words.iter().map(|w| w.count_ones()).sum();
        write!(f, "ObjectSummary({set} bits set)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SummaryError {
    #[error("summary is longer than {SUMMARY_WIRE_LEN_MAX_BYTES} bytes")]
    TooLong,
    #[error("summary version is not supported")]
    UnsupportedVersion,
    #[error("summary uses {0} hash functions, expected {SUMMARY_HASHES}")]
    HashCount(String),
    #[error("summary bits are not valid base64 of {} bytes", SUMMARY_BITS / 8)]
    BadBits,
}

impl Default for ObjectSummary {
    fn default() -> Self {
        Self {
            words: Box::new([0; WORDS]),
        }
    }
}

fn bit_indices(id: &ObjectId) -> impl Iterator<Item = usize> {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&id.0[..8]);
    b.copy_from_slice(&id.0[8..16]);
    let h1 = u64::from_le_bytes(a);
    let h2 = u64::from_le_bytes(b) | 1;
    (0..SUMMARY_HASHES as u64)
        .map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % SUMMARY_BITS as u64) as usize)
}

impl ObjectSummary {
    /// A summary of `ids` (only the first [`SUMMARY_OBJECTS_MAX`] are taken:
    /// pass them most valuable first).
    pub fn build<'a>(ids: impl IntoIterator<Item = &'a ObjectId>) -> Self {
        let mut summary = Self::default();
        for id in ids.into_iter().take(SUMMARY_OBJECTS_MAX) {
            summary.insert(id);
        }
        summary
    }

    pub fn insert(&mut self, id: &ObjectId) {
        for bit in bit_indices(id) {
            self.words[bit / 64] |= 1 << (bit % 64);
        }
    }

    /// True if `id` was (probably) put in; false means certainly not.
    pub fn contains(&self, id: &ObjectId) -> bool {
        bit_indices(id).all(|bit| self.words[bit / 64] & (1 << (bit % 64)) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(SUMMARY_BITS / 8);
        for word in self.words.iter() {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        format!(
            "b1.{SUMMARY_HASHES}.{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
        )
    }

    pub fn decode(text: &str) -> Result<Self, SummaryError> {
        if text.len() > SUMMARY_WIRE_LEN_MAX_BYTES {
            return Err(SummaryError::TooLong);
        }
        let rest = text
            .strip_prefix("b1.")
            .ok_or(SummaryError::UnsupportedVersion)?;
        let (k, bits) = rest
            .split_once('.')
            .ok_or_else(|| SummaryError::HashCount(String::new()))?;
        if k != SUMMARY_HASHES.to_string() {
            return Err(SummaryError::HashCount(k.chars().take(8).collect()));
        }
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(bits)
            .map_err(|_| SummaryError::BadBits)?;
        if bytes.len() != SUMMARY_BITS / 8 {
            return Err(SummaryError::BadBits);
        }
        let mut summary = Self::default();
        for (word, chunk) in summary.words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            *word = u64::from_le_bytes(w);
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u64) -> ObjectId {
        ObjectId(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    #[test]
    fn false_positive_rate_when_full_is_below_one_percent() {
        let ids: Vec<ObjectId> = (0..SUMMARY_OBJECTS_MAX as u64).map(id).collect();
        let summary = ObjectSummary::build(&ids);
        let false_positives = (1_000_000..1_020_000u64)
            .filter(|n| summary.contains(&id(*n)))
            .count();
        assert!(false_positives < 200, "{false_positives} of 20000");
    }

    #[test]
    fn wire_form_fits_a_gossip_budget() {
        let ids: Vec<ObjectId> = (0..2000u64).map(id).collect();
        let text = ObjectSummary::build(&ids).encode();
        assert!(text.len() <= SUMMARY_WIRE_LEN_MAX_BYTES, "{}", text.len());
    }

    #[test]
    fn bad_wire_forms_are_errors() {
        assert_eq!(
            ObjectSummary::decode("b2.7.AAAA"),
            Err(SummaryError::UnsupportedVersion)
        );
        assert!(matches!(
            ObjectSummary::decode("b1.9.AAAA"),
            Err(SummaryError::HashCount(_))
        ));
        assert_eq!(
            ObjectSummary::decode("b1.7.AAAA"),
            Err(SummaryError::BadBits)
        );
        assert_eq!(
            ObjectSummary::decode(&"x".repeat(5000)),
            Err(SummaryError::TooLong)
        );
    }

    proptest! {
        #[test]
        fn members_are_always_found_and_roundtrip(ns in proptest::collection::vec(any::<u64>(), 0..900)) {
            let ids: Vec<ObjectId> = ns.iter().map(|n| id(*n)).collect();
            let summary = ObjectSummary::build(&ids);
            for i in ids.iter().take(SUMMARY_OBJECTS_MAX) {
                prop_assert!(summary.contains(i));
            }
            let decoded = ObjectSummary::decode(&summary.encode()).unwrap();
            prop_assert_eq!(decoded, summary);
        }

        #[test]
        fn decode_never_panics(text in ".{0,1600}") {
            let _ = ObjectSummary::decode(&text);
        }
    }
}
