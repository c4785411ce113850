//! The scheduler driven by a fluid simulator: sources with rates that
//! change over time, requests sharing their source's rate, 10 ms steps.
//! The same code the tokio driver runs; completion times are compared
//! with the fluid bound (all capacity used all the time).

use super::*;

const MIB: u64 = 1 << 20;
const STEP_MS: u64 = 10;

/// A source's rate in bytes per ms at time t (ms), and whether it answers.
type RateFn = Box<dyn Fn(u64, f64) -> f64>;

struct SimSource {
    name: String,
    /// (time ms, progress 0..1) → bytes per ms.
    rate: RateFn,
}

struct Outcome {
    done_ms: u64,
    replaced: Vec<String>,
    bytes_by_source: Vec<u64>,
    preferred_hits: u32,
    verified_order: Vec<u32>,
}

/// Runs a download of `pieces` pieces of `piece_bytes` over `sources`.
/// `bad`: (source index, piece) that arrives corrupt.
fn simulate(
    pieces: u32,
    piece_bytes: u64,
    sources: Vec<SimSource>,
    in_order: bool,
    have: &PieceSet,
    bad: Option<(usize, u32)>,
) -> Outcome {
    let mut config = ScheduleConfig::new(pieces, piece_bytes, 42);
    config.in_order = in_order;
    let mut scheduler = Scheduler::new(config, have);
    let ids: Vec<SourceId> = sources
        .iter()
        .map(|s| scheduler.add_source(&s.name, 1.0, 0))
        .collect();
    let preferred: Vec<Option<SourceId>> = scheduler.preferred.clone();
    // In-flight requests: (source index, piece, bytes received).
    let mut requests: Vec<(usize, u32, u64)> = Vec::new();
    let mut replaced = Vec::new();
    let mut preferred_hits = 0;
    let mut verified_order = Vec::new();
    let mut now = 0;
    while !scheduler.is_complete() {
        assert!(now < 10_000_000, "the download never finished");
        for (i, id) in ids.iter().enumerate() {
            while let Some(piece) = scheduler.next_piece(*id, now) {
                requests.push((i, piece.0, 0));
            }
        }
        let progress = f64::from(scheduler.done_count()) / f64::from(pieces);
        let mut finished = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            let mine: Vec<usize> = (0..requests.len())
                .filter(|r| requests[*r].0 == i)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let budget = (source.rate)(now, progress) * STEP_MS as f64;
            let each = (budget / mine.len() as f64) as u64;
            for r in mine {
                let (_, piece, got) = &mut requests[r];
                let add = each.min(piece_bytes - *got);
                if add > 0 {
                    *got += add;
                    scheduler.on_bytes(ids[i], PieceIndex(*piece), add, now);
                }
                if *got >= piece_bytes {
                    finished.push(r);
                }
            }
        }
        finished.sort_unstable();
        let completed: Vec<(usize, u32)> = finished
            .into_iter()
            .rev()
            .map(|r| {
                let (i, piece, _) = requests.swap_remove(r);
                (i, piece)
            })
            .collect();
        for (i, piece) in completed {
            // An earlier completion this step may have cancelled this copy.
            if scheduler.slot_of(ids[i], PieceIndex(piece)).is_none() {
                continue;
            }
            let ok = bad != Some((i, piece));
            if ok && !scheduler.is_done(PieceIndex(piece)) {
                verified_order.push(piece);
                if preferred[piece as usize] == Some(ids[i]) {
                    preferred_hits += 1;
                }
            }
            for action in scheduler.on_piece(ids[i], PieceIndex(piece), ok, now) {
                apply(&mut requests, &ids, &mut replaced, &scheduler, action);
            }
        }
        now += STEP_MS;
        if now % 100 == 0 {
            for action in scheduler.tick(now) {
                apply(&mut requests, &ids, &mut replaced, &scheduler, action);
            }
        }
    }
    Outcome {
        done_ms: now,
        replaced,
        bytes_by_source: scheduler.report().iter().map(|r| r.bytes).collect(),
        preferred_hits,
        verified_order,
    }
}

