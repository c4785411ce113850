//! A role's phase as a load balancer sees it, and the two health answers
//! that report it.
//!
//! ```text
//! Starting ──set_ready──▶ Ready ──begin_drain──▶ Draining
//!    └──────────────────begin_drain─────────────────┘
//! ```
//!
//! - `GET /livez` is `200` while the process answers at all: a failing
//!   liveness check means "restart me".
//! - `GET /readyz` is `200` only in `Ready` and only when the role has no
//!   reason of its own to refuse (a selector with no cache in view); else
//!   `503` with the reason in one line, so a load balancer stops sending
//!   new clients while in-flight transfers finish.
//!
//! [`crate::Server`] moves a [`Lifecycle`] it was given to `Draining` when
//! its shutdown future resolves, then keeps accepting for
//! [`crate::ServerLimits::drain_delay_ms`] so that health checkers see the
//! `503` before the port closes.

use crate::body::{full, Body};
use http::{header, Response, StatusCode};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Where a role is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Bound, but not ready for clients yet (joining its mesh, catching up).
    Starting,
    /// Taking new clients.
    Ready,
    /// Shutting down: finishing what is in flight, refusing to be chosen.
    Draining,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }
}

/// The shared phase of one role; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle(Arc<AtomicU8>);

impl Lifecycle {
    /// A role that is starting.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.0.load(Ordering::Relaxed))
    }

    /// Starting → Ready; a draining role stays draining.
    pub fn set_ready(&self) {
        let _ = self
            .0
            .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Moves to Draining; returns whether this call did it (the first).
    pub fn begin_drain(&self) -> bool {
        self.0.swap(2, Ordering::Relaxed) != 2
    }

    pub fn is_draining(&self) -> bool {
        self.phase() == Phase::Draining
    }

    /// The answer to `GET /readyz`: `200 ready` only when ready and the
    /// role has no `refusal` of its own.
    pub fn readyz(&self, refusal: Option<String>) -> Response<Body> {
        match (self.phase(), refusal) {
            (Phase::Ready, None) => plain(StatusCode::OK, "ready\n".into()),
            (Phase::Ready, Some(why)) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
            (Phase::Starting, why) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: starting{}\n",
                    why.map(|w| format!(" ({w})")).unwrap_or_default()
                ),
            ),
            (Phase::Draining, _) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: draining (finishing transfers in flight, then stopping)\n".into(),
            ),
        }
    }
}

/// The answer to `GET /livez`: the process answers, whatever its phase.
pub fn livez() -> Response<Body> {
    plain(StatusCode::OK, "alive\n".into())
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward() {
        let life = Lifecycle::new();
        assert_eq!(life.phase(), Phase::Starting);
        assert_eq!(life.readyz(None).status(), 503);
        life.set_ready();
        assert_eq!(life.readyz(None).status(), 200);
        assert_eq!(life.readyz(Some("no cache in view".into())).status(), 503);
        assert!(life.begin_drain());
        assert!(!life.begin_drain());
        life.set_ready();
        assert_eq!(life.phase(), Phase::Draining);
        assert_eq!(life.readyz(None).status(), 503);
        assert_eq!(livez().status(), 200);
    }
}
