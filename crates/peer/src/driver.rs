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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Where a swarm's verified pieces live.
pub trait PieceStore: Send + Sync + 'static {
    /// A stored (verified) piece's bytes.
    fn read(&self, piece: u32) -> Option<Bytes>;
    /// Keeps a piece that verified against the manifest.
    fn store(&self, piece: VerifiedPiece);
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
}

impl DriverConfig {
    pub fn new(swarm_key: SwarmKey, peer_id: [u8; 20]) -> Self {
        Self {
            swarm_key,
            peer_id,
            connect: Vec::new(),
            seed_for: Duration::ZERO,
            send_queue_messages: 256,
            handshake_timeout: Duration::from_secs(10),
            run_for_max: Duration::from_secs(3600),
        }
    }
}

/// What a connection task tells the swarm's task.
enum FromPeer {
    Ready {
        key: PeerKey,
        ip: std::net::IpAddr,
        fast: bool,
        writer: mpsc::Sender<Message>,
    },
    Message(PeerKey, Message),
    Closed(PeerKey),
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
    let (events, mut inbox) = mpsc::channel::<FromPeer>(1024);
    let mut peers = Peers::default();
    let mut next_key: PeerKey = 1;
    for addr in &config.connect {
        let events = events.clone();
        let config = config.clone();
        let key = next_key;
        next_key += 1;
        let addr = *addr;
        let task = tokio::spawn(async move {
            let connected =
                tokio::time::timeout(config.handshake_timeout, TcpStream::connect(addr)).await;
            match connected {
                Ok(Ok(stream)) => connection(stream, key, layout, config, events).await,
                _ => {
                    let _ = events.send(FromPeer::Closed(key)).await;
                }
            }
        });
        peers.tasks.insert(key, task.abort_handle());
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
            accepted = async {
                match &listener {
                    Some(listener) => listener.accept().await.ok(),
                    None => std::future::pending().await,
                }
            } => {
                if let Some((stream, from)) = accepted {
                    // A banned address is not heard again; nor are more
                    // connections than the swarm could take.
                    if peers.banned.contains(&from.ip()) || peers.tasks.len() >= ACCEPTED_PENDING_MAX {
                        continue;
                    }
                    let key = next_key;
                    next_key += 1;
                    let (events, config) = (events.clone(), config.clone());
                    let task = tokio::spawn(connection(stream, key, layout, config, events));
                    peers.tasks.insert(key, task.abort_handle());
                }
            }
            event = inbox.recv() => {
                let Some(event) = event else { break };
                match event {
                    FromPeer::Ready { key, ip, fast, writer } => {
                        if !peers.banned.contains(&ip) && swarm.add_peer(key, fast, now_ms()) {
                            peers.writers.insert(key, writer);
                            peers.ips.insert(key, ip);
                        } else {
                            peers.close(key);
                        }
                    }
                    FromPeer::Message(key, message) => swarm.handle_message(key, message, now_ms()),
                    FromPeer::Closed(key) => {
                        peers.close(key);
                        swarm.remove_peer(key, now_ms());
                    }
                }
            }
            _ = tick.tick() => swarm.handle_timeout(now_ms()),
        }
        serve_actions(&mut swarm, &pieces, &mut peers, now_ms());
    }
    for key in peers.tasks.keys().copied().collect::<Vec<_>>() {
        peers.close(key);
    }
    swarm.counters()
}

/// Connections accepted or being opened at once, at most.
const ACCEPTED_PENDING_MAX: usize = 256;
/// A write to a peer that takes longer than this ends the connection (a
/// peer that does not read must not hold a task and its buffers).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The driver's view of its connections.
#[derive(Default)]
struct Peers {
    writers: std::collections::HashMap<PeerKey, mpsc::Sender<Message>>,
    tasks: std::collections::HashMap<PeerKey, tokio::task::AbortHandle>,
    ips: std::collections::HashMap<PeerKey, std::net::IpAddr>,
    /// Addresses of banned peers: a liar does not come back clean on a
    /// new connection.
    banned: std::collections::HashSet<std::net::IpAddr>,
}

