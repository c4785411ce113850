//! A seeded fluid simulation of a region's caches filling one object at
//! once, driven by the scheduler's own functions ([`choose_run`],
//! [`RelayDesk::admit`]): flash crowds, warm-ups of every cache, a cache
//! dying mid-relay, and the fluid bounds they are checked against.
//!
//! Model: every node (the origin, the shield = cache 0, the other caches)
//! has an uplink of so many pieces per second, shared equally by the flows
//! it can feed right now (a flow waits while its source does not hold its
//! next piece: pieces are passed on once received and verified whole).
//! Downlinks are unconstrained. Readers are sequential clients of a cache
//! with the cache's read-ahead, or (a warm-up) the cache itself reading
//! the object as fast as it arrives; claims, runs, relays, refusals and
//! stall fallbacks follow `fill.rs`, and the shield's admission inputs
//! (what it promised, when it would deliver) follow `serve.rs`. Holder
//! knowledge lags like the gossiped summaries do.

use super::{choose_run, FillLimits, Holder, RelayAsk, RelayDesk, RunContext, RunSource};
use shoal_core::bitfield::PieceSet;
use shoal_core::{ObjectId, PieceIndex};

const OBJECT: ObjectId = ObjectId([9; 32]);
const ORIGIN: usize = usize::MAX;

#[derive(Clone, Copy)]
pub struct Setup {
    pub caches: usize,
    pub clients: usize,
    pub pieces: u32,
    /// Uplink of every cache but the shield, pieces per second.
    pub cap: f64,
    /// The shield's uplink (cache 0), pieces per second.
    pub shield_cap: f64,
    pub origin_cap: f64,
    /// Every cache warms the object (one reader per cache, reading as
    /// fast as pieces arrive) instead of serving `clients`.
    pub warm: bool,
    pub readahead_pieces: u32,
    pub claim_pieces_max: u32,
    /// Cache `.0` dies at `.1` seconds.
    pub kill: Option<(usize, f64)>,
    pub seed: u64,
    /// Slow runs ask the shield to take them over.
    pub switch: bool,
}

pub struct Outcome {
    pub seconds: f64,
    pub bound_seconds: f64,
    pub origin_pieces: u32,
    pub shield_pieces_to_caches: u32,
    /// Pieces each cache sent to other caches.
    pub relayed: Vec<u32>,
    /// Runs the shield took over from slow relays or holders.
    pub switched: u32,
}

struct Run {
    at: usize,
    source: usize,
    pieces: std::collections::VecDeque<u32>,
    progress: f64,
    last_progress_s: f64,
    relaying: bool,
    excluded: Vec<String>,
    via_shield: bool,
    /// When its source first sent it something.
    first_progress_s: Option<f64>,
    /// Pieces delivered since.
    delivered: u32,
    last_switch_ask_s: f64,
}

struct Reader {
    cache: usize,
    pos: u32,
    progress: f64,
    start_s: f64,
}

struct Cache {
    name: String,
    stored: Vec<bool>,
    claimed: Vec<bool>,
    alive: bool,
    /// Stored sets as the others last learnt them.
    advertised: PieceSet,
}

struct World {
    setup: Setup,
    limits: FillLimits,
    caches: Vec<Cache>,
    runs: Vec<Run>,
    origin_pieces: u32,
    shield_pieces_to_caches: u32,
    relayed: Vec<u32>,
    desk: RelayDesk,
    /// Runs the shield took over from slow relays.
    switched: u32,
    /// Clients reading from the shield now.
    shield_clients: u32,
}

/// How long a run may make no progress before its source is left out.
const STALL_S: f64 = 5.0;
/// How often siblings learn what the others store.
const ADVERTISE_EVERY_S: f64 = 2.0;
const DT_S: f64 = 0.002;

/// `SHOAL_SIM_TRACE=1` prints each node's pieces, flows and runs twice a
/// simulated second, the switches, and how busy each uplink was.
fn tracing() -> bool {
    std::env::var_os("SHOAL_SIM_TRACE").is_some()
}
/// The simulated piece size (for the byte figures the desk takes).
const PIECE_BYTES: u64 = 256 << 10;
/// A shield serves directly while what it promised is under this much of
/// its uplink (`serve.rs`).
const DIRECT_HORIZON_S: f64 = 0.5;

