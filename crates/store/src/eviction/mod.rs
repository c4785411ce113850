//! Eviction policies (being written).
