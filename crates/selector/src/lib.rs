//! shoal-selector: the control plane that answers "which caches, and how
//! much from each?" for every request.
//!
//! A selector joins the cache mesh's gossip as an observer (it is never a
//! member: never a shield, holder or source), reads each cache's region,
//! spare egress, health, price and object summary, and plans each request
//! with the pure planner of `shoal-select`. It keeps no state of its own
//! beyond soft, short-lived caches (object lookups, and the rate it planned
//! on each cache in the last seconds), so several can run side by side
//! behind DNS.
//!
//! - [`config`]: the selector's settings and the delivery services
//!   (host or path prefix → committed bitrate, headroom, origin), validated
//!   at start-up with errors that name the setting;
//! - [`services`]: which delivery service a request belongs to (pure);
//! - [`decide`]: from a mesh snapshot, a client zone and what is known of
//!   the object to a plan with URLs, shares and reasons (pure);
//! - [`lookup`]: what a path is (id, size) from its shield, and how much of
//!   it each holder has, with bounded caches and timeouts;
//! - [`affinity`]: a client that keeps asking keeps the version it was
//!   first sent (soft, bounded);
//! - [`api`]: the HTTP endpoints (`/plan`, `/explain`, redirect with
//!   `Link: rel=duplicate`, `/livez`, `/readyz`);
//! - `metrics`: the `/metrics` page and the per-service decision tally;
//! - [`dashboard`]: the live dashboard at `/dashboard` (the fleet sampled
//!   into a bounded history; rates from differences of samples).

pub mod affinity;
pub mod api;
pub mod config;
pub mod dashboard;
pub mod decide;
pub mod lookup;
pub(crate) mod metrics;
pub mod services;

pub use api::{BoundSelector, SelectorError};
pub use config::{DeliveryService, SelectorConfig, SelectorMesh};
