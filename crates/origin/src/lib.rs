//! shoal-origin (placeholder).
