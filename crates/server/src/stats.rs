//! Connection counters of one server, readable from anywhere.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused_over_limit: AtomicU64,
    pub(crate) refused_per_address: AtomicU64,
    pub(crate) shed_idle: AtomicU64,
    pub(crate) first_request_timeouts: AtomicU64,
    pub(crate) bad_host: AtomicU64,
    pub(crate) idle_closed: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    pub(crate) handler_panics: AtomicU64,
    pub(crate) active: AtomicU64,
    /// Requests from head to the end (or abandonment) of their response.
    pub(crate) requests_in_flight: AtomicU64,
    /// Finished requests by status class: 1xx … 5xx.
    pub(crate) requests_by_class: [AtomicU64; 5],
    /// Response body bytes handed to connections.
    pub(crate) response_body_bytes: AtomicU64,
    /// Responses whose body did not go out in full (aborted, client gone).
    pub(crate) responses_incomplete: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub(crate) tls_handshake_failures: AtomicU64,
}

/// A cheap, cloneable handle on a server's counters. Counters only grow,
/// except `active`, the connections open right now.
#[derive(Clone, Debug, Default)]
pub struct ServerStats {
    pub(crate) counters: Arc<Counters>,
}

/// The counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStatsSnapshot {
    /// Connections accepted and served (refused ones excluded).
    pub connections_accepted: u64,
    /// Connections closed right after accept because `connections_max`
    /// were already open.
    pub connections_refused_over_limit: u64,
    /// Connections closed right after accept because their address
    /// already held `connections_per_address_max`.
    pub connections_refused_per_address: u64,
    /// Idle connections closed to make room near `connections_max`.
    pub connections_shed_idle: u64,
    /// Connections closed because no request arrived within
    /// `header_read_timeout_ms` of accept.
    pub connections_first_request_timeout: u64,
    /// Requests answered 400 for a missing, repeated or invalid `Host`.
    pub requests_bad_host: u64,
    /// Connections closed by the idle watchdog.
    pub connections_idle_closed: u64,
    /// Errors from `accept` itself (EMFILE, ENFILE, ...).
    pub accept_errors: u64,
    /// Handler invocations that panicked (each answered 500).
    pub handler_panics: u64,
    /// Connections open now.
    pub connections_active: u64,
    /// Requests whose response has not ended yet.
    pub requests_in_flight: u64,
    /// Finished requests by status class (index 0: 1xx … 4: 5xx).
    pub requests_by_class: [u64; 5],
    /// Response body bytes handed to connections.
    pub response_body_bytes: u64,
    /// Responses whose body did not go out in full.
    pub responses_incomplete: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: u64,
}

impl ServerStats {
    pub fn connections_accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    pub fn connections_refused_over_limit(&self) -> u64 {
        self.counters.refused_over_limit.load(Ordering::Relaxed)
    }

    pub fn connections_refused_per_address(&self) -> u64 {
        self.counters.refused_per_address.load(Ordering::Relaxed)
    }

    pub fn connections_shed_idle(&self) -> u64 {
        self.counters.shed_idle.load(Ordering::Relaxed)
    }

    pub fn connections_first_request_timeout(&self) -> u64 {
        self.counters.first_request_timeouts.load(Ordering::Relaxed)
    }

    pub fn requests_bad_host(&self) -> u64 {
        self.counters.bad_host.load(Ordering::Relaxed)
    }

    pub fn connections_idle_closed(&self) -> u64 {
        self.counters.idle_closed.load(Ordering::Relaxed)
    }

    pub fn accept_errors(&self) -> u64 {
        self.counters.accept_errors.load(Ordering::Relaxed)
    }

    pub fn handler_panics(&self) -> u64 {
        self.counters.handler_panics.load(Ordering::Relaxed)
    }

    pub fn connections_active(&self) -> u64 {
        self.counters.active.load(Ordering::Relaxed)
    }

    pub fn requests_in_flight(&self) -> u64 {
        self.counters.requests_in_flight.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> ServerStatsSnapshot {
        ServerStatsSnapshot {
            connections_accepted: self.connections_accepted(),
            connections_refused_over_limit: self.connections_refused_over_limit(),
            connections_refused_per_address: self.connections_refused_per_address(),
            connections_shed_idle: self.connections_shed_idle(),
            connections_first_request_timeout: self.connections_first_request_timeout(),
            requests_bad_host: self.requests_bad_host(),
            connections_idle_closed: self.connections_idle_closed(),
            accept_errors: self.accept_errors(),
            handler_panics: self.handler_panics(),
            connections_active: self.connections_active(),
            requests_in_flight: self.requests_in_flight(),
            requests_by_class: std::array::from_fn(|i| {
                self.counters.requests_by_class[i].load(Ordering::Relaxed)
            }),
            response_body_bytes: self.counters.response_body_bytes.load(Ordering::Relaxed),
            responses_incomplete: self.counters.responses_incomplete.load(Ordering::Relaxed),
            tls_handshake_failures: self.counters.tls_handshake_failures.load(Ordering::Relaxed),
        }
    }
}

/// Counts one open connection for as long as it lives.
pub(crate) struct ActiveGuard {
    counters: Arc<Counters>,
}

impl ActiveGuard {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        counters.active.fetch_add(1, Ordering::Relaxed);
        Self { counters }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}
