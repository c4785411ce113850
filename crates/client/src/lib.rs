//! shoal-client: download one object from several caches at once.
//!
//! - [`schedule`]: which piece to ask which source for — a state machine
//!   without I/O (shares follow measured speed, sticky stripes, stall and
//!   degradation detection, endgame), driven by tokio here and by a fluid
//!   simulator in its tests.

pub mod schedule;
