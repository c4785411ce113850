//! Half-open byte spans `[start, end)` within an object.

/// A non-empty or empty half-open byte span `[start, end)`.
///
/// Constructed only through [`ByteSpan::new`], which guarantees
/// `start <= end`, so `len()` can never underflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ByteSpan {
    start: u64,
    end: u64,
}

impl ByteSpan {
    /// Returns `None` when `start > end`.
    pub fn new(start: u64, end: u64) -> Option<Self> {
        (start <= end).then_some(Self { start, end })
    }

    /// The span `[start, start + len)`, or `None` on overflow.
    pub fn with_len(start: u64, len: u64) -> Option<Self> {
        start.checked_add(len).map(|end| Self { start, end })
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    /// Exclusive end.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Inclusive last byte, as HTTP writes it; `None` for an empty span.
    pub fn last(&self) -> Option<u64> {
        (self.end > self.start).then(|| self.end - 1)
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The overlap of two spans, `None` if they do not overlap.
    pub fn intersect(&self, other: &ByteSpan) -> Option<ByteSpan> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start < end).then_some(ByteSpan { start, end })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_rejects_reversed() {
        assert!(ByteSpan::new(5, 4).is_none());
        assert_eq!(ByteSpan::new(4, 4).map(|s| s.len()), Some(0));
        assert!(ByteSpan::with_len(u64::MAX, 1).is_none());
    }

    #[test]
    fn intersect() {
        let a = ByteSpan::new(0, 10).unwrap();
        let b = ByteSpan::new(5, 20).unwrap();
        assert_eq!(a.intersect(&b), ByteSpan::new(5, 10));
        let c = ByteSpan::new(10, 20).unwrap();
        assert_eq!(a.intersect(&c), None);
    }
}
