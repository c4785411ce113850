//! The key a swarm is found by, and one object's swarm as a state machine
//! (sans-IO, time passed in): every connection's [`Session`], the pieces
//! being assembled, smart-ban, the choker and the picker together.
//!
//! A shoal swarm is one object version (its [`ObjectId`], which already
//! names the exact bytes), so its key is derived from the id: the first 20
//! bytes of a domain-separated BLAKE3 hash. Stock BitTorrent clients know
//! a torrent by its v1 info-hash (SHA-1 of a bencoded info dictionary, with
//! SHA-1 piece hashes) instead; when a manifest carries those, the same
//! swarm gets a second key of the other kind, and the tracker files both
//! under the one object. The kind is part of the key so the two can never
//! be confused.
//!
//! [`Swarm`] takes messages from peers ([`Swarm::handle_message`]), pieces
//! that came from elsewhere (a cache, [`Swarm::piece_from_elsewhere`]) and
//! time, and hands out [`Action`]s: messages to send, pieces to store (only
//! ever verified against the manifest), blocks to read for a peer,
//! connections to close, peers banned.

use crate::assembly::{Added, Assembly, PeerKey, SmartBan, SmartBanLimits};
use crate::choke::{Candidate, ChokeLimits, Choker};
use crate::pick::{next_piece, PickContext};
use crate::session::{Event, Session, SessionLimits};
use crate::wire::{BlockRef, Extensions, Message, BLOCK_BYTES};
use bytes::Bytes;
use shoal_core::bitfield::PieceSet;
use shoal_core::{Manifest, ObjectId, PieceIndex, VerifiedPiece};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

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

/// A free unchoke slot is filled this soon, not at the next round.
const QUICK_RECHOKE_MS: u64 = 500;

/// Blocks read for a peer and not yet written to its connection, at most.
/// The rest of its requests wait here, where a cancel or a choke still
/// withdraws them: behind an upload cap a deep send queue would send
/// blocks long after the peer took the piece from someone else.
pub const SERVE_PIPELINE_BLOCKS: u32 = 4;

/// How fast a peer's measured goodput follows what it sends.
const DELIVERY_RATE_TAU_MS: f64 = 1_000.0;
/// Requests kept at a peer whatever its measured rate.
const REQUEST_DEPTH_MIN: usize = 4;

/// A swarm's limits.
#[derive(Clone, Copy, Debug)]
pub struct SwarmLimits {
    pub session: SessionLimits,
    pub choke: ChokeLimits,
    pub smart_ban: SmartBanLimits,
    /// Connections at once, at most.
    pub peers_max: usize,
    /// How often the choker runs.
    pub rechoke_every_ms: u64,
    /// Whether we upload at all (`--no-upload`: every peer stays choked).
    pub upload: bool,
    /// Requests kept at each peer cover about this long of what it
    /// delivers (libtorrent's `request_queue_time`): deep enough to keep
    /// its uplink busy, shallow enough that a piece asked for now is not
    /// queued behind seconds of others.
    pub request_queue_ms: u64,
}

impl Default for SwarmLimits {
    fn default() -> Self {
        Self {
            session: SessionLimits::default(),
            choke: ChokeLimits::default(),
            smart_ban: SmartBanLimits::default(),
            peers_max: 50,
            rechoke_every_ms: 10_000,
            upload: true,
            request_queue_ms: 2_000,
        }
    }
}

/// What the driver is to do.
#[derive(Debug)]
pub enum Action {
    Send {
        peer: PeerKey,
        message: Message,
    },
    /// Close the connection (the peer misbehaved, timed out or is banned).
    Close {
        peer: PeerKey,
        reason: &'static str,
    },
    /// A piece that verified against the manifest: store it.
    Store(VerifiedPiece),
    /// Read `block` of a stored piece and pass it to [`Swarm::served`].
    Read {
        peer: PeerKey,
        block: BlockRef,
    },
    /// The peer is banned: smart-ban proved it sent bad blocks.
    Banned(PeerKey),
}

