//! The accept loop and the per-connection task.
//!
//! # Connection lifecycle
//!
//! ```text
//! accept ──over connections_per_address_max, or full with nothing to shed──▶ closed at once
//!    │                                                   (counted, warned)
//!    ▼
//! serving ──no request within header_read_timeout of accept──▶ dropped (counted)
//!    │  ──idle_timeout──────────▶ dropped (counted)
//!    │  ──shed (idle, not in a request, server near its cap)──▶ dropped (counted)
//!    │  ──shutdown signal─────────▶ draining ──done / grace over / forced──▶ closed
//!    ▼
//! done (client closed, hyper error such as a header timeout or a bad head)
//! ```
//!
//! # Server drain
//!
//! ```text
//! shutdown resolves ─▶ Lifecycle = Draining (/readyz 503), still accepting
//!   ──drain_delay_ms──▶ listener closed; every connection asked to finish
//!   ──all done, or shutdown_grace_ms over, or the force-stop future──▶ return
//! ```
//!
//! The delay lets load balancers see `503` before the port goes away; the
//! grace lets a multi-gigabyte transfer in flight finish.
//!
//! Admission (per-address limits, shedding) is in [`crate::admission`].
//! Every HTTP/1.1 request must carry exactly one valid `Host` line (RFC 9112
//! §3.2); any other gets `400` before the handler sees it.
//!
//! The accept loop never ends on an accept error: connection-level errors
//! (reset, aborted) are skipped, resource errors (EMFILE, ENFILE, ENOBUFS)
//! are logged at a rate-limited warn and retried after a short back-off.

use crate::admission::{Admission, Registry, SlotHandle};
use crate::body::{full, Body};
use crate::exchange::{Observer, RequestFacts, TrackedBody};
use crate::io::{Activity, ActivityIo};
use crate::lifecycle::Lifecycle;
use crate::limits::ServerLimits;
use crate::stats::{ActiveGuard, Counters, ServerStats};
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Back-off after an accept error that is not about one connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning of each kind per this period.
const WARN_PERIOD: Duration = Duration::from_secs(1);
/// How often a drain says what it still waits for.
const DRAIN_REPORT_PERIOD: Duration = Duration::from_secs(10);

/// A future that ends a drain at once (a second Ctrl-C).
pub type ForceStop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Errors from setting a server up. Serving itself does not fail: errors on
/// one connection end that connection only.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("cannot read the listener's local address: {0}")]
    LocalAddr(io::Error),
}

/// Binds a TCP listener on `addr` (for example `127.0.0.1:0`) and returns it
/// with the address it really got (the port the OS picked for `:0`).
pub async fn bind<A>(addr: A) -> Result<(TcpListener, SocketAddr), ServerError>
where
    A: ToSocketAddrs + fmt::Display,
{
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(ServerError::LocalAddr)?;
    Ok((listener, local))
}

/// What a handler knows about the connection a request came on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Sequence number of the connection within its server, for logs.
    pub id: u64,
    pub peer_addr: SocketAddr,
    pub local_addr: SocketAddr,
    /// Came on the HTTPS listener (links made for the client keep to
    /// https).
    pub tls: bool,
}

/// A listener with its limits and counters, ready to serve.
pub struct Server {
    listener: TcpListener,
    limits: ServerLimits,
    stats: ServerStats,
    egress: Arc<crate::io::Egress>,
    lifecycle: Lifecycle,
    force_stop: Option<ForceStop>,
    observer: Option<Observer>,
    /// An HTTPS listener served beside the plain one.
    tls: Option<(TcpListener, Arc<crate::tls::TlsIdentity>)>,
}

impl Server {
    pub fn new(listener: TcpListener, limits: ServerLimits) -> Self {
        Self {
            egress: crate::io::Egress::new(limits.egress_bytes_per_s),
            listener,
            limits,
            stats: ServerStats::default(),
            lifecycle: Lifecycle::new(),
            force_stop: None,
            observer: None,
            tls: None,
        }
    }

    /// Also serves HTTPS on `listener` with `identity` (same handler,
    /// limits, counters and drain).
    pub fn with_tls(
        mut self,
        listener: TcpListener,
        identity: Arc<crate::tls::TlsIdentity>,
    ) -> Self {
        self.tls = Some((listener, identity));
        self
    }

