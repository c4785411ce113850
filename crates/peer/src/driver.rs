//! The thin tokio driver of a [`Swarm`]: TCP connections in and out, the
//! handshake, and bytes to and from the wire codec. Every decision is the
//! swarm's; this module only moves bytes and the clock.
//!
//! One task owns the swarm and serves its [`Action`]s; one task per
//! connection reads (decoding with the connection's limits) and one writes
//! (from a bounded queue, so a peer that does not read cannot make us
//! buffer without bound: when its queue is full it is dropped).

use crate::assembly::PeerKey;
use crate::swarm::{Action, Swarm, SwarmCounters, SwarmKey};
use crate::wire::{Decoder, Extensions, Handshake, Message, WireLimits, HANDSHAKE_BYTES};
use bytes::{Bytes, BytesMut};
use shoal_core::{PieceLayout, VerifiedPiece};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Where a swarm's verified pieces live.
pub trait PieceStore: Send + Sync + 'static {
    /// `length` bytes from `begin` of a stored (verified) piece.
    fn read(&self, piece: u32, begin: u32, length: u32) -> Option<Bytes>;
    /// Keeps a piece that verified against the manifest.
    fn store(&self, piece: VerifiedPiece) -> std::io::Result<()>;
}

/// How the driver runs.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub swarm_key: SwarmKey,
    pub peer_id: [u8; 20],
    /// Peers to connect to.
    pub connect: Vec<SocketAddr>,
    /// How long to keep serving once every piece is here (0: stop then).
    pub seed_for: Duration,
    /// Messages queued for one peer's socket, at most.
    pub send_queue_messages: usize,
    /// Give up connecting and handshaking after this long.
    pub handshake_timeout: Duration,
    /// Stop after this long whatever happens.
    pub run_for_max: Duration,
    /// Upload cap over all connections, bytes per second (`None`: none).
    pub upload_bytes_per_s: Option<u64>,
    /// Connect from this local address (peers on distinct loopback
    /// addresses, or a chosen interface).
    pub local_address: Option<std::net::IpAddr>,
}

impl DriverConfig {
    pub fn new(swarm_key: SwarmKey, peer_id: [u8; 20]) -> Self {
        Self {
            swarm_key,
            peer_id,
            connect: Vec::new(),
            seed_for: Duration::ZERO,
            // Above the 250 requests a peer may have outstanding
            // (`reqq`) plus the haves sent meanwhile: a peer that reads
            // while our upload cap holds its blocks back is not dropped.
            send_queue_messages: 1024,
            handshake_timeout: Duration::from_secs(10),
            run_for_max: Duration::from_secs(3600),
            upload_bytes_per_s: None,
            local_address: None,
        }
    }
}

/// What a connection task tells the swarm's task.
pub enum FromPeer {
    Ready {
        key: PeerKey,
        ip: std::net::IpAddr,
        peer_id: [u8; 20],
        /// What both ends announced (fast, extension protocol).
        extensions: Extensions,
        writer: mpsc::Sender<Message>,
    },
    Message(PeerKey, Message),
    /// So many blocks were written to the connection (the swarm reads the
    /// peer's next requests).
    Sent(PeerKey, u32),
    Closed(PeerKey),
}

/// Something for [`PeerNet::handle`]: a connection accepted, or news from
/// a connection's task.
pub enum NetEvent {
    Accepted(TcpStream, SocketAddr),
    Peer(FromPeer),
}

/// The extensions this driver announces.
const OURS: Extensions = Extensions {
    fast: true,
    extended: true,
};

