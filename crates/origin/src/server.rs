//! Running an origin: bind, serve until shutdown, then drain.
//!
//! Besides files, the origin answers `GET /livez`, `/readyz` (503 while
//! draining) and `/metrics` (Prometheus): those three root paths are the
//! server's own.

use crate::config::{OriginConfig, OriginError};
use crate::handler::Origin;
use shoal_server::{ConnInfo, Lifecycle, Server, ServerStats};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// An origin bound to its port, not yet serving. Binding first lets a
/// caller learn the port (`listen = 127.0.0.1:0`) before serving.
pub struct OriginServer {
    server: Server,
    origin: Arc<Origin>,
    local_addr: SocketAddr,
    access_log: Option<Arc<shoal_server::AccessLog>>,
    tls_addr: Option<SocketAddr>,
    tls_identity: Option<Arc<shoal_server::tls::TlsIdentity>>,
}

impl OriginServer {
    /// Checks the configuration, resolves the root and binds the listener.
    pub async fn bind(config: OriginConfig) -> Result<Self, OriginError> {
        let origin = Arc::new(Origin::new(&config)?);
        let (listener, local_addr) = shoal_server::bind(config.listen).await?;
        let access_log = shoal_server::AccessLog::start(&config.access_log)
            .map_err(|e| OriginError::Config(e.to_string()))?;
        let mut server = Server::new(listener, config.limits.clone());
        if let Some(log) = &access_log {
            server = server.with_observer(log.observer());
        }
        let tls = shoal_server::tls::BoundTls::bind(&config.tls)
            .await
            .map_err(|e| OriginError::Config(e.to_string()))?;
        let (tls_addr, tls_identity) = match tls {
            Some(tls) => {
                let out = (Some(tls.local_addr), Some(tls.identity.clone()));
                server = server.with_tls(tls.listener, tls.identity);
                out
            }
            None => (None, None),
        };
        Ok(Self {
            server,
            origin,
            local_addr,
            access_log,
            tls_addr,
            tls_identity,
        })
    }

    /// The HTTPS address, when `[tls]` sets one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The TLS identity (reloaded on SIGHUP), when `[tls]` sets one.
    pub fn tls_identity(&self) -> Option<Arc<shoal_server::tls::TlsIdentity>> {
        self.tls_identity.clone()
    }

    /// Ends a drain at once when `stop` resolves (a second SIGTERM).
    pub fn with_force_stop(mut self, stop: impl Future<Output = ()> + Send + 'static) -> Self {
        self.server = self.server.with_force_stop(stop);
        self
    }

    /// Starting, ready or draining (what `/readyz` says).
    pub fn lifecycle(&self) -> Lifecycle {
        self.server.lifecycle()
    }

    /// The access log, when one is configured (reopened on SIGHUP).
    pub fn access_log(&self) -> Option<&Arc<shoal_server::AccessLog>> {
        self.access_log.as_ref()
    }

    /// The address really bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connection counters.
    pub fn stats(&self) -> ServerStats {
        self.server.stats()
    }

    /// The request handler, to embed the origin in another server.
    pub fn origin(&self) -> Arc<Origin> {
        self.origin.clone()
    }

    /// Serves until `shutdown` resolves, then drains connections (see
    /// [`Server::serve`]: `/readyz` turns 503 first; bounded by
    /// `limits.shutdown_grace_ms`).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let origin = self.origin;
        let lifecycle: Lifecycle = self.server.lifecycle();
        lifecycle.set_ready();
        let stats = self.server.stats();
        let started_unix_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let access_log = self.access_log.clone();
        tracing::info!(
            "origin serving {} on http://{}",
            origin.root().display(),
            self.local_addr
        );
        let handler = move |request: http::Request<hyper::body::Incoming>, conn: ConnInfo| {
            let origin = origin.clone();
            let lifecycle = lifecycle.clone();
            let stats = stats.clone();
            let access_log = access_log.clone();
            async move {
                if matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
                    match request.uri().path() {
                        "/livez" => return shoal_server::livez(),
                        "/readyz" => return lifecycle.readyz(None),
                        "/metrics" => {
                            let mut page = shoal_server::metrics::MetricsPage::new();
                            shoal_server::metrics::write_common(
                                &mut page,
                                "origin",
                                lifecycle.phase(),
                                started_unix_s,
                                &stats.snapshot(),
                            );
                            if let Some(log) = &access_log {
                                shoal_server::metrics::write_access_log(&mut page, log);
                            }
                            return page.into_response();
                        }
                        _ => {}
                    }
                }
                let method = request.method().clone();
                let path = request.uri().path().to_owned();
                let response = origin.handle(request).await;
                tracing::debug!(conn = conn.id, peer = %conn.peer_addr, "{method} {path} → {}", response.status().as_u16());
                response
            }
        };
        self.server.serve(handler, shutdown).await;
    }
}

/// Binds and serves `config` until `shutdown` resolves.
pub async fn run(
    config: OriginConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), OriginError> {
    OriginServer::bind(config).await?.serve(shutdown).await;
    Ok(())
}
