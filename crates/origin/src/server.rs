//! Running an origin: bind, serve until shutdown.

use crate::config::{OriginConfig, OriginError};
use crate::handler::Origin;
use shoal_server::{ConnInfo, Server, ServerStats};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// An origin bound to its port, not yet serving. Binding first lets a
/// caller learn the port (`listen = 127.0.0.1:0`) before serving.
pub struct OriginServer {
    server: Server,
    origin: Arc<Origin>,
    local_addr: SocketAddr,
}

impl OriginServer {
    /// Checks the configuration, resolves the root and binds the listener.
    pub async fn bind(config: OriginConfig) -> Result<Self, OriginError> {
        let origin = Arc::new(Origin::new(&config)?);
        let (listener, local_addr) = shoal_server::bind(config.listen).await?;
        let server = Server::new(listener, config.limits.clone());
        Ok(Self {
            server,
            origin,
            local_addr,
        })
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

    /// Serves until `shutdown` resolves, then drains connections (bounded
    /// by `limits.shutdown_grace_ms`).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let origin = self.origin;
        tracing::info!(
            "origin serving {} on http://{}",
            origin.root().display(),
            self.local_addr
        );
        let handler = move |request: http::Request<hyper::body::Incoming>, conn: ConnInfo| {
            let origin = origin.clone();
            async move {
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
