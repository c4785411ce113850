//! HTTPS: a TLS listener beside the plain one (rustls, ring provider: no C
//! toolchain), with the certificate reloaded without a restart.
//!
//! `[tls]` in a role's config names the address and the PEM files. The
//! server offers ALPN `h2` and `http/1.1`. The certificate chain and key
//! are read at start (an error names the file) and again on
//! [`TlsIdentity::reload`] (SIGHUP) or when either file's modification
//! time changes (checked every [`TlsConfig::reload_check_ms`]); a reload
//! that fails (a half-written file, a key that does not match) keeps the
//! identity in use and says why in the log, so a renewal never takes a
//! cache off the air.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// `[tls]`: an HTTPS listener.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the HTTPS listener, e.g. `0.0.0.0:443` (none: no TLS).
    pub listen: Option<SocketAddr>,
    /// The certificate chain, PEM, leaf first.
    pub cert_file: Option<PathBuf>,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// How often the two files are checked for a change (0: only SIGHUP
    /// reloads them).
    pub reload_check_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            cert_file: None,
            key_file: None,
            reload_check_ms: 10_000,
        }
    }
}

/// Why TLS could not be set up; names the setting or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.listen is set: tls.cert_file and tls.key_file are needed too")]
    MissingFiles,
    #[error("tls.cert_file {path}: {why}")]
    Certificate { path: String, why: String },
    #[error("tls.key_file {path}: {why}")]
    Key { path: String, why: String },
    #[error("tls: {0}")]
    Rustls(String),
    #[error("tls.listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// An HTTPS listener bound and its identity loaded, ready for
/// [`crate::Server::with_tls`].
pub struct BoundTls {
    pub listener: tokio::net::TcpListener,
    pub local_addr: SocketAddr,
    pub identity: Arc<TlsIdentity>,
}

impl BoundTls {
    /// Loads the identity and binds `tls.listen` (`None` without it).
    pub async fn bind(config: &TlsConfig) -> Result<Option<Self>, TlsError> {
        let Some(identity) = TlsIdentity::from_config(config)? else {
            return Ok(None);
        };
        let Some(addr) = config.listen else {
            return Ok(None);
        };
        let bind_error = |source| TlsError::Bind { addr, source };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        tokio::spawn(
            identity
                .clone()
                .watch_files(Duration::from_millis(config.reload_check_ms)),
        );
        Ok(Some(Self {
            listener,
            local_addr,
            identity,
        }))
    }
}

/// The certificate in use, swapped on reload.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A listener's TLS identity: the rustls configuration and its files.
pub struct TlsIdentity {
    cert_file: PathBuf,
    key_file: PathBuf,
    resolver: Arc<Resolver>,
    config: Arc<rustls::ServerConfig>,
    /// The files' modification times when last loaded.
    loaded: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

impl TlsIdentity {
    /// Reads the files `config` names (`None` without `tls.listen`).
    pub fn from_config(config: &TlsConfig) -> Result<Option<Arc<Self>>, TlsError> {
        if config.listen.is_none() {
            return Ok(None);
        }
        let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
            return Err(TlsError::MissingFiles);
        };
        Self::load(cert_file, key_file).map(|identity| Some(Arc::new(identity)))
    }

    /// Reads `cert_file` and `key_file` into a server configuration.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read_identity(cert_file, key_file, &provider)?;
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(key))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            loaded: RwLock::new((modified(cert_file), modified(key_file))),
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            resolver,
            config: Arc::new(config),
        })
    }

    /// What accepts TLS connections with the current identity.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// Reads the files again; on success new handshakes use them, on
    /// failure the identity in use stays (and the error says why).
    pub fn reload(&self) -> Result<(), TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        let times = (modified(&self.cert_file), modified(&self.key_file));
        let key = read_identity(&self.cert_file, &self.key_file, &provider)?;
        *self.resolver.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = times;
        Ok(())
    }

    /// Reloads (logging the outcome) when either file changed since the
    /// last load; `reason` says what asked.
    pub fn reload_logged(&self, reason: &str) {
        match self.reload() {
            Ok(()) => tracing::info!(
                cert_file = %self.cert_file.display(),
                "TLS certificate reloaded ({reason})"
            ),
            Err(error) => tracing::warn!(
                "TLS certificate not reloaded ({reason}): {error}; still using the previous one"
            ),
        }
    }

    /// Checks the files every `period` and reloads when one changed.
    pub async fn watch_files(self: Arc<Self>, period: Duration) {
        if period.is_zero() {
            return;
        }
        loop {
            tokio::time::sleep(period).await;
            let now = (modified(&self.cert_file), modified(&self.key_file));
            let changed = *self.loaded.read().unwrap_or_else(|p| p.into_inner()) != now;
            if changed {
                self.reload_logged("the files changed");
                // A failed reload is not retried until they change again.
                *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = now;
            }
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The chain and key from their PEM files, checked to belong together.
fn read_identity(
    cert_file: &Path,
    key_file: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_error = |why: String| TlsError::Certificate {
        path: cert_file.display().to_string(),
        why,
    };
    let key_error = |why: String| TlsError::Key {
        path: key_file.display().to_string(),
        why,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("no CERTIFICATE block in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| key_error(e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| {
        key_error(format!(
            "does not match the certificate in {}: {e}",
            cert_file.display()
        ))
    })?;
    Ok(certified)
}

/// A connection's byte stream: plain TCP, or TLS over it.
pub(crate) enum Stream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
