//! Which piece to ask which source for, next: a state machine without I/O.
//!
//! The driver (tokio in `download`, a fluid model in the simulator tests)
//! tells it what happened — bytes arrived, a piece verified or failed, a
//! request errored, time passed — and asks it for work whenever a source
//! has a free request slot. Time is milliseconds from any fixed start.
//!
//! How it decides:
//!
//! - **Shares follow speed.** Work is pulled: a source gets a new piece
//!   each time one of its requests finishes, so a source twice as fast
//!   carries twice the share without any explicit split.
//! - **Enough in flight.** Each source may have `ceil(rate × rtt / piece)
//!   + 1` requests outstanding (its bandwidth-delay product, at least
//!   `in_flight_min`), from its measured rate and time to first byte.
//! - **Sticky stripes.** Every piece has a preferred source (weighted
//!   rendezvous of object, piece and source over the current sources, by
//!   planned share), and sources take their own stripe first: the same
//!   caches get the same pieces, so each holds only its stripe (the
//!   selector's cost model counts on it). A source whose stripe is done
//!   takes the lowest unassigned piece of anyone's.
//! - **In order, when streaming.** With `in_order`, the lowest missing
//!   pieces (from the reader's playhead) go first, and the fastest source
//!   (short-term rate) takes the one due soonest.
//! - **Degradation.** A source whose short-term rate (τ 0.5 s) falls below
//!   `drop_ratio` of its long-term rate (τ 4 s), or that received nothing
//!   for `stall_ms` with requests out, is *degraded* or *stalled*: its
//!   outstanding pieces are requested from healthy sources first when
//!   streaming (lowest piece first, when they would finish it sooner; a
//!   download lets it finish them and duplicates only in the endgame), and
//!   the driver is told
//!   to ask the selector for a replacement. A stalled source's requests are
//!   cancelled and it is dropped; a degraded one gets one new request at a
//!   time. Three errors in a row, or one piece that fails
//!   verification, drop a source for good.
//! - **Endgame.** When every missing piece is in flight, a free source
//!   duplicates the in-flight piece expected to finish last, if it would
//!   finish it sooner; the first verified copy wins, the rest are
//!   cancelled.
//! - **Gated (peers in the swarm).** With [`Scheduler::gate`], sources
//!   take only the pieces the caller [released](Scheduler::release_to_sources) to
//!   them — the gap the peers leave, as `gap` decides — lowest first, and
//!   duplicate only when every missing piece is released. Pieces that came
//!   from peers are marked with [`Scheduler::done_elsewhere`].
//! - **Runs.** With `run_pieces_max` above one, [`Scheduler::next_run`]
//!   extends a source's next piece with the consecutive pieces after it
//!   that it may also take (free slots, released when gated): the driver
//!   asks for them in one contiguous range request. Each piece of a run
//!   keeps its own slot, so verification, cancellation and stalls stay per
//!   piece.

use shoal_core::bitfield::PieceSet;
use shoal_core::PieceIndex;

/// A source's handle in the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u32);

#[derive(Clone, Debug)]
pub struct ScheduleConfig {
    pub piece_count: u32,
    /// Nominal piece size (the last piece may be shorter).
    pub piece_bytes: u64,
    /// Seeds the stripes (e.g. the first bytes of the object id).
    pub object_seed: u64,
    /// No byte for this long with requests out: stalled.
    pub stall_ms: u64,
    /// The same for a source that has not sent a byte yet: a cold cache
    /// (a replacement, say) first fills from its shield or the origin, so
    /// its first byte may take longer than a warm source's next one.
    pub first_byte_ms: u64,
    /// Short-term rate below this fraction of the long-term rate: degraded.
    pub drop_ratio: f64,
    pub in_flight_min: u32,
    pub in_flight_max: u32,
    /// Most requests for one piece at once (endgame and hedging).
    pub copies_max: u32,
    /// Lowest missing piece first (streaming).
    pub in_order: bool,
    /// Errors in a row that drop a source.
    pub errors_max: u32,
    /// Bytes in flight over all sources at most (each request holds its
    /// piece in memory until it verifies).
    pub in_flight_bytes_max: u64,
    /// Most consecutive pieces one request may cover ([`Scheduler::next_run`]);
    /// at most [`RUN_PIECES_LIMIT`].
    pub run_pieces_max: u32,
    /// A source with requests out asks again only when this many pieces
    /// fit (one run arrives while the next is asked for), so its slots,
    /// freed one piece at a time, do not turn a run into single pieces.
    pub run_pieces_min: u32,
}