/// Bytes counted per swarm (peer efficiency is built from these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwarmCounters {
    /// Verified piece bytes that came from peers.
    pub bytes_from_peers: u64,
    /// Verified piece bytes that came from elsewhere (caches).
    pub bytes_from_elsewhere: u64,
    /// Block bytes sent to peers.
    pub bytes_to_peers: u64,
    /// Pieces from peers that failed verification (never stored).
    pub pieces_failed: u64,
    /// Peers banned by smart-ban.
    pub peers_banned: u64,
}

#[derive(Debug)]
struct Peer {
    session: Session,
    /// Bytes it sent us and we sent it since the last rechoke.
    received: u64,
    sent: u64,
    download_bytes_per_s: u64,
    upload_bytes_per_s: u64,
    /// Its requests we accepted and have not read yet, in order.
    to_serve: VecDeque<BlockRef>,
    /// Blocks read for it and not yet written ([`Swarm::handle_sent`]).
    serving: u32,
    /// Block bytes it sent us since the last tick, and its goodput to us
    /// (bytes per second, EWMA; `None` until first measured).
    received_since_tick: u64,
    delivery_bytes_per_s: Option<f64>,
}

/// One object's swarm.
#[derive(Debug)]
pub struct Swarm {
    manifest: Manifest,
    limits: SwarmLimits,
    have: PieceSet,
    peers: BTreeMap<PeerKey, Peer>,
    availability: Vec<u32>,
    /// Blocks requested, and from whom.
    requested: HashMap<BlockRef, PeerKey>,
    assembly: Assembly,
    smart_ban: SmartBan,
    choker: Choker,
    banned: HashSet<PeerKey>,
    /// Pieces that failed verification, and who sent blocks of them: not
    /// asked of those peers again until the piece verifies (so a liar is
    /// not asked for the same piece forever, and the good copy that
    /// settles the blame comes from someone else).
    failed_from: HashMap<u32, HashSet<PeerKey>>,
    last_rechoke_ms: u64,
    last_tick_ms: u64,
    actions: VecDeque<Action>,
    counters: SwarmCounters,
    /// This node's own number for spreading ties in the picker, so peers
    /// that all fetch from one seed start on different pieces and have
    /// something to trade.
    salt: u64,
    /// Pieces a cache is fetching for us: not asked of peers (the caller
    /// took them over; see [`Swarm::reserve`]).
    reserved: PieceSet,
    /// Stream mode: pieces from the playhead up to this end are asked for
    /// in order first.
    playhead: Option<(u32, u32)>,
    /// When each piece being fetched from peers was first asked for (its
    /// own progress rate tells whether it will be in time).
    piece_started_ms: HashMap<u32, u64>,
    /// When a block of each piece being fetched from peers last arrived.
    piece_last_block_ms: HashMap<u32, u64>,
}

impl Swarm {
    pub fn new(manifest: Manifest, have: PieceSet, limits: SwarmLimits, now_ms: u64) -> Self {
        let count = manifest.piece_count() as usize;
        Swarm {
            manifest,
            limits,
            have,
            peers: BTreeMap::new(),
            availability: vec![0; count],
            requested: HashMap::new(),
            assembly: Assembly::default(),
            smart_ban: SmartBan::new(limits.smart_ban),
            choker: Choker::default(),
            banned: HashSet::new(),
            failed_from: HashMap::new(),
            last_rechoke_ms: now_ms,
            last_tick_ms: now_ms,
            actions: VecDeque::new(),
            counters: SwarmCounters::default(),
            salt: 0,
            reserved: PieceSet::new(count as u32),
            playhead: None,
            piece_started_ms: HashMap::new(),
            piece_last_block_ms: HashMap::new(),
        }
    }

