//! The BitTorrent peer wire protocol (BEP 3), with the fast extension
//! (BEP 6) and the extension protocol's message (BEP 10), as a bounded
//! streaming codec: bytes in, typed [`Message`]s out.
//!
//! Every length is checked before anything is allocated: a message longer
//! than the longest this swarm can need is refused, a block is at most
//! [`BLOCK_BYTES`], a piece index or a block outside the object is the
//! sender's error, and a bitfield has exactly the object's length with its
//! spare bits clear. Fast-extension messages are accepted only when both
//! ends announced the extension (BEP 6 says to drop a peer that sends them
//! otherwise). Message ids nobody here knows are passed up as
//! [`Message::Unknown`] (within the length limit), as BEP 3 allows for
//! extensions.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use shoal_core::{PieceIndex, PieceLayout};

/// The protocol string of the handshake.
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
/// Bytes of a handshake: length byte, protocol, reserved, info-hash, peer id.
pub const HANDSHAKE_BYTES: usize = 1 + 19 + 8 + 20 + 20;
/// A block, the unit of requests: 16 KiB (libtorrent refuses larger
/// requests, so no peer asks for more).
pub const BLOCK_BYTES: u32 = 16 * 1024;
/// Longest BEP 10 payload accepted (the handshake dictionary and later
/// messages; stock clients send a few hundred bytes).
pub const EXTENDED_PAYLOAD_BYTES_MAX: usize = 64 * 1024;

/// What the reserved bytes of a handshake announce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// BEP 6, the fast extension (reserved byte 7, bit 0x04).
    pub fast: bool,
    /// BEP 10, the extension protocol (reserved byte 5, bit 0x10).
    pub extended: bool,
}

impl Extensions {
    /// What both ends support (what a connection may use).
    pub fn common(self, other: Extensions) -> Extensions {
        Extensions {
            fast: self.fast && other.fast,
            extended: self.extended && other.extended,
        }
    }

    fn to_reserved(self) -> [u8; 8] {
        let mut reserved = [0u8; 8];
        if self.extended {
            reserved[5] |= 0x10;
        }
        if self.fast {
            reserved[7] |= 0x04;
        }
        reserved
    }

    fn from_reserved(reserved: &[u8]) -> Self {
        Extensions {
            extended: reserved.get(5).is_some_and(|b| b & 0x10 != 0),
            fast: reserved.get(7).is_some_and(|b| b & 0x04 != 0),
        }
    }
}

/// The first 68 bytes each side sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub extensions: Extensions,
    /// The swarm's key ([`crate::SwarmKey::wire_bytes`]).
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
}

impl Handshake {
    pub fn encode(&self) -> [u8; HANDSHAKE_BYTES] {
        let mut out = [0u8; HANDSHAKE_BYTES];
        out[0] = PROTOCOL.len() as u8;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.extensions.to_reserved());
        out[28..48].copy_from_slice(&self.info_hash);
        out[48..68].copy_from_slice(&self.peer_id);
        out
    }

    /// Decodes exactly [`HANDSHAKE_BYTES`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() != HANDSHAKE_BYTES {
            return Err(WireError::Handshake("not 68 bytes"));
        }
        if bytes[0] as usize != PROTOCOL.len() || &bytes[1..20] != PROTOCOL {
            return Err(WireError::Handshake("not the BitTorrent protocol"));
        }
        let mut info_hash = [0u8; 20];
        info_hash.copy_from_slice(&bytes[28..48]);
        let mut peer_id = [0u8; 20];
        peer_id.copy_from_slice(&bytes[48..68]);
        Ok(Handshake {
            extensions: Extensions::from_reserved(&bytes[20..28]),
            info_hash,
            peer_id,
        })
    }
}

/// A block of a piece: `length` bytes from `begin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockRef {
    pub piece: u32,
    pub begin: u32,
    pub length: u32,
}