fn apply(
    requests: &mut Vec<(usize, u32, u64)>,
    ids: &[SourceId],
    replaced: &mut Vec<String>,
    scheduler: &Scheduler,
    action: Action,
) {
    match action {
        Action::Cancel { source, piece } => {
            let i = ids.iter().position(|id| *id == source).unwrap();
            requests.retain(|(s, p, _)| !(*s == i && *p == piece.0));
        }
        Action::Replace { source, reason } => {
            replaced.push(format!("{}: {reason}", scheduler.source_name(source)));
        }
    }
}

fn steady(name: &str, bytes_per_ms: f64) -> SimSource {
    SimSource {
        name: name.into(),
        rate: Box::new(move |_, _| bytes_per_ms),
    }
}

#[test]
fn equal_sources_reach_the_fluid_bound() {
    // 4 caches at 12.5 MB/s (100 Mbit/s) each, 256 MiB in 1 MiB pieces.
    let rate = 12_500.0;
    let pieces = 256;
    let sources = (0..4).map(|i| steady(&format!("c{i}"), rate)).collect();
    let out = simulate(pieces, MIB, sources, false, &PieceSet::new(pieces), None);
    let bound = (pieces as u64 * MIB) as f64 / (4.0 * rate);
    let ratio = out.done_ms as f64 / bound;
    eprintln!("4 equal sources: {ratio:.3}x the fluid bound");
    assert!(
        ratio <= 1.05,
        "{} ms vs bound {bound:.0} ms: {ratio:.3}x",
        out.done_ms
    );
    assert!(out.replaced.is_empty(), "{:?}", out.replaced);
    // Sticky stripes: most pieces came from their preferred source.
    assert!(
        out.preferred_hits as f64 >= 0.85 * pieces as f64,
        "{} of {pieces} from their preferred source",
        out.preferred_hits
    );
}

#[test]
fn unequal_sources_share_by_speed() {
    let pieces = 200;
    let sources = vec![steady("fast", 30_000.0), steady("slow", 10_000.0)];
    let out = simulate(pieces, MIB, sources, false, &PieceSet::new(pieces), None);
    let bound = (pieces as u64 * MIB) as f64 / 40_000.0;
    assert!(
        out.done_ms as f64 <= 1.05 * bound,
        "{} vs {bound}",
        out.done_ms
    );
    let (fast, slow) = (out.bytes_by_source[0] as f64, out.bytes_by_source[1] as f64);
    assert!(fast > 2.3 * slow, "fast {fast} slow {slow}");
}

#[test]
fn a_source_dropping_to_a_tenth_is_routed_around() {
    // 3 caches at 12.5 MB/s; the third drops to 1/10 at 30 % progress.
    let rate = 12_500.0;
    let pieces = 300;
    let dropped_at = std::rc::Rc::new(std::cell::Cell::new(None::<u64>));
    let mark = dropped_at.clone();
    let sources = vec![
        steady("a", rate),
        steady("b", rate),
        SimSource {
            name: "c".into(),
            rate: Box::new(move |now, progress| {
                if progress >= 0.3 {
                    if mark.get().is_none() {
                        mark.set(Some(now));
                    }
                    rate / 10.0
                } else {
                    rate
                }
            }),
        },
    ];
    let out = simulate(pieces, MIB, sources, false, &PieceSet::new(pieces), None);
    let total = (pieces as u64 * MIB) as f64;
    // Fluid bound: 30 % at 3r, the rest at 2.1r.
    let bound = 0.3 * total / (3.0 * rate) + 0.7 * total / (2.1 * rate);
    let ratio = out.done_ms as f64 / bound;
    eprintln!("one of 3 drops to 1/10 at 30 %: {ratio:.3}x the fluid bound");
    assert!(
        ratio <= 1.1,
        "{} ms vs bound {bound:.0}: {ratio:.3}x",
        out.done_ms
    );
    assert!(
        out.replaced.iter().any(|r| r.starts_with("c: degraded")),
        "{:?}",
        out.replaced
    );
}

#[test]
fn a_killed_source_is_dropped_and_the_download_completes() {
    let rate = 12_500.0;
    let pieces = 200;
    let sources = vec![
        steady("a", rate),
        steady("b", rate),
        SimSource {
            name: "dies".into(),
            rate: Box::new(move |_, progress| if progress >= 0.5 { 0.0 } else { rate }),
        },
    ];
    let out = simulate(pieces, MIB, sources, false, &PieceSet::new(pieces), None);
    let total = (pieces as u64 * MIB) as f64;
    let bound = 0.5 * total / (3.0 * rate) + 0.5 * total / (2.0 * rate);
    // The stall takes a second to notice.
    eprintln!(
        "one of 3 killed at 50 %: {} ms vs bound {bound:.0} ms",
        out.done_ms
    );
    assert!(
        (out.done_ms as f64) <= bound * 1.05 + 1_000.0,
        "{} ms vs bound {bound:.0}",
        out.done_ms
    );
    assert!(
        out.replaced.iter().any(|r| r.starts_with("dies: stalled")),
        "{:?}",
        out.replaced
    );
}

