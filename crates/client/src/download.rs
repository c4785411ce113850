//! The tokio driver of the [`Scheduler`]: one task per range request (a
//! run of consecutive pieces, one piece unless the scheduler makes runs),
//! verification of each piece before anything touches the disk, a
//! resumable part file, replacements from the selector.
//!
//! Files: the object is written to `FILE.part` (pieces at their offsets,
//! each verified against the manifest first) with `FILE.part.shoal` beside
//! it naming the object id and the pieces written. A later run with the
//! same object resumes from there, re-hashing those pieces first. Each
//! piece is verified in memory, written, read back and verified again, so
//! what the disk holds is what the manifest says; the file is flushed as
//! it grows (every second, in the background). When every piece is in, the
//! manifest those pieces match must be the object the source (and the
//! selector's plan) named; the file is synced and renamed to `FILE`:
//! `FILE` only ever holds a whole, verified object.

use crate::discover::{self, error_chain, ObjectUrl, Origin, PlannedSource};
use crate::reference::{Reference, Rejected};
use crate::schedule::{Action, ScheduleConfig, Scheduler, SourceId, SourceReport};
use crate::GetError;
use bytes::Bytes;
use shoal_core::bitfield::PieceSet;
use shoal_core::{ObjectId, PieceIndex, PieceLayout};
use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Most sources one download uses over its life (replacements included).
pub const SOURCES_MAX: usize = 16;
/// How often the scheduler's clock ticks.
const TICK_MS: u64 = 100;
/// Progress is reported to the scheduler in chunks of at least this (the
/// first chunk of a response at once: it times the first byte).
const PROGRESS_BYTES: u64 = 16 << 10;
/// Most pieces an object may have here (1 TiB in 1 MiB pieces); a manifest
/// with more is refused before anything is allocated for it.
pub const PIECES_MAX: u32 = 1 << 20;
/// The resume state is saved at most this often.
const SAVE_EVERY_MS: u64 = 1_000;
/// A source's first byte may take this many stall periods (a cold cache
/// fills before it sends).
const FIRST_BYTE_STALLS: u64 = 3;
/// Progress is reported at most this often.
const PROGRESS_EVERY_MS: u64 = 200;
/// With peers, a cache request covers up to this many bytes of
/// consecutive released pieces (the gap's shortfall as large contiguous
/// ranges).
const RUN_BYTES_MAX: u64 = 4 << 20;

/// Stream mode: where the bytes go in order as they verify.
#[derive(Debug)]
pub enum StreamTo {
    Stdout,
    /// A local HTTP endpoint for players (bound by the caller, so it can
    /// print the address first).
    Serve(std::net::TcpListener),
}

/// What `shoal get` (or an embedding program) asks for.
#[derive(Debug)]
pub struct GetOptions {
    pub url: String,
    /// Where the object goes (`FILE.part` while it downloads).
    pub output: PathBuf,
    /// More URLs of the same object (used as extra sources).
    pub mirrors: Vec<String>,
    /// Committed bitrate to hold, Mbit/s (default: the selector's).
    pub bitrate_mbps: Option<f64>,
    pub connect_timeout_ms: u64,
    /// Longest wait for a response head or for the next body chunk.
    pub read_timeout_ms: u64,
    /// Scheduler stall threshold, ms.
    pub stall_ms: u64,
    /// Stream mode (pieces in order, a virtual player counting rebuffers).
    pub stream: Option<StreamTo>,
    /// Stream mode: how much playback time is buffered before playing, ms.
    pub buffer_ms: u64,
    /// Connect from this local address.
    pub local_address: Option<std::net::IpAddr>,
    /// Certificates (PEM) trusted for `https://` besides the system's
    /// roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Taking part in the viewers' swarm a plan names.
    pub peers: crate::peers::PeerOptions,
}

impl GetOptions {
    pub fn new(url: impl Into<String>, output: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            output: output.into(),
            mirrors: Vec::new(),
            bitrate_mbps: None,
            connect_timeout_ms: 3_000,
            read_timeout_ms: 10_000,
            stall_ms: 1_000,
            stream: None,
            buffer_ms: 2_000,
            local_address: None,
            ca_file: None,
            peers: crate::peers::PeerOptions::default(),
        }
    }
}

/// A snapshot for progress displays.
#[derive(Clone, Debug)]
pub struct Progress {
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub elapsed: Duration,
    /// Recent aggregate rate, bytes per second.
    pub rate_bps: f64,
    pub sources: Vec<SourceReport>,
    /// Bytes from and to peers (when in a swarm).
    pub peers: Option<crate::peers::PeerReport>,
}

/// The report at the end.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub path: String,
    pub output: String,
    pub object_id: String,
    pub bytes: u64,
    pub seconds: f64,
    pub mbps: f64,
    /// Pieces already on disk from an earlier, interrupted run.
    pub resumed_pieces: u32,
    pub committed_mbps: Option<f64>,
    /// Whether the average rate held the committed bitrate.
    pub bitrate_held: Option<bool>,
    /// Sources dropped mid-download (stalled, failing or lying).
    pub failovers: u32,
    pub stalls: u32,
    pub degradations: u32,
    /// Sources added after the first plan: standby caches and the
    /// selector's replacements.
    pub replacements: u32,
    /// Of those, standby caches of the plan brought on stream when a
    /// source failed (no round trip to the selector).
    pub standby_used: u32,
    /// Stream mode with a committed bitrate: rebuffering events of a
    /// player at that bitrate after its initial buffer, and their length.
    pub rebuffers: Option<u32>,
    pub rebuffer_ms: Option<u64>,
    /// Stream mode: when that player started (initial buffer full), s.
    pub playback_started_s: Option<f64>,
    pub sources: Vec<SourceSummary>,
    /// The viewers' swarm: bytes from and to peers, peer efficiency.
    pub peers: Option<crate::peers::PeerReport>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SourceSummary {
    pub name: String,
    pub url: String,
    /// `plan`, `standby` or `selector` (see [`Summary::standby_used`]).
    pub joined: &'static str,
    pub bytes: u64,
    pub pieces: u32,
    /// Range requests made (consecutive pieces go out as one).
    pub requests: u32,
    pub state: String,
}

/// What request tasks tell the driver.
enum Event {
    Bytes(SourceId, PieceIndex, u64),
    /// Verified and written (its bytes), or refused (`None`).
    Piece(SourceId, PieceIndex, Option<Bytes>),
    Failed(SourceId, PieceIndex, String),
    /// The range request broke off (the error was reported for an earlier
    /// piece) before it reached this one.
    Abandoned(SourceId, PieceIndex),
    Disk(std::io::Error),
    Plan(Result<discover::Plan, GetError>),
}

