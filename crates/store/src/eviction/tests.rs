//! Tests every policy must pass, S3-FIFO's own behaviour, a property test of
//! the byte accounting, and the byte hit ratio comparison on a fixed trace.

use super::sim::{simulate, Trace, TraceConfig};
use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

/// Every policy, boxed, for the shared tests.
fn all_policies(capacity_bytes: u64) -> Vec<Box<dyn EvictionPolicy<u32> + Send>> {
    let mut policies: Vec<_> = PolicyKind::ALL
        .iter()
        .map(|kind| kind.build(capacity_bytes))
        .collect();
    // S3-FIFO with tight ghost bounds, so that trimming is exercised.
    policies.push(Box::new(S3Fifo::with_config(S3FifoConfig {
        ghost_entries_max: 2,
        ghost_bytes_max: capacity_bytes / 4,
        promote_hits_min: 2,
        ..S3FifoConfig::new(capacity_bytes)
    })));
    policies
}

#[test]
fn capacity_holds_after_every_insert() {
    for mut policy in all_policies(100) {
        for key in 0..1000u32 {
            let victims = policy.insert(key, u64::from(key % 37));
            assert!(policy.resident_bytes() <= 100, "{}", policy.name());
            assert_eq!(victims.contains(&key), !policy.contains(&key));
            if key % 3 == 0 {
                policy.on_hit(&(key / 2));
            }
        }
    }
}

#[test]
fn absent_keys_are_harmless() {
    for mut policy in all_policies(100) {
        assert!(!policy.on_hit(&7));
        assert!(!policy.remove(&7));
        assert!(!policy.contains(&7));
        policy.insert(1, 10);
        assert!(policy.remove(&1));
        assert!(!policy.remove(&1));
        assert!(!policy.on_hit(&1));
        assert_eq!((policy.len(), policy.resident_bytes()), (0, 0));
        assert!(policy.is_empty());
    }
}

#[test]
fn pieces_larger_than_the_budget_are_refused() {
    for mut policy in all_policies(100) {
        policy.insert(1, 60);
        assert_eq!(policy.insert(2, 101), vec![2], "{}", policy.name());
        assert!(!policy.contains(&2));
        assert!(policy.contains(&1));
        // Growing a resident piece past the budget drops it.
        assert_eq!(policy.insert(1, 101), vec![1]);
        assert!(policy.is_empty());
        // A piece exactly the budget's size fits.
        assert!(!policy.insert(3, 100).contains(&3));
        assert_eq!(policy.resident_bytes(), 100);
    }
}

#[test]
fn zero_size_pieces_and_zero_budget() {
    for mut policy in all_policies(0) {
        assert!(policy.insert(1, 0).is_empty());
        assert!(policy.contains(&1));
        assert_eq!(policy.insert(2, 1), vec![2]);
        assert_eq!(policy.resident_bytes(), 0);
    }
    for mut policy in all_policies(10) {
        for key in 0..100 {
            policy.insert(key, 0);
        }
        policy.insert(1000, 10);
        assert_eq!(policy.resident_bytes(), 10);
        assert!(policy.len() > 1);
    }
}

#[test]
fn insert_resident_restores_without_evicting_until_full() {
    for kind in PolicyKind::ALL {
        let mut policy = kind.build::<u32>(100);
        for key in 0..10 {
            assert!(policy.insert_resident(key, 10).is_empty());
        }
        assert_eq!(policy.resident_bytes(), 100);
        // Over a (shrunk) budget the oldest restored pieces go first.
        assert_eq!(policy.insert_resident(10, 20), vec![0, 1], "{kind}");
        assert!(policy.contains(&10));
    }
}

#[test]
fn policy_kind_parses_and_prints() {
    for kind in PolicyKind::ALL {
        assert_eq!(kind.name().parse::<PolicyKind>(), Ok(kind));
        assert_eq!(kind.to_string(), kind.name());
        assert_eq!(kind.build::<u8>(1).name(), kind.name());
    }
    assert_eq!("S3-FIFO".parse(), Ok(PolicyKind::S3Fifo));
    assert_eq!(" LRU ".parse(), Ok(PolicyKind::Lru));
    assert!("arc".parse::<PolicyKind>().is_err());
    assert_eq!(PolicyKind::default(), PolicyKind::S3Fifo);
    assert_eq!(default_policy::<u8>(1).name(), "s3fifo");
}

#[test]
fn s3fifo_drops_one_hit_pieces_and_keeps_read_ones() {
    // Small holds 10 bytes (one piece); main 90.
    let mut s3 = S3Fifo::new(100);
    for key in 0..10u32 {
        s3.insert(key, 10);
    }
    for key in 0..5 {
        s3.on_hit(&key);
    }
    // A scan of new pieces pushes out the unread ones, never the read ones.
    for key in 100..120 {
        s3.insert(key, 10);
        assert!((0..5).all(|k| s3.contains(&k)));
    }
    assert!((5..10).all(|k| !s3.contains(&k)));
    assert!(s3.ghost_len() > 0);
}