#[test]
fn a_source_sending_a_bad_piece_is_dropped_and_the_piece_fetched_elsewhere() {
    let pieces = 50;
    let sources = vec![steady("honest", 10_000.0), steady("liar", 10_000.0)];
    // Find a piece the liar will be asked for: its first stripe piece.
    let mut probe = Scheduler::new(ScheduleConfig::new(pieces, MIB, 42), &PieceSet::new(pieces));
    probe.add_source("honest", 1.0, 0);
    let liar = probe.add_source("liar", 1.0, 0);
    let first = probe.next_piece(liar, 0).unwrap().0;
    let out = simulate(
        pieces,
        MIB,
        sources,
        false,
        &PieceSet::new(pieces),
        Some((1, first)),
    );
    assert!(out
        .replaced
        .iter()
        .any(|r| r.contains("failed verification")));
    assert!(
        out.verified_order.contains(&first),
        "the bad piece was fetched again"
    );
    assert_eq!(out.verified_order.len(), pieces as usize);
}

#[test]
fn a_resumed_download_asks_only_for_what_is_missing() {
    let pieces = 64;
    let mut have = PieceSet::new(pieces);
    for i in (0..pieces).filter(|i| i % 3 != 0) {
        have.insert(PieceIndex(i));
    }
    let out = simulate(pieces, MIB, vec![steady("a", 10_000.0)], false, &have, None);
    assert_eq!(
        out.verified_order.len(),
        (0..pieces).filter(|i| i % 3 == 0).count()
    );
    assert!(out.verified_order.iter().all(|p| p % 3 == 0));
}

#[test]
fn streaming_fetches_in_order() {
    let pieces = 100;
    let sources = vec![steady("a", 20_000.0), steady("b", 10_000.0)];
    let out = simulate(pieces, MIB, sources, true, &PieceSet::new(pieces), None);
    // Pieces complete nearly in order: none more than a few ahead of the
    // lowest missing one.
    let mut done = PieceSet::new(pieces);
    for piece in &out.verified_order {
        let lowest_missing = (0..pieces)
            .find(|p| !done.contains(PieceIndex(*p)))
            .unwrap();
        assert!(
            piece - lowest_missing <= 8,
            "piece {piece} while {lowest_missing} missing"
        );
        done.insert(PieceIndex(*piece));
    }
}

#[test]
fn slots_cover_the_bandwidth_delay_product() {
    let mut config = ScheduleConfig::new(1000, MIB, 1);
    config.in_flight_max = 64;
    let mut s = Scheduler::new(config, &PieceSet::new(1000));
    let id = s.add_source("far", 1.0, 0);
    // 125 MB/s with 200 ms to first byte: 25 MB in flight = 24 pieces.
    let mut now = 0;
    let mut out = Vec::new();
    while let Some(p) = s.next_piece(id, now) {
        out.push(p);
    }
    assert_eq!(out.len(), 2, "before any measurement: the minimum");
    now += 200;
    for p in &out {
        s.on_bytes(id, *p, 1, now);
    }
    s.tick(0);
    for step in 1..=20 {
        now = 200 + step * 100;
        for p in &out {
            s.on_bytes(id, *p, 6_250_000, now);
        }
        s.tick(now);
    }
    let limit = s.in_flight_limit(&s.sources[0]);
    assert!((20..=30).contains(&limit), "limit {limit}");
}