/// A message after the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    /// The pieces the sender holds, piece 0 in the high bit of byte 0
    /// (checked: the object's length, spare bits clear).
    Bitfield(Bytes),
    Request(BlockRef),
    Piece {
        piece: u32,
        begin: u32,
        data: Bytes,
    },
    Cancel(BlockRef),
    /// A DHT port (BEP 5); shoal runs no DHT and ignores it.
    Port(u16),
    /// BEP 6: a piece worth asking for.
    Suggest(u32),
    /// BEP 6: instead of a bitfield, every piece.
    HaveAll,
    /// BEP 6: instead of a bitfield, no piece.
    HaveNone,
    /// BEP 6: a request that will not be served.
    Reject(BlockRef),
    /// BEP 6: a piece the sender serves even while choking us.
    AllowedFast(u32),
    /// BEP 10: an extension message (`id` 0 is the extension handshake).
    Extended {
        id: u8,
        payload: Bytes,
    },
    /// A message id this codec does not know (skipped).
    Unknown {
        id: u8,
    },
}

mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    pub const PORT: u8 = 9;
    pub const SUGGEST: u8 = 0x0D;
    pub const HAVE_ALL: u8 = 0x0E;
    pub const HAVE_NONE: u8 = 0x0F;
    pub const REJECT: u8 = 0x10;
    pub const ALLOWED_FAST: u8 = 0x11;
    pub const EXTENDED: u8 = 20;
}

/// What a peer sent that this codec refuses: always the sender's fault,
/// and the connection is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("peer sent a bad handshake: {0}")]
    Handshake(&'static str),
    #[error("peer sent a {length}-byte message (at most {max} in this swarm)")]
    Oversized { length: u32, max: u32 },
    #[error("peer sent message {id} with a {length}-byte body (expected {expected})")]
    BadLength { id: u8, length: u32, expected: u32 },
    #[error("peer named piece {piece} of a {piece_count}-piece object")]
    NoSuchPiece { piece: u32, piece_count: u32 },
    #[error("peer named bytes {begin}..+{length} of piece {piece}, which has {piece_bytes}")]
    OutsidePiece {
        piece: u32,
        begin: u32,
        length: u32,
        piece_bytes: u64,
    },
    #[error("peer asked for a {length}-byte block (blocks are 1..={BLOCK_BYTES} bytes)")]
    BadBlockLength { length: u32 },
    #[error("peer sent a bitfield with bits set past the last piece")]
    BitfieldSpareBits,
    #[error("peer sent fast-extension message {0} without both ends announcing it")]
    FastNotNegotiated(u8),
    #[error("peer sent an extension message without both ends announcing BEP 10")]
    ExtendedNotNegotiated,
}

/// What one connection's messages are checked against.
#[derive(Clone, Copy, Debug)]
pub struct WireLimits {
    pub layout: PieceLayout,
    /// The extensions both ends announced.
    pub extensions: Extensions,
}

impl WireLimits {
    fn bitfield_bytes(&self) -> usize {
        (self.layout.piece_count() as usize).div_ceil(8)
    }

    /// The longest message body (after the length prefix) this swarm needs.
    pub fn message_bytes_max(&self) -> u32 {
        let piece = 1 + 8 + BLOCK_BYTES as usize;
        let bitfield = 1 + self.bitfield_bytes();
        let extended = 2 + EXTENDED_PAYLOAD_BYTES_MAX;
        piece.max(bitfield).max(extended) as u32
    }

    fn check_piece(&self, piece: u32) -> Result<(), WireError> {
        let piece_count = self.layout.piece_count();
        if piece >= piece_count {
            return Err(WireError::NoSuchPiece { piece, piece_count });
        }
        Ok(())
    }

    fn check_span(&self, piece: u32, begin: u32, length: u32) -> Result<(), WireError> {
        self.check_piece(piece)?;
        let piece_bytes = self.layout.piece_len(PieceIndex(piece));
        if u64::from(begin) + u64::from(length) > piece_bytes {
            return Err(WireError::OutsidePiece {
                piece,
                begin,
                length,
                piece_bytes,
            });
        }
        Ok(())
    }

    fn check_block(&self, block: BlockRef) -> Result<BlockRef, WireError> {
        if block.length == 0 || block.length > BLOCK_BYTES {
            return Err(WireError::BadBlockLength {
                length: block.length,
            });
        }
        self.check_span(block.piece, block.begin, block.length)?;
        Ok(block)
    }
}