/// Runs never cover more pieces than this (the driver tracks a run's
/// cancelled pieces in one 64-bit mask).
pub const RUN_PIECES_LIMIT: u32 = 64;

impl ScheduleConfig {
    pub fn new(piece_count: u32, piece_bytes: u64, object_seed: u64) -> Self {
        Self {
            piece_count,
            piece_bytes: piece_bytes.max(1),
            object_seed,
            stall_ms: 1_000,
            first_byte_ms: 3_000,
            drop_ratio: 0.3,
            in_flight_min: 2,
            in_flight_max: 16,
            copies_max: 2,
            in_order: false,
            errors_max: 3,
            in_flight_bytes_max: 256 << 20,
            run_pieces_max: 1,
            run_pieces_min: 1,
        }
    }
}

/// How a source is doing.
#[derive(Clone, Debug, PartialEq)]
pub enum Health {
    Active,
    /// Its rate fell well below what it was: one request at a time, its
    /// pieces may be duplicated elsewhere.
    Degraded,
    /// Out of this download, with the reason.
    Dropped(String),
}

/// What the driver must do after [`Scheduler::tick`] or an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Abort the request for `piece` on `source` (someone else got it, or
    /// the source is dropped).
    Cancel { source: SourceId, piece: PieceIndex },
    /// Ask the selector for a source to replace (or join) this one; the
    /// reason is for the report.
    Replace { source: SourceId, reason: String },
}

/// Per-source counters for reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceReport {
    pub name: String,
    pub bytes: u64,
    pub pieces: u32,
    /// Runs handed out (one range request each; a run asked for again
    /// after a piece in it was cancelled counts once).
    pub requests: u32,
    pub health: String,
    /// Current short-term rate, bytes per second.
    pub rate_bps: f64,
    pub errors: u32,
    pub stalls: u32,
    pub degradations: u32,
}

/// An exponentially weighted rate over irregular intervals.
#[derive(Clone, Debug, Default)]
struct Rate {
    value: f64,
    primed: bool,
}

impl Rate {
    fn update(&mut self, sample: f64, dt_ms: u64, tau_ms: f64) {
        if !self.primed {
            self.value = sample;
            self.primed = true;
            return;
        }
        let alpha = 1.0 - (-(dt_ms as f64) / tau_ms).exp();
        self.value += alpha * (sample - self.value);
    }
}

const FAST_TAU_MS: f64 = 500.0;
const SLOW_TAU_MS: f64 = 4_000.0;
/// A source must have been busy this long before its rate is judged.
const JUDGE_AFTER_BUSY_MS: u64 = 1_500;

#[derive(Clone, Debug)]
struct Source {
    name: String,
    /// Planned share, relative (stripes are weighted by it).
    weight: f64,
    health: Health,
    in_flight: Vec<u32>,
    fast: Rate,
    slow: Rate,
    /// Time to first byte, ms.
    rtt_ms: Rate,
    bytes_since_tick: u64,
    busy_since_tick: bool,
    busy_ms: u64,
    last_progress_ms: u64,
    /// When each in-flight request started (parallel to `in_flight`).
    started_ms: Vec<u64>,
    /// Whether the request has seen its first byte (parallel).
    first_byte: Vec<bool>,
    /// Whether the piece follows another in the same range request
    /// (parallel): its first byte waits for the pieces before it, so it
    /// says nothing about the source's time to first byte.
    follows: Vec<bool>,
    stripe: std::collections::VecDeque<u32>,
    bytes: u64,
    pieces: u32,
    requests: u32,
    errors_in_a_row: u32,
    errors: u32,
    stalls: u32,
    degradations: u32,
}

impl Source {
    fn is_usable(&self) -> bool {
        !matches!(self.health, Health::Dropped(_))
    }

    fn rate(&self) -> f64 {
        self.fast.value.max(0.0)
    }
}

