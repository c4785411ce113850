//! Rendezvous (highest-random-weight) hashing: which nodes an object maps
//! to, in order of preference.
//!
//! Every node computes the same ranking from the same membership, with no
//! coordination; when a node leaves, only the objects it ranked first move
//! (to their second choice). The mesh uses the first healthy node of an
//! object's ranking as its shield, the one cache that goes to the origin.

use crate::manifest::ObjectId;

/// The weight of `node` for `object`: the first 8 bytes of
/// BLAKE3(object id ‖ node name), as a big-endian integer.
pub fn score(object: &ObjectId, node: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"shoal rendezvous v1\0");
    hasher.update(&object.0);
    hasher.update(node.as_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// `nodes` ordered by preference for `object` (highest score first; equal
/// scores, which need a hash collision, fall back to the name).
pub fn rank<'a, N: AsRef<str>>(object: &ObjectId, nodes: &'a [N]) -> Vec<&'a N> {
    let mut scored: Vec<(u64, &'a N)> = nodes
        .iter()
        .map(|n| (score(object, n.as_ref()), n))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.as_ref().cmp(b.1.as_ref())));
    scored.into_iter().map(|(_, n)| n).collect()
}

/// The most preferred node for `object`, if there is any node at all.
pub fn first<'a, N: AsRef<str>>(object: &ObjectId, nodes: &'a [N]) -> Option<&'a N> {
    nodes.iter().max_by(|a, b| {
        score(object, a.as_ref())
            .cmp(&score(object, b.as_ref()))
            .then_with(|| b.as_ref().cmp(a.as_ref()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> ObjectId {
        ObjectId(*blake3::hash(&[n]).as_bytes())
    }

    #[test]
    fn order_does_not_depend_on_input_order() {
        let a = ["cache-a", "cache-b", "cache-c", "cache-d"];
        let b = ["cache-d", "cache-b", "cache-a", "cache-c"];
        for n in 0..50 {
            let ra: Vec<&str> = rank(&id(n), &a).into_iter().copied().collect();
            let rb: Vec<&str> = rank(&id(n), &b).into_iter().copied().collect();
            assert_eq!(ra, rb);
            assert_eq!(first(&id(n), &a).copied(), Some(ra[0]));
        }
        assert_eq!(first::<&str>(&id(0), &[]), None);
    }

    #[test]
    fn objects_spread_over_nodes() {
        let nodes = ["a", "b", "c", "d"];
        let mut counts = [0usize; 4];
        for n in 0..=255u8 {
            let chosen = first(&id(n), &nodes).unwrap();
            counts[nodes.iter().position(|x| x == chosen).unwrap()] += 1;
        }
        // 256 objects over 4 nodes: each gets a fair share (binomial, 64 ± 3σ).
        assert!(counts.iter().all(|&c| (40..=90).contains(&c)), "{counts:?}");
    }

    proptest! {
        /// Removing a node moves only the objects it ranked first, and they
        /// move to their second choice.
        #[test]
        fn removal_moves_only_the_removed_nodes_objects(object in any::<[u8; 32]>(), removed in 0usize..5) {
            let object = ObjectId(object);
            let nodes = ["n0", "n1", "n2", "n3", "n4"];
            let before = rank(&object, &nodes);
            let remaining: Vec<&str> = nodes.iter().copied().filter(|n| *n != nodes[removed]).collect();
            let after = first(&object, &remaining).unwrap();
            if *before[0] == nodes[removed] {
                prop_assert_eq!(*after, *before[1]);
            } else {
                prop_assert_eq!(*after, *before[0]);
            }
        }
    }
}
