//! The gap the caches fill: deadlines, the pace, designation, take-overs.

use super::*;

const PIECE: u64 = 1 << 20;

struct World {
    done: PieceSet,
    at_caches: PieceSet,
    availability: Vec<u32>,
    from_peers: BTreeMap<u32, u64>,
    from_peers_since_ms: BTreeMap<u32, u64>,
    from_peers_last_ms: BTreeMap<u32, u64>,
    peer_bytes_per_s: f64,
    cache_bytes_per_s: f64,
    cache_slots_free: u32,
    mine: Vec<u32>,
    playhead: u32,
    peer_done_mean: f64,
}

impl World {
    fn new(count: u32) -> Self {
        World {
            done: PieceSet::new(count),
            at_caches: PieceSet::new(count),
            availability: vec![1; count as usize],
            from_peers: BTreeMap::new(),
            from_peers_since_ms: BTreeMap::new(),
            from_peers_last_ms: BTreeMap::new(),
            peer_bytes_per_s: 0.0,
            cache_bytes_per_s: 0.0,
            cache_slots_free: 0,
            mine: Vec::new(),
            playhead: 0,
            peer_done_mean: 0.0,
        }
    }

    fn decide(&self, config: &GapConfig, now_ms: u64) -> GapDecision {
        let designated = |p: u32| self.mine.contains(&p);
        decide(
            config,
            &GapInput {
                now_ms,
                done: &self.done,
                at_caches: &self.at_caches,
                availability: &self.availability,
                from_peers: &self.from_peers,
                from_peers_since_ms: &self.from_peers_since_ms,
                from_peers_last_ms: &self.from_peers_last_ms,
                peer_bytes_per_s: self.peer_bytes_per_s,
                cache_bytes_per_s: self.cache_bytes_per_s,
                cache_slots_free: self.cache_slots_free,
                designated: &designated,
                peers_known: true,
                peer_done_mean: self.peer_done_mean,
                playhead: self.playhead,
                caches_usable: true,
            },
        )
    }
}

/// 8 Mbit/s: a 1 MiB piece plays for ~1.05 s.
fn stream_config(count: u32) -> GapConfig {
    GapConfig::new(
        count,
        PIECE,
        Pace::Stream {
            bytes_per_s: 1e6,
            play_from_ms: 2_000,
        },
    )
}

#[test]
fn a_stream_leaves_pieces_to_peers_until_they_are_near_their_deadline() {
    let config = stream_config(100);
    let mut world = World::new(100);
    // A cache needs the 1.5 s floor + ~524 ms a piece. At 300 ms piece 0
    // (due at 2 s) is near, piece 1 (due at ~3.05 s) not yet.
    world.cache_bytes_per_s = 2e6;
    world.availability[0] = 2;
    let first = world.decide(&config, 300);
    assert_eq!(first.release, vec![0], "only piece 0 is near");
    assert!(first.take_over.is_empty());
    // Peers are on piece 1 and fast: it stays theirs. Piece 2 nobody
    // fetches: the cache gets it when it is near.
    world.at_caches.insert(PieceIndex(0));
    world.from_peers.insert(1, PIECE / 2);
    world.peer_bytes_per_s = 4e6;
    let later = world.decide(&config, 2_300);
    assert_eq!(later.release, vec![2], "1 is on track with peers");
    // The peers slow to a crawl: piece 1 is taken over.
    world.peer_bytes_per_s = 10_000.0;
    let slow = world.decide(&config, 2_300);
    assert_eq!(slow.release, vec![1, 2]);
    assert_eq!(slow.take_over, vec![1]);
}

#[test]
fn a_stream_prefetches_only_the_pieces_nobody_holds_that_it_is_designated_for() {
    let config = stream_config(100);
    let mut world = World::new(100);
    world.cache_bytes_per_s = 4e6;
    for p in 5..100 {
        world.availability[p] = 0;
    }
    world.mine = vec![7, 40];
    for p in 0..3 {
        world.done.insert(PieceIndex(p));
    }
    world.playhead = 3;
    let decision = world.decide(&config, 0);
    // 3 (due 5.1 s) is not near at 0 ms with a ~1.76 s lead; 7 is
    // designated and within the prefetch window; 40 is beyond it.
    assert_eq!(decision.release, vec![7]);
}