/// Runs `swarm` until it is complete and has seeded for the configured
/// time (or the time limit): accepts on `listener` if given, connects to
/// the configured peers. Returns the swarm's counters.
pub async fn run(
    mut swarm: Swarm,
    layout: PieceLayout,
    pieces: Arc<dyn PieceStore>,
    listener: Option<TcpListener>,
    config: DriverConfig,
) -> SwarmCounters {
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut net = PeerNet::new(layout, listener, config.clone());
    for addr in &config.connect {
        net.connect(*addr);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut complete_at: Option<Instant> = None;
    loop {
        if swarm.is_complete() {
            let at = *complete_at.get_or_insert_with(Instant::now);
            if at.elapsed() >= config.seed_for {
                break;
            }
        }
        if started.elapsed() >= config.run_for_max {
            break;
        }
        tokio::select! {
            event = net.next() => net.handle(&mut swarm, event, now_ms()),
            _ = tick.tick() => swarm.handle_timeout(now_ms()),
        }
        for piece in net.serve_actions(&mut swarm, pieces.as_ref(), now_ms()) {
            if let Err(error) = pieces.store(piece) {
                tracing::warn!(%error, "storing a piece from peers");
                net.close_all();
                return swarm.counters();
            }
        }
    }
    net.close_all();
    swarm.counters()
}

/// Connections accepted or being opened at once, at most.
const ACCEPTED_PENDING_MAX: usize = 256;
/// A write to a peer that takes longer than this ends the connection (a
/// peer that does not read must not hold a task and its buffers).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A writer retries reporting written blocks this often while the event
/// channel is full.
const SENT_RETRY: Duration = Duration::from_millis(10);
/// The upload cap's burst: a few blocks.
const UPLOAD_BURST_BYTES: u64 = 4 * crate::wire::BLOCK_BYTES as u64;

/// A shared upload cap (every connection's writer draws from it), with
/// the clock its bucket counts from.
struct UploadBucket {
    clock: Instant,
    bucket: std::sync::Mutex<shoal_core::rate::TokenBucket>,
}

type UploadCap = Arc<UploadBucket>;

/// The TCP side of one swarm: connections in and out, their tasks, and
/// the addresses banned. The swarm stays with the caller (who may drive
/// other work in the same task); this only moves bytes.
pub struct PeerNet {
    layout: PieceLayout,
    config: DriverConfig,
    listener: Option<TcpListener>,
    events: mpsc::Sender<FromPeer>,
    inbox: mpsc::Receiver<FromPeer>,
    next_key: PeerKey,
    writers: HashMap<PeerKey, mpsc::Sender<Message>>,
    tasks: HashMap<PeerKey, tokio::task::AbortHandle>,
    ips: HashMap<PeerKey, std::net::IpAddr>,
    /// Each connection's remote peer id, once it handshook.
    peer_ids: HashMap<PeerKey, [u8; 20]>,
    /// Connections we opened (for the tie-break between two connections
    /// with one peer), and to where.
    dialed: HashMap<PeerKey, SocketAddr>,
    /// Addresses of banned peers: a liar does not come back clean on a
    /// new connection.
    banned: HashSet<std::net::IpAddr>,
    upload: Option<UploadCap>,
}

impl PeerNet {
    pub fn new(layout: PieceLayout, listener: Option<TcpListener>, config: DriverConfig) -> Self {
        let (events, inbox) = mpsc::channel::<FromPeer>(1024);
        let upload = config.upload_bytes_per_s.map(|rate| {
            Arc::new(UploadBucket {
                clock: Instant::now(),
                bucket: std::sync::Mutex::new(shoal_core::rate::TokenBucket::new(
                    rate,
                    UPLOAD_BURST_BYTES,
                )),
            })
        });
        Self {
            layout,
            config,
            listener,
            events,
            inbox,
            next_key: 1,
            writers: HashMap::new(),
            tasks: HashMap::new(),
            ips: HashMap::new(),
            peer_ids: HashMap::new(),
            dialed: HashMap::new(),
            banned: HashSet::new(),
            upload,
        }
    }

    /// The remote peer ids of the connections that handshook.
    pub fn peer_ids(&self) -> impl Iterator<Item = &[u8; 20]> + '_ {
        self.peer_ids.values()
    }

    /// Addresses banned (smart-ban proved their peers sent bad blocks).
    pub fn banned_addresses(&self) -> Vec<std::net::IpAddr> {
        let mut banned: Vec<_> = self.banned.iter().copied().collect();
        banned.sort();
        banned
    }

    /// Opens a connection to `addr`, unless one to it is open or being
    /// opened, it is banned, or too many are pending.
    pub fn connect(&mut self, addr: SocketAddr) {
        if self.banned.contains(&addr.ip())
            || self.dialed.values().any(|a| *a == addr)
            || self.tasks.len() >= ACCEPTED_PENDING_MAX
        {
            return;
        }
        let key = self.next_key;
        self.next_key += 1;
        let (events, config, layout) = (self.events.clone(), self.config.clone(), self.layout);
        let upload = self.upload.clone();
        let task = tokio::spawn(async move {
            let connected =
                tokio::time::timeout(config.handshake_timeout, dial(addr, config.local_address))
                    .await;
            match connected {
                Ok(Ok(stream)) => connection(stream, key, layout, config, upload, events).await,
                _ => {
                    let _ = events.send(FromPeer::Closed(key)).await;
                }
            }
        });
        self.tasks.insert(key, task.abort_handle());
        self.dialed.insert(key, addr);
    }

    /// The next connection accepted or message from a connection.
    /// Cancel-safe (for `select!`).
    pub async fn next(&mut self) -> NetEvent {
        let listener = &self.listener;
        tokio::select! {
            accepted = async {
                match listener {
                    Some(listener) => listener.accept().await,
                    None => std::future::pending().await,
                }
            } => match accepted {
                Ok((stream, from)) => NetEvent::Accepted(stream, from),
                // Out of file descriptors, say: nothing to do but wait a
                // little (the loop comes back here).
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    std::future::pending().await
                }
            },
            event = self.inbox.recv() => match event {
                Some(event) => NetEvent::Peer(event),
                // We hold a sender: never closed.
                None => std::future::pending().await,
            },
        }
    }

    /// Carries out an event from [`Self::next`].
    pub fn handle(&mut self, swarm: &mut Swarm, event: NetEvent, now_ms: u64) {
        match event {
            NetEvent::Accepted(stream, from) => {
                // A banned address is not heard again; nor are more
                // connections than the swarm could take.
                if self.banned.contains(&from.ip()) || self.tasks.len() >= ACCEPTED_PENDING_MAX {
                    return;
                }
                let key = self.next_key;
                self.next_key += 1;
                let (events, config) = (self.events.clone(), self.config.clone());
                let upload = self.upload.clone();
                let task =
                    tokio::spawn(connection(stream, key, self.layout, config, upload, events));
                self.tasks.insert(key, task.abort_handle());
            }
            NetEvent::Peer(FromPeer::Ready {
                key,
                ip,
                peer_id,
                extensions,
                writer,
            }) => {
                if self.banned.contains(&ip) || !self.tasks.contains_key(&key) {
                    self.close(key);
                    return;
                }
                if !self.keep_one_of_two(swarm, key, ip, peer_id, now_ms) {
                    self.close(key);
                    return;
                }
                if swarm.add_peer(key, extensions, now_ms) {
                    self.writers.insert(key, writer);
                    self.ips.insert(key, ip);
                    self.peer_ids.insert(key, peer_id);
                } else {
                    self.close(key);
                }
            }
            NetEvent::Peer(FromPeer::Message(key, message)) => {
                swarm.handle_message(key, message, now_ms)
            }
            NetEvent::Peer(FromPeer::Sent(key, blocks)) => swarm.handle_sent(key, blocks, now_ms),
            NetEvent::Peer(FromPeer::Closed(key)) => {
                self.close(key);
                swarm.remove_peer(key, now_ms);
            }
        }
    }

    /// Two connections with one peer: when each side dialled the other,
    /// both keep the one the lower peer id opened; when we opened both, the
    /// first stays; when it opened both, it decides. A second connection
    /// claiming a connected peer's id from another address is refused.
    /// `false`: drop the new one.
    fn keep_one_of_two(
        &mut self,
        swarm: &mut Swarm,
        key: PeerKey,
        ip: std::net::IpAddr,
        peer_id: [u8; 20],
        now_ms: u64,
    ) -> bool {
        let Some(old) = self
            .peer_ids
            .iter()
            .find(|(_, id)| **id == peer_id)
            .map(|(k, _)| *k)
        else {
            return true;
        };
        // The same id from another address: peer ids are no secret, so
        // the newcomer does not displace the connection we have.
        if self.ips.get(&old).is_some_and(|old_ip| *old_ip != ip) {
            return false;
        }
        let we_opened_new = self.dialed.contains_key(&key);
        let we_opened_old = self.dialed.contains_key(&old);
        match (we_opened_old, we_opened_new) {
            // Both ours (the peer at two addresses): keep the first.
            (true, true) => false,
            // Both theirs: the opener decides which to close; keep both
            // here until it does.
            (false, false) => true,
            // One each way: both sides keep the one the lower id opened.
            _ => {
                let we_are_lower = self.config.peer_id < peer_id;
                if we_opened_new == we_are_lower {
                    self.close(old);
                    swarm.remove_peer(old, now_ms);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Ends a connection: its task is aborted (its socket closes even if
    /// a write is stuck).
    fn close(&mut self, key: PeerKey) {
        self.writers.remove(&key);
        self.ips.remove(&key);
        self.peer_ids.remove(&key);
        self.dialed.remove(&key);
        if let Some(task) = self.tasks.remove(&key) {
            task.abort();
        }
    }

    /// Ends every connection.
    pub fn close_all(&mut self) {
        for key in self.tasks.keys().copied().collect::<Vec<_>>() {
            self.close(key);
        }
    }

    /// Carries out what the swarm decided; returns the pieces it verified
    /// from peers, for the caller to store.
    pub fn serve_actions(
        &mut self,
        swarm: &mut Swarm,
        pieces: &dyn PieceStore,
        now_ms: u64,
    ) -> Vec<VerifiedPiece> {
        let mut verified = Vec::new();
        while let Some(action) = swarm.poll_action() {
            match action {
                Action::Send { peer, message } => {
                    let full = self
                        .writers
                        .get(&peer)
                        .is_some_and(|writer| writer.try_send(message).is_err());
                    if full {
                        // It does not read what we send: drop it.
                        self.close(peer);
                        swarm.remove_peer(peer, now_ms);
                    }
                }
                Action::Close { peer, reason } => {
                    tracing::debug!(peer, reason, "closing a peer connection");
                    self.close(peer);
                }
                Action::Store(piece) => verified.push(piece),
                Action::Read { peer, block } => {
                    match pieces.read(block.piece, block.begin, block.length) {
                        Some(data) if data.len() == block.length as usize => {
                            swarm.served(peer, block, data, now_ms)
                        }
                        _ => swarm.unserved(peer, block, now_ms),
                    }
                }
                Action::Banned(peer) => {
                    let ip = self.ips.get(&peer).copied();
                    tracing::warn!(
                        peer,
                        ?ip,
                        "peer banned: it sent blocks that failed verification"
                    );
                    if let Some(ip) = ip {
                        self.banned.insert(ip);
                    }
                    self.close(peer);
                }
            }
        }
        verified
    }
}

/// Most bytes gathered into one write.
const WRITE_BATCH_BYTES: usize = 256 << 10;

/// Appends `message` to `out`, waiting first for the upload cap if it
/// carries a block.
async fn encode_capped(message: &Message, out: &mut BytesMut, upload: Option<&UploadBucket>) {
    let before = out.len();
    message.encode(out);
    if let (Some(cap), Message::Piece { .. }) = (upload, message) {
        wait_for_upload(cap, (out.len() - before) as u64).await;
    }
}

/// Connects to `addr`, from `local` if given.
async fn dial(addr: SocketAddr, local: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(local) = local else {
        return TcpStream::connect(addr).await;
    };
    let socket = match local {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(addr).await
}

/// Waits until the upload cap lets `bytes` (at most the burst: one
/// message) go, and takes them.
async fn wait_for_upload(cap: &UploadBucket, bytes: u64) {
    loop {
        let now_ns = cap.clock.elapsed().as_nanos() as u64;
        let wait_ns = {
            let mut bucket = cap.bucket.lock().unwrap_or_else(|e| e.into_inner());
            if bucket.take_chunk(now_ns, bytes, bytes) > 0 {
                return;
            }
            bucket.wait_ns(now_ns, bytes).max(500_000)
        };
        tokio::time::sleep(Duration::from_nanos(wait_ns)).await;
    }
}

/// One connection, and the swarm's task told when it ends (whether or not
/// the handshake succeeded), so its slot is freed.
async fn connection(
    stream: TcpStream,
    key: PeerKey,
    layout: PieceLayout,
    config: DriverConfig,
    upload: Option<UploadCap>,
    events: mpsc::Sender<FromPeer>,
) {
    run_connection(stream, key, layout, config, upload, events.clone()).await;
    let _ = events.send(FromPeer::Closed(key)).await;
}

/// The handshake, then a reader and a writer.
async fn run_connection(
    mut stream: TcpStream,
    key: PeerKey,
    layout: PieceLayout,
    config: DriverConfig,
    upload: Option<UploadCap>,
    events: mpsc::Sender<FromPeer>,
) {
    let _ = stream.set_nodelay(true);
    let Ok(remote) = stream.peer_addr() else {
        return;
    };
    let ours = Handshake {
        extensions: OURS,
        info_hash: config.swarm_key.wire_bytes(),
        peer_id: config.peer_id,
    };
    let mut decoder = Decoder::new();
    let theirs = tokio::time::timeout(config.handshake_timeout, async {
        stream.write_all(&ours.encode()).await.ok()?;
        let mut buffer = [0u8; HANDSHAKE_BYTES];
        loop {
            if let Some(handshake) = decoder.handshake().ok()? {
                return Some(handshake);
            }
            let read = stream.read(&mut buffer).await.ok()?;
            if read == 0 {
                return None;
            }
            decoder.feed(&buffer[..read]);
        }
    })
    .await;
    let Ok(Some(theirs)) = theirs else { return };
    if theirs.info_hash != ours.info_hash || theirs.peer_id == ours.peer_id {
        return;
    }
    let extensions = OURS.common(theirs.extensions);
    let limits = WireLimits { layout, extensions };
    let (writer, mut queue) = mpsc::channel::<Message>(config.send_queue_messages);
    if events
        .send(FromPeer::Ready {
            key,
            ip: remote.ip(),
            peer_id: theirs.peer_id,
            extensions,
            writer,
        })
        .await
        .is_err()
    {
        return;
    }
    let (mut read_half, mut write_half) = stream.into_split();
    let sent_events = events.clone();
    let mut writing = tokio::spawn(async move {
        let mut out = BytesMut::new();
        // Blocks written and not yet reported. Reported without waiting:
        // a writer blocked on the shared event channel would stop draining
        // its queue and the peer would be dropped as one that does not
        // read; what could not be reported is retried shortly.
        let mut unreported: u32 = 0;
        loop {
            let message = if unreported > 0 {
                tokio::select! {
                    message = queue.recv() => message,
                    _ = tokio::time::sleep(SENT_RETRY) => {
                        if sent_events.try_send(FromPeer::Sent(key, unreported)).is_ok() {
                            unreported = 0;
                        }
                        continue;
                    }
                }
            } else {
                queue.recv().await
            };
            let Some(message) = message else { break };
            out.clear();
            let mut blocks = u32::from(matches!(message, Message::Piece { .. }));
            encode_capped(&message, &mut out, upload.as_deref()).await;
            // Whatever else is queued goes in the same write (up to a
            // bound, so a capped writer does not sit on a long batch).
            while out.len() < WRITE_BATCH_BYTES {
                let Ok(more) = queue.try_recv() else { break };
                blocks += u32::from(matches!(more, Message::Piece { .. }));
                encode_capped(&more, &mut out, upload.as_deref()).await;
            }
            match tokio::time::timeout(WRITE_TIMEOUT, write_half.write_all(&out)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
            unreported += blocks;
            if unreported > 0
                && sent_events
                    .try_send(FromPeer::Sent(key, unreported))
                    .is_ok()
            {
                unreported = 0;
            }
        }
    });
    let mut buffer = vec![0u8; 64 * 1024];
    'reading: loop {
        loop {
            match decoder.message(&limits) {
                Ok(Some(message)) => {
                    if events.send(FromPeer::Message(key, message)).await.is_err() {
                        break 'reading;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(peer = key, %error, "peer broke the protocol");
                    break 'reading;
                }
            }
        }
        tokio::select! {
            read = read_half.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => decoder.feed(&buffer[..n]),
            },
            // The swarm dropped the writer: this connection is over.
            _ = &mut writing => break,
        }
    }
    writing.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::SwarmLimits;
    use shoal_core::bitfield::PieceSet;
    use shoal_core::{Manifest, PieceIndex, PieceSize, Validators};
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Memory(Mutex<HashMap<u32, Bytes>>);

    impl PieceStore for Memory {
        fn read(&self, piece: u32, begin: u32, length: u32) -> Option<Bytes> {
            let data = self.0.lock().unwrap().get(&piece).cloned()?;
            let end = (begin + length) as usize;
            (end <= data.len()).then(|| data.slice(begin as usize..end))
        }
        fn store(&self, piece: VerifiedPiece) -> std::io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .insert(piece.index().0, piece.into_data());
            Ok(())
        }
    }

    /// Serves every piece with its first byte flipped.
    struct Lying(Memory);

    impl PieceStore for Lying {
        fn read(&self, piece: u32, begin: u32, length: u32) -> Option<Bytes> {
            let mut bytes = self.0.read(piece, begin, length)?.to_vec();
            bytes[0] ^= 0xff;
            Some(Bytes::from(bytes))
        }
        fn store(&self, piece: VerifiedPiece) -> std::io::Result<()> {
            self.0.store(piece)
        }
    }

    fn seeded(manifest: &Manifest, data: &[u8], store: &Memory) -> PieceSet {
        let count = manifest.piece_count();
        let piece_bytes = manifest.piece_size().bytes() as usize;
        let mut all = PieceSet::new(count);
        for i in 0..count {
            all.insert(PieceIndex(i));
            let start = i as usize * piece_bytes;
            let end = (start + piece_bytes).min(data.len());
            store
                .0
                .lock()
                .unwrap()
                .insert(i, Bytes::copy_from_slice(&data[start..end]));
        }
        all
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lying_seed_over_tcp_costs_retries_never_a_bad_byte() {
        let size = 8 * (256 << 10) + 99;
        let data: Vec<u8> = (0..size).map(|i| (i * 13 % 241) as u8).collect();
        let manifest = Manifest::from_data(
            &data,
            PieceSize::for_object_size(size as u64),
            Validators::default(),
        )
        .unwrap();
        let key = SwarmKey::for_object(&manifest.id());
        let limits = SwarmLimits {
            rechoke_every_ms: 200,
            ..SwarmLimits::default()
        };
        let mut seeds = Vec::new();
        let mut addrs = Vec::new();
        for (n, lying) in [(4u8, false), (5, true)] {
            let honest = Memory::default();
            let all = seeded(&manifest, &data, &honest);
            let store: Arc<dyn PieceStore> = if lying {
                Arc::new(Lying(honest))
            } else {
                Arc::new(honest)
            };
            let listener = TcpListener::bind(format!("127.0.0.{n}:0")).await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let mut config = DriverConfig::new(key, [n; 20]);
            config.seed_for = Duration::from_secs(5);
            let swarm = Swarm::new(manifest.clone(), all, limits, 0);
            seeds.push(tokio::spawn(run(
                swarm,
                manifest.layout(),
                store,
                Some(listener),
                config,
            )));
        }
        let store = Arc::new(Memory::default());
        let mut config = DriverConfig::new(key, [6; 20]);
        config.connect = addrs;
        config.run_for_max = Duration::from_secs(30);
        let swarm = Swarm::new(
            manifest.clone(),
            PieceSet::new(manifest.piece_count()),
            limits,
            0,
        )
        .with_salt(6);
        let counters = run(swarm, manifest.layout(), store.clone(), None, config).await;
        eprintln!(
            "pieces failed: {}, peers banned: {}",
            counters.pieces_failed, counters.peers_banned
        );
        // Smart-ban needs two strikes: a single spoiled piece whose blocks
        // came from both seeds settles one strike on the liar and bans no
        // one. Never more than the one liar is banned.
        assert!(counters.peers_banned <= 1, "only the liar");
        if counters.pieces_failed >= 4 {
            assert_eq!(counters.peers_banned, 1, "the liar, proven");
        }
        let pieces = store.0.lock().unwrap();
        assert_eq!(pieces.len() as u32, manifest.piece_count(), "complete");
        let mut whole = Vec::new();
        for i in 0..manifest.piece_count() {
            whole.extend_from_slice(&pieces[&i]);
        }
        assert!(whole == data, "byte-exact, whatever the liar sent");
        for seed in seeds {
            seed.abort();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peers_on_loopback_addresses_download_from_a_seed_and_each_other() {
        let size = 12 * (256 << 10) + 4321;
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let manifest = Manifest::from_data(
            &data,
            PieceSize::for_object_size(size as u64),
            Validators::default(),
        )
        .unwrap();
        let layout = manifest.layout();
        let count = manifest.piece_count();
        let key = SwarmKey::for_object(&manifest.id());
        let piece_bytes = manifest.piece_size().bytes() as usize;

        // The seed, on 127.0.0.1.
        let seed_store = Arc::new(Memory::default());
        let mut all = PieceSet::new(count);
        for i in 0..count {
            all.insert(PieceIndex(i));
            let start = i as usize * piece_bytes;
            let end = (start + piece_bytes).min(data.len());
            seed_store
                .0
                .lock()
                .unwrap()
                .insert(i, Bytes::copy_from_slice(&data[start..end]));
        }
        let seed_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let seed_addr = seed_listener.local_addr().unwrap();
        let limits = SwarmLimits {
            rechoke_every_ms: 200,
            ..SwarmLimits::default()
        };
        let mut seed_config = DriverConfig::new(key, *b"-SH0001-seed-0000000");
        seed_config.seed_for = Duration::from_secs(3);
        let seed = tokio::spawn(run(
            Swarm::new(manifest.clone(), all, limits, 0),
            layout,
            seed_store,
            Some(seed_listener),
            seed_config,
        ));

        // Two leechers, on 127.0.0.2 and 127.0.0.3, each also listening.
        let mut leechers = Vec::new();
        let second = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let second_addr = second.local_addr().unwrap();
        for (n, listener) in [(2u8, Some(second)), (3, None)] {
            let store = Arc::new(Memory::default());
            let mut config = DriverConfig::new(key, [n; 20]);
            config.connect = vec![seed_addr];
            if n == 3 {
                config.connect.push(second_addr);
            }
            config.seed_for = Duration::from_millis(1500);
            config.run_for_max = Duration::from_secs(30);
            let swarm = Swarm::new(manifest.clone(), PieceSet::new(count), limits, 0)
                .with_salt(u64::from(n));
            let listener = match listener {
                Some(l) => Some(l),
                None => Some(TcpListener::bind("127.0.0.3:0").await.unwrap()),
            };
            let task = tokio::spawn(run(swarm, layout, store.clone(), listener, config));
            leechers.push((store, task));
        }
        for (store, task) in leechers {
            let counters = task.await.unwrap();
            assert_eq!(counters.bytes_from_peers, size as u64, "all from peers");
            assert_eq!(counters.pieces_failed, 0);
            let pieces = store.0.lock().unwrap();
            let mut whole = Vec::new();
            for i in 0..count {
                whole.extend_from_slice(&pieces[&i]);
            }
            assert!(whole == data, "byte-exact");
        }
        let seed_counters = seed.await.unwrap();
        assert!(seed_counters.bytes_to_peers >= size as u64);
    }
}
