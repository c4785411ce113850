//! A seeded trace of video sessions over a catalog of large objects, and a
//! simulator that replays it against an [`EvictionPolicy`].
//!
//! The workload: a catalog of objects of 0.5–10 GB (log-uniform sizes) cut
//! into 4 MiB pieces, with Zipf popularity. A request is one piece. Viewers
//! arrive as sessions: a session picks an object by popularity, starts at
//! piece 0 (or, with some probability, at a random seek point) and reads
//! pieces in order for an exponentially distributed length whose mean is a
//! fraction of the object, so most viewers stop early and the opening
//! pieces are the hottest. A fixed number of sessions play at once; each
//! step advances one of them chosen at random, which interleaves their reads
//! like concurrent viewers. When a session ends a new one takes its place.
//! Optionally popularity churns: now and then a "new release" jumps to the
//! top of the ranking and the titles it passes slide down one rank.
//!
//! Everything is drawn from `StdRng::seed_from_u64`, so a [`TraceConfig`]
//! names one trace exactly and tests, benchmarks and experiments replay the
//! same requests.

use super::EvictionPolicy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_core::{PieceIndex, PieceLayout, PieceSize};
use std::fmt;

/// One piece of one catalog object (objects are numbered by their initial
/// popularity rank, 0 the most popular).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SimPiece {
    pub object: u32,
    pub index: PieceIndex,
}

/// One read of one piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub piece: SimPiece,
    pub size_bytes: u64,
    /// The first read of a viewing session (its start-up latency depends on
    /// this piece being a hit).
    pub session_start: bool,
}

/// The parameters that name one trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    pub seed: u64,
    /// Objects in the catalog.
    pub objects: u32,
    pub object_size_min_bytes: u64,
    pub object_size_max_bytes: u64,
    pub piece_size: PieceSize,
    /// Zipf exponent of object popularity (rank r has weight 1 / r^s).
    pub zipf_exponent: f64,
    /// Chance that a session starts at a random piece instead of piece 0.
    pub seek_probability: f64,
    /// Mean session length as a fraction of the object's pieces.
    pub watch_mean_fraction: f64,
    /// Sessions playing at once.
    pub concurrent_sessions: u32,
    /// Popularity churn: every this many sessions a "new release" (an object
    /// drawn uniformly from the catalog) jumps to rank 0 and the ranks above
    /// its old one shift down by one. 0 keeps popularity fixed.
    pub release_every_sessions: u64,
    /// Piece reads in the trace.
    pub requests: u64,
    /// Leading reads that warm the cache and are left out of [`Stats`].
    pub warmup_requests: u64,
}

impl Default for TraceConfig {
    /// 500 objects, about 1.6 TB, 4 MiB pieces, Zipf 0.9, a fifth of the
    /// sessions seeking, a mean session of a fifth of the object, 200 at
    /// once; 4 Mi reads (about 16 TiB, ten times the catalog), the first
    /// quarter as warm-up.
    fn default() -> Self {
        Self {
            seed: 0x5_40a1,
            objects: 500,
            object_size_min_bytes: 500_000_000,
            object_size_max_bytes: 10_000_000_000,
            piece_size: PieceSize::MAX,
            zipf_exponent: 0.9,
            seek_probability: 0.2,
            watch_mean_fraction: 0.2,
            concurrent_sessions: 200,
            release_every_sessions: 0,
            requests: 4 << 20,
            warmup_requests: 1 << 20,
        }
    }
}

impl fmt::Display for TraceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {:#x}, {} objects of {:.1}-{:.1} GB (log-uniform), {} KiB pieces, zipf {}, \
             seek {:.0}%, mean watch {:.0}% of object, {} concurrent sessions, \
             {} reads ({} warm-up)",
            self.seed,
            self.objects,
            self.object_size_min_bytes as f64 / 1e9,
            self.object_size_max_bytes as f64 / 1e9,
            self.piece_size.bytes() >> 10,
            self.zipf_exponent,
            self.seek_probability * 100.0,
            self.watch_mean_fraction * 100.0,
            self.concurrent_sessions,
            self.requests,
            self.warmup_requests,
        )?;
        if self.release_every_sessions > 0 {
            write!(
                f,
                ", a new release every {} sessions",
                self.release_every_sessions
            )?;
        }
        Ok(())
    }
}

