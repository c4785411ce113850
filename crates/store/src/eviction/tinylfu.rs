//! [`WTinyLfu`]: W-TinyLFU (Einziger et al., "TinyLFU: A Highly Efficient
//! Cache Admission Policy", and Caffeine's design) with byte sizes.
//!
//! A small LRU window (1% of the budget) takes every new piece; pieces that
//! leave the window must win a duel to enter main, a segmented LRU
//! (probation, then protected at 80% of main): the candidate is admitted
//! only if a count-min sketch of recent reads says it was read more often
//! than main's next victim. The sketch halves its counters periodically, so
//! old popularity fades.

use super::arena::{Arena, Queue};
use super::EvictionPolicy;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

const WINDOW: u8 = 0;
const PROBATION: u8 = 1;
const PROTECTED: u8 = 2;

/// A 4-row count-min sketch of 4-bit-range counters (stored in bytes,
/// saturating at 15), halved after `sample_size` increments.
#[derive(Debug)]
struct FrequencySketch {
    counters: Vec<u8>,
    mask: usize,
    increments: u64,
    sample_size: u64,
    hasher: std::hash::BuildHasherDefault<std::hash::DefaultHasher>,
}

impl FrequencySketch {
    fn new(width: usize) -> Self {
        let width = width.next_power_of_two().max(64);
        Self {
            counters: vec![0; width * 4],
            mask: width - 1,
            increments: 0,
            sample_size: 10 * width as u64,
            hasher: Default::default(),
        }
    }

    fn slots<K: Hash>(&self, key: &K) -> [usize; 4] {
        let hash = self.hasher.hash_one(key);
        let width = self.mask + 1;
        std::array::from_fn(|row| {
            let h = hash
                .rotate_left(row as u32 * 17)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15 ^ (row as u64) << 1 | 1);
            row * width + ((h >> 32) as usize & self.mask)
        })
    }

    fn increment<K: Hash>(&mut self, key: &K) {
        for slot in self.slots(key) {
            self.counters[slot] = (self.counters[slot] + 1).min(15);
        }
        self.increments += 1;
        if self.increments >= self.sample_size {
            // Aging: O(width) every 10 × width increments, O(1) amortized.
            for c in &mut self.counters {
                *c /= 2;
            }
            self.increments /= 2;
        }
    }

    fn estimate<K: Hash>(&self, key: &K) -> u8 {
        self.slots(key)
            .iter()
            .map(|&s| self.counters[s])
            .min()
            .unwrap_or(0)
    }
}

/// W-TinyLFU by bytes. See the module documentation.
#[derive(Debug)]
pub struct WTinyLfu<K> {
    capacity_bytes: u64,
    window_target_bytes: u64,
    protected_target_bytes: u64,
    index: HashMap<K, usize>,
    arena: Arena<K>,
    window: Queue,
    probation: Queue,
    protected: Queue,
    sketch: FrequencySketch,
}

impl<K: Clone + Eq + Hash> WTinyLfu<K> {
    /// `sketch_width` should be about the number of pieces the budget holds.
    pub fn new(capacity_bytes: u64, sketch_width: usize) -> Self {
        let window = capacity_bytes / 100;
        Self {
            capacity_bytes,
            window_target_bytes: window,
            protected_target_bytes: (capacity_bytes - window) / 10 * 8,
            index: HashMap::new(),
            arena: Arena::new(),
            window: Queue::new(),
            probation: Queue::new(),
            protected: Queue::new(),
            sketch: FrequencySketch::new(sketch_width),
        }
    }

    fn resident(&self) -> u64 {
        self.window.bytes() + self.probation.bytes() + self.protected.bytes()
    }

    fn queue_mut(&mut self, tag: u8) -> &mut Queue {
        match tag {
            WINDOW => &mut self.window,
            PROBATION => &mut self.probation,
            _ => &mut self.protected,
        }
    }

    fn forget(&mut self, slot: usize) -> K {
        let tag = self.arena.get(slot).tag;
        let mut queue = *self.queue_mut(tag);
        queue.unlink(&mut self.arena, slot);
        *self.queue_mut(tag) = queue;
        let entry = self.arena.free(slot);
        self.index.remove(&entry.key);
        entry.key
    }

