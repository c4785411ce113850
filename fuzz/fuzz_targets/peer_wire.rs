//! Fuzzes the BitTorrent wire decoder: a handshake, then messages checked
//! against a small object's layout. Whatever is accepted re-encodes to the
//! bytes it came from (unknown ids aside, whose bodies are skipped), and
//! nothing is buffered past one message's limit.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shoal_core::{PieceLayout, PieceSize};
use shoal_peer::wire::{Decoder, Extensions, Message, WireLimits, HANDSHAKE_BYTES};

fuzz_target!(|data: &[u8]| {
    let size = 9 * (256 << 10) + 1234;
    let Ok(layout) = PieceLayout::new(size, PieceSize::for_object_size(size)) else {
        return;
    };
    let limits = WireLimits {
        layout,
        extensions: Extensions {
            fast: data.first().is_some_and(|b| b & 1 == 1),
            extended: true,
        },
    };
    let mut decoder = Decoder::new();
    decoder.feed(data);
    if data.len() >= HANDSHAKE_BYTES && decoder.handshake().is_err() {
        return;
    }
    let start = data.len() - decoder.buffered();
    let mut encoded = BytesMut::new();
    while let Ok(Some(message)) = decoder.message(&limits) {
        if matches!(message, Message::Unknown { .. }) {
            return;
        }
        message.encode(&mut encoded);
    }
    assert_eq!(&data[start..start + encoded.len()], &encoded[..]);
    assert!(decoder.buffered() <= 4 + limits.message_bytes_max() as usize + data.len());
});