fn now_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// The resume sidecar: object id and the pieces written.
fn state_path(part: &Path) -> PathBuf {
    let mut name = part.as_os_str().to_owned();
    name.push(".shoal");
    PathBuf::from(name)
}

fn part_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn save_state(path: &Path, manifest: &Reference, done: &PieceSet) -> std::io::Result<()> {
    let text = format!("{}\n{}\n", manifest.id().to_hex(), hex(&done.encode()));
    let tmp = path.with_extension("shoal.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Pieces of a previous run that still verify.
fn load_resume(part: &Path, manifest: &Reference) -> PieceSet {
    let layout = manifest.layout();
    let mut have = PieceSet::new(manifest.piece_count());
    let Ok(text) = std::fs::read_to_string(state_path(part)) else {
        return have;
    };
    let mut lines = text.lines();
    if lines.next() != Some(manifest.id().to_hex().as_str()) {
        return have;
    }
    let Some(saved) = lines
        .next()
        .and_then(unhex)
        .and_then(|b| PieceSet::decode(&b).ok())
    else {
        return have;
    };
    let Ok(file) = std::fs::File::open(part) else {
        return have;
    };
    let mut buffer = Vec::new();
    for index in saved.iter().filter(|i| i.0 < manifest.piece_count()) {
        let Some(span) = layout.piece_span(index) else {
            continue;
        };
        buffer.resize(span.len() as usize, 0);
        if file.read_exact_at(&mut buffer, span.start()).is_ok()
            && manifest.verify_known(index, &buffer)
        {
            have.insert(index);
        }
    }
    have
}

/// One piece's place in a range request: the request's task, and the
/// mask through which the driver tells the task which of its pieces are no
/// longer wanted (bit i: the i-th piece of the run).
struct RunSlot {
    task: tokio::task::AbortHandle,
    cancelled: Arc<AtomicU64>,
    bit: u32,
}

/// Piece requests in flight, aborted when this is dropped: however `get`
/// returns, no request task goes on writing to the part file.
#[derive(Default)]
struct Requests(HashMap<(SourceId, u32), RunSlot>);

impl Requests {
    /// `piece` is no longer wanted from `source`: its request task skips
    /// it, or stops when none of its pieces is wanted any more.
    fn cancel(&mut self, source: SourceId, piece: PieceIndex) {
        let Some(slot) = self.0.remove(&(source, piece.0)) else {
            return;
        };
        slot.cancelled.fetch_or(1 << slot.bit, Ordering::AcqRel);
        let others = self
            .0
            .values()
            .any(|other| Arc::ptr_eq(&other.cancelled, &slot.cancelled));
        if !others {
            slot.task.abort();
        }
    }

    /// The request task reported on `piece`: nothing left to cancel there.
    fn finished(&mut self, source: SourceId, piece: PieceIndex) {
        self.0.remove(&(source, piece.0));
    }

    fn abort_all(&self) {
        for slot in self.0.values() {
            slot.task.abort();
        }
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        self.abort_all();
    }
}

struct SourceEntry {
    id: SourceId,
    planned: PlannedSource,
    /// How it joined: `plan`, `standby` (brought on stream when a source
    /// failed) or `selector` (a replacement asked for).
    joined: &'static str,
}

/// Downloads `options.url`, calling `progress` about every 200 ms.
pub async fn get(
    mut options: GetOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<Summary, GetError> {
    let (mut run, inbox) = Run::prepare(&mut options).await?;
    run.drive(inbox, &mut progress).await?;
    let from_caches = run.source_bytes();
    let side = run.peers.take();
    let mut summary = run.finish(&options.output).await?;
    if let Some(mut side) = side {
        // The object is whole and in place: seed for as long as asked
        // (the pieces are read from the same, renamed, file).
        let mut last = progress_snapshot_of(&summary);
        last.peers = Some(side.report(from_caches));
        let seeded_s = side
            .seed(options.peers.seed_for, from_caches, |counters, peers| {
                if let Some(report) = &mut last.peers {
                    report.bytes_to_peers = counters.bytes_to_peers;
                    report.peers = peers;
                }
                last.elapsed = Duration::from_secs_f64(summary.seconds);
                progress(&last);
            })
            .await;
        let mut report = side.report(from_caches);
        report.seeded_s = seeded_s;
        summary.peers = Some(report);
    }
    Ok(summary)
}

/// A final progress snapshot from a summary (for the seeding phase).
fn progress_snapshot_of(summary: &Summary) -> Progress {
    Progress {
        done_bytes: summary.bytes,
        total_bytes: summary.bytes,
        elapsed: Duration::from_secs_f64(summary.seconds),
        rate_bps: 0.0,
        sources: Vec::new(),
        peers: summary.peers.clone(),
    }
}

/// One download under way: what [`get`] set up, and the state its loop
/// changes. The decisions are the pure policies' (`Scheduler`,
/// `ReplanPolicy`, `standby`); this only carries them out.
struct Run {
    started: Instant,
    client: reqwest::Client,
    url: ObjectUrl,
    /// Where the plan came from (a selector can be asked again).
    origin: Origin,
    plan: discover::Plan,
    timeout: Duration,
    manifest: Arc<Reference>,
    layout: PieceLayout,
    /// The object the sources and the plan named.
    expected_id: ObjectId,
    committed_mbps: Option<f64>,
    part: PathBuf,
    state: PathBuf,
    file: Arc<std::fs::File>,
    resumed_pieces: u32,
    scheduler: Scheduler,
    /// Stream mode: which pieces readers may take, in order.
    ready: Option<Arc<crate::stream::Ready>>,
    /// Stream mode with a bitrate: a virtual player counting rebuffers.
    playback: Option<crate::playback::Playback>,
    stdout_task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The local endpoint stops if `get` fails (this is dropped); after a
    /// success it serves until the process ends.
    endpoint_keep: tokio::sync::watch::Sender<()>,
    sources: Vec<SourceEntry>,
    first_sources: usize,
    /// Held in reserve by the plan, cheapest first.
    standby: VecDeque<PlannedSource>,
    /// Sources lost so far: a plan that survives one loss carries the
    /// first without a new plan (the others raise their output); the rate
    /// check still asks for more if the committed bitrate is not held.
    losses: u32,
    /// The plan being asked for only tops up the standby.
    standby_only_replan: bool,
    events: mpsc::Sender<Event>,
    tasks: Requests,
    /// When to ask the selector again, and when to give up (pure).
    replan: crate::replan::ReplanPolicy,
    /// Sources reported failed (never asked again).
    reported: Vec<String>,
    syncing: Arc<AtomicBool>,
    last_save_ms: u64,
    last_progress_ms: u64,
    /// Which source [`Run::dispatch`] offers work to first next time.
    dispatch_turn: usize,
    /// The viewers' swarm, when the plan names one and peers are on.
    peers: Option<crate::peers::PeerSide>,
}

impl Run {
    /// Finds the sources and the manifest, opens (or resumes) the part
    /// file, and starts the stream readers.
    async fn prepare(options: &mut GetOptions) -> Result<(Self, mpsc::Receiver<Event>), GetError> {
        let started = Instant::now();
        let url = ObjectUrl::parse(&options.url)?;
        check_timeouts(options)?;
        let client = http_client(options)?;
        let timeout = Duration::from_millis(options.read_timeout_ms);
        let (origin, plan, manifest) =
            discover_object(&client, &url, &options.mirrors, timeout).await?;
        let layout = manifest.layout();
        // With no id named by a source or the plan, the manifest vouches
        // for itself (a plain server): pieces still must match it.
        let expected_id = plan.object_id.unwrap_or_else(|| manifest.id());
        let committed_mbps = options.bitrate_mbps.or(plan.committed_mbps);

        // The part file, resumed if it holds pieces of this very object.
        let part = part_path(&options.output);
        let have = load_resume(&part, &manifest);
        let file = Arc::new(open_part_file(
            &part,
            layout.object_size(),
            !have.is_empty(),
        )?);
        let scheduler = new_scheduler(&manifest, options, &have);

        let ready = options
            .stream
            .as_ref()
            .map(|_| ready_with(&manifest, &have));
        let playback = virtual_player(
            ready.is_some(),
            committed_mbps,
            options.buffer_ms,
            layout.object_size(),
        );
        let (endpoint_keep, endpoint_stop) = tokio::sync::watch::channel(());
        let stdout_task = match (options.stream.take(), &ready) {
            (Some(stream_to), Some(ready)) => {
                start_stream(stream_to, ready, &file, layout, &url, endpoint_stop)?
            }
            _ => None,
        };
        let (events, inbox) = mpsc::channel::<Event>(1024);
        let mut run = Self {
            started,
            client,
            url,
            origin,
            timeout,
            expected_id,
            committed_mbps,
            state: state_path(&part),
            part,
            file,
            resumed_pieces: have.len(),
            scheduler,
            ready,
            playback,
            stdout_task,
            endpoint_keep,
            sources: Vec::new(),
            first_sources: 0,
            standby: plan.standby.clone().into(),
            losses: 0,
            standby_only_replan: false,
            events,
            tasks: Requests::default(),
            replan: crate::replan::ReplanPolicy::default(),
            reported: Vec::new(),
            syncing: Arc::new(AtomicBool::new(false)),
            last_save_ms: 0,
            last_progress_ms: 0,
            dispatch_turn: 0,
            peers: None,
            manifest,
            layout,
            plan,
        };
        run.add_planned_sources();
        run.join_swarm(options).await?;
        Ok((run, inbox))
    }

    /// Joins the viewers' swarm the plan names, if peers are on and the
    /// object has a published manifest (learnt hashes are the caches'
    /// and peers are not asked to trust them). From then on the caches
    /// take only the pieces the gap releases.
    async fn join_swarm(&mut self, options: &GetOptions) -> Result<(), GetError> {
        let (Some(swarm), true) = (&self.plan.swarm, options.peers.enabled) else {
            return Ok(());
        };
        let Some(manifest) = self.manifest.manifest() else {
            tracing::info!("not joining the swarm: the object has no published manifest");
            return Ok(());
        };
        let stream = match (&self.ready, self.committed_mbps) {
            (Some(_), Some(mbps)) => Some((mbps * 1e6 / 8.0, options.buffer_ms)),
            _ => None,
        };
        // The service's defaults where the viewer set nothing.
        let mut peer_options = options.peers.clone();
        peer_options.upload_mbps = peer_options.upload_mbps.or(swarm.upload_mbps);
        peer_options.target_mbps = peer_options.target_mbps.or(swarm.target_mbps);
        if let Some(most) = swarm.peers_max {
            peer_options.peers_max = peer_options.peers_max.min(most);
        }
        let side = crate::peers::PeerSide::start(crate::peers::PeerStart {
            options: &peer_options,
            key: swarm.key,
            tracker: swarm.tracker.clone(),
            manifest: manifest.clone(),
            have: self.scheduler.done_set().clone(),
            file: self.file.clone(),
            client: self.client.clone(),
            local_address: options.local_address,
            stream,
        })
        .await?;
        self.scheduler.gate();
        // The gap's shortfall goes to the caches as large ranges. With a
        // pace, the gap releases whole blocks as their deadlines near and
        // two blocks fit in flight at a cache; a target download waits for
        // room for a block, a stream asks at once (what is due is due). As
        // fast as possible, the caches' free slots decide how much is
        // asked of them, and those stay as few as the measured rate needs:
        // committing deeper made the whole swarm slower (1.23x the
        // Kumar-Ross bound against 1.14x, scripts/bench-swarm --only 1).
        let piece_bytes = self.layout.piece_size().bytes();
        let most = (RUN_BYTES_MAX / piece_bytes).max(1) as u32;
        let block = side.block_pieces();
        let (least, floor) = match (side.paced(), self.ready.is_some()) {
            (true, false) => (block, 2 * block),
            (true, true) => (1, 2 * block),
            (false, _) => (1, 0),
        };
        self.scheduler.set_runs(most, least, floor);
        self.peers = Some(side);
        Ok(())
    }

    /// Bytes the HTTP sources delivered.
    fn source_bytes(&self) -> u64 {
        self.scheduler.report().iter().map(|r| r.bytes).sum()
    }

    /// The swarm's report, if in one.
    fn peer_report(&self) -> Option<crate::peers::PeerReport> {
        self.peers
            .as_ref()
            .map(|side| side.report(self.source_bytes()))
    }

    /// Pieces verified from peers (written and read back): done.
    fn take_peer_pieces(&mut self) -> Result<(), GetError> {
        let Some(side) = &mut self.peers else {
            return Ok(());
        };
        let stored = side.take_verified().map_err(|e| GetError::Disk {
            path: self.part.display().to_string(),
            why: e.to_string(),
        })?;
        for piece in stored {
            for action in self.scheduler.done_elsewhere(piece) {
                if let Action::Cancel { source, piece } = action {
                    self.tasks.cancel(source, piece);
                }
            }
            if let Some(ready) = &self.ready {
                ready.mark(piece);
            }
        }
        Ok(())
    }

    /// Adds the plan's sources (at most [`SOURCES_MAX`], each URL once);
    /// they are the first sources.
    fn add_planned_sources(&mut self) {
        let start_ms = self.now_ms();
        for planned in self.plan.sources.clone().into_iter().take(SOURCES_MAX) {
            if !self.sources.iter().any(|s| s.planned.url == planned.url) {
                self.add_source(planned, "plan", start_ms);
            }
        }
        self.first_sources = self.sources.len();
    }

    fn now_ms(&self) -> u64 {
        now_ms(self.started)
    }

    fn disk_error(&self, error: std::io::Error) -> GetError {
        GetError::Disk {
            path: self.part.display().to_string(),
            why: error.to_string(),
        }
    }

    /// Saves what is done so a later run resumes from it; best effort on
    /// the way out of a failure.
    fn save(&self) -> std::io::Result<()> {
        save_state(&self.state, &self.manifest, self.scheduler.done_set())
    }

    fn add_source(&mut self, planned: PlannedSource, joined: &'static str, now_ms: u64) {
        let id = self
            .scheduler
            .add_source(&planned.name, planned.share, now_ms);
        self.sources.push(SourceEntry {
            id,
            planned,
            joined,
        });
    }

    /// The loop: hand out pieces, wait for an event or a tick, carry out
    /// what the scheduler decided, until every piece is verified on disk.
    async fn drive(
        &mut self,
        mut inbox: mpsc::Receiver<Event>,
        progress: &mut impl FnMut(&Progress),
    ) -> Result<(), GetError> {
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.scheduler.is_complete() {
            let now = self.now_ms();
            self.check()?;
            self.dispatch(now);
            self.consult_replan(now)?;
            let actions = tokio::select! {
                event = inbox.recv() => match event {
                    Some(event) => self.on_event(event)?,
                    None => break,
                },
                event = next_peer_event(&mut self.peers) => {
                    if let Some(side) = &mut self.peers {
                        side.handle(event);
                    }
                    Vec::new()
                }
                _ = tick.tick() => {
                    let now = self.now_ms();
                    if let (Some(playback), Some(ready)) = (&mut self.playback, &self.ready) {
                        playback.update(now, ready.contiguous_bytes(&self.layout));
                    }
                    let actions = self.scheduler.tick(now);
                    if let Some(side) = &mut self.peers {
                        let playhead = self.ready.as_ref().map_or(0, |r| r.playhead().0);
                        side.on_tick(&mut self.scheduler, playhead);
                    }
                    actions
                }
            };
            self.take_peer_pieces()?;
            for action in actions {
                match action {
                    Action::Cancel { source, piece } => self.tasks.cancel(source, piece),
                    Action::Replace { source, reason } => self.on_source_lost(source, &reason),
                }
            }
            self.save_if_due()?;
            let now = self.now_ms();
            if now - self.last_progress_ms >= PROGRESS_EVERY_MS {
                self.last_progress_ms = now;
                progress(&self.snapshot());
            }
        }
        self.tasks.abort_all();
        progress(&self.snapshot());
        Ok(())
    }

    /// Follows the playhead; stops on what no source can fix: a manifest
    /// conflict, or stdout closed under us.
    fn check(&mut self) -> Result<(), GetError> {
        if let Some(ready) = &self.ready {
            self.scheduler.set_playhead(ready.playhead());
        }
        if let Some(conflict) = self.manifest.conflict() {
            let _ = self.save();
            return Err(GetError::Manifest(format!("{conflict}: refused")));
        }
        if self.stdout_task.as_ref().is_some_and(|t| t.is_finished()) {
            let _ = self.save();
            return Err(GetError::Failed(
                "the output was closed before the object was complete".into(),
            ));
        }
        Ok(())
    }

    /// Gives every free request slot a piece: consecutive pieces for one
    /// source go out as one range request.
    fn dispatch(&mut self, now_ms: u64) {
        // One run per source per round, starting from a different source
        // each time: a source with room for several runs must not take
        // every released piece while the others (a plan's shares) idle.
        let count = self.sources.len();
        if count == 0 {
            return;
        }
        let first_turn = self.dispatch_turn % count;
        self.dispatch_turn = self.dispatch_turn.wrapping_add(1);
        loop {
            let mut handed_out = false;
            for turn in 0..count {
                let entry = &self.sources[(first_turn + turn) % count];
                let Some((first, pieces)) = self.scheduler.next_run(entry.id, now_ms) else {
                    continue;
                };
                handed_out = true;
                tracing::debug!(source = %entry.planned.name, first = first.0, pieces, "range request");
                let cancelled = Arc::new(AtomicU64::new(0));
                let task = tokio::spawn(fetch_run(RunFetch {
                    client: self.client.clone(),
                    url: entry.planned.url.clone(),
                    source: entry.id,
                    first,
                    count: pieces,
                    layout: self.layout,
                    manifest: self.manifest.clone(),
                    file: self.file.clone(),
                    events: self.events.clone(),
                    timeout: self.timeout,
                    cancelled: cancelled.clone(),
                }))
                .abort_handle();
                for bit in 0..pieces {
                    self.tasks.0.insert(
                        (entry.id, first.0 + bit),
                        RunSlot {
                            task: task.clone(),
                            cancelled: cancelled.clone(),
                            bit,
                        },
                    );
                }
            }
            if !handed_out {
                return;
            }
        }
    }

    /// Asks for more sources when there are none left or the committed
    /// bitrate is not held; gives up after a while without any.
    fn consult_replan(&mut self, now_ms: u64) -> Result<(), GetError> {
        let verdict = self.replan.tick(crate::replan::Observed {
            now_ms,
            // Peers delivering count as a source: a download they carry
            // is not given up when the caches are gone.
            usable_sources: self.scheduler.usable_sources().len()
                + usize::from(self.peers.as_ref().is_some_and(|p| p.peer_rate() > 1_000.0)),
            // Peers' bytes count towards the committed bitrate too.
            rate_mbps: (self.scheduler.aggregate_rate_bps()
                + self.peers.as_ref().map_or(0.0, |p| p.peer_rate()))
                * 8.0
                / 1e6,
            committed_mbps: self.committed_mbps,
            has_selector: matches!(self.origin, Origin::Selector(_)),
            room: self.sources.len() < SOURCES_MAX,
        });
        match verdict {
            crate::replan::Verdict::GiveUp => {
                let why = self
                    .scheduler
                    .report()
                    .iter()
                    .map(|r| format!("{}: {}", r.name, r.health))
                    .collect::<Vec<_>>()
                    .join("; ");
                self.save().map_err(|e| self.disk_error(e))?;
                Err(GetError::Failed(format!(
                    "every source failed ({why}); {} of {} pieces are saved in {}: run again to resume",
                    self.scheduler.done_count(),
                    self.manifest.piece_count(),
                    self.part.display()
                )))
            }
            crate::replan::Verdict::Ask => {
                self.ask_selector(true);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Asks the selector (if there is one) for a plan without the caches
    /// reported; `reserve`: the answer's sources are to be used now.
    fn ask_selector(&self, reserve: bool) {
        if let Origin::Selector(selector) = &self.origin {
            spawn_replan(
                &self.client,
                selector,
                &self.url,
                &self.reported,
                reserve,
                &self.events,
                self.timeout,
            );
        }
    }

    /// What a request task or the selector reported; returns what the
    /// scheduler wants done about it.
    fn on_event(&mut self, event: Event) -> Result<Vec<Action>, GetError> {
        let now = self.now_ms();
        Ok(match event {
            Event::Bytes(source, piece, bytes) => {
                self.scheduler.on_bytes(source, piece, bytes, now);
                Vec::new()
            }
            Event::Piece(source, piece, data) => {
                self.tasks.finished(source, piece);
                let ok = data.is_some();
                let new = ok && !self.scheduler.is_done(piece);
                let actions = self.scheduler.on_piece(source, piece, ok, now);
                if new {
                    if let Some(ready) = &self.ready {
                        ready.mark(piece);
                    }
                    if let (Some(side), Some(data)) = (&mut self.peers, data) {
                        side.piece_from_cache(piece, data);
                    }
                }
                actions
            }
            Event::Failed(source, piece, why) => {
                self.tasks.finished(source, piece);
                tracing::debug!(source = self.scheduler.source_name(source), piece = piece.0, %why, "request failed");
                self.scheduler.on_error(source, piece, &why)
            }
            Event::Abandoned(source, piece) => {
                self.tasks.finished(source, piece);
                self.scheduler.on_abandoned(source, piece);
                Vec::new()
            }
            Event::Disk(error) => {
                self.tasks.abort_all();
                let _ = self.save();
                return Err(self.disk_error(error));
            }
            Event::Plan(answer) => {
                self.replan.answered();
                let standby_only = std::mem::take(&mut self.standby_only_replan);
                match answer {
                    Ok(new_plan) => self.take_plan(new_plan, standby_only, now),
                    Err(error) => {
                        tracing::warn!(%error, "asking the selector for a replacement")
                    }
                }
                Vec::new()
            }
        })
    }

    /// A new plan from the selector: its new caches join as sources, or —
    /// when it was asked for after a loss the others carry — only restore
    /// the reserve (they stand by, unpaid, for the next loss).
    fn take_plan(&mut self, new_plan: discover::Plan, standby_only: bool, now_ms: u64) {
        let mut fresh = Vec::new();
        if standby_only {
            fresh.extend(new_plan.sources.iter().cloned());
        }
        fresh.extend(new_plan.standby.iter().cloned());
        for planned in fresh {
            let unknown = !self.sources.iter().any(|s| s.planned.url == planned.url)
                && !self.standby.iter().any(|s| s.url == planned.url)
                && !self.reported.contains(&planned.name);
            if unknown && self.standby.len() < SOURCES_MAX {
                tracing::info!(source = %planned.name, "kept as standby (used only if another source fails)");
                self.standby.push_back(planned);
            }
        }
        if standby_only {
            return;
        }
        for planned in new_plan.sources {
            if self.sources.len() >= SOURCES_MAX {
                break;
            }
            let known = self.sources.iter().any(|s| s.planned.url == planned.url);
            if known || self.reported.contains(&planned.name) {
                continue;
            }
            self.standby.retain(|s| s.url != planned.url);
            tracing::info!(source = %planned.name, "source added from the selector");
            self.add_source(planned, "selector", now_ms);
        }
    }

    /// A source failed (the scheduler dropped it): bring on the plan's
    /// standby as far as the remaining sources do not cover the bitrate,
    /// then ask the selector — for standby only when the plan carries
    /// this loss, for replacements otherwise.
    fn on_source_lost(&mut self, source: SourceId, reason: &str) {
        let name = self.scheduler.source_name(source).to_string();
        tracing::info!(source = %name, %reason, "a source failed");
        // A source reported before (degraded, then dropped) is not a new
        // loss: its standby was already decided.
        let first_report = !self.reported.contains(&name);
        if first_report {
            self.reported.push(name.clone());
            self.losses += 1;
        } else if self.plan.survives_one_loss {
            return;
        }
        let joined = if first_report {
            self.bring_standby(source, &name)
        } else {
            0
        };
        if !matches!(self.origin, Origin::Selector(_)) {
            return;
        }
        if self.plan.survives_one_loss && self.losses <= 1 {
            // The loss is covered; restore the reserve with a plan whose
            // new caches only stand by (nothing is reserved or drawn from
            // them now).
            tracing::info!(source = %name, standby_joined = joined, "the committed bitrate is covered: asking the selector for standby only");
            if !self.replan.pending() {
                self.replan.asked(self.now_ms());
                self.standby_only_replan = true;
                self.ask_selector(false);
            }
            return;
        }
        if joined == 0 && !self.replan.pending() && self.sources.len() < SOURCES_MAX {
            self.replan.asked(self.now_ms());
            self.ask_selector(true);
        }
    }

    /// Brings on the plan's standby for a lost source: it is there now,
    /// with capacity held for this, and only as much as the sources still
    /// in use (their shares and what they hold ready) do not already
    /// cover. Returns how many joined.
    fn bring_standby(&mut self, lost: SourceId, lost_name: &str) -> usize {
        let (sources, reported) = (&self.sources, &self.reported);
        self.standby.retain(|reserve| {
            !sources.iter().any(|s| s.planned.url == reserve.url)
                && !reported.contains(&reserve.name)
        });
        let capacity = |p: &PlannedSource| crate::standby::Capacity {
            mbps: p.mbps,
            standby_mbps: p.standby_mbps,
        };
        let in_use: Vec<_> = self
            .sources
            .iter()
            .filter(|s| !self.reported.contains(&s.planned.name))
            .map(|s| capacity(&s.planned))
            .collect();
        let pool: Vec<_> = self.standby.iter().map(capacity).collect();
        let wanted = crate::standby::standby_to_bring(self.committed_mbps, &in_use, &pool)
            .min(SOURCES_MAX.saturating_sub(self.sources.len()));
        // Weighted by what each holds ready, relative to the plan's shares
        // (which sum to 1 over the plan).
        let planned_mbps: f64 = self.plan.sources.iter().map(|s| s.mbps).sum();
        let lost_share = self
            .sources
            .iter()
            .find(|s| s.id == lost)
            .map_or(1.0, |s| s.planned.share);
        let joining: Vec<PlannedSource> = self.standby.drain(..wanted).collect();
        for reserve in &joining {
            let share = if planned_mbps > 0.0 && reserve.mbps > 0.0 {
                reserve.mbps / planned_mbps
            } else {
                lost_share
            };
            tracing::info!(source = %reserve.name, replacing = %lost_name, mbps = reserve.mbps, "standby source brought on stream");
            let now = self.now_ms();
            self.add_source(
                PlannedSource {
                    share,
                    ..reserve.clone()
                },
                "standby",
                now,
            );
        }
        joining.len()
    }

    /// Saves the resume state and flushes the file in the background, at
    /// most every [`SAVE_EVERY_MS`], so the final sync has little left.
    fn save_if_due(&mut self) -> Result<(), GetError> {
        let now = self.now_ms();
        if now - self.last_save_ms < SAVE_EVERY_MS {
            return Ok(());
        }
        self.last_save_ms = now;
        self.save().map_err(|e| self.disk_error(e))?;
        if !self.syncing.swap(true, Ordering::Relaxed) {
            let (file, syncing) = (self.file.clone(), self.syncing.clone());
            tokio::task::spawn_blocking(move || {
                let _ = file.sync_data();
                syncing.store(false, Ordering::Relaxed);
            });
        }
        Ok(())
    }

    /// The whole object: every piece verified on disk (read back after
    /// writing, or re-hashed on resume), and the manifest those pieces
    /// match is the object named. Then it is made durable and takes its
    /// name, and the summary is written.
    async fn finish(mut self, output: &Path) -> Result<Summary, GetError> {
        if let (Some(playback), Some(ready)) = (&mut self.playback, &self.ready) {
            playback.update(now_ms(self.started), ready.contiguous_bytes(&self.layout));
        }
        if let Some(task) = self.stdout_task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    return Err(GetError::Failed(format!("writing to stdout: {error}")))
                }
                Err(error) => return Err(GetError::Failed(error.to_string())),
            }
        }
        let size_on_disk = self.file.metadata().map_err(|e| self.disk_error(e))?.len();
        if size_on_disk != self.layout.object_size() || self.manifest.id() != self.expected_id {
            let _ = std::fs::remove_file(&self.state);
            return Err(GetError::Failed(format!(
                "{} failed its final check ({size_on_disk} bytes, object {}); run again",
                self.part.display(),
                &self.manifest.id().to_hex()[..16]
            )));
        }
        self.file.sync_all().map_err(|e| self.disk_error(e))?;
        std::fs::rename(&self.part, output).map_err(|e| GetError::Disk {
            path: output.display().to_string(),
            why: e.to_string(),
        })?;
        let _ = std::fs::remove_file(&self.state);
        let endpoint_keep = self.endpoint_keep.clone();
        tokio::spawn(async move {
            let _keep_serving = endpoint_keep;
            std::future::pending::<()>().await
        });
        Ok(self.summary(output))
    }

    fn summary(&self, output: &Path) -> Summary {
        let seconds = self.started.elapsed().as_secs_f64();
        let reports = self.scheduler.report();
        let mbps = self.layout.object_size() as f64 * 8.0 / 1e6 / seconds.max(1e-9);
        let sources: Vec<SourceSummary> = self
            .sources
            .iter()
            .zip(&reports)
            .map(|(entry, report)| SourceSummary {
                name: report.name.clone(),
                url: entry.planned.url.clone(),
                joined: entry.joined,
                bytes: report.bytes,
                pieces: report.pieces,
                requests: report.requests,
                state: report.health.clone(),
            })
            .collect();
        let playback = self.playback.as_ref();
        Summary {
            path: self.url.path.as_str().to_string(),
            output: output.display().to_string(),
            object_id: self.manifest.id().to_hex(),
            bytes: self.layout.object_size(),
            seconds,
            mbps,
            resumed_pieces: self.resumed_pieces,
            committed_mbps: self.committed_mbps,
            bitrate_held: self.committed_mbps.map(|c| mbps >= c),
            failovers: reports
                .iter()
                .filter(|r| r.health.starts_with("dropped"))
                .count() as u32,
            stalls: reports.iter().map(|r| r.stalls).sum(),
            degradations: reports.iter().map(|r| r.degradations).sum(),
            replacements: (self.sources.len() - self.first_sources) as u32,
            standby_used: self
                .sources
                .iter()
                .filter(|s| s.joined == "standby")
                .count() as u32,
            rebuffers: playback.map(|p| p.rebuffers()),
            rebuffer_ms: playback.map(|p| p.stalled_ms()),
            playback_started_s: playback
                .and_then(|p| p.started_ms())
                .map(|ms| ms as f64 / 1000.0),
            sources,
            peers: self.peer_report(),
        }
    }
}

/// Refuses timeouts outside 10 ms..=1 h.
fn check_timeouts(options: &GetOptions) -> Result<(), GetError> {
    for (name, value) in [
        ("connect_timeout_ms", options.connect_timeout_ms),
        ("read_timeout_ms", options.read_timeout_ms),
        ("stall_ms", options.stall_ms),
    ] {
        if !(10..=3_600_000).contains(&value) {
            return Err(GetError::Failed(format!(
                "{name} = {value} is not within 10..=3600000"
            )));
        }
    }
    Ok(())
}

/// The HTTP client of a download: no redirects, many idle connections
/// per source, from `options.local_address` if set.
fn http_client(options: &GetOptions) -> Result<reqwest::Client, GetError> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = &options.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| GetError::Failed(format!("--ca-file {}: {e}", path.display())))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            GetError::Failed(format!("--ca-file {}: {}", path.display(), error_chain(&e)))
        })?;
        if certificates.is_empty() {
            return Err(GetError::Failed(format!(
                "--ca-file {}: no certificate in it",
                path.display()
            )));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .connect_timeout(Duration::from_millis(options.connect_timeout_ms))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(32)
        .pool_idle_timeout(Duration::from_millis(shoal_proto::POOL_IDLE_MS))
        .local_address(options.local_address)
        .build()
        .map_err(|e| GetError::Failed(error_chain(&e)))
}

