//! Viewer swarms (issue 13): viewers' clients share an object's pieces
//! with each other over the BitTorrent peer wire protocol, and caches fill
//! in what peers cannot deliver in time.
//!
//! Everything here is sans-IO: codecs turn bytes into typed values with
//! limits on every length, and state machines take events and time in and
//! hand actions out, so tests, fuzzers and simulations drive the same code
//! as the tokio driver that only moves bytes.
//!
//! - [`swarm`]: the 20-byte key a swarm is found by ([`SwarmKey`]), and
//!   one object's swarm as a state machine tying the parts below together
//!   (messages and time in; messages, verified pieces to store, blocks to
//!   read and bans out).
//! - [`driver`]: the thin tokio driver of a swarm (TCP, handshakes, bytes
//!   to and from the codec; every decision is the swarm's).
//! - [`tracker`]: the tracker's core — announce and scrape parsing, a
//!   bounded table of swarms and peers, nearest-first peer lists, the
//!   bencoded compact answers (the selector serves it over HTTP).
//! - [`wire`]: the BEP 3 handshake and messages, with the BEP 6 (fast) and
//!   BEP 10 (extension protocol) additions, as a streaming decoder.
//! - [`bencode`]: the bencoding BEP 10's handshake (and later the tracker)
//!   speaks, strict and bounded.
//! - [`extension`]: the BEP 10 extension handshake as a typed value.
//! - [`assembly`]: pieces put together from blocks of several peers, and
//!   smart-ban (blame settled by a piece's verified bytes).
//! - [`choke`]: whom to upload to (tit-for-tat with a rotating optimistic
//!   slot; a seed favours those it uploads to fastest).
//! - [`pick`]: which piece next (started pieces, the playhead window in
//!   order for streams, then rarest first).
//! - [`session`]: one connection's state machine — choke and interest both
//!   ways, the peer's pieces, requests each way, with bounds and timeouts.
//!
//! Pieces are shoal's pieces (256 KiB to 4 MiB, BLAKE3 in the manifest);
//! they travel in 16 KiB blocks as BitTorrent requires, and a piece is
//! verified whole against the manifest before it is stored, counted or
//! uploaded.

pub mod assembly;
pub mod bencode;
pub mod choke;
pub mod driver;
pub mod extension;
pub mod pick;
pub mod session;
pub mod swarm;
pub mod tracker;
pub mod wire;

pub use swarm::SwarmKey;