#[test]
fn s3fifo_ghost_hit_skips_probation() {
    let mut s3 = S3Fifo::new(100);
    for key in 0..11u32 {
        s3.insert(key, 10);
    }
    // Key 0 left unread from small and is remembered.
    assert!(!s3.contains(&0));
    assert_eq!(s3.main_bytes(), 0);
    s3.insert(0, 10);
    assert!(s3.contains(&0));
    assert_eq!(s3.main_bytes(), 10);
}

#[test]
fn s3fifo_main_gives_read_pieces_another_lap() {
    let mut s3 = S3Fifo::new(100);
    for key in 0..10u32 {
        s3.insert_resident(key, 10);
    }
    s3.on_hit(&0);
    // Key 0 is main's oldest but was read: key 1 goes instead.
    assert_eq!(s3.insert(10, 10), vec![1]);
    assert!(s3.contains(&0));
}

#[test]
fn s3fifo_ghost_is_bounded() {
    let mut s3 = S3Fifo::with_config(S3FifoConfig {
        ghost_entries_max: 5,
        ..S3FifoConfig::new(100)
    });
    for key in 0..1000u32 {
        s3.insert(key, 10);
        assert!(s3.ghost_len() <= 5);
    }
    let mut s3 = S3Fifo::with_config(S3FifoConfig {
        ghost_bytes_max: 30,
        ..S3FifoConfig::new(100)
    });
    for key in 0..1000u32 {
        s3.insert(key, 10);
        assert!(s3.ghost_len() <= 3);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u8, u64),
    InsertResident(u8, u64),
    Hit(u8),
    Remove(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..24u8, 0..=60u64).prop_map(|(k, s)| Op::Insert(k, s)),
        1 => (0..24u8, 0..=60u64).prop_map(|(k, s)| Op::InsertResident(k, s)),
        3 => (0..24u8).prop_map(Op::Hit),
        1 => (0..24u8).prop_map(Op::Remove),
    ]
}

fn policies_under_test(capacity_bytes: u64) -> Vec<Box<dyn EvictionPolicy<u8> + Send>> {
    vec![
        Box::new(Lru::new(capacity_bytes)),
        Box::new(S3Fifo::new(capacity_bytes)),
        Box::new(S3Fifo::with_config(S3FifoConfig {
            small_percent: 50,
            promote_hits_min: 3,
            ghost_entries_max: 3,
            ..S3FifoConfig::new(capacity_bytes)
        })),
    ]
}

proptest! {
    /// A model of what the caller holds (the key set after applying the
    /// victims) must match the policy, and its bytes the budget.
    #[test]
    fn accounting_matches_a_model(capacity in 0..=200u64, ops in prop::collection::vec(op(), 0..300)) {
        for mut policy in policies_under_test(capacity) {
            let mut held: HashMap<u8, u64> = HashMap::new();
            for op in &ops {
                match *op {
                    Op::Insert(key, size) | Op::InsertResident(key, size) => {
                        let victims = if matches!(op, Op::Insert(..)) {
                            policy.insert(key, size)
                        } else {
                            policy.insert_resident(key, size)
                        };
                        held.insert(key, size);
                        let mut unique = victims.clone();
                        unique.sort_unstable();
                        unique.dedup();
                        prop_assert_eq!(unique.len(), victims.len(), "duplicate victims");
                        for victim in &victims {
                            prop_assert!(held.remove(victim).is_some(), "victim {} was not held", victim);
                        }
                        prop_assert_eq!(victims.contains(&key), !policy.contains(&key));
                    }
                    Op::Hit(key) => {
                        prop_assert_eq!(policy.on_hit(&key), held.contains_key(&key));
                    }
                    Op::Remove(key) => {
                        prop_assert_eq!(policy.remove(&key), held.remove(&key).is_some());
                    }
                }
                prop_assert!(policy.resident_bytes() <= capacity);
                prop_assert_eq!(policy.resident_bytes(), held.values().sum::<u64>());
                prop_assert_eq!(policy.len(), held.len());
                for key in 0..24u8 {
                    prop_assert_eq!(policy.contains(&key), held.contains_key(&key));
                }
            }
        }
    }
}

#[test]
fn s3fifo_beats_lru_on_byte_hit_ratio_on_a_zipf_trace() {
    // Small enough for a debug build: 120 objects (~390 GB), 400k reads.
    let trace = Trace::new(TraceConfig {
        objects: 120,
        requests: 400_000,
        warmup_requests: 100_000,
        concurrent_sessions: 100,
        ..TraceConfig::default()
    })
    .unwrap();
    let churning = Trace::new(TraceConfig {
        release_every_sessions: 50,
        ..trace.config().clone()
    })
    .unwrap();
    for (trace, percent) in [(&trace, 2), (&trace, 10), (&churning, 5)] {
        let capacity = trace.catalog_bytes() * percent / 100;
        let lru = simulate(&mut Lru::new(capacity), trace);
        let s3 = simulate(&mut S3Fifo::new(capacity), trace);
        assert_eq!(lru.bytes_requested, s3.bytes_requested);
        assert!(
            s3.byte_hit_ratio() > lru.byte_hit_ratio() * 1.05,
            "{}, cache {percent}%: s3fifo {:.4} vs lru {:.4}",
            trace.config(),
            s3.byte_hit_ratio(),
            lru.byte_hit_ratio()
        );
    }
}