/// Where `url` comes from (its plan, with `mirrors` added) and what its
/// pieces are checked against; refuses a plan without sources and an
/// object of more than [`PIECES_MAX`] pieces.
async fn discover_object(
    client: &reqwest::Client,
    url: &ObjectUrl,
    mirrors: &[String],
    timeout: Duration,
) -> Result<(Origin, discover::Plan, Arc<Reference>), GetError> {
    let (origin, mut plan) = discover::discover(client, url, timeout).await?;
    add_mirrors(&mut plan, url, mirrors)?;
    if plan.sources.is_empty() {
        return Err(GetError::Failed(format!(
            "{}: no source to download from (the selector planned none)",
            url.url()
        )));
    }
    let manifest = Arc::new(
        discover::fetch_reference(client, &plan.sources, &url.path, plan.object_id, timeout)
            .await?,
    );
    if manifest.piece_count() > PIECES_MAX {
        return Err(GetError::Manifest(format!(
            "{} pieces: more than the {PIECES_MAX} this client takes",
            manifest.piece_count()
        )));
    }
    Ok((origin, plan, manifest))
}

/// The scheduler of the object's pieces, seeded from its id, with the
/// pieces already `have` done; in order in stream mode.
fn new_scheduler(manifest: &Reference, options: &GetOptions, have: &PieceSet) -> Scheduler {
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&manifest.id().0[..8]);
    let mut config = ScheduleConfig::new(
        manifest.piece_count(),
        manifest.layout().piece_size().bytes(),
        u64::from_le_bytes(seed),
    );
    config.stall_ms = options.stall_ms;
    config.first_byte_ms = options.stall_ms.saturating_mul(FIRST_BYTE_STALLS);
    config.in_order = options.stream.is_some();
    Scheduler::new(config, have)
}

