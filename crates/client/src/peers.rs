//! A download's place in its viewers' swarm: the swarm (pure, from
//! `shoal-peer`), its TCP side, the tracker announces, and the gap the
//! caches fill (pure, [`crate::gap`]) wired to the download's scheduler.
//!
//! Everything runs in the download's own task: the swarm and the
//! scheduler are plain values both changed there, so a piece from a peer
//! and the same piece from a cache are settled in one place (the first to
//! verify wins; the other's requests are cancelled). Pieces from peers are
//! verified by the swarm against the manifest, written, read back and
//! verified again before they count, as the caches' pieces are.

use crate::gap::{GapConfig, GapDecision, GapInput, Pace};
use crate::schedule::Scheduler;
use crate::GetError;
use bytes::Bytes;
use shoal_core::bitfield::PieceSet;
use shoal_core::{Manifest, PieceIndex, PieceLayout, VerifiedPiece};
use shoal_peer::driver::{DriverConfig, NetEvent, PeerNet, PieceStore};
use shoal_peer::swarm::{Swarm, SwarmCounters, SwarmLimits};
use shoal_peer::tracker::{Announce, AnnounceAnswer, AnnounceEvent};
use shoal_peer::SwarmKey;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How a download takes part in its swarm (`shoal get`'s peer flags).
#[derive(Clone, Debug)]
pub struct PeerOptions {
    /// Join the swarm a plan names.
    pub enabled: bool,
    /// Accept peer connections here (default: an ephemeral port on the
    /// download's local address, else on every interface).
    pub listen: Option<SocketAddr>,
    /// Upload at most this, Mbit/s (`None`: no cap).
    pub upload_mbps: Option<f64>,
    /// Upload at all (`--no-upload` for metered links: peers stay choked).
    pub upload: bool,
    /// Keep seeding this long once the object is complete.
    pub seed_for: Duration,
    /// Downloads: the pace to hold, caches filling what peers leave
    /// (`None`: as fast as every source allows).
    pub target_mbps: Option<f64>,
    /// Connections at once, at most.
    pub peers_max: usize,
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            upload_mbps: None,
            upload: true,
            seed_for: Duration::ZERO,
            target_mbps: None,
            peers_max: 50,
        }
    }
}

/// Bytes by where they came from and went, for progress and the summary.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PeerReport {
    /// The swarm's key, hex.
    pub swarm: String,
    /// Peers connected now.
    pub peers: usize,
    /// Most peers connected at once.
    pub peers_max_seen: usize,
    pub bytes_from_peers: u64,
    /// From every HTTP source (the plan's caches; what they fetched from
    /// the origin for it is counted by the caches).
    pub bytes_from_caches: u64,
    pub bytes_to_peers: u64,
    /// Bytes from peers / all bytes received this run.
    pub peer_efficiency: f64,
    pub pieces_failed: u64,
    pub peers_banned: u64,
    /// The addresses banned.
    pub banned: Vec<String>,
    /// Seconds spent seeding after the object was complete.
    pub seeded_s: f64,
}

/// What [`PeerSide::next`] brings.
pub(crate) enum PeerEvent {
    Net(NetEvent),
    Announced(Result<AnnounceAnswer, String>),
}

/// Where peers read blocks from: the download's file. The handle stays
/// valid when the part file is renamed to its final name.
struct FileStore {
    file: Arc<std::fs::File>,
    layout: PieceLayout,
    manifest: Manifest,
}

impl PieceStore for FileStore {
    fn read(&self, piece: u32, begin: u32, length: u32) -> Option<Bytes> {
        let span = self.layout.piece_span(PieceIndex(piece))?;
        let end = u64::from(begin) + u64::from(length);
        if end > span.len() {
            return None;
        }
        let mut block = vec![0u8; length as usize];
        self.file
            .read_exact_at(&mut block, span.start() + u64::from(begin))
            .ok()?;
        Some(Bytes::from(block))
    }

