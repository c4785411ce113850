//! Configured bounds of a server. Every field carries its unit in its name.

use std::time::Duration;

/// The smallest read buffer hyper's HTTP/1 connection accepts (it panics
/// below this); [`ServerLimits::header_bytes_max`] is raised to it for
/// HTTP/1.
pub const H1_BUF_BYTES_MIN: usize = 8192;

/// Limits applied to every connection of a server.
///
/// Deserializes from a config table; missing fields take their defaults.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
    /// The first request head must arrive in full within this time,
    /// counted from `accept`: a connection that sends nothing is closed
    /// then (HTTP/1 and HTTP/2). HTTP/1: each later request head must
    /// arrive within this time of its first byte. 0 disables it (not
    /// recommended).
    pub header_read_timeout_ms: u64,
    /// A connection that has neither read nor written a byte for this long
    /// is closed, whatever its state: a half-sent request head, a client
    /// that stopped reading a response, an idle keep-alive or h2
    /// connection. A handler that needs longer than this to produce its
    /// first byte loses its connection too. 0 disables it.
    pub idle_timeout_ms: u64,
    /// Open connections at most. Beyond it a new connection is closed right
    /// after `accept`, counted in [`crate::ServerStats`] and logged (rate
    /// limited).
    pub connections_max: u64,
    /// Open connections from one client address at most (0: no limit).
    /// Beyond it a new connection from that address is closed right after
    /// `accept`. From 90 % of `connections_max`, each new connection also
    /// closes the longest-idle connection that is not in a request, so
    /// idle and silent connections cannot lock clients out.
    pub connections_per_address_max: u64,
    /// Largest request head accepted. HTTP/1: this is hyper's read buffer
    /// size (`max_buf_size`), which cannot go below
    /// [`H1_BUF_BYTES_MIN`] (8192), so smaller values act as 8192; a larger
    /// head gets 431 (or 400) from hyper. HTTP/2: advertised as
    /// `SETTINGS_MAX_HEADER_LIST_SIZE` (RFC 9113 size accounting: names +
    /// values + 32 bytes per field).
    pub header_bytes_max: u64,
    /// HTTP/2: concurrent streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// On shutdown, after [`Self::drain_delay_ms`], transfers in flight get
    /// this long to finish before their connections are dropped. The
    /// default (15 min) lets a multi-gigabyte download at ~10 MB/s end;
    /// a second SIGTERM or Ctrl-C stops at once.
    pub shutdown_grace_ms: u64,
    /// On shutdown, the server first says it is draining (`/readyz`
    /// answers 503, the mesh hears it) and keeps taking new connections
    /// this long, so load balancers and selectors move clients away
    /// before the port closes. 0: close the port at once.
    pub drain_delay_ms: u64,
    /// Egress cap of the whole server (all connections together), in bytes
    /// per second, enforced by a token bucket; 0 means no cap. Lets tests
    /// and benchmarks model servers of different sizes on one machine.
    pub egress_bytes_per_s: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            connections_max: 10_000,
            connections_per_address_max: 1_000,
            header_bytes_max: 16 * 1024,
            h2_max_concurrent_streams: 256,
            shutdown_grace_ms: 900_000,
            drain_delay_ms: 5_000,
            egress_bytes_per_s: 0,
        }
    }
}

impl ServerLimits {
    pub(crate) fn header_read_timeout(&self) -> Option<Duration> {
        (self.header_read_timeout_ms > 0)
            .then(|| Duration::from_millis(self.header_read_timeout_ms))
    }

    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_ms > 0).then(|| Duration::from_millis(self.idle_timeout_ms))
    }

    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    pub(crate) fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }

    /// hyper's HTTP/1 read buffer size for these limits.
    pub(crate) fn h1_buf_bytes(&self) -> usize {
        usize::try_from(self.header_bytes_max)
            .unwrap_or(usize::MAX)
            .max(H1_BUF_BYTES_MIN)
    }

    /// The HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE` for these limits.
    pub(crate) fn h2_header_list_bytes(&self) -> u32 {
        u32::try_from(self.header_bytes_max).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let limits = ServerLimits::default();
        assert_eq!(limits.header_read_timeout_ms, 10_000);
        assert_eq!(limits.idle_timeout_ms, 60_000);
        assert_eq!(limits.connections_max, 10_000);
        assert_eq!(limits.header_bytes_max, 16 * 1024);
        assert_eq!(limits.h2_max_concurrent_streams, 256);
    }

    #[test]
    fn small_header_limit_is_raised_for_h1() {
        let limits = ServerLimits {
            header_bytes_max: 100,
            ..ServerLimits::default()
        };
        assert_eq!(limits.h1_buf_bytes(), H1_BUF_BYTES_MIN);
        assert_eq!(limits.h2_header_list_bytes(), 100);
    }

    #[test]
    fn zero_disables_timeouts() {
        let limits = ServerLimits {
            header_read_timeout_ms: 0,
            idle_timeout_ms: 0,
            ..ServerLimits::default()
        };
        assert_eq!(limits.header_read_timeout(), None);
        assert_eq!(limits.idle_timeout(), None);
    }
}
