//! The swarm driven in memory: several [`Swarm`]s wired to each other
//! through the real wire codec, time stepped by hand, some peers lying.

use super::*;
use crate::wire::{Decoder, Extensions, WireLimits};
use bytes::BytesMut;
use shoal_core::{PieceSize, Validators};

/// Both ends announced the fast extension and the extension protocol.
const BOTH: Extensions = Extensions {
    fast: true,
    extended: true,
};

#[test]
fn each_object_has_its_own_stable_key() {
    let a = SwarmKey::for_object(&ObjectId([1; 32]));
    let b = SwarmKey::for_object(&ObjectId([2; 32]));
    assert_ne!(a, b);
    assert_eq!(a, SwarmKey::for_object(&ObjectId([1; 32])));
    assert_eq!(a.to_hex().len(), 40);
    // Same bytes, different kinds: different keys.
    assert_ne!(a, SwarmKey::V1InfoHash(a.wire_bytes()));
}

/// 6 pieces of 256 KiB and a short seventh.
fn object() -> (Vec<u8>, Manifest) {
    let size = 6 * (256 << 10) + 70_000;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
    let manifest = Manifest::from_data(
        &data,
        PieceSize::for_object_size(size as u64),
        Validators::default(),
    )
    .unwrap();
    (data, manifest)
}

struct Node {
    swarm: Swarm,
    store: HashMap<u32, Bytes>,
    /// Flips a byte of every block it sends.
    liar: bool,
    /// Blocks it uploads per simulated second (its uplink); the rest of
    /// what peers ask waits.
    blocks_per_s: usize,
    waiting_reads: VecDeque<(PeerKey, BlockRef)>,
}

/// Every node connected to every other; messages pass through the wire
/// codec. Returns the simulated seconds until every honest node is
/// complete (or the limit).
fn run(nodes: &mut [Node], data: &[u8], manifest: &Manifest, seconds_max: u64) -> u64 {
    let limits = WireLimits {
        layout: manifest.layout(),
        extensions: Extensions {
            fast: true,
            extended: true,
        },
    };
    for a in 0..nodes.len() {
        for b in 0..nodes.len() {
            if a != b {
                assert!(nodes[a].swarm.add_peer(b as u64, BOTH, 0));
            }
        }
    }
    let piece_size = manifest.piece_size().bytes() as usize;
    for second in 0..seconds_max {
        let now_ms = second * 1000;
        let mut uploaded = vec![0usize; nodes.len()];
        for node in nodes.iter_mut() {
            node.swarm.handle_timeout(now_ms);
        }
        // Deliver until nothing moves.
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < 10_000, "messages never settle at {second} s");
            let mut moved = false;
            for from in 0..nodes.len() {
                while let Some(action) = nodes[from].swarm.poll_action() {
                    moved = true;
                    match action {
                        Action::Send { peer, message } => {
                            let mut message = message;
                            if nodes[from].liar {
                                if let Message::Piece { data, .. } = &mut message {
                                    let mut bad = data.to_vec();
                                    bad[0] ^= 0xff;
                                    *data = Bytes::from(bad);
                                }
                            }
                            let mut bytes = BytesMut::new();
                            message.encode(&mut bytes);
                            let mut decoder = Decoder::new();
                            decoder.feed(&bytes);
                            let decoded = decoder.message(&limits).unwrap().unwrap();
                            let to = peer as usize;
                            let block = matches!(decoded, Message::Piece { .. });
                            if nodes[to].swarm.peers.contains_key(&(from as u64)) {
                                nodes[to].swarm.handle_message(from as u64, decoded, now_ms);
                            }
                            if block {
                                nodes[from].swarm.handle_sent(peer, 1, now_ms);
                            }
                        }
                        Action::Read { peer, block } => {
                            nodes[from].waiting_reads.push_back((peer, block));
                        }
                        Action::Store(piece) => {
                            let index = piece.index().0 as usize;
                            assert_eq!(
                                &piece.data()[..],
                                &data[index * piece_size..(index * piece_size + piece.len())],
                                "only verified bytes are stored"
                            );
                            nodes[from].store.insert(piece.index().0, piece.into_data());
                        }
                        Action::Close { peer, .. } => {
                            nodes[peer as usize].swarm.remove_peer(from as u64, now_ms);
                        }
                        Action::Banned(_) => {}
                    }
                }
            }
            // Each uplink sends what its cap allows this second.
            for (from, node) in nodes.iter_mut().enumerate() {
                while uploaded[from] < node.blocks_per_s {
                    let Some((peer, block)) = node.waiting_reads.pop_front() else {
                        break;
                    };
                    uploaded[from] += 1;
                    moved = true;
                    let piece = node.store[&block.piece].clone();
                    let bytes =
                        piece.slice(block.begin as usize..(block.begin + block.length) as usize);
                    node.swarm.served(peer, block, bytes, now_ms);
                }
            }
            if !moved {
                break;
            }
        }
        if nodes.iter().all(|n| n.liar || n.swarm.is_complete()) {
            return second;
        }
    }
    seconds_max
}

fn node(manifest: &Manifest, data: &[u8], seed: bool, liar: bool, salt: u64) -> Node {
    let count = manifest.piece_count();
    let mut have = PieceSet::new(count);
    let mut store = HashMap::new();
    let piece_size = manifest.piece_size().bytes() as usize;
    if seed {
        for i in 0..count {
            have.insert(PieceIndex(i));
            let start = i as usize * piece_size;
            let end = (start + piece_size).min(data.len());
            store.insert(i, Bytes::copy_from_slice(&data[start..end]));
        }
    }
    let limits = SwarmLimits {
        rechoke_every_ms: 1000,
        ..SwarmLimits::default()
    };
    Node {
        swarm: Swarm::new(manifest.clone(), have, limits, 0).with_salt(salt),
        store,
        liar,
        // 1 MiB/s each: the object takes a seed alone about 6.5 s per
        // leecher.
        blocks_per_s: 64,
        waiting_reads: VecDeque::new(),
    }
}