    /// Writes a verified piece, reads it back and verifies it again.
    fn store(&self, piece: VerifiedPiece) -> std::io::Result<()> {
        let index = piece.index();
        let span = self
            .layout
            .piece_span(index)
            .ok_or_else(|| std::io::Error::other("piece outside the object"))?;
        self.file.write_all_at(piece.data(), span.start())?;
        let mut back = vec![0u8; piece.len()];
        self.file.read_exact_at(&mut back, span.start())?;
        if VerifiedPiece::verify(&self.manifest, index, Bytes::from(back)).is_err() {
            return Err(std::io::Error::other(format!(
                "piece {} reads back different from what was written",
                index.0
            )));
        }
        Ok(())
    }
}

/// How often to announce when few peers are connected, ms (at least the
/// tracker's minimum interval): a viewer behind NAT learns of newcomers
/// only this way, as they cannot reach it.
const ANNOUNCE_FEW_PEERS_MS: u64 = 5_000;
/// Fewer connected peers than this: announce again sooner.
const FEW_PEERS: usize = 5;
/// Time constant of the peers' goodput estimate, ms.
const PEER_RATE_TAU_MS: f64 = 2_000.0;
/// Longest wait for the tracker.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);

/// The swarm side of one download.
pub(crate) struct PeerSide {
    swarm: Swarm,
    net: PeerNet,
    store: Arc<FileStore>,
    key: SwarmKey,
    tracker: String,
    peer_id: [u8; 20],
    me: u64,
    port: u16,
    client: reqwest::Client,
    answers: mpsc::Sender<Result<AnnounceAnswer, String>>,
    inbox: mpsc::Receiver<Result<AnnounceAnswer, String>>,
    announcing: bool,
    next_announce_ms: u64,
    started_sent: bool,
    completed_sent: bool,
    gap: GapConfig,
    peer_rate: f64,
    last_peer_bytes: u64,
    last_rate_ms: u64,
    peers_max_seen: usize,
    object_size: u64,
    started: Instant,
}

/// A fresh peer id: shoal's client prefix and 12 bytes that differ per
/// process and moment.
fn new_peer_id(local: Option<std::net::IpAddr>) -> [u8; 20] {
    let mut seed = Vec::new();
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    seed.extend_from_slice(&now.as_nanos().to_le_bytes());
    seed.extend_from_slice(format!("{local:?}").as_bytes());
    let hash = blake3::hash(&seed);
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(b"-SH0100-");
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    for (slot, byte) in id[8..].iter_mut().zip(hash.as_bytes()) {
        *slot = ALPHABET[*byte as usize % ALPHABET.len()];
    }
    id
}

/// What [`PeerSide::start`] needs.
pub(crate) struct PeerStart<'a> {
    pub options: &'a PeerOptions,
    pub key: SwarmKey,
    pub tracker: String,
    pub manifest: Manifest,
    pub have: PieceSet,
    pub file: Arc<std::fs::File>,
    pub client: reqwest::Client,
    pub local_address: Option<std::net::IpAddr>,
    pub stream: Option<(f64, u64)>,
}