pub struct Scheduler {
    config: ScheduleConfig,
    done: PieceSet,
    done_count: u32,
    /// Per piece: the sources it is requested from.
    requested: Vec<Vec<SourceId>>,
    /// Per piece: its preferred source.
    preferred: Vec<Option<SourceId>>,
    sources: Vec<Source>,
    /// Lowest piece that may be missing and unrequested.
    cursor: u32,
    /// Streaming: where the reader is; pieces from here on come first.
    playhead: u32,
    last_tick_ms: Option<u64>,
    /// Gated: the pieces released to sources and not done yet.
    gate: Option<std::collections::BTreeSet<u32>>,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser: a cheap, well-spread hash.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Scheduler {
    /// A scheduler for an object of which `have` pieces are already
    /// verified (a resumed download).
    pub fn new(config: ScheduleConfig, have: &PieceSet) -> Self {
        let count = config.piece_count;
        let mut done = PieceSet::new(count);
        let mut done_count = 0;
        for index in have.iter().filter(|i| i.0 < count) {
            if done.insert(index) {
                done_count += 1;
            }
        }
        Self {
            requested: vec![Vec::new(); count as usize],
            preferred: vec![None; count as usize],
            done,
            done_count,
            sources: Vec::new(),
            cursor: 0,
            playhead: 0,
            last_tick_ms: None,
            gate: None,
            config,
        }
    }

    /// From now on sources take only released pieces.
    pub fn gate(&mut self) {
        self.gate.get_or_insert_with(Default::default);
    }

    /// Requests may cover up to `most` consecutive pieces; a busy source
    /// asks again when `least` fit; every source may keep `floor` pieces in
    /// flight whatever its measured rate (room for runs).
    pub fn set_runs(&mut self, most: u32, least: u32, floor: u32) {
        self.config.run_pieces_max = most.clamp(1, RUN_PIECES_LIMIT);
        self.config.run_pieces_min = least.clamp(1, self.config.run_pieces_max);
        self.config.in_flight_min = self
            .config
            .in_flight_min
            .max(floor)
            .min(self.config.in_flight_max.max(1));
    }

    pub fn is_gated(&self) -> bool {
        self.gate.is_some()
    }

    /// Lets sources take `piece` (gated).
    pub fn release_to_sources(&mut self, piece: PieceIndex) {
        if piece.0 < self.config.piece_count && !self.done.contains(piece) {
            if let Some(gate) = &mut self.gate {
                gate.insert(piece.0);
            }
        }
    }

    /// Takes `piece` back from the sources if none has it in flight;
    /// `true` if it was released and is no longer.
    pub fn unrelease(&mut self, piece: PieceIndex) -> bool {
        let idle = self
            .requested
            .get(piece.0 as usize)
            .is_some_and(Vec::is_empty);
        match &mut self.gate {
            Some(gate) if idle => gate.remove(&piece.0),
            _ => false,
        }
    }

    /// Released and not done: what sources may take or have in flight.
    pub fn released(&self) -> impl Iterator<Item = PieceIndex> + '_ {
        self.gate.iter().flatten().map(|p| PieceIndex(*p))
    }

    pub fn is_released(&self, piece: PieceIndex) -> bool {
        self.gate.as_ref().is_some_and(|g| g.contains(&piece.0))
    }

    /// Released pieces no source has taken yet.
    pub fn released_waiting(&self) -> u32 {
        self.gate.as_ref().map_or(0, |gate| {
            gate.iter()
                .filter(|p| self.requested[**p as usize].is_empty())
                .count() as u32
        })
    }

    /// Request slots free over the usable sources.
    pub fn free_slots(&self) -> u32 {
        self.sources
            .iter()
            .filter(|s| s.is_usable())
            .map(|s| self.in_flight_limit(s).saturating_sub(s.in_flight.len()) as u32)
            .sum()
    }

    /// `piece` verified from elsewhere (peers): requests for it are
    /// cancelled.
    pub fn done_elsewhere(&mut self, piece: PieceIndex) -> Vec<Action> {
        let mut actions = Vec::new();
        if piece.0 < self.config.piece_count && self.done.insert(piece) {
            self.done_count += 1;
            if let Some(gate) = &mut self.gate {
                gate.remove(&piece.0);
            }
            for other in std::mem::take(&mut self.requested[piece.0 as usize]) {
                self.release(other, piece);
                actions.push(Action::Cancel {
                    source: other,
                    piece,
                });
            }
        }
        actions
    }