#[test]
fn a_target_download_releases_only_the_shortfall_of_its_pace() {
    let pace = Pace::Target {
        bytes_per_s: 2.0 * PIECE as f64,
        start_ms: 0,
        done_at_start: 0,
    };
    let mut config = GapConfig::new(64, PIECE, pace);
    config.prefetch_ms = 0;
    let mut world = World::new(64);
    world.availability = vec![0; 64];
    // No peers yet: at 1 s, with a 1.5 s lead, 5 pieces are due by 2.5 s.
    let alone = world.decide(&config, 1_000);
    assert_eq!(alone.release, vec![0, 1, 2, 3, 4]);
    world.availability = (0..64).map(|p| p % 4).collect();
    // Peers deliver 3 pieces a second and fetch 6: nothing is short.
    world.peer_bytes_per_s = 3.0 * PIECE as f64;
    for p in 10..16 {
        world.from_peers.insert(p, 0);
    }
    for p in 0..2 {
        world.done.insert(PieceIndex(p));
    }
    assert_eq!(world.decide(&config, 1_000), GapDecision::default());
    // They slow to one piece a second: the shortfall goes to the caches.
    world.peer_bytes_per_s = PIECE as f64;
    let short = world.decide(&config, 1_000);
    assert_eq!(short.release.len(), 2, "5 due, 2 done, 1 expected");
    assert!(short.take_over.is_empty());
}

#[test]
fn as_fast_as_possible_fills_the_caches_free_slots_with_what_peers_do_not_fetch() {
    let mut config = GapConfig::new(8, PIECE, Pace::AsFastAsPossible);
    config.prefetch_ms = 0;
    let mut world = World::new(8);
    world.availability = vec![3, 0, 2, 0, 1, 0, 5, 0];
    world.mine = vec![5];
    world.from_peers.insert(3, 0);
    world.cache_slots_free = 3;
    // Peers deliver: the unheld piece this node is designated for (5);
    // 1 and 7 are left to the nodes designated for them, and nothing
    // peers hold is fetched twice while pieces nobody holds are to come.
    world.peer_bytes_per_s = 1e6;
    assert_eq!(world.decide(&config, 0).release, vec![5]);
    // Peers deliver nothing: the caches take the unheld pieces too.
    world.peer_bytes_per_s = 0.0;
    assert_eq!(world.decide(&config, 0).release, vec![5, 1, 7]);
    // Every piece is somewhere in the swarm: what peers hold but do not
    // send (choked, pipelines full) goes to the caches, rarest first.
    world.peer_bytes_per_s = 1e6;
    world.availability = vec![3, 1, 2, 1, 1, 0, 5, 2];
    assert_eq!(world.decide(&config, 0).release, vec![5, 1, 4]);
    world.cache_slots_free = 7;
    let all = world.decide(&config, 0);
    assert_eq!(all.release, vec![5, 1, 4, 2, 7, 0, 6]);
    // Everything left is with peers: the least advanced is taken over.
    let mut endgame = World::new(8);
    for p in 0..6 {
        endgame.done.insert(PieceIndex(p));
    }
    endgame.from_peers.insert(6, PIECE / 2);
    endgame.from_peers.insert(7, PIECE / 8);
    endgame.cache_slots_free = 1;
    let last = endgame.decide(&config, 0);
    assert_eq!(last.release, vec![7]);
    assert_eq!(last.take_over, vec![7]);
    // No free slot: nothing.
    endgame.cache_slots_free = 0;
    assert_eq!(endgame.decide(&config, 0), GapDecision::default());
}

#[test]
fn nothing_goes_to_caches_when_none_is_usable() {
    let config = stream_config(10);
    let world = World::new(10);
    let designated = |_: u32| true;
    let decision = decide(
        &config,
        &GapInput {
            now_ms: 10_000,
            done: &world.done,
            at_caches: &world.at_caches,
            availability: &world.availability,
            from_peers: &world.from_peers,
            from_peers_since_ms: &world.from_peers_since_ms,
            from_peers_last_ms: &world.from_peers_last_ms,
            peer_bytes_per_s: 0.0,
            cache_bytes_per_s: 0.0,
            cache_slots_free: 4,
            designated: &designated,
            peers_known: true,
            peer_done_mean: 0.0,
            playhead: 0,
            caches_usable: false,
        },
    );
    assert_eq!(decision, GapDecision::default());
}

