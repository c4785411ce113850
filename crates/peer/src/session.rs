//! One peer connection as a state machine (sans-IO, time passed in): the
//! choke and interest flags both ways, the pieces the peer has, the blocks
//! we asked it for and the blocks it asked us for, with a bound on each.
//!
//! Messages come in through [`Session::handle_message`]; what to send
//! comes out of [`Session::poll_transmit`] and what happened out of
//! [`Session::poll_event`]. Deciding *which* blocks to request and *whom*
//! to unchoke belongs to the swarm's scheduler and choker; this machine
//! keeps each connection's promises straight: a choke without the fast
//! extension drops our outstanding requests (the peer will not serve
//! them), a block nobody asked for is refused, a peer's requests beyond
//! the queue it was told are rejected, and a peer that stays silent past
//! [`SessionLimits::idle_timeout_ms`] is dropped.

use crate::extension::ExtensionHandshake;
use crate::wire::{BlockRef, Extensions, Message, BLOCK_BYTES};
use bytes::Bytes;
use shoal_core::bitfield::PieceSet;
use shoal_core::PieceIndex;
use std::collections::VecDeque;

/// Requests kept outstanding at a new peer until its rate is known (one
/// 256 KiB piece).
const REQUEST_DEPTH_START: usize = 16;

/// The limits of one connection.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Requests we accept from the peer at once (told to it as `reqq`).
    pub peer_requests_max: usize,
    /// Requests we keep outstanding at the peer at once.
    pub our_requests_max: usize,
    /// A peer that sends nothing for this long is dropped.
    pub idle_timeout_ms: u64,
    /// We send a keep-alive after this long without sending anything.
    pub keep_alive_ms: u64,
    /// Blocks we did not ask for (or cancelled) a peer may send before it
    /// is dropped (a few arrive legitimately after a cancel).
    pub unrequested_blocks_max: u32,
    /// A request not answered within this long is cancelled and asked of
    /// someone else (a peer that takes requests and never answers must
    /// not hold pieces forever).
    pub request_timeout_ms: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            peer_requests_max: 250,
            our_requests_max: 64,
            idle_timeout_ms: 120_000,
            keep_alive_ms: 60_000,
            unrequested_blocks_max: 16,
            request_timeout_ms: 30_000,
        }
    }
}

/// What happened on a connection, for the swarm to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer has these pieces now (from a bitfield, `have`, `have all`).
    PeerHas(Vec<u32>),
    /// A block we asked for arrived (not yet verified: pieces are checked
    /// whole).
    Block { block: BlockRef, data: Bytes },
    /// Requests the peer will not serve (choked without the fast
    /// extension, or rejected): ask someone else.
    RequestsLost(Vec<BlockRef>),
    /// The peer unchoked us: requests may go out.
    Unchoked,
    /// The peer wants a block from us (we are not choking it, or the piece
    /// is allowed-fast).
    PeerWants(BlockRef),
    /// The peer broke the protocol or its limits: close the connection.
    Misbehaved(&'static str),
    /// Nothing came from the peer for too long: close the connection.
    TimedOut,
}

/// One connection's state.
#[derive(Debug)]
pub struct Session {
    limits: SessionLimits,
    fast: bool,
    /// We choke the peer (we do not serve its requests).
    am_choking: bool,
    am_interested: bool,
    peer_choking: bool,
    peer_interested: bool,
    peer_has: PieceSet,
    /// Pieces the peer serves even while choking us (BEP 6).
    allowed_fast: Vec<u32>,
    /// Requests we keep outstanding at the peer now: what it delivers in
    /// the swarm's queue time ([`Self::set_request_depth`]), within
    /// `our_requests_max` and the queue the peer announced.
    request_depth: usize,
    /// Blocks we asked for and have not received.
    our_requests: Vec<BlockRef>,
    /// When each of our requests went out (ms).
    requested_at: std::collections::HashMap<BlockRef, u64>,
    /// Blocks the peer asked for and we have not sent.
    peer_requests: Vec<BlockRef>,
    unrequested_blocks: u32,
    /// Blocks we cancelled whose piece or (fast) reject may still come:
    /// neither is a stray.
    cancelled: VecDeque<BlockRef>,
    last_received_ms: u64,
    last_sent_ms: u64,
    outbox: VecDeque<Message>,
    events: VecDeque<Event>,
    /// The peer's first message may be a bitfield (or have all/none); later
    /// ones may not.
    availability_sent: bool,
}