impl Message {
    /// Appends the message, length prefix included.
    pub fn encode(&self, out: &mut BytesMut) {
        let body = |out: &mut BytesMut, id: u8, len: usize| {
            out.put_u32(1 + len as u32);
            out.put_u8(id);
        };
        let block = |out: &mut BytesMut, id: u8, b: &BlockRef| {
            body(out, id, 12);
            out.put_u32(b.piece);
            out.put_u32(b.begin);
            out.put_u32(b.length);
        };
        match self {
            Message::KeepAlive => out.put_u32(0),
            Message::Choke => body(out, id::CHOKE, 0),
            Message::Unchoke => body(out, id::UNCHOKE, 0),
            Message::Interested => body(out, id::INTERESTED, 0),
            Message::NotInterested => body(out, id::NOT_INTERESTED, 0),
            Message::Have(piece) => {
                body(out, id::HAVE, 4);
                out.put_u32(*piece);
            }
            Message::Bitfield(bits) => {
                body(out, id::BITFIELD, bits.len());
                out.put_slice(bits);
            }
            Message::Request(b) => block(out, id::REQUEST, b),
            Message::Piece { piece, begin, data } => {
                body(out, id::PIECE, 8 + data.len());
                out.put_u32(*piece);
                out.put_u32(*begin);
                out.put_slice(data);
            }
            Message::Cancel(b) => block(out, id::CANCEL, b),
            Message::Port(port) => {
                body(out, id::PORT, 2);
                out.put_u16(*port);
            }
            Message::Suggest(piece) => {
                body(out, id::SUGGEST, 4);
                out.put_u32(*piece);
            }
            Message::HaveAll => body(out, id::HAVE_ALL, 0),
            Message::HaveNone => body(out, id::HAVE_NONE, 0),
            Message::Reject(b) => block(out, id::REJECT, b),
            Message::AllowedFast(piece) => {
                body(out, id::ALLOWED_FAST, 4);
                out.put_u32(*piece);
            }
            Message::Extended { id: ext, payload } => {
                body(out, id::EXTENDED, 1 + payload.len());
                out.put_u8(*ext);
                out.put_slice(payload);
            }
            Message::Unknown { id } => body(out, *id, 0),
        }
    }
}