impl World {
    fn names(&self) -> Vec<&str> {
        self.caches.iter().map(|c| c.name.as_str()).collect()
    }

    /// The relays of the region: live caches but the shield.
    fn relays(&self) -> Vec<&str> {
        self.caches
            .iter()
            .skip(1)
            .filter(|c| c.alive)
            .map(|c| c.name.as_str())
            .collect()
    }

    /// Claims the missing, unclaimed pieces of `from..end` at cache `at`
    /// (in claims of consecutive pieces) and starts runs for them.
    fn ensure(&mut self, at: usize, from: u32, end: u32, relaying: bool, now: f64) {
        let mut i = from;
        while i < end {
            let cache = &self.caches[at];
            if cache.stored[i as usize] || cache.claimed[i as usize] {
                i += 1;
                continue;
            }
            let limit = if relaying {
                end
            } else {
                (i + self.setup.claim_pieces_max).min(self.setup.pieces)
            };
            let mut j = i;
            while j < limit && !cache.stored[j as usize] && !cache.claimed[j as usize] {
                j += 1;
            }
            for k in i..j {
                self.caches[at].claimed[k as usize] = true;
            }
            self.schedule(at, i, j - i, relaying, Vec::new(), now);
            i = j;
        }
    }

    /// Picks sources for the claim `first..first + count` at `at`.
    fn schedule(
        &mut self,
        at: usize,
        mut first: u32,
        mut count: u32,
        relaying: bool,
        excluded: Vec<String>,
        now: f64,
    ) {
        let mut try_instead: Option<String> = None;
        while count > 0 {
            let choice = {
                let names = self.names();
                let holders: Vec<Holder> = (1..self.caches.len())
                    .filter(|&h| h != at)
                    .map(|h| Holder {
                        node_id: names[h],
                        stored: &self.caches[h].advertised,
                        runs_in_flight: self
                            .runs
                            .iter()
                            .filter(|r| r.at == at && r.source == h && !r.via_shield)
                            .count() as u32,
                        capacity_weight: 1,
                        near: true,
                        rtt_bucket: 0,
                        spare_fraction: 0.0,
                        cost_per_gb_microusd: 0,
                    })
                    .collect();
                let known = |_| true;
                let ctx = RunContext {
                    object: &OBJECT,
                    piece_count: self.setup.pieces,
                    first,
                    claimed: count,
                    self_id: names[at],
                    has_shield: at != 0,
                    hash_known: &known,
                    holders: &holders,
                    try_instead: try_instead.as_deref(),
                    relaying,
                    relays_off: false,
                    excluded: &excluded,
                };
                choose_run(&ctx, &self.limits)
            };
            let take = choice.count.min(count).max(1);
            let (source, via_shield) = match &choice.source {
                RunSource::Origin => (ORIGIN, false),
                RunSource::Holder(name) => (self.index_of(name), false),
                RunSource::Relay(name) => {
                    let owner = self.index_of(name);
                    self.ensure(owner, first, first + take, true, now);
                    (owner, false)
                }
                RunSource::Shield { last_resort } => {
                    let admission = self.ask_shield(at, first, take, *last_resort, None, now);
                    if let super::Admission::TryInstead(relay) = admission {
                        try_instead = Some(relay);
                        continue;
                    }
                    self.ensure(0, first, first + take, false, now);
                    (0, true)
                }
            };
            self.runs.push(Run {
                at,
                source,
                pieces: (first..first + take).collect(),
                progress: 0.0,
                last_progress_s: now,
                relaying,
                excluded: excluded.clone(),
                via_shield,
                first_progress_s: None,
                delivered: 0,
                last_switch_ask_s: now,
            });
            first += take;
            count -= take;
            try_instead = None;
        }
    }