impl Session {
    /// A connection after both handshakes, at `now_ms`. `fast`: both ends
    /// announced BEP 6. `ours`: the pieces we have, announced at once.
    pub fn new(
        limits: SessionLimits,
        extensions: Extensions,
        ours: &PieceSet,
        now_ms: u64,
    ) -> Self {
        let fast = extensions.fast;
        let mut session = Session {
            limits,
            fast,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            peer_has: PieceSet::new(ours.piece_count()),
            allowed_fast: Vec::new(),
            request_depth: limits.our_requests_max.min(REQUEST_DEPTH_START),
            our_requests: Vec::new(),
            requested_at: std::collections::HashMap::new(),
            peer_requests: Vec::new(),
            unrequested_blocks: 0,
            cancelled: VecDeque::new(),
            last_received_ms: now_ms,
            last_sent_ms: now_ms,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            availability_sent: false,
        };
        let availability = if fast && ours.is_complete() {
            Message::HaveAll
        } else if fast && ours.is_empty() {
            Message::HaveNone
        } else {
            // The wire form of a piece set after its 4-byte count is the
            // BitTorrent bitfield.
            Message::Bitfield(Bytes::from(ours.encode().split_off(4)))
        };
        session.outbox.push_back(availability);
        if extensions.extended {
            // BEP 10: who we are and how many requests we queue (stock
            // clients size their pipelines by `reqq`).
            let ours = ExtensionHandshake {
                client: Some(format!("shoal {}", env!("CARGO_PKG_VERSION"))),
                request_queue: Some(limits.peer_requests_max as u32),
                ..ExtensionHandshake::default()
            };
            session.outbox.push_back(Message::Extended {
                id: 0,
                payload: Bytes::from(ours.encode()),
            });
        }
        session
    }

    /// The peer's extension handshake: its `reqq` bounds our requests
    /// there. One that does not parse is ignored (it costs nothing).
    fn on_extension_handshake(&mut self, payload: &[u8]) {
        let Ok(theirs) = ExtensionHandshake::decode(payload) else {
            return;
        };
        if let Some(queue) = theirs.request_queue {
            let queue = (queue as usize).max(1);
            self.limits.our_requests_max = self.limits.our_requests_max.min(queue);
            self.request_depth = self.request_depth.min(self.limits.our_requests_max);
        }
    }

    pub fn peer_has(&self) -> &PieceSet {
        &self.peer_has
    }

    pub fn peer_choking(&self) -> bool {
        self.peer_choking
    }

    pub fn peer_interested(&self) -> bool {
        self.peer_interested
    }

    pub fn am_choking(&self) -> bool {
        self.am_choking
    }

    /// Blocks we have outstanding at the peer.
    pub fn our_requests(&self) -> &[BlockRef] {
        &self.our_requests
    }

    /// Room for more requests at the peer now (0 while it chokes us,
    /// unless pieces are allowed fast).
    pub fn request_room(&self) -> usize {
        if self.peer_choking && self.allowed_fast.is_empty() {
            return 0;
        }
        self.request_depth.saturating_sub(self.our_requests.len())
    }

    /// Keep about `blocks` requests outstanding at the peer (at least
    /// one, at most `our_requests_max`): a request waits at the peer about
    /// as long as the queue time the swarm chose, so a piece that is due
    /// soon is not queued behind seconds of others.
    pub fn set_request_depth(&mut self, blocks: usize) {
        self.request_depth = blocks.clamp(1, self.limits.our_requests_max.max(1));
    }

    /// May `block` be requested now (the peer has the piece, and serves
    /// us: unchoked, or the piece is allowed fast)?
    pub fn may_request(&self, block: &BlockRef) -> bool {
        self.peer_has.contains(PieceIndex(block.piece))
            && (!self.peer_choking || self.allowed_fast.contains(&block.piece))
            && self.request_room() > 0
            && !self.our_requests.contains(block)
    }

