//! shoal-store: verified pieces on disk, an embedded index, and eviction.

pub mod eviction;