    fn main_victim(&self) -> Option<usize> {
        self.probation.back().or_else(|| self.protected.back())
    }

    fn evict_to_capacity(&mut self, victims: &mut Vec<K>) {
        while self.window.bytes() > self.window_target_bytes && self.window.len() > 1 {
            let Some(candidate) = self.window.back() else {
                break;
            };
            self.window.unlink(&mut self.arena, candidate);
            self.arena.get_mut(candidate).tag = PROBATION;
            // Duel while main must give room for the candidate.
            let candidate_freq = self.sketch.estimate(&self.arena.get(candidate).key);
            let mut admitted = true;
            while self.resident() + self.arena.get(candidate).size_bytes > self.capacity_bytes {
                let Some(victim) = self.main_victim() else {
                    break;
                };
                let victim_freq = self.sketch.estimate(&self.arena.get(victim).key);
                if candidate_freq > victim_freq {
                    victims.push(self.forget(victim));
                } else {
                    admitted = false;
                    break;
                }
            }
            if admitted {
                self.probation.push_front(&mut self.arena, candidate);
            } else {
                let entry = self.arena.free(candidate);
                self.index.remove(&entry.key);
                victims.push(entry.key);
            }
        }
        // Whatever still overflows (main empty, or window alone too big).
        while self.resident() > self.capacity_bytes {
            let Some(slot) = self.main_victim().or_else(|| self.window.back()) else {
                break;
            };
            victims.push(self.forget(slot));
        }
    }
}

impl<K: Clone + Eq + Hash> EvictionPolicy<K> for WTinyLfu<K> {
    fn name(&self) -> &'static str {
        "wtinylfu"
    }

    fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn resident_bytes(&self) -> u64 {
        self.resident()
    }

    fn len(&self) -> usize {
        self.window.len() + self.probation.len() + self.protected.len()
    }

    fn contains(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    fn insert_into(&mut self, key: K, size_bytes: u64, victims: &mut Vec<K>) {
        self.sketch.increment(&key);
        if let Some(&slot) = self.index.get(&key) {
            if size_bytes > self.capacity_bytes {
                victims.push(self.forget(slot));
                return;
            }
            let tag = self.arena.get(slot).tag;
            let mut queue = *self.queue_mut(tag);
            queue.resize(&mut self.arena, slot, size_bytes);
            *self.queue_mut(tag) = queue;
            self.evict_to_capacity(victims);
            return;
        }
        if size_bytes > self.capacity_bytes {
            victims.push(key);
            return;
        }
        let slot = self.arena.alloc(key.clone(), size_bytes, WINDOW);
        self.index.insert(key, slot);
        self.window.push_front(&mut self.arena, slot);
        self.evict_to_capacity(victims);
    }

    fn insert_resident(&mut self, key: K, size_bytes: u64) -> Vec<K> {
        self.insert(key, size_bytes)
    }

    fn on_hit(&mut self, key: &K) -> bool {
        let Some(&slot) = self.index.get(key) else {
            return false;
        };
        self.sketch.increment(key);
        let tag = self.arena.get(slot).tag;
        match tag {
            WINDOW => {
                self.window.unlink(&mut self.arena, slot);
                self.window.push_front(&mut self.arena, slot);
            }
            PROBATION => {
                self.probation.unlink(&mut self.arena, slot);
                self.arena.get_mut(slot).tag = PROTECTED;
                self.protected.push_front(&mut self.arena, slot);
                while self.protected.bytes() > self.protected_target_bytes {
                    let Some(demoted) = self.protected.back() else {
                        break;
                    };
                    self.protected.unlink(&mut self.arena, demoted);
                    self.arena.get_mut(demoted).tag = PROBATION;
                    self.probation.push_front(&mut self.arena, demoted);
                }
            }
            _ => {
                self.protected.unlink(&mut self.arena, slot);
                self.protected.push_front(&mut self.arena, slot);
            }
        }
        true
    }

    fn remove(&mut self, key: &K) -> bool {
        match self.index.get(key) {
            Some(&slot) => {
                self.forget(slot);
                true
            }
            None => false,
        }
    }
}