/// A connection's incoming bytes: the handshake, then messages.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: BytesMut,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes as they came off the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The peer's handshake once all of it is here.
    pub fn handshake(&mut self) -> Result<Option<Handshake>, WireError> {
        // The protocol string is checked as soon as it is here, so a
        // stranger speaking something else is dropped without waiting.
        let prefix = self.buffer.len().min(20);
        let expected = [&[PROTOCOL.len() as u8][..], &PROTOCOL[..]].concat();
        if self.buffer[..prefix] != expected[..prefix] {
            return Err(WireError::Handshake("not the BitTorrent protocol"));
        }
        if self.buffer.len() < HANDSHAKE_BYTES {
            return Ok(None);
        }
        let bytes = self.buffer.split_to(HANDSHAKE_BYTES);
        Handshake::decode(&bytes).map(Some)
    }

    /// The next whole message, checked against `limits`.
    pub fn message(&mut self, limits: &WireLimits) -> Result<Option<Message>, WireError> {
        let Some(prefix) = self.buffer.get(..4) else {
            return Ok(None);
        };
        let length = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let max = limits.message_bytes_max();
        if length > max {
            return Err(WireError::Oversized { length, max });
        }
        if self.buffer.len() < 4 + length as usize {
            // Room for the rest, once (the length is bounded above).
            self.buffer.reserve(4 + length as usize - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(4);
        let body = self.buffer.split_to(length as usize).freeze();
        decode_body(body, limits).map(Some)
    }
}

fn decode_body(mut body: Bytes, limits: &WireLimits) -> Result<Message, WireError> {
    if body.is_empty() {
        return Ok(Message::KeepAlive);
    }
    let length = body.len() as u32;
    let message_id = body.get_u8();
    let exact = |expected: u32| {
        if length == expected {
            Ok(())
        } else {
            Err(WireError::BadLength {
                id: message_id,
                length,
                expected,
            })
        }
    };
    let fast = |message_id: u8| {
        if limits.extensions.fast {
            Ok(())
        } else {
            Err(WireError::FastNotNegotiated(message_id))
        }
    };
    let block = |body: &mut Bytes| BlockRef {
        piece: body.get_u32(),
        begin: body.get_u32(),
        length: body.get_u32(),
    };
    Ok(match message_id {
        id::CHOKE => exact(1).map(|_| Message::Choke)?,
        id::UNCHOKE => exact(1).map(|_| Message::Unchoke)?,
        id::INTERESTED => exact(1).map(|_| Message::Interested)?,
        id::NOT_INTERESTED => exact(1).map(|_| Message::NotInterested)?,
        id::HAVE => {
            exact(5)?;
            let piece = body.get_u32();
            limits.check_piece(piece)?;
            Message::Have(piece)
        }
        id::BITFIELD => {
            exact(1 + limits.bitfield_bytes() as u32)?;
            let spare = (limits.bitfield_bytes() * 8) as u32 - limits.layout.piece_count();
            let last = body.last().copied().unwrap_or(0);
            if spare > 0 && last & ((1u8 << spare) - 1) != 0 {
                return Err(WireError::BitfieldSpareBits);
            }
            Message::Bitfield(body)
        }
        id::REQUEST => {
            exact(13)?;
            Message::Request(limits.check_block(block(&mut body))?)
        }
        id::PIECE => {
            if !(10..=9 + BLOCK_BYTES).contains(&length) {
                return Err(WireError::BadLength {
                    id: message_id,
                    length,
                    expected: 9 + BLOCK_BYTES,
                });
            }
            let piece = body.get_u32();
            let begin = body.get_u32();
            limits.check_span(piece, begin, body.len() as u32)?;
            Message::Piece {
                piece,
                begin,
                data: body,
            }
        }
        id::CANCEL => {
            exact(13)?;
            Message::Cancel(limits.check_block(block(&mut body))?)
        }
        id::PORT => {
            exact(3)?;
            Message::Port(body.get_u16())
        }
        id::SUGGEST | id::ALLOWED_FAST => {
            fast(message_id)?;
            exact(5)?;
            let piece = body.get_u32();
            limits.check_piece(piece)?;
            if message_id == id::SUGGEST {
                Message::Suggest(piece)
            } else {
                Message::AllowedFast(piece)
            }
        }
        id::HAVE_ALL | id::HAVE_NONE => {
            fast(message_id)?;
            exact(1)?;
            if message_id == id::HAVE_ALL {
                Message::HaveAll
            } else {
                Message::HaveNone
            }
        }
        id::REJECT => {
            fast(message_id)?;
            exact(13)?;
            Message::Reject(limits.check_block(block(&mut body))?)
        }
        id::EXTENDED => {
            if !limits.extensions.extended {
                return Err(WireError::ExtendedNotNegotiated);
            }
            if body.is_empty() {
                return Err(WireError::BadLength {
                    id: message_id,
                    length,
                    expected: 2,
                });
            }
            let ext = body.get_u8();
            Message::Extended {
                id: ext,
                payload: body,
            }
        }
        other => Message::Unknown { id: other },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shoal_core::PieceSize;

    /// 10 pieces of 256 KiB, the last one 100 KiB.
    fn limits(fast: bool) -> WireLimits {
        let size = 9 * (256 << 10) + (100 << 10);
        WireLimits {
            layout: PieceLayout::new(size, PieceSize::for_object_size(size)).unwrap(),
            extensions: Extensions {
                fast,
                extended: true,
            },
        }
    }

    fn decode_all(bytes: &[u8], limits: &WireLimits) -> Result<Vec<Message>, WireError> {
        let mut decoder = Decoder::new();
        decoder.feed(bytes);
        let mut out = Vec::new();
        while let Some(message) = decoder.message(limits)? {
            out.push(message);
        }
        Ok(out)
    }

    #[test]
    fn a_handshake_round_trips_and_announces_extensions() {
        let handshake = Handshake {
            extensions: Extensions {
                fast: true,
                extended: true,
            },
            info_hash: [7; 20],
            peer_id: *b"-SH0100-abcdefghijkl",
        };
        let bytes = handshake.encode();
        assert_eq!(bytes[25], 0x10, "BEP 10 bit");
        assert_eq!(bytes[27], 0x04, "BEP 6 bit");
        let mut decoder = Decoder::new();
        decoder.feed(&bytes[..30]);
        assert_eq!(decoder.handshake(), Ok(None), "half a handshake: wait");
        decoder.feed(&bytes[30..]);
        assert_eq!(decoder.handshake(), Ok(Some(handshake)));
        let mut stranger = Decoder::new();
        stranger.feed(b"GET / HTTP/1.1\r\n");
        assert!(stranger.handshake().is_err(), "refused at once");
    }

    #[test]
    fn messages_round_trip_byte_by_byte() {
        let limits = limits(true);
        let messages = vec![
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have(9),
            Message::Bitfield(Bytes::from_static(&[0xff, 0xc0])),
            Message::Request(BlockRef {
                piece: 9,
                begin: 84 << 10,
                length: BLOCK_BYTES,
            }),
            Message::Piece {
                piece: 0,
                begin: 0,
                data: Bytes::from(vec![5u8; BLOCK_BYTES as usize]),
            },
            Message::Cancel(BlockRef {
                piece: 1,
                begin: 16 << 10,
                length: 100,
            }),
            Message::Port(6881),
            Message::Suggest(3),
            Message::HaveAll,
            Message::HaveNone,
            Message::Reject(BlockRef {
                piece: 2,
                begin: 0,
                length: BLOCK_BYTES,
            }),
            Message::AllowedFast(4),
            Message::Extended {
                id: 0,
                payload: Bytes::from_static(b"d1:md6:ut_pexi1eee"),
            },
        ];
        let mut bytes = BytesMut::new();
        for message in &messages {
            message.encode(&mut bytes);
        }
        let mut decoder = Decoder::new();
        let mut decoded = Vec::new();
        for byte in bytes.iter() {
            decoder.feed(&[*byte]);
            while let Some(message) = decoder.message(&limits).unwrap() {
                decoded.push(message);
            }
        }
        assert_eq!(decoded, messages);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn what_a_peer_may_not_send_is_refused_with_a_reason() {
        let limits = limits(false);
        let encoded = |m: Message| {
            let mut out = BytesMut::new();
            m.encode(&mut out);
            out
        };
        // A length prefix past the swarm's longest message: refused before
        // any of it is buffered.
        assert!(matches!(
            decode_all(&[0xff, 0xff, 0xff, 0xff], &limits),
            Err(WireError::Oversized { .. })
        ));
        assert!(matches!(
            decode_all(&encoded(Message::Have(10)), &limits),
            Err(WireError::NoSuchPiece { piece: 10, .. })
        ));
        // 32 KiB blocks: refused, as libtorrent does.
        let big = BlockRef {
            piece: 0,
            begin: 0,
            length: 2 * BLOCK_BYTES,
        };
        assert!(matches!(
            decode_all(&encoded(Message::Request(big)), &limits),
            Err(WireError::BadBlockLength { .. })
        ));
        // Past the end of the short last piece (100 KiB).
        let past = BlockRef {
            piece: 9,
            begin: 96 << 10,
            length: BLOCK_BYTES,
        };
        assert!(matches!(
            decode_all(&encoded(Message::Request(past)), &limits),
            Err(WireError::OutsidePiece { .. })
        ));
        // 10 pieces: 2 bytes, and the last 6 bits must be clear.
        assert_eq!(
            decode_all(
                &encoded(Message::Bitfield(Bytes::from_static(&[0xff, 0xc1]))),
                &limits
            ),
            Err(WireError::BitfieldSpareBits)
        );
        assert!(matches!(
            decode_all(
                &encoded(Message::Bitfield(Bytes::from_static(&[0xff]))),
                &limits
            ),
            Err(WireError::BadLength { .. })
        ));
        // Fast messages without the fast extension.
        assert_eq!(
            decode_all(&encoded(Message::HaveAll), &limits),
            Err(WireError::FastNotNegotiated(0x0E))
        );
        // A HAVE with a body of the wrong size.
        assert!(matches!(
            decode_all(&[0, 0, 0, 3, 4, 0, 0], &limits),
            Err(WireError::BadLength { id: 4, .. })
        ));
        // An unknown id within the limits is passed up, not fatal.
        assert_eq!(
            decode_all(&[0, 0, 0, 3, 99, 1, 2], &limits),
            Ok(vec![Message::Unknown { id: 99 }])
        );
    }

    proptest! {
        /// Whatever a peer sends, the decoder answers an error or messages
        /// that encode back to the same bytes (no panic, no guess).
        #[test]
        fn decoding_never_panics_and_accepted_bytes_re_encode(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let limits = limits(true);
            let mut decoder = Decoder::new();
            decoder.feed(&bytes);
            let mut consumed = BytesMut::new();
            while let Ok(Some(message)) = decoder.message(&limits) {
                message.encode(&mut consumed);
                if matches!(message, Message::Unknown { .. }) {
                    return Ok(());
                }
            }
            prop_assert_eq!(&bytes[..consumed.len()], &consumed[..]);
        }
    }
}