impl Peers {
    /// Ends a connection: its task is aborted (its socket closes even if
    /// a write is stuck).
    fn close(&mut self, key: PeerKey) {
        self.writers.remove(&key);
        self.ips.remove(&key);
        if let Some(task) = self.tasks.remove(&key) {
            task.abort();
        }
    }
}

/// Carries out what the swarm decided.
fn serve_actions(swarm: &mut Swarm, pieces: &Arc<dyn PieceStore>, peers: &mut Peers, now_ms: u64) {
    while let Some(action) = swarm.poll_action() {
        match action {
            Action::Send { peer, message } => {
                let full = peers
                    .writers
                    .get(&peer)
                    .is_some_and(|writer| writer.try_send(message).is_err());
                if full {
                    // It does not read what we send: drop it.
                    peers.close(peer);
                    swarm.remove_peer(peer, now_ms);
                }
            }
            Action::Close { peer, reason } => {
                tracing::debug!(peer, reason, "closing a peer connection");
                peers.close(peer);
            }
            Action::Store(piece) => pieces.store(piece),
            Action::Read { peer, block } => {
                let Some(piece) = pieces.read(block.piece) else {
                    continue;
                };
                let (start, end) = (block.begin as usize, (block.begin + block.length) as usize);
                if end <= piece.len() {
                    swarm.served(peer, block, piece.slice(start..end), now_ms);
                }
            }
            Action::Banned(peer) => {
                let ip = peers.ips.get(&peer).copied();
                tracing::warn!(
                    peer,
                    ?ip,
                    "peer banned: it sent blocks that failed verification"
                );
                if let Some(ip) = ip {
                    peers.banned.insert(ip);
                }
                peers.close(peer);
            }
        }
    }
}

/// One connection, and the swarm's task told when it ends (whether or not
/// the handshake succeeded), so its slot is freed.
async fn connection(
    stream: TcpStream,
    key: PeerKey,
    layout: PieceLayout,
    config: DriverConfig,
    events: mpsc::Sender<FromPeer>,
) {
    run_connection(stream, key, layout, config, events.clone()).await;
    let _ = events.send(FromPeer::Closed(key)).await;
}

/// The handshake, then a reader and a writer.
async fn run_connection(
    mut stream: TcpStream,
    key: PeerKey,
    layout: PieceLayout,
    config: DriverConfig,
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
            fast: extensions.fast,
            writer,
        })
        .await
        .is_err()
    {
        return;
    }
    let (mut read_half, mut write_half) = stream.into_split();
    let mut writing = tokio::spawn(async move {
        let mut out = BytesMut::new();
        while let Some(message) = queue.recv().await {
            out.clear();
            message.encode(&mut out);
            // Whatever else is queued goes in the same write.
            while let Ok(more) = queue.try_recv() {
                more.encode(&mut out);
            }
            match tokio::time::timeout(WRITE_TIMEOUT, write_half.write_all(&out)).await {
                Ok(Ok(())) => {}
                _ => return,
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
        fn read(&self, piece: u32) -> Option<Bytes> {
            self.0.lock().unwrap().get(&piece).cloned()
        }
        fn store(&self, piece: VerifiedPiece) {
            self.0
                .lock()
                .unwrap()
                .insert(piece.index().0, piece.into_data());
        }
    }

    /// Serves every piece with its first byte flipped.
    struct Lying(Memory);

    impl PieceStore for Lying {
        fn read(&self, piece: u32) -> Option<Bytes> {
            let mut bytes = self.0.read(piece)?.to_vec();
            bytes[0] ^= 0xff;
            Some(Bytes::from(bytes))
        }
        fn store(&self, piece: VerifiedPiece) {
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
        if counters.pieces_failed > 0 {
            assert_eq!(counters.peers_banned, 1, "the liar, proven, and only it");
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
