//! The BEP 10 extension handshake (extended message 0) as a typed value.
//!
//! Both ends send a bencoded dictionary: `m` maps extension names to the
//! message ids the sender wants them on (0 means "not supported"), and
//! optional keys say who it is (`v`), where it listens (`p`), how many
//! requests it queues (`reqq`) and what address it saw us at (`yourip`).
//! Unknown keys are ignored, as BEP 10 asks; known keys with a wrong type
//! or range are the sender's error.

use crate::bencode::{BencodeError, Value};
use std::collections::BTreeMap;

/// Extension names a handshake may list, at most.
pub const EXTENSIONS_MAX: usize = 64;
/// Longest extension name or client name kept.
pub const NAME_BYTES_MAX: usize = 64;

/// What a peer says about itself in its extension handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtensionHandshake {
    /// Extension name → the id the sender wants it on.
    pub extensions: BTreeMap<String, u8>,
    /// `v`: the client's name and version.
    pub client: Option<String>,
    /// `p`: the port it accepts connections on.
    pub listen_port: Option<u16>,
    /// `reqq`: requests it queues without dropping.
    pub request_queue: Option<u32>,
    /// `yourip`: our address as the sender sees it (4 or 16 bytes).
    pub your_ip: Option<std::net::IpAddr>,
}

/// Why an extension handshake is refused (the sender's fault).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    #[error("extension handshake is not bencoded: {0}")]
    Bencode(#[from] BencodeError),
    #[error("extension handshake is not a dictionary")]
    NotADict,
    #[error("extension handshake key `{0}` has a wrong type or value")]
    BadField(&'static str),
    #[error("extension handshake lists more than {EXTENSIONS_MAX} extensions")]
    TooManyExtensions,
}

impl ExtensionHandshake {
    pub fn decode(payload: &[u8]) -> Result<Self, ExtensionError> {
        let value = Value::decode(payload)?;
        if !matches!(value, Value::Dict(_)) {
            return Err(ExtensionError::NotADict);
        }
        let mut handshake = ExtensionHandshake::default();
        if let Some(m) = value.get("m") {
            let Value::Dict(entries) = m else {
                return Err(ExtensionError::BadField("m"));
            };
            if entries.len() > EXTENSIONS_MAX {
                return Err(ExtensionError::TooManyExtensions);
            }
            for (name, id) in entries {
                let id = id
                    .as_int()
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or(ExtensionError::BadField("m"))?;
                let name = std::str::from_utf8(name)
                    .ok()
                    .filter(|n| n.len() <= NAME_BYTES_MAX)
                    .ok_or(ExtensionError::BadField("m"))?;
                // 0: the sender does not (or no longer does) support it.
                if id != 0 {
                    handshake.extensions.insert(name.to_string(), id);
                }
            }
        }
        if let Some(v) = value.get("v") {
            let name = v.as_bytes().ok_or(ExtensionError::BadField("v"))?;
            // Kept as text for logs: at most NAME_BYTES_MAX bytes of it,
            // cut at a character boundary.
            let mut name = String::from_utf8_lossy(name).into_owned();
            let mut end = name.len().min(NAME_BYTES_MAX);
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name.truncate(end);
            handshake.client = Some(name);
        }
        if let Some(p) = value.get("p") {
            let port = p
                .as_int()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|port| *port != 0)
                .ok_or(ExtensionError::BadField("p"))?;
            handshake.listen_port = Some(port);
        }
        if let Some(reqq) = value.get("reqq") {
            let queue = reqq
                .as_int()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(ExtensionError::BadField("reqq"))?;
            handshake.request_queue = Some(queue);
        }
        if let Some(yourip) = value.get("yourip") {
            let bytes = yourip
                .as_bytes()
                .ok_or(ExtensionError::BadField("yourip"))?;
            handshake.your_ip = Some(match bytes.len() {
                4 => std::net::IpAddr::from(
                    <[u8; 4]>::try_from(bytes).map_err(|_| ExtensionError::BadField("yourip"))?,
                ),
                16 => std::net::IpAddr::from(
                    <[u8; 16]>::try_from(bytes).map_err(|_| ExtensionError::BadField("yourip"))?,
                ),
                _ => return Err(ExtensionError::BadField("yourip")),
            });
        }
        Ok(handshake)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut dict = BTreeMap::new();
        let m = self
            .extensions
            .iter()
            .map(|(name, id)| (name.as_bytes().to_vec(), Value::Int(i64::from(*id))))
            .collect();
        dict.insert(b"m".to_vec(), Value::Dict(m));
        if let Some(client) = &self.client {
            dict.insert(b"v".to_vec(), Value::Bytes(client.as_bytes().to_vec()));
        }
        if let Some(port) = self.listen_port {
            dict.insert(b"p".to_vec(), Value::Int(i64::from(port)));
        }
        if let Some(queue) = self.request_queue {
            dict.insert(b"reqq".to_vec(), Value::Int(i64::from(queue)));
        }
        if let Some(ip) = self.your_ip {
            let bytes = match ip {
                std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            dict.insert(b"yourip".to_vec(), Value::Bytes(bytes));
        }
        Value::Dict(dict).encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stock_clients_handshake_is_read_and_ours_round_trips() {
        // As libtorrent sends it (keys sorted; unknown ones ignored).
        let theirs = b"d1:md11:lt_donthavei7e10:share_modei8e11:upload_onlyi3e12:ut_holepunchi4e11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei0e1:pi6881e4:reqqi500e11:upload_onlyi0e1:v17:libtorrent 2.0.11e";
        let parsed = ExtensionHandshake::decode(theirs).unwrap();
        assert_eq!(parsed.extensions.get("ut_pex"), Some(&1));
        assert_eq!(parsed.listen_port, Some(6881));
        assert_eq!(parsed.request_queue, Some(500));
        assert_eq!(parsed.client.as_deref(), Some("libtorrent 2.0.11"));
        let ours = ExtensionHandshake {
            extensions: [("shoal_have".to_string(), 3)].into(),
            client: Some("shoal 0.1".into()),
            listen_port: Some(40_000),
            request_queue: Some(250),
            your_ip: Some("127.0.0.7".parse().unwrap()),
        };
        assert_eq!(ExtensionHandshake::decode(&ours.encode()), Ok(ours));
    }

    #[test]
    fn wrong_types_and_ranges_are_the_senders_error() {
        for (bad, field) in [
            (&b"d1:mi1ee"[..], "m"),
            (b"d1:md1:xi300eee", "m"),
            (b"d1:pi70000ee", "p"),
            (b"d1:pi0ee", "p"),
            (b"d4:reqqi-1ee", "reqq"),
            (b"d6:yourip3:abce", "yourip"),
        ] {
            assert_eq!(
                ExtensionHandshake::decode(bad),
                Err(ExtensionError::BadField(field)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            ExtensionHandshake::decode(b"li1ee"),
            Err(ExtensionError::NotADict)
        );
        // A client name is kept as at most 64 bytes of text.
        let mut long = b"d1:v100:".to_vec();
        long.extend_from_slice(&[0xff; 100]);
        long.push(b'e');
        let client = ExtensionHandshake::decode(&long).unwrap().client.unwrap();
        assert!(client.len() <= NAME_BYTES_MAX && client.starts_with('\u{fffd}'));
        // Id 0 means "not supported": left out.
        let off = ExtensionHandshake::decode(b"d1:md6:ut_pexi0eee").unwrap();
        assert!(off.extensions.is_empty());
    }
}