#[test]
fn a_seek_moves_the_pieces_wanted_first() {
    let mut config = ScheduleConfig::new(100, MIB, 7);
    config.in_order = true;
    let mut s = Scheduler::new(config, &PieceSet::new(100));
    let id = s.add_source("a", 1.0, 0);
    assert_eq!(s.next_piece(id, 0), Some(PieceIndex(0)));
    s.set_playhead(PieceIndex(60));
    assert_eq!(s.next_piece(id, 0), Some(PieceIndex(60)));
    // After the end, the pieces before the playhead.
    let mut s2 = Scheduler::new(
        {
            let mut c = ScheduleConfig::new(4, MIB, 7);
            c.in_order = true;
            c.in_flight_min = 4;
            c
        },
        &PieceSet::new(4),
    );
    let id2 = s2.add_source("a", 1.0, 0);
    s2.set_playhead(PieceIndex(2));
    let order: Vec<u32> = (0..4)
        .filter_map(|_| s2.next_piece(id2, 0))
        .map(|p| p.0)
        .collect();
    assert_eq!(order, [2, 3, 0, 1]);
}

#[test]
fn pieces_in_flight_stay_within_the_memory_budget() {
    let mut config = ScheduleConfig::new(1000, 4 * MIB, 3);
    config.in_flight_min = 16;
    config.in_flight_bytes_max = 40 * MIB;
    let mut s = Scheduler::new(config, &PieceSet::new(1000));
    let ids: Vec<SourceId> = (0..8)
        .map(|i| s.add_source(&format!("s{i}"), 1.0, 0))
        .collect();
    let mut requested = 0;
    for id in &ids {
        while s.next_piece(*id, 0).is_some() {
            requested += 1;
        }
    }
    assert_eq!(requested, 10, "40 MiB of 4 MiB pieces");
}

#[test]
fn a_degraded_sources_pieces_are_taken_over_before_new_ones() {
    let mut config = ScheduleConfig::new(100, MIB, 5);
    config.in_order = true;
    let mut s = Scheduler::new(config, &PieceSet::new(100));
    let fast = s.add_source("fast", 1.0, 0);
    let slow = s.add_source("slow", 1.0, 0);
    let first_fast = s.next_piece(fast, 0).unwrap();
    let held = s.next_piece(slow, 0).unwrap();
    assert_ne!(first_fast, held);
    // `slow` is found degraded (as `tick` would after its rate fell).
    s.sources[slow.0 as usize].health = Health::Degraded;
    s.sources[slow.0 as usize].fast = Rate {
        value: 100_000.0,
        primed: true,
    };
    s.sources[fast.0 as usize].fast = Rate {
        value: 50_000_000.0,
        primed: true,
    };
    // The healthy source's next request is the piece the slow one holds.
    assert_eq!(s.next_piece(fast, 10), Some(held));
    // First verified copy wins; the slow one's request is cancelled.
    let actions = s.on_piece(fast, held, true, 20);
    assert!(actions.contains(&Action::Cancel {
        source: slow,
        piece: held
    }));
}

#[test]
fn a_cold_source_gets_longer_for_its_first_byte_than_a_warm_one_for_its_next() {
    let mut config = ScheduleConfig::new(100, MIB, 7);
    config.stall_ms = 1_000;
    config.first_byte_ms = 3_000;
    let mut s = Scheduler::new(config, &PieceSet::new(100));
    let warm = s.add_source("warm", 1.0, 0);
    let cold = s.add_source("cold", 1.0, 0);
    let warm_piece = s.next_piece(warm, 0).unwrap();
    s.next_piece(cold, 0).unwrap();
    s.on_bytes(warm, warm_piece, 1_000, 100);
    let stalled = |actions: &[Action], id: SourceId| {
        actions.iter().any(
            |a| matches!(a, Action::Replace { source, reason } if *source == id && reason.starts_with("stalled")),
        )
    };
    let mut dropped_warm = false;
    for now in (100..=2_900).step_by(100) {
        let actions = s.tick(now);
        dropped_warm |= stalled(&actions, warm);
        assert!(
            !stalled(&actions, cold),
            "the cold source stalled at {now} ms"
        );
    }
    assert!(dropped_warm, "a source that stops for a second is stalled");
    let actions = s.tick(3_000);
    assert!(stalled(&actions, cold), "no first byte in 3 s: stalled");
}