    pub fn config(&self) -> &ScheduleConfig {
        &self.config
    }

    pub fn is_complete(&self) -> bool {
        self.done_count == self.config.piece_count
    }

    pub fn done_count(&self) -> u32 {
        self.done_count
    }

    pub fn is_done(&self, piece: PieceIndex) -> bool {
        self.done.contains(piece)
    }

    /// Pieces verified so far.
    pub fn done_set(&self) -> &PieceSet {
        &self.done
    }

    /// Adds a source with a planned share (any positive scale).
    pub fn add_source(&mut self, name: &str, weight: f64, now_ms: u64) -> SourceId {
        let id = SourceId(self.sources.len() as u32);
        self.sources.push(Source {
            name: name.to_string(),
            weight: if weight.is_finite() && weight > 0.0 {
                weight
            } else {
                1.0
            },
            health: Health::Active,
            in_flight: Vec::new(),
            fast: Rate::default(),
            slow: Rate::default(),
            rtt_ms: Rate::default(),
            bytes_since_tick: 0,
            busy_since_tick: false,
            busy_ms: 0,
            last_progress_ms: now_ms,
            started_ms: Vec::new(),
            first_byte: Vec::new(),
            follows: Vec::new(),
            stripe: Default::default(),
            bytes: 0,
            pieces: 0,
            requests: 0,
            errors_in_a_row: 0,
            errors: 0,
            stalls: 0,
            degradations: 0,
        });
        self.restripe();
        id
    }

    pub fn source_name(&self, source: SourceId) -> &str {
        self.sources
            .get(source.0 as usize)
            .map_or("", |s| s.name.as_str())
    }

    pub fn health(&self, source: SourceId) -> Option<&Health> {
        self.sources.get(source.0 as usize).map(|s| &s.health)
    }

    /// Sources still in the download.
    pub fn usable_sources(&self) -> Vec<SourceId> {
        (0..self.sources.len() as u32)
            .map(SourceId)
            .filter(|s| self.sources[s.0 as usize].is_usable())
            .collect()
    }

    /// Recomputes every missing piece's preferred source (weighted
    /// rendezvous over the usable sources) and each source's stripe.
    fn restripe(&mut self) {
        let usable: Vec<(SourceId, u64, f64)> = self
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_usable())
            .map(|(i, s)| (SourceId(i as u32), name_seed(&s.name), s.weight))
            .collect();
        for source in &mut self.sources {
            source.stripe.clear();
        }
        for piece in 0..self.config.piece_count {
            if self.done.contains(PieceIndex(piece)) {
                self.preferred[piece as usize] = None;
                continue;
            }
            let base =
                mix(self.config.object_seed ^ u64::from(piece).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let best = usable
                .iter()
                .map(|(id, seed, weight)| {
                    // Weighted rendezvous: -ln(u) / w, lowest wins.
                    let u = ((mix(base ^ seed) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                    (-u.ln() / weight, *id)
                })
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, id)| id);
            self.preferred[piece as usize] = best;
            if let Some(id) = best {
                self.sources[id.0 as usize].stripe.push_back(piece);
            }
        }
    }

    /// How many requests `source` may have outstanding now.
    fn in_flight_limit(&self, source: &Source) -> usize {
        if source.health == Health::Degraded {
            return 1;
        }
        let cover = if source.fast.primed && source.rtt_ms.primed {
            let bdp = source.rate() * source.rtt_ms.value / 1000.0;
            (bdp / self.config.piece_bytes as f64).ceil() as u32 + 1
        } else {
            0
        };
        let min = self.config.in_flight_min.max(1);
        cover.max(min).min(self.config.in_flight_max.max(min)) as usize
    }

    /// Whether `source` has a free request slot (and the memory budget
    /// for one more piece).
    pub fn wants_more(&self, source: SourceId) -> bool {
        let in_flight: u64 = self.sources.iter().map(|s| s.in_flight.len() as u64).sum();
        let budget_left = (in_flight + 1).saturating_mul(self.config.piece_bytes)
            <= self.config.in_flight_bytes_max;
        self.sources.get(source.0 as usize).is_some_and(|s| {
            s.is_usable()
                && s.in_flight.len() < self.in_flight_limit(s)
                && (budget_left || in_flight == 0)
        })
    }