    /// Hands every finished request to `observer` (an access log). It runs
    /// on a connection's task: it must not block.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Reports this server's phase through `lifecycle` (which the role's
    /// `/readyz` reads) instead of a lifecycle of its own.
    pub fn with_lifecycle(mut self, lifecycle: Lifecycle) -> Self {
        self.lifecycle = lifecycle;
        self
    }

    /// Ends a drain at once when `stop` resolves (connections still open
    /// are dropped): an operator's second Ctrl-C.
    pub fn with_force_stop(mut self, stop: impl Future<Output = ()> + Send + 'static) -> Self {
        self.force_stop = Some(Box::pin(stop));
        self
    }

    /// A long-running role's parts in one call: its phase, a force-stop
    /// (a second SIGTERM), its access log and its HTTPS listener.
    pub fn with_role(
        mut self,
        lifecycle: Lifecycle,
        force_stop: Option<ForceStop>,
        access_log: Option<&Arc<crate::AccessLog>>,
        tls: Option<crate::tls::BoundTls>,
    ) -> Self {
        self = self.with_lifecycle(lifecycle);
        self.force_stop = force_stop.or(self.force_stop);
        if let Some(log) = access_log {
            self = self.with_observer(log.observer());
        }
        if let Some(tls) = tls {
            self = self.with_tls(tls.listener, tls.identity);
        }
        self
    }

    /// This server's phase (shared with whoever holds a clone).
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.clone()
    }

    /// The server-wide egress cap, adjustable while it serves.
    pub fn egress(&self) -> Arc<crate::io::Egress> {
        self.egress.clone()
    }

    /// The counters of this server; the handle stays valid after `serve`
    /// returns.
    pub fn stats(&self) -> ServerStats {
        self.stats.clone()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    /// Serves until `shutdown` resolves; then drains: the lifecycle turns
    /// to draining, new connections are still taken for
    /// [`ServerLimits::drain_delay_ms`], then the listener closes, every
    /// connection is asked to finish (HTTP/1 closes after the response in
    /// flight, HTTP/2 sends GOAWAY) and the server waits at most
    /// [`ServerLimits::shutdown_grace_ms`] (or until the force-stop future)
    /// before dropping the rest.
    ///
    /// The handler is any `Fn(Request<Incoming>, ConnInfo) -> impl Future`
    /// that is `Clone + Send + Sync + 'static`; it is cloned once per
    /// request, so capture shared state in an `Arc`.
    pub async fn serve<H, Fut>(self, handler: H, shutdown: impl Future<Output = ()>)
    where
        H: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let Server {
            listener,
            limits,
            stats,
            egress,
            lifecycle,
            force_stop,
            observer,
            tls,
        } = self;
        let mut force_stop = force_stop.unwrap_or_else(|| Box::pin(std::future::pending()));
        let counters = stats.counters;
        let counters_for_drain = counters.clone();
        let limits = Arc::new(limits);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut acceptor = Acceptor {
            builder: Arc::new(connection_builder(&limits)),
            handler,
            limits: limits.clone(),
            counters,
            egress: Some(egress),
            shutdown: shutdown_rx,
            refused_warn: RateLimitedWarn::default(),
            accept_warn: RateLimitedWarn::default(),
            next_id: 0,
            registry: Arc::new(Registry::default()),
            observer,
        };
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        // Until shutdown: never; then the end of the drain delay.
        let accept_until = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(accept_until);
        let mut draining = false;

        loop {
            tokio::select! {
                biased;
                () = &mut shutdown, if !draining => {
                    draining = true;
                    lifecycle.begin_drain();
                    let delay = limits.drain_delay();
                    tracing::info!(
                        connections = tasks.len(),
                        "draining: /readyz answers 503; new connections are taken for {} ms more, \
                         then transfers in flight get up to {} s to finish",
                        delay.as_millis(),
                        limits.shutdown_grace().as_secs()
                    );
                    accept_until.as_mut().reset(Instant::now() + delay);
                }
                () = &mut accept_until => break,
                () = &mut force_stop => {
                    // (A finished future must not be polled again.)
                    force_stop = Box::pin(std::future::ready(()));
                    break;
                }
                Some(joined) = tasks.join_next() => {
                    if let Err(error) = joined {
                        if error.is_panic() {
                            tracing::error!("connection task panicked: {error}");
                        }
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer_addr)) => acceptor.admit(stream, peer_addr, None, &mut tasks),
                    Err(error) => acceptor.accept_failed(error).await,
                },
                accepted = accept_tls(&tls) => match accepted {
                    Ok((stream, peer_addr, identity)) => {
                        acceptor.admit(stream, peer_addr, Some(identity.acceptor()), &mut tasks);
                    }
                    Err(error) => acceptor.accept_failed(error).await,
                },
            }
        }

        drop(listener);
        drop(tls);
        lifecycle.begin_drain();
        drain(
            &mut tasks,
            &shutdown_tx,
            limits.shutdown_grace(),
            &counters_for_drain,
            force_stop,
        )
        .await;
    }
}