    /// Asks the shield's desk for `take` pieces from `first` for cache
    /// `at`, with the inputs `serve.rs` gives it.
    fn ask_shield(
        &mut self,
        at: usize,
        first: u32,
        take: u32,
        last_resort: bool,
        switch_from_eta_ms: Option<u64>,
        now: f64,
    ) -> super::Admission {
        let relays: Vec<String> = self.relays().into_iter().map(str::to_string).collect();
        let relays: Vec<&str> = relays.iter().map(String::as_str).collect();
        let requester = self.caches[at].name.clone();
        // What the shield promised: the pieces its runs still have to
        // send, then this block, and as much again for each client it
        // serves (they share its uplink), at its uplink.
        let promised = self
            .runs
            .iter()
            .filter(|r| r.source == 0)
            .map(|r| r.pieces.len() as f64 - r.progress)
            .sum::<f64>()
            + f64::from(take) * f64::from(1 + self.shield_clients);
        let thinnest = self.setup.cap.min(self.setup.shield_cap).max(1e-9);
        let caps: Vec<(String, f64)> = (0..self.caches.len())
            .map(|i| (self.caches[i].name.clone(), self.cap_of(i)))
            .collect();
        let cap_by_name = |node: &str| {
            caps.iter()
                .find(|(name, _)| name == node)
                .map_or(0.0, |c| c.1)
        };
        let ask = RelayAsk {
            object: &OBJECT,
            first,
            requester: &requester,
            last_resort,
            relays: &relays,
            far_relays: &[],
            uplink_weight: &|node| ((cap_by_name(node) / thinnest) as u64).clamp(1, 8),
            shield_has_uplink: promised <= self.setup.shield_cap * DIRECT_HORIZON_S,
            shield_eta_ms: Some((promised / self.setup.shield_cap * 1000.0) as u64),
            uplink_bytes_per_s: &|node| (cap_by_name(node) * PIECE_BYTES as f64) as u64,
            block_bytes: u64::from(take) * PIECE_BYTES,
            switch_from_eta_ms,
            held_here: (first..first + take).all(|p| self.caches[0].stored[p as usize]),
        };
        self.desk.admit(&ask, &self.limits, (now * 1000.0) as u64)
    }

    /// Runs from relays or holders that would take long at their rate ask
    /// the shield to take them over ([`super::switch_eta_ms`]), as
    /// `fill.rs` does between pieces.
    fn switch_slow_runs(&mut self, now: f64) {
        for k in 0..self.runs.len() {
            let run = &self.runs[k];
            if run.source == 0 || run.source == ORIGIN || run.pieces.is_empty() {
                continue;
            }
            if (now - run.last_switch_ask_s) * 1000.0 < super::SWITCH_ASK_EVERY_MS as f64 {
                continue;
            }
            let Some(first_progress_s) = run.first_progress_s else {
                continue;
            };
            let receiving_ms = ((now - first_progress_s) * 1000.0) as u64;
            let remaining = ((run.pieces.len() as f64 - run.progress) * PIECE_BYTES as f64) as u64;
            let received = ((f64::from(run.delivered) + run.progress) * PIECE_BYTES as f64) as u64;
            let Some(eta) = super::switch_eta_ms(received, remaining, receiving_ms) else {
                continue;
            };
            self.runs[k].last_switch_ask_s = now;
            let (at, first, take) = (
                self.runs[k].at,
                self.runs[k].pieces[0],
                self.runs[k].pieces.len() as u32,
            );
            if self.ask_shield(at, first, take, false, Some(eta), now) == super::Admission::Serve {
                self.ensure(0, first, first + take, false, now);
                let run = &mut self.runs[k];
                run.source = 0;
                run.via_shield = true;
                run.progress = 0.0;
                run.first_progress_s = None;
                run.delivered = 0;
                self.switched += 1;
                if tracing() {
                    eprintln!("  {now:.3} c{at} switches {take} pieces from {first} to the shield (eta {eta} ms)");
                }
            }
        }
    }

    fn index_of(&self, name: &str) -> usize {
        self.caches
            .iter()
            .position(|c| c.name == name)
            .expect("a known cache")
    }