/// A [`TraceConfig`] that cannot make a trace.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraceConfigError {
    #[error("the catalog needs at least one object and one concurrent session")]
    Empty,
    #[error("object sizes must satisfy 1 <= min <= max (got {min}..={max} bytes)")]
    ObjectSizes { min: u64, max: u64 },
    #[error("an object of {0} bytes has too many pieces")]
    TooManyPieces(u64),
    #[error("{name} = {value} is out of range")]
    OutOfRange { name: &'static str, value: f64 },
}

/// A catalog plus the parameters of its sessions. Iterating
/// [`Trace::requests`] regenerates the same reads every time.
#[derive(Clone, Debug)]
pub struct Trace {
    config: TraceConfig,
    catalog: Vec<PieceLayout>,
    /// Cumulative popularity by rank, ending at 1.0.
    popularity_cdf: Vec<f64>,
}

// Separate streams so that changing session parameters keeps the catalog.
const CATALOG_STREAM: u64 = 0x00ca_7a10;
const SESSION_STREAM: u64 = 0x5e55_1011;

impl Trace {
    pub fn new(config: TraceConfig) -> Result<Self, TraceConfigError> {
        if config.objects == 0 || config.concurrent_sessions == 0 {
            return Err(TraceConfigError::Empty);
        }
        let (min, max) = (config.object_size_min_bytes, config.object_size_max_bytes);
        if min == 0 || min > max {
            return Err(TraceConfigError::ObjectSizes { min, max });
        }
        let checks = [
            ("zipf_exponent", config.zipf_exponent, 0.0..=10.0),
            ("seek_probability", config.seek_probability, 0.0..=1.0),
            (
                "watch_mean_fraction",
                config.watch_mean_fraction,
                1e-6..=1e6,
            ),
        ];
        for (name, value, range) in checks {
            if !range.contains(&value) {
                return Err(TraceConfigError::OutOfRange { name, value });
            }
        }

        let mut rng = StdRng::seed_from_u64(config.seed ^ CATALOG_STREAM);
        let (ln_min, ln_max) = ((min as f64).ln(), (max as f64).ln());
        let catalog = (0..config.objects)
            .map(|_| {
                let size = (ln_min + rng.gen::<f64>() * (ln_max - ln_min)).exp() as u64;
                let size = size.clamp(min, max);
                PieceLayout::new(size, config.piece_size)
                    .map_err(|_| TraceConfigError::TooManyPieces(size))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let weights: Vec<f64> = (1..=config.objects)
            .map(|rank| (rank as f64).powf(-config.zipf_exponent))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut cumulative = 0.0;
        let mut popularity_cdf: Vec<f64> = weights
            .iter()
            .map(|w| {
                cumulative += w;
                cumulative / total
            })
            .collect();
        // Rounding must not leave a gap above the last rank.
        if let Some(last) = popularity_cdf.last_mut() {
            *last = 1.0;
        }
        Ok(Self {
            config,
            catalog,
            popularity_cdf,
        })
    }

    pub fn config(&self) -> &TraceConfig {
        &self.config
    }

    /// Object layouts by initial popularity rank.
    pub fn catalog(&self) -> &[PieceLayout] {
        &self.catalog
    }

    /// Total bytes of the catalog (the footprint of caching everything).
    pub fn catalog_bytes(&self) -> u64 {
        self.catalog.iter().map(|l| l.object_size()).sum()
    }

    /// The reads of the trace, in order.
    pub fn requests(&self) -> Requests<'_> {
        let mut requests = Requests {
            trace: self,
            rng: StdRng::seed_from_u64(self.config.seed ^ SESSION_STREAM),
            ranking: (0..self.config.objects).collect(),
            sessions_started: 0,
            next_release_at_session: self.config.release_every_sessions,
            active: Vec::with_capacity(self.config.concurrent_sessions as usize),
            remaining: self.config.requests,
        };
        for _ in 0..self.config.concurrent_sessions {
            let session = requests.new_session();
            requests.active.push(session);
        }
        requests
    }
}

#[derive(Clone, Copy, Debug)]
struct Session {
    object: u32,
    next: u32,
    /// One past the last piece this viewer reads.
    end: u32,
    started: bool,
}

/// Iterator over a trace's reads; see [`Trace::requests`].
#[derive(Debug)]
pub struct Requests<'a> {
    trace: &'a Trace,
    rng: StdRng,
    /// Object at each popularity rank (changes with releases).
    ranking: Vec<u32>,
    sessions_started: u64,
    next_release_at_session: u64,
    active: Vec<Session>,
    remaining: u64,
}