    /// Asks the peer for `block` at `now_ms` (the caller checked
    /// [`Self::may_request`]).
    pub fn request(&mut self, block: BlockRef, now_ms: u64) {
        if !self.may_request(&block) {
            return;
        }
        self.our_requests.push(block);
        self.requested_at.insert(block, now_ms);
        self.send(Message::Request(block));
    }

    /// Withdraws a request (the block came from elsewhere, e.g. a cache
    /// near its deadline).
    pub fn cancel(&mut self, block: BlockRef) {
        if let Some(at) = self.our_requests.iter().position(|b| *b == block) {
            self.our_requests.swap_remove(at);
            self.send(Message::Cancel(block));
            if self.cancelled.len() >= self.limits.our_requests_max.max(1) * 4 {
                self.cancelled.pop_front();
            }
            self.cancelled.push_back(block);
        }
    }

    /// Whether the peer serves us `piece` now (it unchokes us, or the
    /// piece is allowed fast).
    pub fn serves_now(&self, piece: u32) -> bool {
        !self.peer_choking || self.allowed_fast.contains(&piece)
    }

    /// A block that answers a request we cancelled (not a stray).
    fn was_cancelled(&mut self, block: &BlockRef) -> bool {
        match self.cancelled.iter().position(|b| b == block) {
            Some(at) => {
                self.cancelled.remove(at);
                true
            }
            None => false,
        }
    }

    /// Whether we want something the peer has.
    pub fn set_interested(&mut self, interested: bool) {
        if interested != self.am_interested {
            self.am_interested = interested;
            self.send(if interested {
                Message::Interested
            } else {
                Message::NotInterested
            });
        }
    }

    /// The choker's decision for this peer. Choking drops its queued
    /// requests (rejected one by one with the fast extension).
    pub fn set_choking(&mut self, choking: bool) {
        if choking == self.am_choking {
            return;
        }
        self.am_choking = choking;
        if choking {
            self.send(Message::Choke);
            let dropped: Vec<BlockRef> = std::mem::take(&mut self.peer_requests);
            if self.fast {
                for block in dropped {
                    self.send(Message::Reject(block));
                }
            }
        } else {
            self.send(Message::Unchoke);
        }
    }

    /// We stored (and verified) `piece`: tell the peer.
    pub fn have(&mut self, piece: u32) {
        self.send(Message::Have(piece));
    }

    /// Whether the peer still asks for `block` (not cancelled, not dropped
    /// by a choke).
    pub fn peer_requested(&self, block: &BlockRef) -> bool {
        self.peer_requests.contains(block)
    }

    /// We read the block the peer asked for: it goes out if the request
    /// still stands (not cancelled, not dropped by a choke). True if sent.
    pub fn served(&mut self, block: &BlockRef, data: Bytes) -> bool {
        let Some(at) = self.peer_requests.iter().position(|b| b == block) else {
            return false;
        };
        self.peer_requests.swap_remove(at);
        self.send(Message::Piece {
            piece: block.piece,
            begin: block.begin,
            data,
        });
        true
    }

    /// A request of the peer's we will not serve (a piece we do not have).
    pub fn refuse(&mut self, block: &BlockRef) {
        if let Some(at) = self.peer_requests.iter().position(|b| b == block) {
            self.peer_requests.swap_remove(at);
            if self.fast {
                self.send(Message::Reject(*block));
            }
        }
    }