    fn holds(&self, node: usize, piece: u32) -> bool {
        node == ORIGIN || self.caches[node].stored[piece as usize]
    }

    fn cap_of(&self, node: usize) -> f64 {
        match node {
            ORIGIN => self.setup.origin_cap,
            0 if self.caches[0].alive => self.setup.shield_cap,
            n if self.caches[n].alive => self.setup.cap,
            _ => 0.0,
        }
    }
}

/// Runs one simulation to the end.
pub fn simulate(setup: Setup, limits: FillLimits) -> Outcome {
    let mut world = World::new(setup, limits);
    let mut readers = readers(&setup);
    let mut now = 0.0;
    let mut next_advertise = ADVERTISE_EVERY_S;
    let mut busy = vec![0.0; setup.caches];
    let mut next_trace = 0.0;
    while now < 600.0 {
        if let Some((victim, at_s)) = setup.kill {
            if now >= at_s && world.caches[victim].alive {
                world.caches[victim].alive = false;
                readers.retain(|r| r.cache != victim);
            }
        }
        if now >= next_advertise {
            world.advertise();
            next_advertise += ADVERTISE_EVERY_S;
        }
        // Readers claim their read-ahead.
        for reader in &readers {
            if reader.start_s <= now && reader.pos < setup.pieces {
                let end = (reader.pos + setup.readahead_pieces + 1).min(setup.pieces);
                world.ensure(reader.cache, reader.pos, end, false, now);
            }
        }
        world.reschedule_stalled(now);
        world.shield_clients = readers
            .iter()
            .filter(|r| !setup.warm && r.cache == 0 && r.start_s <= now && r.pos < setup.pieces)
            .count() as u32;
        if setup.switch {
            world.switch_slow_runs(now);
        }
        let flows = world.flows(&readers, now);
        for (node, busy) in busy.iter_mut().enumerate() {
            if flows.contains_key(&node) {
                *busy += DT_S;
            }
        }
        if tracing() && now >= next_trace {
            next_trace += 0.5;
            world.trace(&flows, now);
        }
        world.move_pieces(&flows, now);
        world.read(&mut readers, &flows, now);
        now += DT_S;
        if readers.iter().all(|r| r.pos >= setup.pieces) {
            break;
        }
    }
    if tracing() {
        let busy: Vec<String> = busy
            .iter()
            .map(|b| format!("{:.0}%", b / now * 100.0))
            .collect();
        eprintln!("uplink busy: {busy:?}");
    }
    Outcome {
        seconds: now,
        bound_seconds: bound_seconds(&setup),
        origin_pieces: world.origin_pieces,
        shield_pieces_to_caches: world.shield_pieces_to_caches,
        relayed: world.relayed,
        switched: world.switched,
    }
}

/// The readers: clients spread evenly over the caches, starting within
/// 50 ms of each other (a warm-up: one per cache).
fn readers(setup: &Setup) -> Vec<Reader> {
    let mut rng = setup.seed.max(1);
    let mut random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 1000) as f64 / 1000.0
    };
    let count = if setup.warm {
        setup.caches
    } else {
        setup.clients
    };
    (0..count)
        .map(|k| Reader {
            cache: k % setup.caches,
            pos: 0,
            progress: 0.0,
            start_s: random() * 0.05,
        })
        .collect()
}

/// The fluid lower bound of the setup's time.
fn bound_seconds(setup: &Setup) -> f64 {
    let (c, n, f, u) = (
        setup.clients as f64,
        setup.caches as f64,
        f64::from(setup.pieces),
        setup.cap,
    );
    if setup.warm {
        // One shield: the origin feeds only it, so every copy to the other
        // caches leaves through its uplink or theirs.
        let us = setup.shield_cap;
        (f / setup.origin_cap)
            .max(f / us)
            .max((n - 1.0) * f / (us + (n - 1.0) * u))
    } else {
        ((c + n - 1.0) * f / (n * u))
            .max(c / n * f / u)
            .max(f / setup.origin_cap)
    }
}

