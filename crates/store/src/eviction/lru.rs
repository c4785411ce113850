//! [`Lru`]: least recently used, by bytes. The baseline the other policies
//! are measured against, and a sound choice for a small in-memory tier.

use super::arena::{Arena, Queue};
use super::EvictionPolicy;
use std::collections::HashMap;
use std::hash::Hash;

/// Evicts the least recently inserted-or-hit pieces until the budget holds.
/// Every piece is admitted if it fits in the whole budget.
#[derive(Debug)]
pub struct Lru<K> {
    capacity_bytes: u64,
    index: HashMap<K, usize>,
    arena: Arena<K>,
    /// Front: most recently used.
    queue: Queue,
}

impl<K: Clone + Eq + Hash> Lru<K> {
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            capacity_bytes,
            index: HashMap::new(),
            arena: Arena::new(),
            queue: Queue::new(),
        }
    }

    fn evict_to_capacity(&mut self, victims: &mut Vec<K>) {
        while self.queue.bytes() > self.capacity_bytes {
            let Some(slot) = self.queue.back() else {
                break;
            };
            self.queue.unlink(&mut self.arena, slot);
            let entry = self.arena.free(slot);
            self.index.remove(&entry.key);
            victims.push(entry.key);
        }
    }

    fn remove_slot(&mut self, slot: usize) -> K {
        self.queue.unlink(&mut self.arena, slot);
        let entry = self.arena.free(slot);
        self.index.remove(&entry.key);
        entry.key
    }
}

impl<K: Clone + Eq + Hash> EvictionPolicy<K> for Lru<K> {
    fn name(&self) -> &'static str {
        "lru"
    }

    fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn resident_bytes(&self) -> u64 {
        self.queue.bytes()
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    fn contains(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    fn insert_into(&mut self, key: K, size_bytes: u64, victims: &mut Vec<K>) {
        if let Some(&slot) = self.index.get(&key) {
            if size_bytes > self.capacity_bytes {
                victims.push(self.remove_slot(slot));
                return;
            }
            // Re-stored: new size, and it counts as a use.
            self.queue.unlink(&mut self.arena, slot);
            self.arena.get_mut(slot).size_bytes = size_bytes;
            self.queue.push_front(&mut self.arena, slot);
        } else {
            if size_bytes > self.capacity_bytes {
                victims.push(key);
                return;
            }
            let slot = self.arena.alloc(key.clone(), size_bytes, 0);
            self.index.insert(key, slot);
            self.queue.push_front(&mut self.arena, slot);
        }
        self.evict_to_capacity(victims);
    }

    fn insert_resident(&mut self, key: K, size_bytes: u64) -> Vec<K> {
        // Callers load oldest first, so plain insertion keeps recency order.
        self.insert(key, size_bytes)
    }

    fn on_hit(&mut self, key: &K) -> bool {
        let Some(&slot) = self.index.get(key) else {
            return false;
        };
        self.queue.unlink(&mut self.arena, slot);
        self.queue.push_front(&mut self.arena, slot);
        true
    }

    fn remove(&mut self, key: &K) -> bool {
        match self.index.get(key) {
            Some(&slot) => {
                self.remove_slot(slot);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_first() {
        let mut lru = Lru::new(30);
        assert!(lru.insert("a", 10).is_empty());
        assert!(lru.insert("b", 10).is_empty());
        assert!(lru.insert("c", 10).is_empty());
        assert!(lru.on_hit(&"a"));
        assert_eq!(lru.insert("d", 10), vec!["b"]);
        assert_eq!(lru.insert("e", 15), vec!["c", "a"]);
        assert_eq!(lru.resident_bytes(), 25);
        assert_eq!(lru.len(), 2);
        assert!(lru.contains(&"d") && lru.contains(&"e"));
    }

    #[test]
    fn reinsert_updates_size_and_recency() {
        let mut lru = Lru::new(30);
        lru.insert("a", 10);
        lru.insert("b", 10);
        assert!(lru.insert("a", 20).is_empty());
        assert_eq!(lru.resident_bytes(), 30);
        assert_eq!(lru.insert("c", 5), vec!["b"]);
        assert_eq!(lru.insert("a", 31), vec!["a"]);
        assert!(!lru.contains(&"a"));
        assert_eq!(lru.resident_bytes(), 5);
    }
}