impl Requests<'_> {
    fn new_session(&mut self) -> Session {
        let config = &self.trace.config;
        self.sessions_started += 1;
        if config.release_every_sessions > 0
            && self.sessions_started >= self.next_release_at_session
        {
            self.next_release_at_session += config.release_every_sessions;
            // O(objects), once per `release_every_sessions` sessions.
            let old_rank = self.rng.gen_range(0..self.ranking.len());
            self.ranking[..=old_rank].rotate_right(1);
        }
        let u: f64 = self.rng.gen();
        let rank = self
            .trace
            .popularity_cdf
            .partition_point(|&c| c < u)
            .min(self.ranking.len() - 1);
        let object = self.ranking[rank];
        let pieces = self.trace.catalog[object as usize].piece_count();
        let start = if self.rng.gen_bool(config.seek_probability) {
            self.rng.gen_range(0..pieces)
        } else {
            0
        };
        // Exponential length: most viewers leave early, a few stay long.
        let mean = config.watch_mean_fraction * pieces as f64;
        let length = (-(1.0 - self.rng.gen::<f64>()).ln() * mean).ceil().max(1.0);
        let end = (start as f64 + length).min(pieces as f64) as u32;
        Session {
            object,
            next: start,
            end,
            started: false,
        }
    }
}