impl PeerSide {
    /// Binds the peer listener and sets the swarm up (the first announce
    /// goes out on the first tick).
    pub(crate) async fn start(start: PeerStart<'_>) -> Result<Self, GetError> {
        let options = start.options;
        let listen = options.listen.unwrap_or_else(|| {
            SocketAddr::new(
                start
                    .local_address
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
                0,
            )
        });
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| GetError::Failed(format!("--peer-listen {listen}: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| GetError::Failed(format!("--peer-listen {listen}: {e}")))?
            .port();
        let peer_id = new_peer_id(start.local_address);
        let layout = start.manifest.layout();
        let mut config = DriverConfig::new(start.key, peer_id);
        config.local_address = start.local_address;
        config.upload_bytes_per_s = options
            .upload_mbps
            .map(|mbps| (mbps * 1e6 / 8.0).max(1.0) as u64);
        let limits = SwarmLimits {
            upload: options.upload,
            peers_max: options.peers_max,
            // Short downloads need the choker to react within seconds, and
            // a newcomer with nothing to give its optimistic turn soon.
            rechoke_every_ms: 3_000,
            // A stream's next pieces are due within seconds: shallower
            // queues at peers.
            request_queue_ms: if start.stream.is_some() { 1_000 } else { 2_000 },
            choke: shoal_peer::choke::ChokeLimits {
                optimistic_every_ms: 6_000,
                ..Default::default()
            },
            ..SwarmLimits::default()
        };
        let me = crate::gap::peer_number(&peer_id);
        let swarm = Swarm::new(start.manifest.clone(), start.have, limits, 0).with_salt(me);
        let piece_bytes = layout.piece_size().bytes();
        let pace = match (start.stream, options.target_mbps) {
            (Some((bytes_per_s, play_from_ms)), _) => Pace::Stream {
                bytes_per_s,
                play_from_ms,
            },
            (None, Some(mbps)) => Pace::Target {
                bytes_per_s: mbps * 1e6 / 8.0,
                start_ms: 0,
                done_at_start: swarm.have().len(),
            },
            (None, None) => Pace::AsFastAsPossible,
        };
        let (answers, inbox) = mpsc::channel(4);
        tracing::info!(swarm = %start.key.to_hex(), tracker = %start.tracker, port, "joining the viewers' swarm");
        Ok(Self {
            net: PeerNet::new(layout, Some(listener), config),
            store: Arc::new(FileStore {
                file: start.file,
                layout,
                manifest: start.manifest,
            }),
            swarm,
            key: start.key,
            tracker: start.tracker,
            peer_id,
            me,
            port,
            client: start.client,
            answers,
            inbox,
            announcing: false,
            next_announce_ms: 0,
            started_sent: false,
            completed_sent: false,
            gap: GapConfig::new(layout.piece_count(), piece_bytes, pace),
            peer_rate: 0.0,
            last_peer_bytes: 0,
            last_rate_ms: 0,
            peers_max_seen: 0,
            object_size: layout.object_size(),
            started: Instant::now(),
        })
    }

    /// The next connection, message or tracker answer. Cancel-safe.
    pub(crate) async fn next(&mut self) -> PeerEvent {
        tokio::select! {
            event = self.net.next() => PeerEvent::Net(event),
            answer = self.inbox.recv() => match answer {
                Some(answer) => PeerEvent::Announced(answer),
                None => std::future::pending().await,
            },
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Carries out an event from [`Self::next`].
    pub(crate) fn handle(&mut self, event: PeerEvent) {
        let now = self.now_ms();
        match event {
            PeerEvent::Net(event) => self.net.handle(&mut self.swarm, event, now),
            PeerEvent::Announced(answer) => {
                self.announcing = false;
                match answer {
                    Ok(answer) => {
                        let few = self.swarm.peer_count() < FEW_PEERS;
                        let wait_ms = if few {
                            (answer.min_interval_s * 1000).max(ANNOUNCE_FEW_PEERS_MS)
                        } else {
                            answer.interval_s * 1000
                        };
                        self.next_announce_ms = now + wait_ms;
                        tracing::debug!(peers = answer.peers.len(), "tracker answered");
                        for peer in answer.peers {
                            self.net.connect(peer);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(tracker = %self.tracker, %error, "announcing to the tracker");
                        self.next_announce_ms = now + ANNOUNCE_FEW_PEERS_MS;
                    }
                }
            }
        }
        self.peers_max_seen = self.peers_max_seen.max(self.swarm.peer_count());
    }

    /// Serves what the swarm decided; pieces verified from peers are
    /// written (and read back) and returned.
    pub(crate) fn take_verified(&mut self) -> Result<Vec<PieceIndex>, std::io::Error> {
        let now = self.now_ms();
        let pieces = self
            .net
            .serve_actions(&mut self.swarm, self.store.as_ref(), now);
        let mut stored = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let index = piece.index();
            self.store.store(piece)?;
            stored.push(index);
        }
        Ok(stored)
    }

    /// A piece a cache delivered (verified, on disk): peers hear of it.
    pub(crate) fn piece_from_cache(&mut self, piece: PieceIndex, data: Bytes) {
        let now = self.now_ms();
        match VerifiedPiece::verify(&self.store.manifest, piece, data) {
            Ok(verified) => self.swarm.piece_from_elsewhere(&verified, now),
            Err(error) => {
                tracing::warn!(piece = piece.0, %error, "a cache piece no longer verifies")
            }
        }
    }

    /// Time passes: the swarm's timers, the peers' rate, the gap the
    /// caches fill (released to the scheduler, taken from peers), and
    /// announces.
    pub(crate) fn on_tick(&mut self, scheduler: &mut Scheduler, playhead: u32) {
        let now = self.now_ms();
        self.swarm.handle_timeout(now);
        self.update_peer_rate(now);
        let caches_usable = !scheduler.usable_sources().is_empty();
        if !caches_usable {
            // No cache left: everything goes back to peers.
            let released: Vec<PieceIndex> = scheduler.released().collect();
            for piece in released {
                if scheduler.unrelease(piece) {
                    self.swarm.unreserve(piece.0, now);
                }
            }
        }
        if matches!(self.gap.pace, Pace::Stream { .. }) {
            // Peers are asked only for pieces they can bring in time —
            // while a cache can bring the others; without one, peers are
            // asked for everything from the playhead.
            let from = if caches_usable {
                crate::gap::stream_peers_from(
                    &self.gap,
                    now,
                    playhead,
                    self.peer_rate,
                    self.swarm.pieces_from_peers().len(),
                )
            } else {
                playhead
            };
            let window = self.stream_window_pieces();
            self.swarm
                .set_playhead(Some((from, from.saturating_add(window))));
        }
        let decision = self.decide(scheduler, playhead, caches_usable, now);
        for piece in &decision.release {
            scheduler.release_to_sources(PieceIndex(*piece));
            self.swarm.reserve(*piece, now);
        }
        if !decision.take_over.is_empty() {
            tracing::debug!(pieces = ?decision.take_over, "taken from slow peers for a cache");
        }
        self.announce_if_due(scheduler, now);
    }

    /// Stream mode: how many pieces ahead of the playhead peers are asked
    /// for in order (the gap's prefetch window).
    fn stream_window_pieces(&self) -> u32 {
        let Pace::Stream { bytes_per_s, .. } = self.gap.pace else {
            return 0;
        };
        let ahead_s = (self.gap.prefetch_ms + self.gap.lead_min_ms) as f64 / 1000.0 * 2.0;
        ((ahead_s * bytes_per_s / self.gap.piece_bytes as f64).ceil() as u32).max(2)
    }

    fn decide(
        &self,
        scheduler: &Scheduler,
        playhead: u32,
        caches_usable: bool,
        now: u64,
    ) -> GapDecision {
        let count = self.gap.piece_count;
        let mut at_caches = PieceSet::new(count);
        for piece in scheduler.released() {
            at_caches.insert(piece);
        }
        let from_peers: BTreeMap<u32, u64> = self.swarm.pieces_from_peers();
        let from_peers_since_ms: BTreeMap<u32, u64> = from_peers
            .keys()
            .filter_map(|p| Some((*p, self.swarm.piece_started_ms(*p)?)))
            .collect();
        let from_peers_last_ms: BTreeMap<u32, u64> = from_peers
            .keys()
            .filter_map(|p| Some((*p, self.swarm.piece_last_block_ms(*p)?)))
            .collect();
        let others: Vec<u64> = self.net.peer_ids().map(crate::gap::peer_number).collect();
        let me = self.me;
        let block = self.gap.block_pieces;
        let designated = |piece: u32| crate::gap::designated(me, &others, piece, block);
        let waiting = scheduler.released_waiting();
        crate::gap::decide(
            &self.gap,
            &GapInput {
                now_ms: now,
                done: scheduler.done_set(),
                at_caches: &at_caches,
                availability: self.swarm.availability(),
                from_peers: &from_peers,
                from_peers_since_ms: &from_peers_since_ms,
                from_peers_last_ms: &from_peers_last_ms,
                peer_bytes_per_s: self.peer_rate,
                cache_bytes_per_s: scheduler.aggregate_rate_bps(),
                cache_slots_free: scheduler.free_slots().saturating_sub(waiting),
                designated: &designated,
                peers_known: !others.is_empty(),
                peer_done_mean: self
                    .swarm
                    .availability()
                    .iter()
                    .map(|n| f64::from(*n))
                    .sum::<f64>()
                    / self.swarm.peer_count().max(1) as f64,
                playhead,
                caches_usable,
            },
        )
    }

    fn update_peer_rate(&mut self, now: u64) {
        let bytes = self.swarm.counters().bytes_from_peers;
        let dt = now.saturating_sub(self.last_rate_ms);
        if dt == 0 {
            return;
        }
        let sample = (bytes - self.last_peer_bytes) as f64 * 1000.0 / dt as f64;
        let alpha = 1.0 - (-(dt as f64) / PEER_RATE_TAU_MS).exp();
        self.peer_rate += alpha * (sample - self.peer_rate);
        self.last_peer_bytes = bytes;
        self.last_rate_ms = now;
    }

    /// Whether deliveries have a pace (a stream's bitrate or a target
    /// rate), so the caches are given pieces by deadline.
    pub(crate) fn paced(&self) -> bool {
        !matches!(self.gap.pace, Pace::AsFastAsPossible)
    }

    /// Pieces per block of the gap (what one cache range covers).
    pub(crate) fn block_pieces(&self) -> u32 {
        self.gap.block_pieces
    }

    /// Goodput from peers now, bytes per second.
    pub(crate) fn peer_rate(&self) -> f64 {
        self.peer_rate
    }

    fn announce_if_due(&mut self, scheduler: &Scheduler, now: u64) {
        let complete = scheduler.is_complete();
        let event = if !self.started_sent {
            Some(AnnounceEvent::Started)
        } else if complete && !self.completed_sent {
            Some(AnnounceEvent::Completed)
        } else {
            None
        };
        if self.announcing || (event.is_none() && now < self.next_announce_ms) {
            return;
        }
        match event {
            Some(AnnounceEvent::Started) => self.started_sent = true,
            Some(AnnounceEvent::Completed) => self.completed_sent = true,
            _ => {}
        }
        let left = self
            .object_size
            .saturating_sub(done_bytes(scheduler, &self.store.layout));
        self.announcing = true;
        self.spawn_announce(event, left, self.caches_bytes(scheduler));
    }

    fn caches_bytes(&self, scheduler: &Scheduler) -> u64 {
        scheduler.report().iter().map(|r| r.bytes).sum()
    }

    fn announce_query(&self, event: Option<AnnounceEvent>, left: u64, from_caches: u64) -> String {
        let counters = self.swarm.counters();
        let announce = Announce {
            info_hash: self.key.wire_bytes(),
            peer_id: self.peer_id,
            port: self.port,
            uploaded: counters.bytes_to_peers,
            downloaded: counters.bytes_from_peers + from_caches,
            left,
            event,
            numwant: Some(50),
            from_caches: Some(from_caches),
            from_peers: Some(counters.bytes_from_peers),
        };
        let separator = if self.tracker.contains('?') { '&' } else { '?' };
        format!("{}{separator}{}", self.tracker, announce.to_query())
    }

    fn spawn_announce(&self, event: Option<AnnounceEvent>, left: u64, from_caches: u64) {
        let url = self.announce_query(event, left, from_caches);
        let (client, answers) = (self.client.clone(), self.answers.clone());
        tokio::spawn(async move {
            let _ = answers.send(announce(&client, &url).await).await;
        });
    }

    /// Tells the tracker this peer leaves (best effort, bounded wait).
    pub(crate) async fn announce_stopped(&self, from_caches: u64) {
        let url = self.announce_query(Some(AnnounceEvent::Stopped), 0, from_caches);
        let _ = tokio::time::timeout(Duration::from_secs(2), announce(&self.client, &url)).await;
    }

    /// The report for progress lines and the summary.
    pub(crate) fn report(&self, from_caches: u64) -> PeerReport {
        let counters = self.swarm.counters();
        let received = counters.bytes_from_peers + from_caches;
        PeerReport {
            swarm: self.key.to_hex(),
            peers: self.swarm.peer_count(),
            peers_max_seen: self.peers_max_seen,
            bytes_from_peers: counters.bytes_from_peers,
            bytes_from_caches: from_caches,
            bytes_to_peers: counters.bytes_to_peers,
            peer_efficiency: if received > 0 {
                counters.bytes_from_peers as f64 / received as f64
            } else {
                0.0
            },
            pieces_failed: counters.pieces_failed,
            peers_banned: counters.peers_banned,
            banned: self
                .net
                .banned_addresses()
                .iter()
                .map(ToString::to_string)
                .collect(),
            seeded_s: 0.0,
        }
    }

    /// After the download: serves peers for `seed_for` (re-announcing as
    /// the tracker asks), calling `progress` every second, then tells the
    /// tracker it left.
    pub(crate) async fn seed(
        &mut self,
        seed_for: Duration,
        from_caches: u64,
        mut progress: impl FnMut(&SwarmCounters, usize),
    ) -> f64 {
        let began = Instant::now();
        if !seed_for.is_zero() {
            tracing::info!(seconds = seed_for.as_secs_f64(), "seeding");
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_progress = Instant::now();
        while began.elapsed() < seed_for {
            tokio::select! {
                event = self.next() => self.handle(event),
                _ = tick.tick() => {
                    let now = self.now_ms();
                    self.swarm.handle_timeout(now);
                    if !self.announcing && now >= self.next_announce_ms {
                        self.announcing = true;
                        let event = (!self.completed_sent).then_some(AnnounceEvent::Completed);
                        self.completed_sent = true;
                        self.spawn_announce(event, 0, from_caches);
                    }
                    if last_progress.elapsed() >= Duration::from_secs(1) {
                        last_progress = Instant::now();
                        progress(&self.swarm.counters(), self.swarm.peer_count());
                    }
                }
            }
            if let Err(error) = self.take_verified() {
                tracing::warn!(%error, "seeding");
                break;
            }
        }
        self.net.close_all();
        self.announce_stopped(from_caches).await;
        began.elapsed().as_secs_f64()
    }
}

fn done_bytes(scheduler: &Scheduler, layout: &PieceLayout) -> u64 {
    scheduler
        .done_set()
        .iter()
        .map(|i| layout.piece_len(i))
        .sum()
}

/// One announce: GET the tracker URL, read a bounded answer, decode it.
async fn announce(client: &reqwest::Client, url: &str) -> Result<AnnounceAnswer, String> {
    let exchange = async {
        let mut response = client
            .get(url)
            .send()
            .await
            .map_err(|e| crate::discover::error_chain(&e))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        crate::discover::read_limited(&mut response, shoal_peer::tracker::ANSWER_BYTES_MAX).await
    };
    let body = tokio::time::timeout(ANNOUNCE_TIMEOUT, exchange)
        .await
        .map_err(|_| "no answer".to_string())??;
    AnnounceAnswer::decode(&body).map_err(|e| e.to_string())
}
