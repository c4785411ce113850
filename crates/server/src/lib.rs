//! shoal-server: the HTTP server plumbing shared by the origin and the edge
//! cache.
//!
//! One listening port speaks HTTP/1.1 and cleartext HTTP/2 with prior
//! knowledge (h2c), chosen per connection from the first bytes. Every
//! connection is bounded:
//!
//! - **header read timeout** (HTTP/1): a request head must arrive in full
//!   within [`ServerLimits::header_read_timeout_ms`]; on a keep-alive
//!   connection the clock also runs while waiting for the next request;
//! - **idle timeout**: a connection that neither reads nor writes a byte for
//!   [`ServerLimits::idle_timeout_ms`] is closed, which defeats slow-loris
//!   clients, clients that stop reading, and forgotten keep-alive sockets;
//! - **first request**: a connection that has not sent a whole request
//!   head within [`ServerLimits::header_read_timeout_ms`] of `accept` is
//!   closed, so silent sockets cannot hold slots;
//! - **connection count**: at most
//!   [`ServerLimits::connections_per_address_max`] per client address;
//!   near [`ServerLimits::connections_max`] idle connections are closed to
//!   make room, and beyond it new connections are closed right after
//!   `accept`;
//! - **`Host`**: an HTTP/1.1 request without exactly one valid `Host` gets
//!   `400` (RFC 9112 §3.2);
//! - **header size**: [`ServerLimits::header_bytes_max`] (hyper answers 431
//!   or 400 itself on HTTP/1; HTTP/2 advertises it as
//!   `SETTINGS_MAX_HEADER_LIST_SIZE`).
//!
//! The handler is a plain async function of the request and a [`ConnInfo`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), shoal_server::ServerError> {
//! use shoal_server::{bind, full, serve, ServerLimits};
//! let (listener, addr) = bind("127.0.0.1:0").await?;
//! println!("listening on {addr}");
//! serve(
//!     listener,
//!     ServerLimits::default(),
//!     |_req, _conn| async { http::Response::new(full("hello")) },
//!     std::future::pending::<()>(),
//! )
//! .await;
//! # Ok(()) }
//! ```
//!
//! A panicking handler answers 500 on that request; it never takes the
//! server down. Accept errors (EMFILE and friends) are logged and retried
//! after a short back-off.

pub mod access_log;
mod admission;
mod body;
pub mod exchange;
mod io;
pub mod lifecycle;
mod limits;
pub mod metrics;
pub mod notify;
mod serve;
mod stats;
pub mod tls;

pub use access_log::{AccessLog, AccessLogConfig, AccessLogFormat};
pub use body::{channel_body, empty, full, Body, BodySender};
pub use exchange::{Exchange, ExchangeNote, Observer, Outcome};
pub use io::Egress;
pub use lifecycle::{livez, Lifecycle, Phase};
pub use limits::{ServerLimits, H1_BUF_BYTES_MIN};
pub use serve::{bind, serve, ConnInfo, ForceStop, Server, ServerError};
pub use stats::{ServerStats, ServerStatsSnapshot};