#[test]
fn each_piece_nobody_holds_has_exactly_one_designated_fetcher() {
    let ids: Vec<u64> = (0..20u8).map(|n| peer_number(&[n; 20])).collect();
    let mut per_peer = vec![0u32; ids.len()];
    let block = 4;
    for piece in 0..8_000 {
        let fetchers: Vec<usize> = (0..ids.len())
            .filter(|i| designated(ids[*i], &ids, piece, block))
            .collect();
        assert_eq!(fetchers.len(), 1, "piece {piece}");
        per_peer[fetchers[0]] += 1;
        // Whole blocks: what one node fetches is a contiguous range.
        let first_of_block = piece - piece % block;
        assert!(designated(ids[fetchers[0]], &ids, first_of_block, block));
    }
    // Spread evenly enough: 400 pieces (100 blocks) each on average.
    assert!(
        per_peer.iter().all(|n| (200..640).contains(n)),
        "{per_peer:?}"
    );
    // Alone, a node fetches everything nobody holds.
    assert!(designated(ids[0], &[], 5, block));
    // Blocks of 1 MiB: four 256 KiB pieces, one 4 MiB piece.
    assert_eq!(designation_block_pieces(256 << 10), 4);
    assert_eq!(designation_block_pieces(4 << 20), 1);
}

#[test]
fn a_piece_is_judged_by_its_own_progress_once_it_has_some() {
    let config = stream_config(100);
    let mut world = World::new(100);
    world.cache_bytes_per_s = 2e6;
    world.at_caches.insert(PieceIndex(0));
    // The swarm as a whole is fast, but piece 1 (due at ~3.05 s) got an
    // eighth of its bytes in the 2 s since it was asked: it would take
    // another 14 s. It is taken over.
    world.peer_bytes_per_s = 50e6;
    world.from_peers.insert(1, PIECE / 8);
    world.from_peers_since_ms.insert(1, 300);
    let decision = world.decide(&config, 2_300);
    assert_eq!(decision.take_over, vec![1]);
    // Had three quarters come in 500 ms, the rest is due in time (~170 ms
    // and the margin within the ~750 ms left): left alone.
    world.from_peers.insert(1, PIECE * 3 / 4);
    world.from_peers_since_ms.insert(1, 1_800);
    assert!(world.decide(&config, 2_300).take_over.is_empty());
    // Asked 2 s ago and nothing here: stuck, whatever the swarm's rate.
    world.from_peers.insert(1, 0);
    world.from_peers_since_ms.insert(1, 200);
    assert_eq!(world.decide(&config, 2_300).take_over, vec![1]);
}

#[test]
fn a_stream_gives_the_caches_a_block_at_once_when_its_first_piece_nears() {
    // 256 KiB pieces in blocks of four (1 MiB): at 8 Mbit/s a piece plays
    // for ~262 ms.
    let mut config = GapConfig::new(
        64,
        256 << 10,
        Pace::Stream {
            bytes_per_s: 1e6,
            play_from_ms: 10_000,
        },
    );
    assert_eq!(config.block_pieces, 4);
    config.lead_min_ms = 1_000;
    let mut world = World::new(64);
    world.cache_bytes_per_s = 1e9;
    // Piece 8 (the first of block 2) is due at ~12.1 s: within the lead at
    // 11.2 s, and its whole block goes, though piece 11 is due ~0.8 s
    // later; a piece peers are on track for stays with them.
    world.done = PieceSet::new(64);
    for piece in 0..8 {
        world.done.insert(PieceIndex(piece));
    }
    world.playhead = 8;
    world.from_peers.insert(10, 200 << 10);
    world.from_peers_since_ms.insert(10, 10_900);
    let decision = world.decide(&config, 11_200);
    assert_eq!(decision.release, vec![8, 9, 11]);
    // Before it nears, nothing of the block goes.
    assert!(world.decide(&config, 10_900).release.is_empty());
}

#[test]
fn a_target_downloads_shortfall_goes_to_the_caches_in_whole_blocks() {
    // 256 KiB pieces (blocks of four) at ~8 Mbit/s, peers bringing nothing.
    let mut config = GapConfig::new(
        64,
        256 << 10,
        Pace::Target {
            bytes_per_s: 1e6,
            start_ms: 0,
            done_at_start: 0,
        },
    );
    config.lead_min_ms = 1_000;
    let mut world = World::new(64);
    world.cache_bytes_per_s = 1e9;
    // Rarest first would scatter: pieces 0, 5, 10, … are the rarest.
    for (piece, held) in world.availability.iter_mut().enumerate() {
        *held = (piece as u32 * 7 % 5) + 1;
    }
    // ~1 s of pace is due within the lead: four pieces, one block.
    assert_eq!(world.decide(&config, 0).release, vec![0, 1, 2, 3]);
    // ~2 s: eight pieces; each chosen piece takes the rest of its block
    // with it, so eight pieces are three ranges.
    assert_eq!(
        world.decide(&config, 1_000).release,
        vec![0, 1, 2, 3, 5, 6, 7, 10]
    );
    // Two pieces short: rounded up to a block's four.
    for piece in 0..6 {
        world.at_caches.insert(PieceIndex(piece));
    }
    assert_eq!(world.decide(&config, 1_000).release.len(), 4);
}

