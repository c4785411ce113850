//! shoal-cache (placeholder).
