//! shoal-mesh: caches find each other and share their state by gossip.
//!
//! Membership, failure detection and state dissemination are chitchat's
//! (scuttlebutt anti-entropy with a phi-accrual-style failure detector);
//! this crate adds what shoal needs on top:
//!
//! - [`transport`]: every datagram sealed with a MAC keyed by the cluster
//!   secret; anything else is dropped before chitchat parses it.
//! - [`view`]: a pure snapshot of live members (address, region, egress
//!   capacity and load, cost, health, object summary) and the choices made
//!   from it: the shield order of a path, the holders of an object.
//! - [`summary`]: the fixed-size Bloom filter of objects held.
//! - [`node`]: the running member that ties them together.

pub mod node;
pub mod summary;
pub mod transport;
pub mod view;

pub use node::{LocalState, MeshConfig, MeshError, MeshNode, MeshRole, ObserverState};
pub use summary::ObjectSummary;
pub use view::{shield_key, Health, Member, MeshView, SelectorNode, Traffic};