/// Stream mode: the pieces readers may take, the resumed ones already.
fn ready_with(manifest: &Reference, have: &PieceSet) -> Arc<crate::stream::Ready> {
    let ready = crate::stream::Ready::new(manifest.piece_count());
    for index in have.iter() {
        ready.mark(index);
    }
    ready
}

/// Stream mode with a committed bitrate: a virtual player that counts
/// rebuffers.
fn virtual_player(
    streaming: bool,
    committed_mbps: Option<f64>,
    buffer_ms: u64,
    object_size: u64,
) -> Option<crate::playback::Playback> {
    match (streaming, committed_mbps) {
        (true, Some(mbps)) => Some(crate::playback::Playback::new(
            mbps * 1e6,
            buffer_ms,
            object_size,
        )),
        _ => None,
    }
}

/// `--mirror` URLs join the plan as sources (same path only); a mirror
/// without a signature of its own takes `url`'s (a signature is for the
/// path, whichever cache serves it).
fn add_mirrors(
    plan: &mut discover::Plan,
    url: &ObjectUrl,
    mirrors: &[String],
) -> Result<(), GetError> {
    for mirror in mirrors {
        let mut parsed = ObjectUrl::parse(mirror)?;
        if parsed.signature.is_none() {
            parsed.signature.clone_from(&url.signature);
        }
        if parsed.path != url.path {
            return Err(GetError::BadUrl(format!(
                "mirror {mirror} names another path than {}",
                url.path.as_str()
            )));
        }
        plan.sources.push(PlannedSource {
            name: parsed.base.trim_start_matches("http://").to_string(),
            url: parsed.url(),
            share: 1.0,
            ..PlannedSource::default()
        });
    }
    Ok(())
}