impl Iterator for Requests<'_> {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let slot = self.rng.gen_range(0..self.active.len());
        let session = &mut self.active[slot];
        let index = PieceIndex(session.next);
        let object = session.object;
        let session_start = !session.started;
        session.started = true;
        session.next += 1;
        if session.next >= session.end {
            self.active[slot] = self.new_session();
        }
        Some(Request {
            piece: SimPiece { object, index },
            size_bytes: self.trace.catalog[object as usize].piece_len(index),
            session_start,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

/// What a replay measured (warm-up reads excluded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    pub hits: u64,
    pub bytes_requested: u64,
    pub bytes_hit: u64,
    pub sessions: u64,
    /// Sessions whose first piece was a hit.
    pub session_start_hits: u64,
    /// Pieces the policy evicted (not counting refused ones).
    pub pieces_evicted: u64,
    /// Missed pieces the policy refused to admit.
    pub pieces_refused: u64,
}

impl Stats {
    /// The share of requested bytes served from the cache.
    pub fn byte_hit_ratio(&self) -> f64 {
        ratio(self.bytes_hit, self.bytes_requested)
    }

    /// The share of piece reads served from the cache.
    pub fn hit_ratio(&self) -> f64 {
        ratio(self.hits, self.requests)
    }

    /// The share of sessions whose first piece was served from the cache.
    pub fn session_start_hit_ratio(&self) -> f64 {
        ratio(self.session_start_hits, self.sessions)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Replays `trace` against `policy` as a cache would: a read of a resident
/// piece is a hit, any other read is a miss whose piece is then stored.
pub fn simulate<P>(policy: &mut P, trace: &Trace) -> Stats
where
    P: EvictionPolicy<SimPiece> + ?Sized,
{
    simulate_requests(policy, trace.requests(), trace.config().warmup_requests)
}

/// [`simulate`] over any sequence of reads, the first `warmup_requests` of
/// which are replayed but not counted.
pub fn simulate_requests<P, I>(policy: &mut P, requests: I, warmup_requests: u64) -> Stats
where
    P: EvictionPolicy<SimPiece> + ?Sized,
    I: IntoIterator<Item = Request>,
{
    let mut stats = Stats::default();
    let mut victims = Vec::new();
    for (n, request) in requests.into_iter().enumerate() {
        let counted = n as u64 >= warmup_requests;
        let hit = policy.on_hit(&request.piece);
        if !hit {
            victims.clear();
            policy.insert_into(request.piece, request.size_bytes, &mut victims);
            debug_assert!(policy.resident_bytes() <= policy.capacity_bytes());
        }
        if !counted {
            continue;
        }
        stats.requests += 1;
        stats.bytes_requested += request.size_bytes;
        stats.sessions += u64::from(request.session_start);
        if hit {
            stats.hits += 1;
            stats.bytes_hit += request.size_bytes;
            stats.session_start_hits += u64::from(request.session_start);
        } else {
            let refused = victims.contains(&request.piece);
            stats.pieces_refused += u64::from(refused);
            stats.pieces_evicted += victims.len() as u64 - u64::from(refused);
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_config() -> TraceConfig {
        TraceConfig {
            objects: 50,
            requests: 20_000,
            warmup_requests: 5_000,
            ..TraceConfig::default()
        }
    }

    #[test]
    fn trace_is_deterministic() {
        let a = Trace::new(small_config()).unwrap();
        let b = Trace::new(small_config()).unwrap();
        assert_eq!(a.catalog(), b.catalog());
        assert!(a.requests().eq(b.requests()));
        assert_eq!(a.requests().count(), 20_000);
    }

    #[test]
    fn trace_respects_its_parameters() {
        let config = small_config();
        let trace = Trace::new(config.clone()).unwrap();
        for layout in trace.catalog() {
            let size = layout.object_size();
            assert!((config.object_size_min_bytes..=config.object_size_max_bytes).contains(&size));
        }
        let mut sessions = 0;
        let mut starts_at_zero = 0;
        let mut reads_of_most_popular = 0;
        for request in trace.requests() {
            let layout = trace.catalog()[request.piece.object as usize];
            assert!(request.piece.index.0 < layout.piece_count());
            assert_eq!(request.size_bytes, layout.piece_len(request.piece.index));
            if request.session_start {
                sessions += 1;
                starts_at_zero += u32::from(request.piece.index.0 == 0);
            }
            reads_of_most_popular += u32::from(request.piece.object == 0);
        }
        // About 80% of sessions start at the beginning.
        let share = starts_at_zero as f64 / sessions as f64;
        assert!((0.7..0.9).contains(&share), "{share}");
        // Rank 0 of 50 under Zipf 0.9 draws about 18% of sessions.
        assert!(reads_of_most_popular > 1_000, "{reads_of_most_popular}");
    }

    #[test]
    fn releases_change_popularity_but_not_the_catalog() {
        let fixed = Trace::new(small_config()).unwrap();
        let churning = Trace::new(TraceConfig {
            release_every_sessions: 1,
            ..small_config()
        })
        .unwrap();
        assert_eq!(fixed.catalog(), churning.catalog());
        let reads_of_rank_0 =
            |trace: &Trace| trace.requests().filter(|r| r.piece.object == 0).count();
        // With a release every session, rank 0 keeps its place only briefly.
        assert!(reads_of_rank_0(&churning) < reads_of_rank_0(&fixed) / 2);
        assert!(churning.requests().eq(churning.requests()));
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = |config: TraceConfig| Trace::new(config).unwrap_err();
        let base = small_config();
        assert_eq!(
            bad(TraceConfig {
                objects: 0,
                ..base.clone()
            }),
            TraceConfigError::Empty
        );
        assert!(matches!(
            bad(TraceConfig {
                object_size_min_bytes: 10,
                object_size_max_bytes: 5,
                ..base.clone()
            }),
            TraceConfigError::ObjectSizes { .. }
        ));
        assert!(matches!(
            bad(TraceConfig {
                seek_probability: 1.5,
                ..base
            }),
            TraceConfigError::OutOfRange { .. }
        ));
    }
}
