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
    let mut next_key: PeerKey = 1;
    for addr in &config.connect {
        let events = events.clone();
        let config = config.clone();
        let key = next_key;
        next_key += 1;
        let addr = *addr;
        tokio::spawn(async move {
            let connected =
                tokio::time::timeout(config.handshake_timeout, TcpStream::connect(addr)).await;
            if let Ok(Ok(stream)) = connected {
                connection(stream, key, layout, config, events).await;
            }
        });
    }
    let mut writers: std::collections::HashMap<PeerKey, mpsc::Sender<Message>> =
        std::collections::HashMap::new();
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
                if let Some((stream, _)) = accepted {
                    let key = next_key;
                    next_key += 1;
                    let (events, config) = (events.clone(), config.clone());
                    tokio::spawn(connection(stream, key, layout, config, events));
                }
            }
            event = inbox.recv() => {
                let Some(event) = event else { break };
                match event {
                    FromPeer::Ready { key, fast, writer } => {
                        if swarm.add_peer(key, fast, now_ms()) {
                            writers.insert(key, writer);
                        }
                    }
                    FromPeer::Message(key, message) => swarm.handle_message(key, message, now_ms()),
                    FromPeer::Closed(key) => {
                        writers.remove(&key);
                        swarm.remove_peer(key, now_ms());
                    }
                }
            }
            _ = tick.tick() => swarm.handle_timeout(now_ms()),
        }
        serve_actions(&mut swarm, &pieces, &mut writers, now_ms());
    }
    swarm.counters()
}

/// Carries out what the swarm decided.
fn serve_actions(
    swarm: &mut Swarm,
    pieces: &Arc<dyn PieceStore>,
    writers: &mut std::collections::HashMap<PeerKey, mpsc::Sender<Message>>,
    now_ms: u64,
) {
    while let Some(action) = swarm.poll_action() {
        match action {
            Action::Send { peer, message } => {
                let full = writers
                    .get(&peer)
                    .is_some_and(|writer| writer.try_send(message).is_err());
                if full {
                    // It does not read what we send: drop it (its task
                    // ends when the writer is gone).
                    writers.remove(&peer);
                    swarm.remove_peer(peer, now_ms);
                }
            }
            Action::Close { peer, reason } => {
                tracing::debug!(peer, reason, "closing a peer connection");
                writers.remove(&peer);
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
                tracing::warn!(peer, "peer banned: it sent blocks that failed verification");
                writers.remove(&peer);
            }
        }
    }
}

/// One connection: the handshake, then a reader and a writer.
async fn connection(
    mut stream: TcpStream,
    key: PeerKey,
    layout: PieceLayout,
    config: DriverConfig,
    events: mpsc::Sender<FromPeer>,
) {
    let _ = stream.set_nodelay(true);
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
            if write_half.write_all(&out).await.is_err() {
                return;
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
    let _ = events.send(FromPeer::Closed(key)).await;
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