/// Opens the part file at the object's size; emptied first unless it is
/// being resumed.
fn open_part_file(part: &Path, size: u64, resuming: bool) -> Result<std::fs::File, GetError> {
    let disk = |error: std::io::Error| GetError::Disk {
        path: part.display().to_string(),
        why: error.to_string(),
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(part)
        .map_err(disk)?;
    if !resuming {
        file.set_len(0).map_err(disk)?;
    }
    file.set_len(size).map_err(disk)?;
    Ok(file)
}

/// Stream mode: starts the in-order reader (stdout, returned to be
/// awaited) or the local HTTP endpoint (serving until `stop` ends).
fn start_stream(
    stream_to: StreamTo,
    ready: &Arc<crate::stream::Ready>,
    file: &Arc<std::fs::File>,
    layout: PieceLayout,
    url: &ObjectUrl,
    stop: tokio::sync::watch::Receiver<()>,
) -> Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>, GetError> {
    match stream_to {
        StreamTo::Stdout => Ok(Some(tokio::spawn(crate::stream::to_stdout(
            ready.clone(),
            file.clone(),
            layout,
        )))),
        StreamTo::Serve(listener) => {
            let listener = listener
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(listener))
                .map_err(|e| GetError::Failed(format!("the local endpoint: {e}")))?;
            tokio::spawn(crate::stream::serve(
                listener,
                ready.clone(),
                file.clone(),
                layout,
                crate::stream::content_type_of(url.path.file_name()),
                async move {
                    let mut stop = stop;
                    while stop.changed().await.is_ok() {}
                },
            ));
            Ok(None)
        }
    }
}

