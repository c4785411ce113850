//! An index-linked arena: the O(1) doubly linked queues under every policy.
//!
//! Entries live in one `Vec` and link to each other by slot index, so moving
//! an entry between queues, unlinking it from the middle of a queue or
//! reusing its slot never allocates and never scans. Vacant slots form a free
//! list. A [`Queue`] is only a head, a tail and two counters; the entries it
//! links carry a caller-defined `tag` naming the queue they are on, so a
//! policy can tell from a slot alone which queue to unlink it from.

/// Marks "no slot" in links.
pub(crate) const NIL: usize = usize::MAX;

/// One tracked key: a resident piece, or a ghost (remembered, not stored).
#[derive(Debug)]
pub(crate) struct Entry<K> {
    pub key: K,
    pub size_bytes: u64,
    /// Which queue of the owning policy links this entry.
    pub tag: u8,
    /// Access frequency, for policies that keep one.
    pub freq: u8,
    prev: usize,
    next: usize,
}

#[derive(Debug)]
enum Slot<K> {
    Occupied(Entry<K>),
    Vacant { next_free: usize },
}

/// Slots for entries, with a free list of vacant ones.
#[derive(Debug)]
pub(crate) struct Arena<K> {
    slots: Vec<Slot<K>>,
    free_head: usize,
}

impl<K> Arena<K> {
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            free_head: NIL,
        }
    }

    /// Stores an unlinked entry and returns its slot.
    pub fn alloc(&mut self, key: K, size_bytes: u64, tag: u8) -> usize {
        let entry = Entry {
            key,
            size_bytes,
            tag,
            freq: 0,
            prev: NIL,
            next: NIL,
        };
        if self.free_head == NIL {
            self.slots.push(Slot::Occupied(entry));
            return self.slots.len() - 1;
        }
        let slot = self.free_head;
        self.free_head = match self.slots[slot] {
            Slot::Vacant { next_free } => next_free,
            Slot::Occupied(_) => unreachable!("free list names occupied slot {slot}"),
        };
        self.slots[slot] = Slot::Occupied(entry);
        slot
    }

    /// Frees an entry's slot and hands the entry back. The entry must have
    /// been unlinked from its queue first.
    pub fn free(&mut self, slot: usize) -> Entry<K> {
        let old = std::mem::replace(
            &mut self.slots[slot],
            Slot::Vacant {
                next_free: self.free_head,
            },
        );
        self.free_head = slot;
        match old {
            Slot::Occupied(entry) => {
                debug_assert!(
                    entry.prev == NIL && entry.next == NIL,
                    "freed a linked slot"
                );
                entry
            }
            Slot::Vacant { .. } => unreachable!("double free of slot {slot}"),
        }
    }

    pub fn get(&self, slot: usize) -> &Entry<K> {
        match &self.slots[slot] {
            Slot::Occupied(entry) => entry,
            Slot::Vacant { .. } => unreachable!("read of vacant slot {slot}"),
        }
    }

    pub fn get_mut(&mut self, slot: usize) -> &mut Entry<K> {
        match &mut self.slots[slot] {
            Slot::Occupied(entry) => entry,
            Slot::Vacant { .. } => unreachable!("write to vacant slot {slot}"),
        }
    }
}

/// A doubly linked queue of arena slots. `front` is the newest end, `back`
/// the next to leave. It counts its entries and their bytes.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Queue {
    front: usize,
    back: usize,
    len: usize,
    bytes: u64,
}

impl Queue {
    pub fn new() -> Self {
        Self {
            front: NIL,
            back: NIL,
            len: 0,
            bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The slot that would leave next, if any.
    pub fn back(&self) -> Option<usize> {
        (self.back != NIL).then_some(self.back)
    }

    /// Links an unlinked slot at the newest end.
    pub fn push_front<K>(&mut self, arena: &mut Arena<K>, slot: usize) {
        let old_front = self.front;
        let entry = arena.get_mut(slot);
        debug_assert!(
            entry.prev == NIL && entry.next == NIL,
            "slot already linked"
        );
        entry.next = old_front;
        self.bytes += entry.size_bytes;
        if old_front == NIL {
            self.back = slot;
        } else {
            arena.get_mut(old_front).prev = slot;
        }
        self.front = slot;
        self.len += 1;
    }

    /// Unlinks a slot that is on this queue.
    pub fn unlink<K>(&mut self, arena: &mut Arena<K>, slot: usize) {
        let entry = arena.get_mut(slot);
        let (prev, next) = (entry.prev, entry.next);
        entry.prev = NIL;
        entry.next = NIL;
        self.bytes -= entry.size_bytes;
        if prev == NIL {
            self.front = next;
        } else {
            arena.get_mut(prev).next = next;
        }
        if next == NIL {
            self.back = prev;
        } else {
            arena.get_mut(next).prev = prev;
        }
        self.len -= 1;
    }

    /// Changes the size of a slot on this queue, keeping the byte count right.
    pub fn resize<K>(&mut self, arena: &mut Arena<K>, slot: usize, size_bytes: u64) {
        let entry = arena.get_mut(slot);
        self.bytes = self.bytes - entry.size_bytes + size_bytes;
        entry.size_bytes = size_bytes;
    }

    /// Slots from newest to oldest (for tests and diagnostics; O(len)).
    #[cfg(test)]
    pub fn iter<'a, K>(&self, arena: &'a Arena<K>) -> impl Iterator<Item = usize> + 'a {
        let mut slot = self.front;
        std::iter::from_fn(move || {
            if slot == NIL {
                return None;
            }
            let current = slot;
            slot = arena.get(slot).next;
            Some(current)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_links_and_counts() {
        let mut arena = Arena::new();
        let mut queue = Queue::new();
        let a = arena.alloc("a", 1, 0);
        let b = arena.alloc("b", 2, 0);
        let c = arena.alloc("c", 4, 0);
        for slot in [a, b, c] {
            queue.push_front(&mut arena, slot);
        }
        assert_eq!(queue.iter(&arena).collect::<Vec<_>>(), vec![c, b, a]);
        assert_eq!((queue.len(), queue.bytes(), queue.back()), (3, 7, Some(a)));

        queue.unlink(&mut arena, b);
        assert_eq!(queue.iter(&arena).collect::<Vec<_>>(), vec![c, a]);
        queue.resize(&mut arena, c, 10);
        assert_eq!(queue.bytes(), 11);

        queue.unlink(&mut arena, a);
        queue.unlink(&mut arena, c);
        assert!(queue.is_empty());
        assert_eq!((queue.bytes(), queue.back()), (0, None));

        // Freed slots are reused before the arena grows.
        assert_eq!(arena.free(b).key, "b");
        assert_eq!(arena.alloc("d", 0, 1), b);
        assert_eq!(arena.get(b).key, "d");
    }
}