    /// Sets this node's tie-spreading number (from its peer id; any value
    /// that differs between nodes).
    pub fn with_salt(mut self, salt: u64) -> Self {
        self.salt = salt;
        self
    }

    pub fn have(&self) -> &PieceSet {
        &self.have
    }

    pub fn counters(&self) -> SwarmCounters {
        self.counters
    }

    pub fn is_complete(&self) -> bool {
        self.have.is_complete()
    }

    pub fn is_banned(&self, peer: PeerKey) -> bool {
        self.banned.contains(&peer)
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// How many connected peers have each piece.
    pub fn availability(&self) -> &[u32] {
        &self.availability
    }

    /// Pieces being fetched from peers now (blocks asked for or partly
    /// here), with the bytes of each already here.
    pub fn pieces_from_peers(&self) -> BTreeMap<u32, u64> {
        let mut pieces: BTreeMap<u32, u64> = BTreeMap::new();
        for block in self.requested.keys() {
            pieces.entry(block.piece).or_default();
        }
        for (piece, bytes) in self.assembly.received_bytes() {
            *pieces.entry(piece).or_default() += bytes;
        }
        pieces.retain(|piece, _| !self.have.contains(PieceIndex(*piece)));
        pieces
    }

    /// When peers were first asked for `piece` (while it is being fetched
    /// from them).
    pub fn piece_started_ms(&self, piece: u32) -> Option<u64> {
        self.piece_started_ms.get(&piece).copied()
    }

    /// When the last block of `piece` arrived from a peer (while it is
    /// being fetched): a piece half here and silent since is stuck.
    pub fn piece_last_block_ms(&self, piece: u32) -> Option<u64> {
        self.piece_last_block_ms.get(&piece).copied()
    }

    /// A cache takes `piece` over: peers are no longer asked for it (what
    /// is asked now is cancelled, blocks here are dropped).
    pub fn reserve(&mut self, piece: u32, now_ms: u64) {
        let index = PieceIndex(piece);
        if index.0 >= self.manifest.piece_count() || self.have.contains(index) {
            return;
        }
        self.reserved.insert(index);
        self.piece_started_ms.remove(&piece);
        self.piece_last_block_ms.remove(&piece);
        self.cancel_requests_for(piece);
        self.assembly.drop_piece(piece);
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.flush(key, now_ms);
        }
    }

    /// The cache gave `piece` back (it failed, or no cache is left): peers
    /// may be asked for it again.
    pub fn unreserve(&mut self, piece: u32, now_ms: u64) {
        if piece < self.manifest.piece_count() && self.reserved.contains(PieceIndex(piece)) {
            self.reserved.remove(PieceIndex(piece));
            let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
            for key in keys {
                self.request_more(key, now_ms);
            }
        }
    }

    /// Stream mode: the pieces `from..end` are wanted in order first.
    pub fn set_playhead(&mut self, window: Option<(u32, u32)>) {
        self.playhead = window;
    }

    /// A connection finished its handshakes. `false`: refused (banned, or
    /// the swarm is full); the driver closes it.
    pub fn add_peer(&mut self, peer: PeerKey, extensions: Extensions, now_ms: u64) -> bool {
        if self.banned.contains(&peer) || self.peers.len() >= self.limits.peers_max {
            return false;
        }
        let session = Session::new(self.limits.session, extensions, &self.have, now_ms);
        self.peers.insert(
            peer,
            Peer {
                session,
                received: 0,
                sent: 0,
                download_bytes_per_s: 0,
                upload_bytes_per_s: 0,
                to_serve: VecDeque::new(),
                serving: 0,
                received_since_tick: 0,
                delivery_bytes_per_s: None,
            },
        );
        self.flush(peer, now_ms);
        true
    }