/// Asks the selector for a plan for `object` without the `exclude`d
/// caches; the answer comes back as an [`Event::Plan`].
fn spawn_replan(
    client: &reqwest::Client,
    selector: &str,
    object: &ObjectUrl,
    exclude: &[String],
    reserve: bool,
    events: &mpsc::Sender<Event>,
    timeout: Duration,
) {
    let (client, selector, object, exclude, events) = (
        client.clone(),
        selector.to_string(),
        object.clone(),
        exclude.to_vec(),
        events.clone(),
    );
    tokio::spawn(async move {
        let plan =
            discover::fetch_plan(&client, &selector, &object, &exclude, reserve, timeout).await;
        let _ = events.send(Event::Plan(plan)).await;
    });
}

impl Run {
    fn snapshot(&self) -> Progress {
        let done_bytes = self
            .scheduler
            .done_set()
            .iter()
            .map(|i| self.layout.piece_len(i))
            .sum();
        let peer_rate = self.peers.as_ref().map_or(0.0, |p| p.peer_rate());
        Progress {
            done_bytes,
            total_bytes: self.layout.object_size(),
            elapsed: self.started.elapsed(),
            rate_bps: self.scheduler.aggregate_rate_bps() + peer_rate,
            sources: self.scheduler.report(),
            peers: self.peer_report(),
        }
    }
}