impl World {
    fn new(setup: Setup, limits: FillLimits) -> Self {
        let n = setup.caches;
        World {
            setup,
            limits,
            caches: (0..n)
                .map(|i| Cache {
                    name: format!("c{i}"),
                    stored: vec![false; setup.pieces as usize],
                    claimed: vec![false; setup.pieces as usize],
                    alive: true,
                    advertised: PieceSet::new(setup.pieces),
                })
                .collect(),
            runs: Vec::new(),
            origin_pieces: 0,
            shield_pieces_to_caches: 0,
            desk: RelayDesk::default(),
            relayed: vec![0; n],
            switched: 0,
            shield_clients: 0,
        }
    }

    /// Every cache's stored pieces become what the others know of it.
    fn advertise(&mut self) {
        let pieces = self.setup.pieces;
        for c in &mut self.caches {
            let mut set = PieceSet::new(pieces);
            for (i, held) in c.stored.iter().enumerate() {
                if *held && c.alive {
                    set.insert(PieceIndex(i as u32));
                }
            }
            c.advertised = set;
        }
    }

    /// Stalled runs move elsewhere, leaving their source out.
    fn reschedule_stalled(&mut self, now: f64) {
        let mut stalled = Vec::new();
        let caches = &self.caches;
        self.runs.retain(|run| {
            let stuck = now - run.last_progress_s > STALL_S && run.source != ORIGIN;
            if stuck && caches[run.at].alive {
                stalled.push((
                    run.at,
                    run.pieces.clone(),
                    run.relaying,
                    run.excluded.clone(),
                    run.source,
                ));
            }
            !stuck && caches[run.at].alive
        });
        for (at, pieces, relaying, mut excluded, source) in stalled {
            excluded.push(self.caches[source].name.clone());
            for &p in &pieces {
                self.caches[at].claimed[p as usize] = true;
            }
            self.schedule(at, pieces[0], pieces.len() as u32, relaying, excluded, now);
        }
    }

    /// How many flows each node's uplink feeds now (a run whose source
    /// holds its next piece, a client reading what its cache holds).
    fn flows(&self, readers: &[Reader], now: f64) -> std::collections::HashMap<usize, u32> {
        let mut flows: std::collections::HashMap<usize, u32> = Default::default();
        for run in &self.runs {
            if let Some(&p) = run.pieces.front() {
                if self.holds(run.source, p) {
                    *flows.entry(run.source).or_default() += 1;
                }
            }
        }
        for reader in readers {
            if !self.setup.warm
                && reader.start_s <= now
                && reader.pos < self.setup.pieces
                && self.holds(reader.cache, reader.pos)
            {
                *flows.entry(reader.cache).or_default() += 1;
            }
        }
        flows
    }

    /// Each run gets its source's uplink share for one step; pieces that
    /// complete are stored at the run's cache.
    fn move_pieces(&mut self, flows: &std::collections::HashMap<usize, u32>, now: f64) {
        let caps: Vec<f64> = (0..self.caches.len()).map(|i| self.cap_of(i)).collect();
        let origin_cap = self.setup.origin_cap;
        let cap_of = |node: usize| match node {
            ORIGIN => origin_cap,
            node => caps[node],
        };
        let mut arrived = Vec::new();
        for run in &mut self.runs {
            let Some(&p) = run.pieces.front() else {
                continue;
            };
            let source_holds = run.source == ORIGIN || self.caches[run.source].stored[p as usize];
            if !source_holds {
                continue;
            }
            let got =
                cap_of(run.source) * DT_S / f64::from(flows.get(&run.source).copied().unwrap_or(1));
            if got > 0.0 {
                run.last_progress_s = now;
                run.first_progress_s.get_or_insert(now);
            }
            run.progress += got;
            if run.progress >= 1.0 {
                run.progress -= 1.0;
                run.pieces.pop_front();
                run.delivered += 1;
                arrived.push((run.at, p, run.source));
            }
        }
        for (at, p, source) in arrived {
            if source == ORIGIN {
                self.origin_pieces += 1;
            } else {
                self.relayed[source] += 1;
                if source == 0 {
                    self.shield_pieces_to_caches += 1;
                }
            }
            self.caches[at].stored[p as usize] = true;
            self.caches[at].claimed[p as usize] = false;
        }
        self.runs.retain(|r| !r.pieces.is_empty());
    }