    /// Time passes: keep-alives out, silent peers out, requests that went
    /// unanswered too long cancelled and handed back.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let our_requests = &self.our_requests;
        self.requested_at
            .retain(|block, _| our_requests.contains(block));
        let timeout_ms = self.limits.request_timeout_ms;
        let expired: Vec<BlockRef> = self
            .requested_at
            .iter()
            .filter(|(_, at)| now_ms.saturating_sub(**at) >= timeout_ms)
            .map(|(block, _)| *block)
            .collect();
        if !expired.is_empty() {
            for block in &expired {
                self.cancel(*block);
            }
            self.events.push_back(Event::RequestsLost(expired));
        }
        if now_ms.saturating_sub(self.last_received_ms) >= self.limits.idle_timeout_ms {
            self.events.push_back(Event::TimedOut);
        }
        if self.outbox.is_empty()
            && now_ms.saturating_sub(self.last_sent_ms) >= self.limits.keep_alive_ms
        {
            self.outbox.push_back(Message::KeepAlive);
        }
    }

    /// A message from the peer (already checked by the wire decoder).
    pub fn handle_message(&mut self, message: Message, now_ms: u64) {
        self.last_received_ms = now_ms;
        // Availability (bitfield, have all/none) may follow the extension
        // handshake, keep-alives, a port or allowed-fast pieces (libtorrent
        // sends its extension handshake first), but not a have or data.
        let first = !self.availability_sent;
        if !matches!(
            message,
            Message::KeepAlive
                | Message::Port(_)
                | Message::Unknown { .. }
                | Message::Extended { .. }
                | Message::AllowedFast(_)
                | Message::Suggest(_)
        ) {
            self.availability_sent = true;
        }
        match message {
            Message::KeepAlive | Message::Port(_) | Message::Unknown { .. } => {}
            Message::Extended { id: 0, payload } => self.on_extension_handshake(&payload),
            Message::Extended { .. } => {}
            Message::Choke => {
                self.peer_choking = true;
                // Without the fast extension a choke drops every request;
                // with it, the peer rejects each one it will not serve.
                if !self.fast {
                    let lost = std::mem::take(&mut self.our_requests);
                    if !lost.is_empty() {
                        self.events.push_back(Event::RequestsLost(lost));
                    }
                }
            }
            Message::Unchoke => {
                self.peer_choking = false;
                self.events.push_back(Event::Unchoked);
            }
            Message::Interested => self.peer_interested = true,
            Message::NotInterested => self.peer_interested = false,
            Message::Have(piece) => {
                if self.peer_has.insert(PieceIndex(piece)) {
                    self.events.push_back(Event::PeerHas(vec![piece]));
                }
            }
            Message::Bitfield(bits) => {
                if !first {
                    return self.misbehaved("a bitfield after its first message");
                }
                let count = self.peer_has.piece_count();
                let mut encoded = count.to_be_bytes().to_vec();
                encoded.extend_from_slice(&bits);
                match PieceSet::decode(&encoded) {
                    Ok(set) => {
                        let pieces: Vec<u32> = set.iter().map(|i| i.0).collect();
                        self.peer_has = set;
                        if !pieces.is_empty() {
                            self.events.push_back(Event::PeerHas(pieces));
                        }
                    }
                    Err(_) => self.misbehaved("a bitfield of the wrong length"),
                }
            }
            Message::HaveAll | Message::HaveNone => {
                if !first {
                    return self.misbehaved("have all/none after its first message");
                }
                if message == Message::HaveAll {
                    let count = self.peer_has.piece_count();
                    for piece in 0..count {
                        self.peer_has.insert(PieceIndex(piece));
                    }
                    self.events.push_back(Event::PeerHas((0..count).collect()));
                }
            }
            Message::Request(block) => self.on_peer_request(block),
            Message::Cancel(block) => {
                if let Some(at) = self.peer_requests.iter().position(|b| *b == block) {
                    self.peer_requests.swap_remove(at);
                    // BEP 6: every request gets a piece or a reject.
                    if self.fast {
                        self.send(Message::Reject(block));
                    }
                }
            }
            Message::Piece { piece, begin, data } => {
                let block = BlockRef {
                    piece,
                    begin,
                    length: data.len() as u32,
                };
                match self.our_requests.iter().position(|b| *b == block) {
                    Some(at) => {
                        self.our_requests.swap_remove(at);
                        self.events.push_back(Event::Block { block, data });
                    }
                    None if self.was_cancelled(&block) => {}
                    None => {
                        // Never asked for.
                        self.unrequested_blocks += 1;
                        if self.unrequested_blocks > self.limits.unrequested_blocks_max {
                            self.misbehaved("blocks nobody asked for");
                        }
                    }
                }
            }
            Message::Reject(block) => match self.our_requests.iter().position(|b| *b == block) {
                Some(at) => {
                    self.our_requests.swap_remove(at);
                    self.events.push_back(Event::RequestsLost(vec![block]));
                }
                None if self.was_cancelled(&block) => {}
                None => self.misbehaved("a reject of a block we did not ask for"),
            },
            Message::AllowedFast(piece) => {
                if !self.allowed_fast.contains(&piece) && self.allowed_fast.len() < 64 {
                    self.allowed_fast.push(piece);
                }
            }
            Message::Suggest(_) => {}
        }
    }

    fn on_peer_request(&mut self, block: BlockRef) {
        if block.length > BLOCK_BYTES {
            return self.misbehaved("a block over 16 KiB");
        }
        if self.am_choking {
            // Asking while choked: with the fast extension it is rejected,
            // without it ignored (the peer should know better).
            if self.fast {
                self.send(Message::Reject(block));
            }
            return;
        }
        if self.peer_requests.len() >= self.limits.peer_requests_max {
            if self.fast {
                self.send(Message::Reject(block));
                return;
            }
            return self.misbehaved("more requests than the queue it was told");
        }
        if !self.peer_requests.contains(&block) {
            self.peer_requests.push(block);
            self.events.push_back(Event::PeerWants(block));
        }
    }

    fn misbehaved(&mut self, why: &'static str) {
        self.events.push_back(Event::Misbehaved(why));
    }

    fn send(&mut self, message: Message) {
        self.outbox.push_back(message);
    }

    /// The next message to send, at `now_ms`.
    pub fn poll_transmit(&mut self, now_ms: u64) -> Option<Message> {
        let message = self.outbox.pop_front()?;
        self.last_sent_ms = now_ms;
        Some(message)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast extension, not the extension protocol.
    const FAST: Extensions = Extensions {
        fast: true,
        extended: false,
    };

    const PIECES: u32 = 10;

    fn block(piece: u32, begin: u32) -> BlockRef {
        BlockRef {
            piece,
            begin,
            length: BLOCK_BYTES,
        }
    }

    fn drain(session: &mut Session, now_ms: u64) -> Vec<Message> {
        std::iter::from_fn(|| session.poll_transmit(now_ms)).collect()
    }

    fn events(session: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| session.poll_event()).collect()
    }

    fn with_pieces(pieces: &[u32]) -> PieceSet {
        let mut set = PieceSet::new(PIECES);
        for p in pieces {
            set.insert(PieceIndex(*p));
        }
        set
    }

    #[test]
    fn availability_goes_first_in_the_shortest_form() {
        let mut empty = Session::new(SessionLimits::default(), FAST, &with_pieces(&[]), 0);
        assert_eq!(drain(&mut empty, 0), [Message::HaveNone]);
        let all: Vec<u32> = (0..PIECES).collect();
        let mut seed = Session::new(SessionLimits::default(), FAST, &with_pieces(&all), 0);
        assert_eq!(drain(&mut seed, 0), [Message::HaveAll]);
        let mut old = Session::new(
            SessionLimits::default(),
            Extensions::default(),
            &with_pieces(&[0, 9]),
            0,
        );
        assert_eq!(
            drain(&mut old, 0),
            [Message::Bitfield(Bytes::from_static(&[0x80, 0x40]))]
        );
    }

    #[test]
    fn requests_go_only_to_an_unchoking_peer_that_has_the_piece() {
        let mut s = Session::new(
            SessionLimits::default(),
            Extensions::default(),
            &with_pieces(&[]),
            0,
        );
        drain(&mut s, 0);
        s.handle_message(Message::Bitfield(Bytes::from_static(&[0xc0, 0x00])), 1);
        assert_eq!(events(&mut s), [Event::PeerHas(vec![0, 1])]);
        assert!(!s.may_request(&block(0, 0)), "choked");
        s.handle_message(Message::Unchoke, 2);
        assert!(s.may_request(&block(0, 0)));
        assert!(!s.may_request(&block(5, 0)), "it does not have piece 5");
        s.request(block(0, 0), 0);
        s.request(block(0, BLOCK_BYTES), 0);
        assert_eq!(s.our_requests().len(), 2);
        // A choke without the fast extension loses both requests.
        s.handle_message(Message::Choke, 3);
        let lost = events(&mut s);
        assert!(matches!(&lost[..], [Event::Unchoked, Event::RequestsLost(l)] if l.len() == 2));
        assert!(s.our_requests().is_empty());
    }

    #[test]
    fn a_block_counts_only_when_asked_for_and_strays_are_bounded() {
        let limits = SessionLimits {
            unrequested_blocks_max: 2,
            ..SessionLimits::default()
        };
        let mut s = Session::new(limits, FAST, &with_pieces(&[]), 0);
        s.handle_message(Message::HaveAll, 1);
        s.handle_message(Message::Unchoke, 1);
        events(&mut s);
        s.request(block(3, 0), 0);
        let data = Bytes::from(vec![1u8; BLOCK_BYTES as usize]);
        s.handle_message(
            Message::Piece {
                piece: 3,
                begin: 0,
                data: data.clone(),
            },
            2,
        );
        assert_eq!(
            events(&mut s),
            [Event::Block {
                block: block(3, 0),
                data: data.clone()
            }]
        );
        for _ in 0..3 {
            s.handle_message(
                Message::Piece {
                    piece: 4,
                    begin: 0,
                    data: data.clone(),
                },
                3,
            );
        }
        assert_eq!(
            events(&mut s),
            [Event::Misbehaved("blocks nobody asked for")]
        );
    }

    #[test]
    fn the_peers_requests_are_served_only_unchoked_and_within_its_queue() {
        let limits = SessionLimits {
            peer_requests_max: 2,
            ..SessionLimits::default()
        };
        let all: Vec<u32> = (0..PIECES).collect();
        let mut s = Session::new(limits, FAST, &with_pieces(&all), 0);
        drain(&mut s, 0);
        s.handle_message(Message::HaveNone, 1);
        s.handle_message(Message::Request(block(1, 0)), 1);
        assert_eq!(drain(&mut s, 1), [Message::Reject(block(1, 0))], "choked");
        s.set_choking(false);
        for begin in 0..3 {
            s.handle_message(Message::Request(block(1, begin * BLOCK_BYTES)), 2);
        }
        assert_eq!(
            events(&mut s),
            [
                Event::PeerWants(block(1, 0)),
                Event::PeerWants(block(1, BLOCK_BYTES))
            ]
        );
        assert_eq!(
            drain(&mut s, 2),
            [Message::Unchoke, Message::Reject(block(1, 2 * BLOCK_BYTES))],
            "past its queue: rejected"
        );
        // Served, cancelled, and the rest rejected on a choke.
        s.served(&block(1, 0), Bytes::from_static(b"x"));
        s.handle_message(Message::Cancel(block(1, BLOCK_BYTES)), 3);
        s.handle_message(Message::Request(block(2, 0)), 3);
        events(&mut s);
        s.set_choking(true);
        let sent = drain(&mut s, 4);
        assert!(matches!(
            sent[0],
            Message::Piece {
                piece: 1,
                begin: 0,
                ..
            }
        ));
        assert_eq!(
            &sent[1..],
            [
                // A cancel is answered with a reject (BEP 6), and a choke
                // rejects what is still queued.
                Message::Reject(block(1, BLOCK_BYTES)),
                Message::Choke,
                Message::Reject(block(2, 0))
            ]
        );
    }

    #[test]
    fn silence_is_timed_out_and_keep_alives_go_out() {
        let limits = SessionLimits::default();
        let mut s = Session::new(limits, FAST, &with_pieces(&[]), 0);
        drain(&mut s, 0);
        s.handle_timeout(limits.keep_alive_ms);
        assert_eq!(drain(&mut s, limits.keep_alive_ms), [Message::KeepAlive]);
        assert!(events(&mut s).is_empty());
        s.handle_timeout(limits.idle_timeout_ms);
        assert_eq!(events(&mut s), [Event::TimedOut]);
    }

    #[test]
    fn availability_may_follow_the_extension_handshake_as_libtorrent_sends_it() {
        let mut s = Session::new(SessionLimits::default(), FAST, &with_pieces(&[]), 0);
        s.handle_message(
            Message::Extended {
                id: 0,
                payload: Bytes::from_static(b"d1:md6:ut_pexi1eee"),
            },
            1,
        );
        s.handle_message(Message::KeepAlive, 1);
        s.handle_message(Message::Bitfield(Bytes::from_static(&[0x80, 0x00])), 2);
        assert_eq!(events(&mut s), [Event::PeerHas(vec![0])]);
    }

    #[test]
    fn what_answers_a_cancelled_request_is_not_held_against_the_peer() {
        let limits = SessionLimits {
            unrequested_blocks_max: 0,
            ..SessionLimits::default()
        };
        let mut s = Session::new(limits, FAST, &with_pieces(&[]), 0);
        s.handle_message(Message::HaveAll, 1);
        s.handle_message(Message::Unchoke, 1);
        s.request(block(0, 0), 0);
        s.request(block(0, BLOCK_BYTES), 0);
        s.cancel(block(0, 0));
        s.cancel(block(0, BLOCK_BYTES));
        events(&mut s);
        // BEP 6: the peer answers each with a reject, or sends it anyway.
        s.handle_message(Message::Reject(block(0, 0)), 2);
        s.handle_message(
            Message::Piece {
                piece: 0,
                begin: BLOCK_BYTES,
                data: Bytes::from(vec![0u8; BLOCK_BYTES as usize]),
            },
            2,
        );
        assert!(
            events(&mut s).is_empty(),
            "no misbehaviour, no lost request"
        );
    }

    #[test]
    fn a_request_left_unanswered_is_cancelled_and_handed_back() {
        let limits = SessionLimits::default();
        let mut s = Session::new(limits, FAST, &with_pieces(&[]), 0);
        s.handle_message(Message::HaveAll, 1);
        s.handle_message(Message::Unchoke, 1);
        s.request(block(2, 0), 10);
        events(&mut s);
        drain(&mut s, 10);
        s.handle_timeout(10 + limits.request_timeout_ms - 1);
        assert!(events(&mut s).is_empty());
        s.handle_timeout(10 + limits.request_timeout_ms);
        assert_eq!(events(&mut s), [Event::RequestsLost(vec![block(2, 0)])]);
        assert!(drain(&mut s, 40_000).contains(&Message::Cancel(block(2, 0))));
        assert!(s.our_requests().is_empty());
    }

    #[test]
    fn availability_may_not_be_restated_later() {
        let mut s = Session::new(SessionLimits::default(), FAST, &with_pieces(&[]), 0);
        s.handle_message(Message::Have(1), 1);
        s.handle_message(Message::HaveAll, 2);
        let got = events(&mut s);
        assert_eq!(
            got.last(),
            Some(&Event::Misbehaved("have all/none after its first message"))
        );
    }

    #[test]
    fn the_extension_handshake_goes_out_and_the_peers_queue_bounds_our_requests() {
        let both = Extensions {
            fast: true,
            extended: true,
        };
        let mut s = Session::new(SessionLimits::default(), both, &with_pieces(&[]), 0);
        let sent = drain(&mut s, 0);
        assert!(matches!(sent[0], Message::HaveNone), "availability first");
        let Message::Extended { id: 0, payload } = &sent[1] else {
            panic!("no extension handshake: {sent:?}");
        };
        let ours = ExtensionHandshake::decode(payload).unwrap();
        assert_eq!(ours.request_queue, Some(250));
        assert!(ours.client.unwrap().starts_with("shoal"));
        // A peer that queues only three requests is asked for three.
        let theirs = ExtensionHandshake {
            request_queue: Some(3),
            ..ExtensionHandshake::default()
        };
        s.handle_message(
            Message::Extended {
                id: 0,
                payload: Bytes::from(theirs.encode()),
            },
            1,
        );
        s.handle_message(Message::HaveAll, 1);
        s.handle_message(Message::Unchoke, 1);
        assert_eq!(s.request_room(), 3);
        // Garbage in its place is ignored, not fatal.
        s.handle_message(
            Message::Extended {
                id: 0,
                payload: Bytes::from_static(b"not bencode"),
            },
            2,
        );
        assert!(events(&mut s)
            .iter()
            .all(|e| !matches!(e, Event::Misbehaved(_))));
    }
}