/// The swarm's next event, or never when not in one.
async fn next_peer_event(side: &mut Option<crate::peers::PeerSide>) -> crate::peers::PeerEvent {
    match side {
        Some(side) => side.next().await,
        None => std::future::pending().await,
    }
}

/// What one range request's task needs.
struct RunFetch {
    client: reqwest::Client,
    url: String,
    source: SourceId,
    /// The run: `count` consecutive pieces from `first`.
    first: PieceIndex,
    count: u32,
    layout: PieceLayout,
    manifest: Arc<Reference>,
    file: Arc<std::fs::File>,
    events: mpsc::Sender<Event>,
    timeout: Duration,
    /// Pieces of the run no longer wanted (bit i: `first + i`).
    cancelled: Arc<AtomicU64>,
}

impl RunFetch {
    /// Whether the run's piece `i` is still wanted (not cancelled).
    fn wanted(&self, i: u32) -> bool {
        self.cancelled.load(Ordering::Acquire) & (1 << i) == 0
    }
}

/// Fetches a run of consecutive pieces in one range request, verifying
/// and writing each as it completes. Pieces the driver cancels are
/// skipped: one cancelled before it starts narrows the request, one
/// cancelled while it arrives ends the request and the rest is asked for
/// again.
async fn fetch_run(run: RunFetch) {
    let base = run
        .url
        .find("://")
        .and_then(|i| run.url[i + 3..].find('/').map(|j| &run.url[..i + 3 + j]))
        .unwrap_or(&run.url)
        .to_string();
    let wanted = |i: u32| run.wanted(i);
    let span_of = |i: u32| run.layout.piece_span(PieceIndex(run.first.0 + i));
    let mut next = 0;
    'requests: while next < run.count {
        while next < run.count && !wanted(next) {
            next += 1;
        }
        let Some(last) = (next..run.count).rev().find(|i| wanted(*i)) else {
            return;
        };
        let (Some(from), Some(to)) = (span_of(next), span_of(last)) else {
            return;
        };
        let piece = PieceIndex(run.first.0 + next);
        let mut body =
            match open_range(&run.client, &run.url, from.start(), to.end(), run.timeout).await {
                Ok(body) => body,
                Err(why) => {
                    abandon_from(&run, next, Event::Failed(run.source, piece, why)).await;
                    return;
                }
            };
        let asked_from = next;
        for i in asked_from..=last {
            let piece = PieceIndex(run.first.0 + i);
            let Some(span) = span_of(i) else { return };
            if !wanted(i) {
                // Skipping it would mean reading it: ask again after it.
                next = i + 1;
                continue 'requests;
            }
            match receive_piece(&run, &mut body, i, span.len()).await {
                Ok(Some(data)) => {
                    let event = verify_and_write(&run, piece, span.start(), data, &base).await;
                    // A refused piece or a disk error ends the run (the
                    // source is dropped, or the download stops).
                    if !matches!(event, Event::Piece(_, _, Some(_))) {
                        abandon_from(&run, i, event).await;
                        return;
                    }
                    let _ = run.events.send(event).await;
                }
                // Cancelled while it arrived: the rest is asked for anew.
                Ok(None) => {
                    next = i + 1;
                    continue 'requests;
                }
                Err(why) => {
                    abandon_from(&run, i, Event::Failed(run.source, piece, why)).await;
                    return;
                }
            }
        }
        return;
    }
}

