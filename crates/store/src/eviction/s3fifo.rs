//! [`S3Fifo`]: S3-FIFO (Yang et al., SOSP 2023, "FIFO queues are all you
//! need for cache eviction") with byte sizes.
//!
//! Three FIFO queues:
//!
//! - **small**, about 10% of the byte budget, where every new piece starts on
//!   probation;
//! - **main**, the rest of the budget, for pieces that were read again while
//!   on probation or that come back soon after leaving it;
//! - **ghost**, keys (no data) recently dropped from small, bounded in bytes
//!   and in entries.
//!
//! A read only bumps a 2-bit counter (`freq`, capped at 3): no list moves on
//! the hot path. When space is needed, small's oldest piece is promoted to
//! main if it was read at least `promote_hits_min` times (its count then
//! starts over), else it is dropped and its key remembered in ghost; main's oldest piece is given another lap
//! with `freq - 1` if `freq > 0`, else dropped. A piece whose key is in ghost
//! when it is stored again skips probation and enters main.
//!
//! Why this beats LRU for video: a viewing session reads pieces once, in
//! order. Under LRU every such read pushes out older pieces however popular
//! they were, so a few long sessions flush the cache. Here the tail pieces
//! only one session wanted leave from the small queue, while the opening
//! pieces that many sessions read collect hits on probation and stay in main.

use super::arena::{Arena, Queue};
use super::EvictionPolicy;
use shoal_core::PieceSize;
use std::collections::HashMap;
use std::hash::Hash;

const SMALL: u8 = 0;
const MAIN: u8 = 1;
const GHOST: u8 = 2;

/// Highest value of the per-piece read counter.
const FREQ_MAX: u8 = 3;

/// Tuning of [`S3Fifo`]; [`S3FifoConfig::new`] gives the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3FifoConfig {
    /// The byte budget of resident pieces.
    pub capacity_bytes: u64,
    /// Share of the budget the small (probation) queue aims at, in percent
    /// (clamped to 1..=90).
    pub small_percent: u8,
    /// Reads a piece needs while on probation to be promoted to main
    /// (clamped to 1..=3).
    pub promote_hits_min: u8,
    /// Ghost bound: the summed sizes of the keys it remembers.
    pub ghost_bytes_max: u64,
    /// Ghost bound: the number of keys it remembers (bounds its memory).
    pub ghost_entries_max: usize,
}

impl S3FifoConfig {
    /// The default small share, in percent (the paper's 10%).
    pub const SMALL_PERCENT_DEFAULT: u8 = 10;
    /// Ceiling of the default ghost entry bound: 4 Mi keys, a few hundred
    /// MiB of memory at most with object-id keys.
    pub const GHOST_ENTRIES_DEFAULT_MAX: usize = 1 << 22;

    /// Defaults: small 10%, promotion after one read, a ghost as large in
    /// bytes as main (the paper sizes ghost like main) and at most as many
    /// keys as the budget holds at the smallest piece size.
    pub fn new(capacity_bytes: u64) -> Self {
        let small = small_target_bytes(capacity_bytes, Self::SMALL_PERCENT_DEFAULT);
        let entries = (capacity_bytes / PieceSize::MIN.bytes())
            .clamp(1024, Self::GHOST_ENTRIES_DEFAULT_MAX as u64);
        Self {
            capacity_bytes,
            small_percent: Self::SMALL_PERCENT_DEFAULT,
            promote_hits_min: 1,
            ghost_bytes_max: capacity_bytes - small,
            ghost_entries_max: entries as usize,
        }
    }
}

fn small_target_bytes(capacity_bytes: u64, small_percent: u8) -> u64 {
    // u128: capacity * percent must not overflow for any u64 capacity.
    (capacity_bytes as u128 * small_percent.clamp(1, 90) as u128 / 100) as u64
}

