//! The key a swarm is found by: what the handshake's 20-byte `info_hash`
//! carries and what peers announce to the tracker.
//!
//! A shoal swarm is one object version (its [`ObjectId`], which already
//! names the exact bytes), so its key is derived from the id: the first 20
//! bytes of a domain-separated BLAKE3 hash. Stock BitTorrent clients know
//! a torrent by its v1 info-hash (SHA-1 of a bencoded info dictionary, with
//! SHA-1 piece hashes) instead; when a manifest carries those, the same
//! swarm gets a second key of the other kind, and the tracker files both
//! under the one object. The kind is part of the key so the two can never
//! be confused.

use shoal_core::ObjectId;

/// Bytes of a swarm key on the wire (the handshake's `info_hash`).
pub const SWARM_KEY_BYTES: usize = 20;

/// How a swarm is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SwarmKey {
    /// Derived from a shoal object id ([`SwarmKey::for_object`]).
    Shoal([u8; SWARM_KEY_BYTES]),
    /// A BitTorrent v1 info-hash (for stock clients; not built yet).
    V1InfoHash([u8; SWARM_KEY_BYTES]),
}

impl SwarmKey {
    /// The shoal key of `object`'s swarm.
    pub fn for_object(object: &ObjectId) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"shoal swarm key v1\0");
        hasher.update(&object.0);
        let mut key = [0u8; SWARM_KEY_BYTES];
        key.copy_from_slice(&hasher.finalize().as_bytes()[..SWARM_KEY_BYTES]);
        SwarmKey::Shoal(key)
    }

    /// The 20 bytes sent on the wire.
    pub fn wire_bytes(&self) -> [u8; SWARM_KEY_BYTES] {
        match self {
            SwarmKey::Shoal(bytes) | SwarmKey::V1InfoHash(bytes) => *bytes,
        }
    }

    /// Lower-case hex of the wire bytes (logs, JSON).
    pub fn to_hex(&self) -> String {
        self.wire_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_object_has_its_own_stable_key() {
        let a = SwarmKey::for_object(&ObjectId([1; 32]));
        let b = SwarmKey::for_object(&ObjectId([2; 32]));
        assert_ne!(a, b);
        assert_eq!(a, SwarmKey::for_object(&ObjectId([1; 32])));
        assert_eq!(a.to_hex().len(), 40);
        // Same bytes, different kinds: different keys.
        assert_ne!(a, SwarmKey::V1InfoHash(a.wire_bytes()));
    }
}