/// Reports `event` for the run's piece `i` and gives back the pieces after
/// it still wanted.
async fn abandon_from(run: &RunFetch, i: u32, event: Event) {
    let _ = run.events.send(event).await;
    for later in i + 1..run.count {
        if run.wanted(later) {
            let piece = PieceIndex(run.first.0 + later);
            let _ = run.events.send(Event::Abandoned(run.source, piece)).await;
        }
    }
}

/// A range request's body, read piece by piece.
struct RangeBody {
    response: reqwest::Response,
    /// Bytes received past the piece being read.
    leftover: Bytes,
}

/// Asks for bytes `start..end`; the answer must be exactly that range (or
/// the whole object when that is what was asked).
async fn open_range(
    client: &reqwest::Client,
    url: &str,
    start: u64,
    end: u64,
    timeout: Duration,
) -> Result<RangeBody, String> {
    let expected = end - start;
    let request = client
        .get(url)
        .header(reqwest::header::RANGE, format!("bytes={start}-{}", end - 1));
    let response = tokio::time::timeout(timeout, request.send())
        .await
        .map_err(|_| "no response".to_string())?
        .map_err(|e| error_chain(&e))?;
    let status = response.status();
    let whole = status == reqwest::StatusCode::OK
        && start == 0
        && response.content_length() == Some(expected);
    if status != reqwest::StatusCode::PARTIAL_CONTENT && !whole {
        return Err(format!("answered {status} to a range request"));
    }
    if status == reqwest::StatusCode::PARTIAL_CONTENT {
        let range = response
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let wanted = format!("bytes {start}-{}/", end - 1);
        if !range.starts_with(&wanted) {
            return Err(format!("Content-Range `{range}`, expected `{wanted}…`"));
        }
        if let Some(length) = response.content_length() {
            if length != expected {
                return Err(format!(
                    "{length} bytes announced for a range of {expected}"
                ));
            }
        }
    }
    Ok(RangeBody {
        response,
        leftover: Bytes::new(),
    })
}

/// Reads the run's piece `i` (`len` bytes) from the body, reporting
/// progress; `None` if the driver cancelled it meanwhile.
async fn receive_piece(
    run: &RunFetch,
    body: &mut RangeBody,
    i: u32,
    len: u64,
) -> Result<Option<Bytes>, String> {
    let piece = PieceIndex(run.first.0 + i);
    let mut data = bytes::BytesMut::with_capacity(len as usize);
    let mut unreported = 0u64;
    while (data.len() as u64) < len {
        if !run.wanted(i) {
            return Ok(None);
        }
        let mut chunk = if body.leftover.is_empty() {
            let chunk = tokio::time::timeout(run.timeout, body.response.chunk())
                .await
                .map_err(|_| "body stalled".to_string())?
                .map_err(|e| error_chain(&e))?;
            match chunk {
                Some(chunk) => chunk,
                None => return Err(format!("{} of {len} bytes", data.len())),
            }
        } else {
            std::mem::take(&mut body.leftover)
        };
        let room = (len - data.len() as u64) as usize;
        if chunk.len() > room {
            body.leftover = chunk.split_off(room);
        }
        let first = data.is_empty();
        data.extend_from_slice(&chunk);
        unreported += chunk.len() as u64;
        if first || unreported >= PROGRESS_BYTES {
            let _ = run
                .events
                .send(Event::Bytes(run.source, piece, unreported))
                .await;
            unreported = 0;
        }
    }
    if unreported > 0 {
        let _ = run
            .events
            .send(Event::Bytes(run.source, piece, unreported))
            .await;
    }
    Ok(Some(data.freeze()))
}

/// Verifies a received piece and writes it at `offset`; what the disk
/// holds is read back and verified again. The event to report.
async fn verify_and_write(
    run: &RunFetch,
    piece: PieceIndex,
    offset: u64,
    data: Bytes,
    base: &str,
) -> Event {
    let source = run.source;
    if let Err(rejected) = run.manifest.verify(piece, &data, base).await {
        return match rejected {
            Rejected::Mismatch => Event::Piece(source, piece, None),
            // Its hash never came: not the source's fault alone.
            Rejected::Unknown => Event::Failed(source, piece, "no hash for this piece yet".into()),
        };
    }
    let kept = data.clone();
    let (file, manifest) = (run.file.clone(), run.manifest.clone());
    let written = tokio::task::spawn_blocking(move || {
        file.write_all_at(&data, offset)?;
        let mut back = vec![0u8; data.len()];
        file.read_exact_at(&mut back, offset)?;
        if !manifest.verify_known(piece, &back) {
            return Err(std::io::Error::other(format!(
                "piece {} reads back different from what was written",
                piece.0
            )));
        }
        Ok(())
    })
    .await;
    match written {
        Ok(Ok(())) => Event::Piece(source, piece, Some(kept)),
        Ok(Err(error)) => Event::Disk(error),
        Err(join) => Event::Disk(std::io::Error::other(join.to_string())),
    }
}

/// Whether a source's state is "dropped" (for displays).
pub fn is_dropped(report: &SourceReport) -> bool {
    report.health.starts_with("dropped")
}