/// The accept loop's side of [`Server::serve`]: what each connection task
/// is given, and the loop's own warnings and numbering.
struct Acceptor<H> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: H,
    limits: Arc<ServerLimits>,
    counters: Arc<Counters>,
    egress: Option<Arc<crate::io::Egress>>,
    shutdown: watch::Receiver<bool>,
    refused_warn: RateLimitedWarn,
    accept_warn: RateLimitedWarn,
    next_id: u64,
    registry: Arc<Registry>,
    observer: Option<Observer>,
}

impl<H, Fut> Acceptor<H>
where
    H: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    /// Takes an accepted connection: closed at once when admission refuses
    /// it (counted, warned), else served by a task of its own in `tasks`.
    fn admit(
        &mut self,
        stream: TcpStream,
        peer_addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
        tasks: &mut JoinSet<()>,
    ) {
        let counters = &self.counters;
        let limits = &self.limits;
        let activity = Arc::new(Activity::new());
        let slot = match self.registry.admit(
            self.next_id + 1,
            peer_addr.ip(),
            activity.clone(),
            limits.connections_max,
            limits.connections_per_address_max,
        ) {
            Ok((slot, _shed)) => slot,
            Err(refusal) => {
                let why = if refusal == Admission::RefusePerAddress {
                    counters.refused_per_address.fetch_add(1, Ordering::Relaxed);
                    "its address holds connections_per_address_max"
                } else {
                    counters.refused_over_limit.fetch_add(1, Ordering::Relaxed);
                    "connections_max reached and no idle connection to close"
                };
                drop(stream);
                self.refused_warn.warn(|suppressed| {
                    tracing::warn!(
                        connections_max = limits.connections_max,
                        connections_per_address_max = limits.connections_per_address_max,
                        refused_since_last_warning = suppressed,
                        "refusing connection from {peer_addr}: {why}"
                    );
                });
                return;
            }
        };
        let local_addr = match stream.local_addr() {
            Ok(addr) => addr,
            Err(error) => {
                tracing::debug!("dropping connection from {peer_addr}: {error}");
                return;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY on connection from {peer_addr}: {error}");
        }
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        self.next_id += 1;
        let info = ConnInfo {
            id: self.next_id,
            peer_addr,
            local_addr,
            tls: tls.is_some(),
        };
        let guard = ActiveGuard::new(counters.clone());
        tasks.spawn(serve_connection(
            self.builder.clone(),
            Connection {
                stream,
                info,
                activity,
                slot,
                _active: guard,
                observer: self.observer.clone(),
                tls,
            },
            self.handler.clone(),
            limits.clone(),
            counters.clone(),
            self.egress.clone(),
            self.shutdown.clone(),
        ));
    }

    /// An accept error: one about a single connection is skipped; any
    /// other is counted, warned (rate-limited) and backed off from.
    async fn accept_failed(&mut self, error: io::Error) {
        if is_per_connection_error(&error) {
            tracing::debug!("accept: {error}");
            return;
        }
        self.counters.accept_errors.fetch_add(1, Ordering::Relaxed);
        self.accept_warn.warn(|suppressed| {
            tracing::warn!(
                errors_since_last_warning = suppressed,
                "accept failed: {error}; backing off {} ms",
                ACCEPT_BACKOFF.as_millis()
            );
        });
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// The next connection on the HTTPS listener, if there is one (else
/// never).
async fn accept_tls(
    tls: &Option<(TcpListener, Arc<crate::tls::TlsIdentity>)>,
) -> io::Result<(TcpStream, SocketAddr, &crate::tls::TlsIdentity)> {
    match tls {
        Some((listener, identity)) => {
            let (stream, peer_addr) = listener.accept().await?;
            Ok((stream, peer_addr, identity))
        }
        None => std::future::pending().await,
    }
}

/// Asks every connection in `tasks` to finish and waits for them, at most
/// `grace` or until `force_stop`; the rest are dropped. Says every
/// [`DRAIN_REPORT_PERIOD`] what it still waits for.
async fn drain(
    tasks: &mut JoinSet<()>,
    shutdown_tx: &watch::Sender<bool>,
    grace: Duration,
    counters: &Counters,
    mut force_stop: ForceStop,
) {
    // Receivers are held by the connection tasks; none left is fine.
    let _ = shutdown_tx.send(true);
    let open = tasks.len();
    if open > 0 {
        tracing::info!(
            "stopped accepting: waiting for {open} connection(s), {} request(s) in flight, at most {} s",
            counters.requests_in_flight.load(Ordering::Relaxed),
            grace.as_secs()
        );
    }
    let started = Instant::now();
    let grace = tokio::time::sleep(grace);
    tokio::pin!(grace);
    let mut report = tokio::time::interval_at(started + DRAIN_REPORT_PERIOD, DRAIN_REPORT_PERIOD);
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            _ = report.tick() => {
                let left = grace.deadline().saturating_duration_since(Instant::now());
                tracing::info!(
                    "draining: {} connection(s), {} request(s) still in flight; {} s of the grace left (send the signal again to stop now)",
                    tasks.len(),
                    counters.requests_in_flight.load(Ordering::Relaxed),
                    left.as_secs()
                );
            }
            () = &mut grace => {
                tracing::warn!("shutdown grace period over: dropping {} connection(s)", tasks.len());
                tasks.shutdown().await;
                break;
            }
            () = &mut force_stop => {
                tracing::warn!("stopping now: dropping {} connection(s)", tasks.len());
                tasks.shutdown().await;
                break;
            }
        }
    }
    if open > 0 {
        tracing::info!("drained in {} ms", started.elapsed().as_millis());
    }
}

