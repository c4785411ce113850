//! shoal-http (placeholder).