    fn assignable(&self, piece: u32) -> bool {
        !self.done.contains(PieceIndex(piece))
            && self.requested[piece as usize].is_empty()
            && self.gate.as_ref().is_none_or(|g| g.contains(&piece))
    }

    /// Gated: the lowest released piece nobody has, from the playhead.
    fn pick_released(&self) -> Option<u32> {
        let gate = self.gate.as_ref()?;
        gate.range(self.playhead..)
            .chain(gate.range(..self.playhead))
            .copied()
            .find(|p| self.assignable(*p))
    }

    /// The next piece for `source` to fetch, if any (marks it requested).
    pub fn next_piece(&mut self, source: SourceId, now_ms: u64) -> Option<PieceIndex> {
        if !self.wants_more(source) {
            return None;
        }
        // Streaming: a degraded source's outstanding pieces first (the
        // player would wait on them); then new pieces; then the endgame.
        let piece = self
            .pick_from_degraded(source, now_ms)
            .or_else(|| {
                if self.gate.is_some() {
                    self.pick_released()
                } else if self.config.in_order {
                    self.pick_in_order(source)
                } else {
                    self.pick_own_stripe(source).or_else(|| self.pick_lowest())
                }
            })
            .or_else(|| self.pick_duplicate(source, now_ms))?;
        self.take(source, piece, false, now_ms);
        Some(PieceIndex(piece))
    }

    /// The next pieces for `source`: a first one as [`Self::next_piece`]
    /// picks it, then the consecutive pieces after it the source may also
    /// take now, up to `run_pieces_max` (each marked requested). Returns
    /// the first piece and how many.
    pub fn next_run(&mut self, source: SourceId, now_ms: u64) -> Option<(PieceIndex, u32)> {
        let s = self.sources.get(source.0 as usize)?;
        let free = self.in_flight_limit(s).saturating_sub(s.in_flight.len());
        if !s.in_flight.is_empty() && free < self.config.run_pieces_min as usize {
            return None;
        }
        let first = self.next_piece(source, now_ms)?;
        self.sources[source.0 as usize].requests += 1;
        let most = self.config.run_pieces_max.clamp(1, RUN_PIECES_LIMIT);
        let mut count = 1;
        while count < most && self.wants_more(source) {
            let next = first.0 + count;
            if next >= self.config.piece_count || !self.assignable(next) {
                break;
            }
            self.take(source, next, true, now_ms);
            count += 1;
        }
        Some((first, count))
    }

    /// Marks `piece` requested from `source`.
    fn take(&mut self, source: SourceId, piece: u32, follows: bool, now_ms: u64) {
        self.requested[piece as usize].push(source);
        let s = &mut self.sources[source.0 as usize];
        s.in_flight.push(piece);
        s.started_ms.push(now_ms);
        s.first_byte.push(false);
        s.follows.push(follows);
        if s.in_flight.len() == 1 {
            // Idle until now: stall time counts from here.
            s.last_progress_ms = now_ms;
        }
    }

    fn pick_own_stripe(&mut self, source: SourceId) -> Option<u32> {
        loop {
            let piece = *self.sources[source.0 as usize].stripe.front()?;
            if self.assignable(piece) {
                self.sources[source.0 as usize].stripe.pop_front();
                return Some(piece);
            }
            self.sources[source.0 as usize].stripe.pop_front();
        }
    }

    /// Streaming: the reader is at `piece` (it seeked): pieces from there
    /// on come first, then the ones before it.
    pub fn set_playhead(&mut self, piece: PieceIndex) {
        self.playhead = piece.0.min(self.config.piece_count);
    }

    fn pick_lowest(&mut self) -> Option<u32> {
        while self.cursor < self.config.piece_count && self.done.contains(PieceIndex(self.cursor)) {
            self.cursor += 1;
        }
        self.pick_lowest_readonly()
    }