/// Serves `listener` with `handler` until `shutdown` resolves. See
/// [`Server::serve`]; use [`Server`] directly to read its [`ServerStats`].
pub async fn serve<H, Fut>(
    listener: TcpListener,
    limits: ServerLimits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    Server::new(listener, limits).serve(handler, shutdown).await
}

fn connection_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout())
        .max_buf_size(limits.h1_buf_bytes())
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.h2_header_list_bytes());
    builder
}

/// An admitted connection and what lives as long as it does.
struct Connection {
    stream: TcpStream,
    info: ConnInfo,
    activity: Arc<Activity>,
    /// Its place in the admission table (freed on drop).
    slot: SlotHandle,
    _active: ActiveGuard,
    /// Who hears of each finished request (the access log).
    observer: Option<Observer>,
    /// Set for a connection to the HTTPS listener: the handshake to do.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Counts a running handler for as long as it runs: a connection with one
/// is never shed.
struct HandlerRunning(Arc<std::sync::atomic::AtomicU64>);

impl HandlerRunning {
    fn start(count: &Arc<std::sync::atomic::AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for HandlerRunning {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request needs exactly one valid `Host`;
/// others may omit it but never repeat it or send an invalid one.
fn check_host<B>(request: &Request<B>) -> Result<(), shoal_http::HostError> {
    let required = request.version() == http::Version::HTTP_11;
    let lines = request
        .headers()
        .get_all(http::header::HOST)
        .iter()
        .map(|v| v.as_bytes());
    shoal_http::check_host_lines(lines, required).map(|_| ())
}

async fn serve_connection<H, Fut>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    connection: Connection,
    handler: H,
    limits: Arc<ServerLimits>,
    counters: Arc<Counters>,
    egress: Option<Arc<crate::io::Egress>>,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let Connection {
        stream,
        info,
        activity,
        slot,
        _active,
        observer,
        tls,
    } = connection;
    let accepted_at = Instant::now();
    let stream = match tls {
        None => crate::tls::Stream::Plain(stream),
        Some(acceptor) => {
            // The handshake counts against the first-request deadline.
            let limit = limits
                .header_read_timeout()
                .unwrap_or(Duration::from_secs(60));
            match tokio::time::timeout_at(accepted_at + limit, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => crate::tls::Stream::Tls(Box::new(stream)),
                Ok(Err(error)) => {
                    counters
                        .tls_handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(conn = info.id, peer = %info.peer_addr, "TLS handshake failed: {error}");
                    return;
                }
                Err(_) => {
                    counters
                        .tls_handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(conn = info.id, peer = %info.peer_addr, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let io = TokioIo::new(ActivityIo::new(stream, activity.clone(), egress));
    let service_counters = counters.clone();
    let handlers_running = slot.handlers_running.clone();
    let requests_seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = requests_seen.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let handler = handler.clone();
        let counters = service_counters.clone();
        let observer = observer.clone();
        let method = request.method().clone();
        let uri = request.uri().clone();
        let running = HandlerRunning::start(&handlers_running);
        seen.store(true, Ordering::Relaxed);
        let facts = RequestFacts::of(&request, info, &counters);
        async move {
            let _running = running;
            let track = |response| {
                Ok::<_, Infallible>(TrackedBody::wrap(
                    response,
                    facts,
                    counters.clone(),
                    observer,
                ))
            };
            if let Err(error) = check_host(&request) {
                counters.bad_host.fetch_add(1, Ordering::Relaxed);
                let mut response = Response::new(full(format!("bad request: {error}\n")));
                *response.status_mut() = StatusCode::BAD_REQUEST;
                return track(response);
            }
            let response = AssertUnwindSafe(async move { handler(request, info).await })
                .catch_unwind()
                .await;
            track(match response {
                Ok(response) => response,
                Err(panic) => {
                    counters.handler_panics.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        conn = info.id,
                        "handler panicked on {method} {uri}: {}",
                        panic_message(&panic)
                    );
                    internal_error()
                }
            })
        }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    // (`connection` now names the hyper connection.)
    let idle = async {
        match limits.idle_timeout() {
            Some(limit) => activity.idle_for(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(idle);
    // The first request head is due within the header timeout of accept,
    // whether or not a byte came: silent sockets must not hold a slot.
    let first_request = async {
        match limits.header_read_timeout() {
            Some(limit) => {
                // From accept: a TLS handshake has used part of it.
                tokio::time::sleep_until(accepted_at + limit).await;
                if requests_seen.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(first_request);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    log_connection_error(&info, error.as_ref());
                }
                return;
            }
            () = &mut idle => {
                counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(conn = info.id, peer = %info.peer_addr, "closing idle connection");
                return;
            }
            () = &mut first_request => {
                counters.first_request_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(conn = info.id, peer = %info.peer_addr, "no request within the header timeout of accept");
                return;
            }
            () = slot.shed.notified(), if !draining => {
                // Gracefully: a response still streaming (its handler
                // done, its client slow) is finished, not cut.
                counters.shed_idle.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(conn = info.id, peer = %info.peer_addr, "closing an idle connection to make room");
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

fn log_connection_error(info: &ConnInfo, error: &(dyn std::error::Error + 'static)) {
    let timeout = error
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout);
    if timeout {
        tracing::debug!(conn = info.id, peer = %info.peer_addr, "request head not received in time");
    } else {
        tracing::debug!(conn = info.id, peer = %info.peer_addr, "connection ended: {error}");
    }
}

fn internal_error() -> Response<Body> {
    let mut response = Response::new(full("internal server error\n"));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "(non-text panic payload)"
    }
}

/// Errors about one incoming connection, not the listener.
fn is_per_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Lets one warning through per [`WARN_PERIOD`] and counts the ones it
/// swallowed in between.
#[derive(Default)]
struct RateLimitedWarn {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedWarn {
    fn warn(&mut self, emit: impl FnOnce(u64)) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_PERIOD)
        {
            self.suppressed += 1;
            return;
        }
        emit(self.suppressed);
        self.last = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn warnings_are_rate_limited() {
        let mut limiter = RateLimitedWarn::default();
        let mut emitted = Vec::new();
        for _ in 0..5 {
            limiter.warn(|suppressed| emitted.push(suppressed));
        }
        tokio::time::advance(WARN_PERIOD).await;
        limiter.warn(|suppressed| emitted.push(suppressed));
        assert_eq!(emitted, vec![0, 4]);
    }

    #[test]
    fn panic_messages() {
        let payload: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(panic_message(payload.as_ref()), "boom");
        let payload: Box<dyn std::any::Any + Send> = Box::new(String::from("bang"));
        assert_eq!(panic_message(payload.as_ref()), "bang");
    }
}