/// S3-FIFO by bytes. See the module documentation.
///
/// Every operation is O(1) amortized: a hash lookup plus a bounded number of
/// list moves, except that one insert may promote or re-queue several
/// pieces. Each promotion is paid for by that piece's insert, and each
/// re-queue in main by an earlier read (it spends one unit of `freq`, which
/// only reads add), so the total work is bounded by inserts plus reads.
#[derive(Debug)]
pub struct S3Fifo<K> {
    capacity_bytes: u64,
    small_target_bytes: u64,
    promote_hits_min: u8,
    ghost_bytes_max: u64,
    ghost_entries_max: usize,
    /// Resident and ghost keys; the entry's tag says which queue holds it.
    index: HashMap<K, usize>,
    arena: Arena<K>,
    small: Queue,
    main: Queue,
    ghost: Queue,
}

impl<K: Clone + Eq + Hash> S3Fifo<K> {
    /// S3-FIFO with the default tuning for this budget.
    pub fn new(capacity_bytes: u64) -> Self {
        Self::with_config(S3FifoConfig::new(capacity_bytes))
    }

    pub fn with_config(config: S3FifoConfig) -> Self {
        Self {
            capacity_bytes: config.capacity_bytes,
            small_target_bytes: small_target_bytes(config.capacity_bytes, config.small_percent),
            promote_hits_min: config.promote_hits_min.clamp(1, FREQ_MAX),
            ghost_bytes_max: config.ghost_bytes_max,
            ghost_entries_max: config.ghost_entries_max,
            index: HashMap::new(),
            arena: Arena::new(),
            small: Queue::new(),
            main: Queue::new(),
            ghost: Queue::new(),
        }
    }

    /// Bytes resident in the small (probation) queue.
    pub fn small_bytes(&self) -> u64 {
        self.small.bytes()
    }

    /// Bytes resident in the main queue.
    pub fn main_bytes(&self) -> u64 {
        self.main.bytes()
    }

    /// Keys remembered in ghost.
    pub fn ghost_len(&self) -> usize {
        self.ghost.len()
    }

    fn queue_mut(&mut self, tag: u8) -> &mut Queue {
        match tag {
            SMALL => &mut self.small,
            MAIN => &mut self.main,
            _ => &mut self.ghost,
        }
    }

    /// Unlinks and forgets a slot (resident or ghost), returning its key.
    fn forget(&mut self, slot: usize) -> K {
        let tag = self.arena.get(slot).tag;
        let mut queue = *self.queue_mut(tag);
        queue.unlink(&mut self.arena, slot);
        *self.queue_mut(tag) = queue;
        let entry = self.arena.free(slot);
        self.index.remove(&entry.key);
        entry.key
    }

    fn evict_to_capacity(&mut self, victims: &mut Vec<K>) {
        while self.small.bytes() + self.main.bytes() > self.capacity_bytes {
            // Small keeps its newest piece while main can give: otherwise a
            // piece larger than small's share would be dropped on arrival.
            let small_over = self.small.bytes() > self.small_target_bytes && self.small.len() > 1;
            if small_over || self.main.is_empty() {
                self.evict_small(victims);
            } else {
                self.evict_main(victims);
            }
        }
    }

    /// Takes small's oldest piece off probation: into main if it was read
    /// enough, else out of the cache and into ghost.
    fn evict_small(&mut self, victims: &mut Vec<K>) {
        let Some(slot) = self.small.back() else {
            return;
        };
        self.small.unlink(&mut self.arena, slot);
        let entry = self.arena.get_mut(slot);
        if entry.freq >= self.promote_hits_min {
            // Main's laps count reads made in main (measured: a hair better
            // than carrying probation reads over).
            entry.tag = MAIN;
            entry.freq = 0;
            self.main.push_front(&mut self.arena, slot);
            return;
        }
        entry.tag = GHOST;
        entry.freq = 0;
        victims.push(entry.key.clone());
        self.ghost.push_front(&mut self.arena, slot);
        self.trim_ghost();
    }