#[test]
fn a_leecher_gets_every_piece_from_a_seed_verified() {
    let (data, manifest) = object();
    let mut nodes = vec![
        node(&manifest, &data, true, false, 1),
        node(&manifest, &data, false, false, 2),
    ];
    let seconds = run(&mut nodes, &data, &manifest, 30);
    assert!(nodes[1].swarm.is_complete(), "done in {seconds} s");
    let counters = nodes[1].swarm.counters();
    assert_eq!(counters.bytes_from_peers, data.len() as u64);
    assert_eq!(counters.pieces_failed, 0);
    assert_eq!(nodes[0].swarm.counters().bytes_to_peers, data.len() as u64);
}

#[test]
fn leechers_trade_pieces_with_each_other() {
    let (data, manifest) = object();
    let mut nodes = vec![node(&manifest, &data, true, false, 3)];
    for k in 0..5 {
        nodes.push(node(&manifest, &data, false, false, 4 + k));
    }
    let seconds = run(&mut nodes, &data, &manifest, 120);
    assert!(nodes.iter().all(|n| n.swarm.is_complete()));
    // A seed alone would need 5 × 6.5 s; trading beats that.
    assert!(seconds < 25, "{seconds} s");
    let from_leechers: u64 = nodes[1..]
        .iter()
        .map(|n| n.swarm.counters().bytes_to_peers)
        .sum();
    assert!(from_leechers > 0, "leechers uploaded to each other");
}

#[test]
fn a_lying_peer_is_banned_and_no_honest_one_is() {
    let (data, manifest) = object();
    let mut nodes = vec![
        node(&manifest, &data, true, false, 5),
        node(&manifest, &data, false, false, 6),
        node(&manifest, &data, false, false, 7),
        // Claims every piece and flips a byte of every block it sends.
        node(&manifest, &data, true, true, 8),
    ];
    run(&mut nodes, &data, &manifest, 120);
    for honest in &nodes[..3] {
        assert!(honest.swarm.is_complete());
        for peer in 0..3u64 {
            assert!(!honest.swarm.is_banned(peer), "an honest peer banned");
        }
    }
    let banned_by = nodes[1..3].iter().filter(|n| n.swarm.is_banned(3)).count();
    let failed: u64 = nodes[1..3]
        .iter()
        .map(|n| n.swarm.counters().pieces_failed)
        .sum();
    eprintln!("{failed} pieces failed; {banned_by} of 2 leechers banned the liar");
    assert!(failed > 0, "the liar was asked for pieces");
    assert_eq!(banned_by, 2, "both leechers caught it");
    // The seed is not banned for sharing pieces with the liar's blocks.
    assert!(!nodes[1].swarm.is_banned(0) && !nodes[2].swarm.is_banned(0));
}

#[test]
fn a_piece_every_holder_helped_spoil_is_taken_whole_from_one_and_completes() {
    // One seed, one leecher, one liar: a failed piece has blocks from both
    // holders, so neither is "clean"; it must still be fetched.
    let (data, manifest) = object();
    let mut nodes = vec![
        node(&manifest, &data, true, false, 21),
        node(&manifest, &data, false, false, 22),
        node(&manifest, &data, true, true, 23),
    ];
    let seconds = run(&mut nodes, &data, &manifest, 120);
    assert!(nodes[1].swarm.is_complete(), "stuck after {seconds} s");
    assert!(!nodes[1].swarm.is_banned(0), "the seed is honest");
}

#[test]
fn a_peers_requests_are_read_a_few_at_a_time_and_a_cancel_still_withdraws_the_rest() {
    let (data, manifest) = object();
    let mut seed = node(&manifest, &data, true, false, 1).swarm;
    assert!(seed.add_peer(7, BOTH, 0));
    seed.handle_message(7, Message::HaveNone, 0);
    seed.handle_message(7, Message::Interested, 0);
    seed.rechoke(0);
    let block = |i: u32| BlockRef {
        piece: i / 16,
        begin: (i % 16) * crate::wire::BLOCK_BYTES,
        length: crate::wire::BLOCK_BYTES,
    };
    for i in 0..12 {
        seed.handle_message(7, Message::Request(block(i)), 1);
    }
    let reads = |swarm: &mut Swarm| {
        std::iter::from_fn(|| swarm.poll_action())
            .filter_map(|a| match a {
                Action::Read { block, .. } => Some(block),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let first = reads(&mut seed);
    assert_eq!(
        first,
        (0..SERVE_PIPELINE_BLOCKS).map(block).collect::<Vec<_>>()
    );
    // The peer takes block 5 elsewhere before its turn: never read, never
    // sent.
    seed.handle_message(7, Message::Cancel(block(5)), 2);
    for b in &first {
        let bytes = Bytes::from(vec![0u8; b.length as usize]);
        seed.served(7, *b, bytes, 2);
    }
    assert!(
        reads(&mut seed).is_empty(),
        "nothing more until they are written"
    );
    seed.handle_sent(7, SERVE_PIPELINE_BLOCKS, 3);
    assert_eq!(
        reads(&mut seed),
        vec![block(4), block(6), block(7), block(8)]
    );
}