#[test]
fn a_node_ahead_of_its_peers_leaves_the_caches_to_those_behind() {
    // As fast as possible, 1 MiB pieces (blocks of one), 40 pieces.
    let config = GapConfig::new(40, PIECE, Pace::AsFastAsPossible);
    let mut world = World::new(40);
    world.cache_slots_free = 4;
    world.cache_bytes_per_s = 1e7;
    world.peer_bytes_per_s = 1e7;
    // Peers hold pieces 10.. but choke us; piece 5 nobody holds and it is
    // ours to bring.
    world.availability[5] = 0;
    world.mine = vec![5];
    for piece in 0..5 {
        world.done.insert(PieceIndex(piece));
    }
    // Level with the swarm: the caches bring the designated piece and
    // what peers hold but do not give us.
    world.peer_done_mean = 5.0;
    let level = world.decide(&config, 1_000);
    assert_eq!(level.release.len(), 4);
    assert_eq!(level.release[0], 5);
    // Two pieces ahead of the mean: only the designated piece.
    world.peer_done_mean = 3.0;
    assert_eq!(world.decide(&config, 1_000).release, vec![5]);
    // Ahead, but peers bring next to nothing (a slow paced swarm): the
    // caches' free slots are used all the same.
    world.peer_bytes_per_s = 1e3;
    assert_eq!(world.decide(&config, 1_000).release.len(), 4);
}

#[test]
fn a_stream_asks_peers_only_for_pieces_they_can_bring_in_time() {
    // 1 MiB pieces at ~8 Mbit/s (~1.05 s each), piece 0 plays at 2 s; a
    // cache's lead 1.5 s and the margin 0.5 s.
    let config = stream_config(100);
    // Peers give 1 MB/s over two pieces: a fresh piece takes ~2.1 s, so
    // peers are asked from the piece due more than ~4.1 s from now.
    let from = stream_peers_from(&config, 10_000, 7, 1e6, 2);
    // Piece 12 is due at ~14.6 s, piece 11 at ~13.5 s.
    assert_eq!(from, 12);
    // Peers twice as fast: a piece sooner.
    assert_eq!(stream_peers_from(&config, 10_000, 7, 2e6, 2), 11);
    // Nothing known yet: the longest assumption (3 s).
    assert_eq!(stream_peers_from(&config, 10_000, 7, 0.0, 0), 13);
    // Never behind the reader; never past the end.
    assert_eq!(stream_peers_from(&config, 0, 5, 1e6, 1), 5);
    assert_eq!(stream_peers_from(&config, 1_000_000, 5, 1e6, 1), 100);
    // Not a stream: the playhead.
    let download = GapConfig::new(100, PIECE, Pace::AsFastAsPossible);
    assert_eq!(stream_peers_from(&download, 10_000, 7, 1e6, 2), 7);
}

#[test]
fn a_piece_mostly_here_and_silent_since_is_taken_over() {
    let config = stream_config(100);
    let mut world = World::new(100);
    world.cache_bytes_per_s = 2e6;
    world.peer_bytes_per_s = 1e6;
    // Piece 2 is due at ~4.1 s; at 2.6 s it is near (a cache needs
    // ~1.5 s). Fifteen of its sixteenths came from a peer since 0: by its
    // average rate the rest takes ~0.2 s, on track.
    world.from_peers.insert(2, PIECE / 16 * 15);
    world.from_peers_since_ms.insert(2, 0);
    world.done.insert(PieceIndex(0));
    world.done.insert(PieceIndex(1));
    world.playhead = 2;
    world.from_peers_last_ms.insert(2, 2_000);
    assert!(world.decide(&config, 2_600).release.is_empty(), "on track");
    // The same, but its last block came at 0.5 s: the peer stopped (a
    // choke, say); a cache takes it over.
    world.from_peers_last_ms.insert(2, 500);
    let decision = world.decide(&config, 2_600);
    assert_eq!(decision.release, vec![2]);
    assert_eq!(decision.take_over, vec![2]);
}