    /// Clients read at their cache's uplink share; a warm-up reads what
    /// arrived at once (no client's link).
    fn read(
        &self,
        readers: &mut [Reader],
        flows: &std::collections::HashMap<usize, u32>,
        now: f64,
    ) {
        for reader in readers.iter_mut() {
            if reader.start_s > now
                || reader.pos >= self.setup.pieces
                || !self.holds(reader.cache, reader.pos)
            {
                continue;
            }
            if self.setup.warm {
                while reader.pos < self.setup.pieces && self.holds(reader.cache, reader.pos) {
                    reader.pos += 1;
                }
                continue;
            }
            let share = self.cap_of(reader.cache) * DT_S
                / f64::from(flows.get(&reader.cache).copied().unwrap_or(1));
            reader.progress += share;
            if reader.progress >= 1.0 {
                reader.progress -= 1.0;
                reader.pos += 1;
            }
        }
    }

    /// One line of the timeline (`SHOAL_SIM_TRACE=1`).
    fn trace(&self, flows: &std::collections::HashMap<usize, u32>, now: f64) {
        let n = self.caches.len();
        let stored: Vec<usize> = self
            .caches
            .iter()
            .map(|c| c.stored.iter().filter(|s| **s).count())
            .collect();
        let flows_of: Vec<u32> = (0..n)
            .map(|i| flows.get(&i).copied().unwrap_or(0))
            .collect();
        let waiting: Vec<usize> = (0..n)
            .map(|i| self.runs.iter().filter(|r| r.source == i).count())
            .collect();
        eprintln!(
            "t={now:5.1} stored {stored:?} flows {flows_of:?} runs {waiting:?} sent {:?}",
            self.relayed
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 256 KiB pieces: 200 Mbit/s is 95 pieces a second; a 64 MiB object
    /// is 256 pieces; 32 MiB read-ahead, 16 MiB claims, 4 MiB blocks.
    fn flash(clients: usize, fanout: u32, seed: u64) -> Outcome {
        let setup = Setup {
            caches: 8,
            clients,
            pieces: 256,
            cap: 95.4,
            shield_cap: 95.4,
            origin_cap: 95.4,
            warm: false,
            readahead_pieces: 128,
            claim_pieces_max: 64,
            kill: None,
            seed,
            switch: true,
        };
        simulate(
            setup,
            FillLimits::for_piece_size(256 << 10, 4 << 20, 4 << 20, fanout),
        )
    }

    #[test]
    fn a_flash_crowd_spreads_over_every_uplink_near_the_fluid_bound() {
        for clients in [16, 32] {
            for seed in 1..=3 {
                let out = flash(clients, 1, seed);
                let ratio = out.seconds / out.bound_seconds;
                eprintln!(
                    "{clients} clients, seed {seed}: {:.2} s, bound {:.2} s: {ratio:.3}x; origin {} pieces; pieces each cache sent to caches {:?}",
                    out.seconds, out.bound_seconds, out.origin_pieces, out.relayed
                );
                assert!(ratio <= 1.2, "{ratio:.3}x the bound");
                assert_eq!(out.origin_pieces, 256, "the origin sent each piece once");
                assert!(out.shield_pieces_to_caches <= 256 * 3 / 2);
            }
        }
    }

    /// Every cache of 8 warms a 256 MiB object (1,024 pieces of 256 KiB)
    /// with 64 MiB read ahead and 16 MiB claims, as `warm.rs` does; caps in
    /// Mbit/s, as `scripts/bench-mesh` section 2 sets them.
    fn warm(
        origin_mbps: f64,
        shield_mbps: f64,
        cache_mbps: f64,
        seed: u64,
        switch: bool,
    ) -> Outcome {
        let pieces_per_s = |mbps: f64| mbps * 1e6 / 8.0 / PIECE_BYTES as f64;
        let setup = Setup {
            caches: 8,
            clients: 0,
            pieces: 1024,
            cap: pieces_per_s(cache_mbps),
            shield_cap: pieces_per_s(shield_mbps),
            origin_cap: pieces_per_s(origin_mbps),
            warm: true,
            readahead_pieces: 256,
            claim_pieces_max: 64,
            kill: None,
            seed,
            switch,
        };
        simulate(
            setup,
            FillLimits::for_piece_size(PIECE_BYTES, 4 << 20, 4 << 20, 1),
        )
    }

    #[test]
    fn a_warm_up_of_every_cache_is_near_the_one_shield_bound() {
        for (name, origin, shield, cache) in [
            ("equal caps", 200.0, 200.0, 200.0),
            ("peer-bound", 800.0, 800.0, 100.0),
        ] {
            for seed in 1..=3 {
                let out = warm(origin, shield, cache, seed, true);
                let ratio = out.seconds / out.bound_seconds;
                eprintln!(
                    "warm-up, {name}, seed {seed}: {:.2} s, one-shield bound {:.2} s: {ratio:.3}x; origin {} pieces; pieces each cache sent to caches {:?}; {} runs switched to the shield",
                    out.seconds, out.bound_seconds, out.origin_pieces, out.relayed, out.switched
                );
                assert_eq!(out.origin_pieces, 1024, "the origin sent each piece once");
                assert!(ratio <= 1.2, "{name}: {ratio:.3}x the bound");
            }
        }
    }

    #[test]
    fn without_switches_thin_relays_hold_up_the_end_of_a_warm_up() {
        // A fat shield, thin caches: at the end the shield's uplink is
        // idle while thin relays still work through their queues, unless
        // slow runs move to the shield.
        let mut without = Vec::new();
        let mut with = Vec::new();
        for seed in 1..=3 {
            let off = warm(800.0, 800.0, 100.0, seed, false);
            let on = warm(800.0, 800.0, 100.0, seed, true);
            assert_eq!(off.switched, 0);
            assert!(on.switched > 0);
            without.push(off.seconds / off.bound_seconds);
            with.push(on.seconds / on.bound_seconds);
        }
        eprintln!("peer-bound warm-up: {without:.3?} without switches, {with:.3?} with");
        for (off, on) in without.iter().zip(&with) {
            assert!(on < off, "switching helps: {on:.3} vs {off:.3}");
        }
        assert!(without.iter().any(|r| *r > 1.2), "the case is a hard one");
    }

    #[test]
    fn without_refusals_the_shield_carries_every_copy() {
        // A shield that never refuses: the old behaviour, ~3x the bound.
        let out = flash(16, 64, 1);
        let ratio = out.seconds / out.bound_seconds;
        eprintln!("never refusing: {ratio:.3}x");
        assert!(ratio > 2.0, "{ratio:.3}x");
        assert_eq!(out.shield_pieces_to_caches, 7 * 256);
    }

    #[test]
    fn a_relay_dying_mid_crowd_costs_a_stall_not_the_download() {
        let setup = Setup {
            caches: 8,
            clients: 16,
            pieces: 256,
            cap: 95.4,
            shield_cap: 95.4,
            origin_cap: 95.4,
            warm: false,
            readahead_pieces: 128,
            claim_pieces_max: 64,
            kill: Some((3, 2.0)),
            seed: 7,
            switch: true,
        };
        let limits = FillLimits::for_piece_size(256 << 10, 4 << 20, 4 << 20, 2);
        let out = simulate(setup, limits);
        let ratio = out.seconds / out.bound_seconds;
        eprintln!(
            "a relay killed at 2 s: {:.2} s, {ratio:.3}x; origin {} pieces; sent to caches {:?}",
            out.seconds, out.origin_pieces, out.relayed
        );
        assert!(out.seconds < 600.0, "everyone finished");
        // The lost relay's children wait one stall timeout, then the
        // shield sends them elsewhere; their children may wait once more.
        assert!(
            ratio <= 1.2 + 2.0 * STALL_S / out.bound_seconds,
            "{ratio:.3}x"
        );
        assert_eq!(out.origin_pieces, 256);
    }
}