    /// Gives main's oldest piece another lap if it was read since its last
    /// one, else drops it.
    fn evict_main(&mut self, victims: &mut Vec<K>) {
        let Some(slot) = self.main.back() else {
            return;
        };
        let entry = self.arena.get_mut(slot);
        if entry.freq > 0 {
            entry.freq -= 1;
            self.main.unlink(&mut self.arena, slot);
            self.main.push_front(&mut self.arena, slot);
        } else {
            victims.push(self.forget(slot));
        }
    }

    fn trim_ghost(&mut self) {
        while self.ghost.bytes() > self.ghost_bytes_max || self.ghost.len() > self.ghost_entries_max
        {
            let Some(slot) = self.ghost.back() else {
                return;
            };
            self.forget(slot);
        }
    }
}

impl<K: Clone + Eq + Hash> EvictionPolicy<K> for S3Fifo<K> {
    fn name(&self) -> &'static str {
        "s3fifo"
    }

    fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn resident_bytes(&self) -> u64 {
        self.small.bytes() + self.main.bytes()
    }

    fn len(&self) -> usize {
        self.small.len() + self.main.len()
    }

    fn contains(&self, key: &K) -> bool {
        self.index
            .get(key)
            .is_some_and(|&slot| self.arena.get(slot).tag != GHOST)
    }

    fn insert_into(&mut self, key: K, size_bytes: u64, victims: &mut Vec<K>) {
        match self.index.get(&key).copied() {
            Some(slot) if size_bytes > self.capacity_bytes => {
                // Can never fit: forget it, resident or ghost, and reject.
                self.forget(slot);
                victims.push(key);
            }
            Some(slot) => {
                let tag = self.arena.get(slot).tag;
                if tag == GHOST {
                    // Came back soon after probation dropped it: it has
                    // proven itself, skip probation.
                    self.ghost.unlink(&mut self.arena, slot);
                    let entry = self.arena.get_mut(slot);
                    entry.tag = MAIN;
                    entry.freq = 0;
                    entry.size_bytes = size_bytes;
                    self.main.push_front(&mut self.arena, slot);
                } else {
                    // Stored again while resident: new size, counts as a read.
                    let mut queue = *self.queue_mut(tag);
                    queue.resize(&mut self.arena, slot, size_bytes);
                    *self.queue_mut(tag) = queue;
                    let entry = self.arena.get_mut(slot);
                    entry.freq = (entry.freq + 1).min(FREQ_MAX);
                }
                self.evict_to_capacity(victims);
            }
            None if size_bytes > self.capacity_bytes => victims.push(key),
            None => {
                let slot = self.arena.alloc(key.clone(), size_bytes, SMALL);
                self.index.insert(key, slot);
                self.small.push_front(&mut self.arena, slot);
                self.evict_to_capacity(victims);
            }
        }
    }

    fn insert_resident(&mut self, key: K, size_bytes: u64) -> Vec<K> {
        let mut victims = Vec::new();
        match self.index.get(&key).copied() {
            None if size_bytes <= self.capacity_bytes => {
                // Straight into main, read count unknown (0): what stood
                // across a restart was worth keeping, and main's FIFO order is
                // the load order (oldest first).
                let slot = self.arena.alloc(key.clone(), size_bytes, MAIN);
                self.index.insert(key, slot);
                self.main.push_front(&mut self.arena, slot);
                self.evict_to_capacity(&mut victims);
            }
            _ => self.insert_into(key, size_bytes, &mut victims),
        }
        victims
    }

    fn on_hit(&mut self, key: &K) -> bool {
        let Some(&slot) = self.index.get(key) else {
            return false;
        };
        let entry = self.arena.get_mut(slot);
        if entry.tag == GHOST {
            return false;
        }
        entry.freq = (entry.freq + 1).min(FREQ_MAX);
        true
    }

    fn remove(&mut self, key: &K) -> bool {
        // A ghost key stays: it is history, not data.
        match self.index.get(key).copied() {
            Some(slot) if self.arena.get(slot).tag != GHOST => {
                self.forget(slot);
                true
            }
            _ => false,
        }
    }
}