    /// A connection ended: its pieces no longer count, its requests go
    /// elsewhere.
    pub fn remove_peer(&mut self, peer: PeerKey, now_ms: u64) {
        let Some(gone) = self.peers.remove(&peer) else {
            return;
        };
        for piece in gone.session.peer_has().iter() {
            if let Some(count) = self.availability.get_mut(piece.0 as usize) {
                *count = count.saturating_sub(1);
            }
        }
        self.requested.retain(|_, from| *from != peer);
        let others: Vec<PeerKey> = self.peers.keys().copied().collect();
        for other in others {
            self.request_more(other, now_ms);
        }
    }

    /// A message from `peer` (checked by the wire decoder).
    pub fn handle_message(&mut self, peer: PeerKey, message: Message, now_ms: u64) {
        if let Message::Piece { data, .. } = &message {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.received += data.len() as u64;
                p.received_since_tick += data.len() as u64;
            }
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.session.handle_message(message, now_ms);
        self.flush(peer, now_ms);
    }

    /// The block `peer` asked for, read from the store.
    pub fn served(&mut self, peer: PeerKey, block: BlockRef, data: Bytes, now_ms: u64) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let bytes = data.len() as u64;
        // Counted only if it went out (the request may have been cancelled
        // or dropped by a choke meanwhile); a block that did not go out
        // frees its place in the pipeline at once.
        if p.session.served(&block, data) {
            p.sent += bytes;
            self.counters.bytes_to_peers += bytes;
        } else {
            p.serving = p.serving.saturating_sub(1);
        }
        self.pump(peer);
        self.flush(peer, now_ms);
    }

    /// The block `peer` asked for could not be read: refused.
    pub fn unserved(&mut self, peer: PeerKey, block: BlockRef, now_ms: u64) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.serving = p.serving.saturating_sub(1);
        p.session.refuse(&block);
        self.pump(peer);
        self.flush(peer, now_ms);
    }

    /// `blocks` blocks for `peer` were written to its connection: as many
    /// more of its requests are read.
    pub fn handle_sent(&mut self, peer: PeerKey, blocks: u32, now_ms: u64) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.serving = p.serving.saturating_sub(blocks);
        self.pump(peer);
        self.flush(peer, now_ms);
    }

    /// Reads `peer`'s next requests while its pipeline has room, skipping
    /// those it cancelled or a choke dropped.
    fn pump(&mut self, peer: PeerKey) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        while p.serving < SERVE_PIPELINE_BLOCKS {
            let Some(block) = p.to_serve.pop_front() else {
                break;
            };
            if p.session.peer_requested(&block) {
                p.serving += 1;
                self.actions.push_back(Action::Read { peer, block });
            }
        }
    }

    /// A verified piece from elsewhere (a cache): stored by the caller;
    /// peers hear of it, requests for it are cancelled, blame recorded for
    /// it is settled.
    pub fn piece_from_elsewhere(&mut self, piece: &VerifiedPiece, now_ms: u64) {
        if self.have.contains(piece.index()) {
            return;
        }
        self.counters.bytes_from_elsewhere += piece.len() as u64;
        self.got_piece(piece.index().0, piece.data(), now_ms);
    }

    /// Time passes: timeouts, keep-alives, and the choker.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        // A piece nobody is fetching any more starts afresh when asked
        // again.
        let partial = self.assembly.partial_pieces();
        let requested = &self.requested;
        self.piece_started_ms.retain(|piece, _| {
            partial.contains(piece) || requested.keys().any(|b| b.piece == *piece)
        });
        let started = &self.piece_started_ms;
        self.piece_last_block_ms
            .retain(|piece, _| started.contains_key(piece));
        let dt_ms = now_ms.saturating_sub(self.last_tick_ms);
        self.last_tick_ms = now_ms;
        let queue_ms = self.limits.request_queue_ms;
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for peer in &keys {
            if let Some(p) = self.peers.get_mut(peer) {
                if dt_ms > 0 {
                    let sample = p.received_since_tick as f64 * 1000.0 / dt_ms as f64;
                    p.received_since_tick = 0;
                    let alpha = 1.0 - (-(dt_ms as f64) / DELIVERY_RATE_TAU_MS).exp();
                    let rate = match p.delivery_bytes_per_s {
                        Some(rate) => rate + alpha * (sample - rate),
                        None if sample > 0.0 => sample,
                        None => 0.0,
                    };
                    if sample > 0.0 || p.delivery_bytes_per_s.is_some() {
                        p.delivery_bytes_per_s = Some(rate);
                        let blocks = rate * queue_ms as f64 / 1000.0 / BLOCK_BYTES as f64;
                        p.session
                            .set_request_depth((blocks.ceil() as usize).max(REQUEST_DEPTH_MIN));
                    }
                }
                p.session.handle_timeout(now_ms);
            }
            self.flush(*peer, now_ms);
        }
        let since = now_ms.saturating_sub(self.last_rechoke_ms);
        if since >= self.limits.rechoke_every_ms
            || (since >= QUICK_RECHOKE_MS && self.has_free_slot_and_a_waiting_peer())
        {
            self.rechoke(now_ms);
        }
    }

    /// An unchoke slot is free and an interested peer is choked (a peer
    /// that just arrived is not kept waiting for the next round).
    fn has_free_slot_and_a_waiting_peer(&self) -> bool {
        if !self.limits.upload {
            return false;
        }
        let unchoked = self
            .peers
            .values()
            .filter(|p| !p.session.am_choking())
            .count();
        unchoked <= self.limits.choke.regular_slots
            && self
                .peers
                .values()
                .any(|p| p.session.am_choking() && p.session.peer_interested())
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Runs the choker over the connected peers.
    pub fn rechoke(&mut self, now_ms: u64) {
        let interval_ms = now_ms.saturating_sub(self.last_rechoke_ms).max(1);
        self.last_rechoke_ms = now_ms;
        let mut candidates = Vec::new();
        for (key, p) in self.peers.iter_mut() {
            p.download_bytes_per_s = p.received * 1000 / interval_ms;
            p.upload_bytes_per_s = p.sent * 1000 / interval_ms;
            p.received = 0;
            p.sent = 0;
            candidates.push(Candidate {
                peer: *key,
                interested: p.session.peer_interested(),
                download_bytes_per_s: p.download_bytes_per_s,
                upload_bytes_per_s: p.upload_bytes_per_s,
            });
        }
        let unchoke = if self.limits.upload {
            self.choker
                .unchoke(&candidates, self.is_complete(), &self.limits.choke, now_ms)
        } else {
            Vec::new()
        };
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            if let Some(p) = self.peers.get_mut(&key) {
                p.session.set_choking(!unchoke.contains(&key));
            }
            self.flush(key, now_ms);
        }
    }

    /// Turns a session's events into swarm work and its messages into
    /// actions.
    fn flush(&mut self, peer: PeerKey, now_ms: u64) {
        loop {
            let Some(p) = self.peers.get_mut(&peer) else {
                return;
            };
            let Some(event) = p.session.poll_event() else {
                break;
            };
            self.on_event(peer, event, now_ms);
        }
        self.update_interest(peer);
        self.request_more(peer, now_ms);
        if let Some(p) = self.peers.get_mut(&peer) {
            while let Some(message) = p.session.poll_transmit(now_ms) {
                self.actions.push_back(Action::Send { peer, message });
            }
        }
    }

    fn on_event(&mut self, peer: PeerKey, event: Event, now_ms: u64) {
        match event {
            Event::PeerHas(pieces) => {
                for piece in pieces {
                    if let Some(count) = self.availability.get_mut(piece as usize) {
                        *count += 1;
                    }
                }
            }
            Event::Unchoked => {}
            Event::RequestsLost(blocks) => {
                for block in blocks {
                    self.requested.remove(&block);
                }
            }
            Event::Block { block, data } => self.on_block(peer, block, data, now_ms),
            Event::PeerWants(block) => {
                let have = self.have.contains(PieceIndex(block.piece));
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                if !have {
                    // A piece we never announced: refused, not queued.
                    p.session.refuse(&block);
                    return;
                }
                // Withdrawn requests linger here until their turn: drop
                // them once they could outnumber the live ones.
                let limit = self.limits.session.peer_requests_max.max(1) * 2;
                if p.to_serve.len() >= limit {
                    let session = &p.session;
                    p.to_serve.retain(|b| session.peer_requested(b));
                }
                p.to_serve.push_back(block);
                self.pump(peer);
            }
            Event::Misbehaved(reason) => self.close(peer, reason, now_ms),
            Event::TimedOut => self.close(peer, "silent too long", now_ms),
        }
    }

    fn on_block(&mut self, peer: PeerKey, block: BlockRef, data: Bytes, now_ms: u64) {
        self.requested.remove(&block);
        if self.have.contains(PieceIndex(block.piece)) {
            return;
        }
        self.piece_last_block_ms.insert(block.piece, now_ms);
        let piece_bytes = self.manifest.layout().piece_len(PieceIndex(block.piece)) as u32;
        let Added::Complete {
            piece,
            data,
            senders,
        } = self.assembly.add(peer, block, &data, piece_bytes)
        else {
            return;
        };
        match VerifiedPiece::verify(&self.manifest, PieceIndex(piece), data.clone()) {
            Ok(verified) => {
                self.counters.bytes_from_peers += verified.len() as u64;
                self.actions.push_back(Action::Store(verified));
                self.got_piece(piece, &data, now_ms);
            }
            Err(_) => {
                // Never stored: blame is settled when the piece verifies.
                self.counters.pieces_failed += 1;
                let verdict = self.smart_ban.on_failed(piece, &data, &senders);
                let failed_from = self.failed_from.entry(piece).or_default();
                failed_from.extend(senders.iter().copied());
                self.ban(verdict.ban, now_ms);
            }
        }
    }

    /// `piece` is here and verified: tell everyone, cancel what is still
    /// asked for it, settle smart-ban's blame.
    fn got_piece(&mut self, piece: u32, data: &Bytes, now_ms: u64) {
        self.have.insert(PieceIndex(piece));
        self.reserved.remove(PieceIndex(piece));
        self.piece_started_ms.remove(&piece);
        self.piece_last_block_ms.remove(&piece);
        self.failed_from.remove(&piece);
        self.cancel_requests_for(piece);
        self.assembly.drop_piece(piece);
        let verdict = self.smart_ban.on_verified(piece, data);
        self.ban(verdict.ban, now_ms);
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            if let Some(p) = self.peers.get_mut(&key) {
                p.session.have(piece);
            }
            self.flush(key, now_ms);
        }
    }

    /// Cancels every block of `piece` asked of anyone.
    fn cancel_requests_for(&mut self, piece: u32) {
        let cancels: Vec<(BlockRef, PeerKey)> = self
            .requested
            .iter()
            .filter(|(b, _)| b.piece == piece)
            .map(|(b, p)| (*b, *p))
            .collect();
        for (block, from) in cancels {
            self.requested.remove(&block);
            if let Some(p) = self.peers.get_mut(&from) {
                p.session.cancel(block);
            }
        }
    }

    /// Bans peers smart-ban proved to have sent bad blocks.
    fn ban(&mut self, liars: Vec<PeerKey>, now_ms: u64) {
        for liar in liars {
            if !self.banned.insert(liar) {
                continue;
            }
            self.counters.peers_banned += 1;
            self.actions.push_back(Action::Banned(liar));
            self.close(liar, "sent blocks that failed verification", now_ms);
            self.assembly.drop_peer(liar);
        }
    }

    fn close(&mut self, peer: PeerKey, reason: &'static str, now_ms: u64) {
        if self.peers.contains_key(&peer) {
            self.actions.push_back(Action::Close { peer, reason });
            self.remove_peer(peer, now_ms);
        }
    }

    fn update_interest(&mut self, peer: PeerKey) {
        let have = &self.have;
        if let Some(p) = self.peers.get_mut(&peer) {
            let wants = p
                .session
                .peer_has()
                .iter()
                .any(|piece| !have.contains(piece));
            p.session.set_interested(wants);
        }
    }

    /// Fills `peer`'s request pipeline: blocks of the piece the picker
    /// names, not already asked of anyone.
    fn request_more(&mut self, peer: PeerKey, now_ms: u64) {
        let count = self.manifest.piece_count();
        let mut in_flight = PieceSet::new(count);
        for block in self.requested.keys() {
            in_flight.insert(PieceIndex(block.piece));
        }
        // Started (blocks here or asked for, the piece not yet whole), and
        // with a block nobody has been asked for yet.
        let mut started = self.assembly.partial_pieces();
        for piece in in_flight.iter() {
            if !started.contains(&piece.0) && !self.have.contains(piece) {
                started.push(piece.0);
            }
        }
        for piece in &started {
            in_flight.insert(PieceIndex(*piece));
        }
        // A cache fetches these: as good as in flight.
        for piece in self.reserved.iter() {
            in_flight.insert(piece);
        }
        let layout = self.manifest.layout();
        let partial: Vec<u32> = started
            .into_iter()
            .filter(|piece| {
                if self.reserved.contains(PieceIndex(*piece)) {
                    return false;
                }
                let bytes = layout.piece_len(PieceIndex(*piece)) as u32;
                self.assembly
                    .missing(*piece, bytes)
                    .iter()
                    .any(|b| !self.requested.contains_key(b))
            })
            .collect();
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        // What it has and serves us now, less pieces it helped spoil while
        // another holder that did not is connected. (When every holder
        // helped spoil a piece, it is taken whole from one of them, so
        // the next failure or success settles the blame.)
        let mut offered = PieceSet::new(count);
        for piece in p.session.peer_has().iter() {
            if !p.session.serves_now(piece.0) {
                continue;
            }
            if let Some(spoilers) = self.failed_from.get(&piece.0) {
                if spoilers.contains(&peer) {
                    let clean_holder = self.peers.iter().any(|(other, q)| {
                        *other != peer
                            && q.session.peer_has().contains(piece)
                            && !spoilers.contains(other)
                    });
                    let others_on_it = self
                        .requested
                        .iter()
                        .any(|(b, from)| b.piece == piece.0 && *from != peer);
                    if clean_holder || others_on_it {
                        continue;
                    }
                }
            }
            offered.insert(piece);
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let mut tried = HashSet::new();
        while p.session.request_room() > 0 {
            let ctx = PickContext {
                have: &self.have,
                in_flight: &in_flight,
                partial: &partial
                    .iter()
                    .copied()
                    .filter(|x| !tried.contains(x))
                    .collect::<Vec<_>>(),
                availability: &self.availability,
                playhead: self.playhead,
                salt: self
                    .salt
                    .wrapping_add(peer.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            };
            let Some(piece) = next_piece(&ctx, &offered) else {
                break;
            };
            tried.insert(piece);
            in_flight.insert(PieceIndex(piece));
            let piece_bytes = self.manifest.layout().piece_len(PieceIndex(piece)) as u32;
            let mut asked = false;
            for block in self.assembly.missing(piece, piece_bytes) {
                if self.requested.contains_key(&block) || !p.session.may_request(&block) {
                    continue;
                }
                p.session.request(block, now_ms);
                self.requested.insert(block, peer);
                self.piece_started_ms.entry(piece).or_insert(now_ms);
                asked = true;
            }
            // A piece that yielded nothing to ask (every block asked of
            // someone already, or no room): one more try at most, so a
            // peer's message never costs a scan per piece.
            if !asked && tried.len() > 1 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests;