#[test]
fn a_gated_source_takes_consecutive_released_pieces_as_one_run() {
    let pieces = 64;
    let mut s = Scheduler::new(ScheduleConfig::new(pieces, MIB, 9), &PieceSet::new(pieces));
    s.gate();
    // Runs of up to eight; four must fit before a busy source asks again.
    s.set_runs(8, 4, 8);
    let cache = s.add_source("cache", 1.0, 0);
    for piece in (4..=12).chain([20]) {
        s.release_to_sources(PieceIndex(piece));
    }
    // Eight released in a row, within the eight slots: one request.
    assert_eq!(s.next_run(cache, 0), Some((PieceIndex(4), 8)));
    assert_eq!(s.next_run(cache, 0), None, "every slot is taken");
    // One piece in: a slot is free, too little for a run while the rest
    // of the first is still coming.
    s.on_bytes(cache, PieceIndex(4), MIB, 50);
    assert!(s.on_piece(cache, PieceIndex(4), true, 60).is_empty());
    assert_eq!(s.next_run(cache, 60), None);
    for piece in 5..=7 {
        s.on_piece(cache, PieceIndex(piece), true, 70);
    }
    // Room for four: the next released piece, alone (13 is not released).
    assert_eq!(s.next_run(cache, 70), Some((PieceIndex(12), 1)));
    assert_eq!(s.report()[0].requests, 2);
    for piece in 8..=12 {
        s.on_piece(cache, PieceIndex(piece), true, 80);
    }
    // Idle: whatever there is goes at once.
    assert_eq!(s.next_run(cache, 80), Some((PieceIndex(20), 1)));
    assert_eq!(s.next_run(cache, 80), None, "nothing else is released");
}

#[test]
fn by_default_every_request_is_one_piece() {
    let mut s = Scheduler::new(ScheduleConfig::new(16, MIB, 9), &PieceSet::new(16));
    let cache = s.add_source("cache", 1.0, 0);
    while let Some((_, count)) = s.next_run(cache, 0) {
        assert_eq!(count, 1);
    }
}

#[test]
fn pieces_a_broken_run_never_reached_go_back_without_counting_as_errors() {
    let mut s = Scheduler::new(ScheduleConfig::new(32, MIB, 9), &PieceSet::new(32));
    s.set_runs(16, 16, 16);
    let cache = s.add_source("cache", 1.0, 0);
    let other = s.add_source("other", 1.0, 0);
    let (first, count) = s.next_run(cache, 0).unwrap();
    assert!(count > 1, "consecutive pieces go out together");
    // The request broke on its first piece: one error, the rest abandoned.
    assert!(s.on_error(cache, first, "connection reset").is_empty());
    for later in first.0 + 1..first.0 + count {
        s.on_abandoned(cache, PieceIndex(later));
    }
    assert_eq!(s.health(cache), Some(&Health::Active));
    assert_eq!(s.report()[0].errors, 1);
    // Every piece of it is handed out again.
    let mut taken = PieceSet::new(32);
    for round in 0..4 {
        let mut out = Vec::new();
        for source in [other, cache] {
            while let Some((start, n)) = s.next_run(source, 10 + round) {
                for piece in start.0..start.0 + n {
                    taken.insert(PieceIndex(piece));
                    out.push((source, PieceIndex(piece)));
                }
            }
        }
        for (source, piece) in out {
            s.on_piece(source, piece, true, 10 + round);
        }
    }
    assert!(s.is_complete());
    for piece in first.0..first.0 + count {
        assert!(
            taken.contains(PieceIndex(piece)),
            "piece {piece} was never handed out again ({first:?}, {count})"
        );
    }
}

#[test]
fn a_piece_later_in_a_run_is_no_sample_of_the_time_to_first_byte() {
    let mut s = Scheduler::new(ScheduleConfig::new(64, MIB, 9), &PieceSet::new(64));
    s.set_runs(2, 1, 2);
    let cache = s.add_source("cache", 1.0, 0);
    let (first, count) = s.next_run(cache, 0).unwrap();
    assert_eq!(count, 2);
    // 10 ms to the first byte; the second piece's first byte comes 2 s
    // later, behind the first.
    s.tick(0);
    s.on_bytes(cache, first, 4 * MIB, 10);
    s.tick(1_000);
    s.on_piece(cache, first, true, 1_000);
    s.on_bytes(cache, PieceIndex(first.0 + 1), 4 * MIB, 2_000);
    s.tick(2_000);
    // 4 MiB/s over a 10 ms first byte covers well under a piece: the
    // source keeps the floor of two slots (a 2 s sample would have made
    // the time to first byte ~600 ms and the slots four).
    s.on_piece(cache, PieceIndex(first.0 + 1), true, 2_000);
    assert_eq!(s.free_slots(), 2);
}