    /// Streaming: the lowest missing pieces first; the most reliable
    /// source takes the lowest, the others skip ahead by their rank so the
    /// soonest-due piece is never left to the slowest.
    fn pick_in_order(&mut self, source: SourceId) -> Option<u32> {
        let first = self.pick_lowest()?;
        if first < self.playhead {
            // Past the end of what the reader wants: anything left.
            return Some(first);
        }
        let mut ranked: Vec<(f64, SourceId)> = self
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| s.health == Health::Active)
            .map(|(i, s)| (s.rate(), SourceId(i as u32)))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let rank = ranked
            .iter()
            .position(|(_, id)| *id == source)
            .unwrap_or(ranked.len());
        let mut found = 0;
        let mut candidate = None;
        for piece in first..self.config.piece_count {
            if self.assignable(piece) {
                candidate = Some(piece);
                if found == rank {
                    break;
                }
                found += 1;
            }
        }
        candidate
    }

    /// Expected completion of `piece` on the source holding it.
    fn expected_done_ms(&self, source: &Source, slot: usize) -> f64 {
        let rate = source.rate().max(1.0);
        let share = rate / source.in_flight.len().max(1) as f64;
        source.started_ms[slot] as f64 + self.config.piece_bytes as f64 / share * 1000.0
    }

    /// A copy of an in-flight piece this source would finish sooner: only
    /// in the endgame, or when its holder is degraded.
    fn my_done_ms(&self, source: SourceId, now_ms: u64) -> f64 {
        let me = &self.sources[source.0 as usize];
        let my_rate = if me.fast.primed {
            me.rate()
        } else {
            f64::INFINITY
        };
        now_ms as f64 + self.config.piece_bytes as f64 / my_rate.max(1.0) * 1000.0
    }

    fn may_copy(&self, source: SourceId, piece: u32) -> bool {
        let copies = &self.requested[piece as usize];
        !self.done.contains(PieceIndex(piece))
            && !copies.contains(&source)
            && copies.len() < self.config.copies_max as usize
    }

    /// The lowest piece a degraded source still has out that this (healthy)
    /// source would finish sooner.
    /// Only when streaming: a player waits on those pieces. A download
    /// lets the slow source finish what it has (its bytes still count) and
    /// duplicates only in the endgame.
    fn pick_from_degraded(&self, source: SourceId, now_ms: u64) -> Option<u32> {
        if !self.config.in_order || self.sources[source.0 as usize].health != Health::Active {
            return None;
        }
        let my_done = self.my_done_ms(source, now_ms);
        let mut best: Option<u32> = None;
        for holder in self.sources.iter().filter(|h| h.health == Health::Degraded) {
            for (slot, &piece) in holder.in_flight.iter().enumerate() {
                if self.may_copy(source, piece)
                    && self.expected_done_ms(holder, slot) > my_done
                    && best.is_none_or(|b| piece < b)
                {
                    best = Some(piece);
                }
            }
        }
        best
    }

    fn pick_duplicate(&self, source: SourceId, now_ms: u64) -> Option<u32> {
        if let Some(gate) = &self.gate {
            // Gated: an endgame only when every missing piece is released
            // (the rest may still come from peers).
            if gate.len() as u32 != self.config.piece_count - self.done_count
                || self.pick_released().is_some()
            {
                return None;
            }
        } else if self.pick_lowest_readonly().is_some() {
            return None;
        }
        let my_done = self.my_done_ms(source, now_ms);
        let mut best: Option<(f64, u32)> = None;
        for (index, holder) in self.sources.iter().enumerate() {
            if index == source.0 as usize {
                continue;
            }
            for (slot, &piece) in holder.in_flight.iter().enumerate() {
                if !self.may_copy(source, piece) {
                    continue;
                }
                let theirs = self.expected_done_ms(holder, slot);
                if theirs > my_done && best.is_none_or(|(t, _)| theirs > t) {
                    best = Some((theirs, piece));
                }
            }
        }
        best.map(|(_, piece)| piece)
    }

    fn pick_lowest_readonly(&self) -> Option<u32> {
        let from = self.cursor.max(self.playhead);
        (from..self.config.piece_count)
            .chain(self.cursor..from)
            .find(|p| self.assignable(*p))
    }

    fn slot_of(&self, source: SourceId, piece: PieceIndex) -> Option<usize> {
        self.sources
            .get(source.0 as usize)?
            .in_flight
            .iter()
            .position(|p| *p == piece.0)
    }

    fn release(&mut self, source: SourceId, piece: PieceIndex) {
        if let Some(slot) = self.slot_of(source, piece) {
            let s = &mut self.sources[source.0 as usize];
            s.in_flight.swap_remove(slot);
            s.started_ms.swap_remove(slot);
            s.first_byte.swap_remove(slot);
            s.follows.swap_remove(slot);
        }
        if let Some(list) = self.requested.get_mut(piece.0 as usize) {
            list.retain(|s| *s != source);
        }
        let unrequested = self
            .requested
            .get(piece.0 as usize)
            .is_some_and(|list| list.is_empty());
        if unrequested && !self.done.contains(piece) {
            self.cursor = self.cursor.min(piece.0);
        }
    }

    /// `bytes` more of `piece` arrived from `source`.
    pub fn on_bytes(&mut self, source: SourceId, piece: PieceIndex, bytes: u64, now_ms: u64) {
        let Some(slot) = self.slot_of(source, piece) else {
            return;
        };
        let s = &mut self.sources[source.0 as usize];
        // A piece following another in one request waited for the pieces
        // before it: no time-to-first-byte sample.
        if !s.first_byte[slot] && !s.follows[slot] {
            let ttfb = now_ms.saturating_sub(s.started_ms[slot]) as f64;
            if s.rtt_ms.primed {
                s.rtt_ms.value = 0.7 * s.rtt_ms.value + 0.3 * ttfb;
            } else {
                s.rtt_ms.value = ttfb;
                s.rtt_ms.primed = true;
            }
        }
        s.first_byte[slot] = true;
        s.bytes_since_tick += bytes;
        s.bytes += bytes;
        s.last_progress_ms = now_ms;
    }

    /// `piece` from `source` is complete: `verified` or not. Returns what
    /// to cancel (other copies) or do (a source that lied is dropped).
    pub fn on_piece(
        &mut self,
        source: SourceId,
        piece: PieceIndex,
        verified: bool,
        now_ms: u64,
    ) -> Vec<Action> {
        let _ = now_ms;
        self.release(source, piece);
        let mut actions = Vec::new();
        if !verified {
            actions.extend(self.drop_source(source, "sent bytes that failed verification".into()));
            return actions;
        }
        let Some(s) = self.sources.get_mut(source.0 as usize) else {
            return actions;
        };
        s.errors_in_a_row = 0;
        if piece.0 < self.config.piece_count && self.done.insert(piece) {
            self.done_count += 1;
            if let Some(gate) = &mut self.gate {
                gate.remove(&piece.0);
            }
            self.sources[source.0 as usize].pieces += 1;
            let others = std::mem::take(&mut self.requested[piece.0 as usize]);
            for other in others {
                self.release(other, piece);
                actions.push(Action::Cancel {
                    source: other,
                    piece,
                });
            }
        }
        actions
    }

    /// The request for `piece` on `source` failed (connection, status,
    /// timeout).
    pub fn on_error(&mut self, source: SourceId, piece: PieceIndex, why: &str) -> Vec<Action> {
        self.release(source, piece);
        let Some(s) = self.sources.get_mut(source.0 as usize) else {
            return Vec::new();
        };
        s.errors += 1;
        s.errors_in_a_row += 1;
        if s.errors_in_a_row >= self.config.errors_max && s.is_usable() {
            let reason = format!("{} errors in a row: {why}", s.errors_in_a_row);
            return self.drop_source(source, reason);
        }
        Vec::new()
    }

    /// A range request ended before it reached `piece` (the error on an
    /// earlier piece of its run was reported): the piece is free to be
    /// assigned again, without counting as another error.
    pub fn on_abandoned(&mut self, source: SourceId, piece: PieceIndex) {
        self.release(source, piece);
    }

    /// Takes `source` out: its requests are cancelled and its stripe
    /// redistributed; the driver should find a replacement.
    pub fn drop_source(&mut self, source: SourceId, reason: String) -> Vec<Action> {
        let Some(s) = self.sources.get_mut(source.0 as usize) else {
            return Vec::new();
        };
        if !s.is_usable() {
            return Vec::new();
        }
        s.health = Health::Dropped(reason.clone());
        let pieces = s.in_flight.clone();
        let mut actions = Vec::new();
        for piece in pieces {
            self.release(source, PieceIndex(piece));
            actions.push(Action::Cancel {
                source,
                piece: PieceIndex(piece),
            });
        }
        self.restripe();
        actions.push(Action::Replace { source, reason });
        actions
    }

    /// Time passed: rates are updated, stalls and drops detected. Call
    /// every ~100 ms.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let dt = match self.last_tick_ms {
            Some(last) if now_ms > last => now_ms - last,
            Some(_) => return Vec::new(),
            None => {
                self.last_tick_ms = Some(now_ms);
                for s in &mut self.sources {
                    s.bytes_since_tick = 0;
                    s.busy_since_tick = !s.in_flight.is_empty();
                }
                return Vec::new();
            }
        };
        self.last_tick_ms = Some(now_ms);
        let mut actions = Vec::new();
        let mut stalled = Vec::new();
        let stall_ms = self.config.stall_ms;
        let first_byte_ms = self.config.first_byte_ms;
        let drop_ratio = self.config.drop_ratio;
        let gated = self.gate.is_some();
        for (index, s) in self.sources.iter_mut().enumerate() {
            let id = SourceId(index as u32);
            if !s.is_usable() {
                continue;
            }
            let busy = s.busy_since_tick || !s.in_flight.is_empty();
            if busy {
                let sample = s.bytes_since_tick as f64 * 1000.0 / dt as f64;
                s.fast.update(sample, dt, FAST_TAU_MS);
                s.slow.update(sample, dt, SLOW_TAU_MS);
                s.busy_ms += dt;
            }
            s.bytes_since_tick = 0;
            s.busy_since_tick = !s.in_flight.is_empty();
            // Waiting for the first byte of every request it has: a cold
            // piece (filled from the shield or origin first) takes longer
            // than the next bytes of a flowing one.
            let limit_ms = if s.bytes == 0 || s.first_byte.iter().all(|got| !got) {
                first_byte_ms.max(stall_ms)
            } else {
                stall_ms
            };
            if !s.in_flight.is_empty() && now_ms.saturating_sub(s.last_progress_ms) >= limit_ms {
                s.stalls += 1;
                stalled.push((
                    id,
                    format!(
                        "stalled: nothing received for {} ms",
                        now_ms - s.last_progress_ms
                    ),
                ));
                continue;
            }
            // Gated, a source's load follows what the gap releases, so its
            // rate swings by design: only stalls are judged.
            let judged = s.busy_ms >= JUDGE_AFTER_BUSY_MS && !gated;
            match s.health {
                Health::Active if judged && s.fast.value < drop_ratio * s.slow.value => {
                    s.health = Health::Degraded;
                    s.degradations += 1;
                    actions.push(Action::Replace {
                        source: id,
                        reason: format!(
                            "degraded: {:.1} MB/s, down from {:.1} MB/s",
                            s.fast.value / 1e6,
                            s.slow.value / 1e6
                        ),
                    });
                }
                // Back to (a new) normal: its long-term rate has caught up.
                Health::Degraded if s.fast.value >= 0.8 * s.slow.value => {
                    s.health = Health::Active;
                }
                _ => {}
            }
        }
        for (id, reason) in stalled {
            actions.extend(self.drop_source(id, reason));
        }
        actions
    }

    /// Counters per source, for progress and the summary.
    pub fn report(&self) -> Vec<SourceReport> {
        self.sources
            .iter()
            .map(|s| SourceReport {
                name: s.name.clone(),
                bytes: s.bytes,
                pieces: s.pieces,
                requests: s.requests,
                health: match &s.health {
                    Health::Active => "active".into(),
                    Health::Degraded => "degraded".into(),
                    Health::Dropped(why) => format!("dropped: {why}"),
                },
                rate_bps: s.rate(),
                errors: s.errors,
                stalls: s.stalls,
                degradations: s.degradations,
            })
            .collect()
    }

    /// Sum of the usable sources' short-term rates, bytes per second.
    pub fn aggregate_rate_bps(&self) -> f64 {
        self.sources
            .iter()
            .filter(|s| s.is_usable())
            .map(Source::rate)
            .sum()
    }
}

#[cfg(test)]
mod tests;
