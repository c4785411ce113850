//! Talking to the origin: HEAD, manifests, piece-aligned range fetches.
//!
//! Every response is parsed into typed values here, at the edge; the rest of
//! the cache never looks at raw origin headers. Failures are classified so the
//! server can answer 502 (the origin misbehaved or is unreachable) or 504 (it
//! was too slow), and so nothing from a failed exchange is ever stored.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use shoal_core::ByteSpan;
pub use shoal_proto::body::{check_range_response, BodyError, RangeBody, RangeError};
use shoal_proto::Cause;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct OriginClientConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080` or `http://host/prefix`.
    pub base_url: String,
    pub connect_timeout_ms: u64,
    /// Longest wait for response headers, and for each body chunk.
    pub read_timeout_ms: u64,
    /// Manifests larger than this are refused.
    pub manifest_bytes_max: u64,
    /// Certificates (PEM) trusted for an `https://` origin besides the
    /// system's roots: a private CA.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Why talking to the origin failed.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("origin unreachable")]
    Unreachable(#[source] Cause),
    #[error("origin timed out after {0} ms")]
    Timeout(u64),
    #[error("origin answered {0}")]
    Status(StatusCode),
    #[error("origin response is unusable: {0}")]
    Protocol(String),
    /// The client for the origin could not be set up (its TLS roots, a
    /// CA file): the operator's to fix.
    #[error("cannot set up the origin client: {0}")]
    Setup(String),
}

impl From<BodyError> for OriginError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::Stalled(ms) => OriginError::Timeout(ms),
            read @ BodyError::Read(_) => OriginError::Unreachable(Arc::new(read)),
        }
    }
}

impl From<RangeError> for OriginError {
    fn from(error: RangeError) -> Self {
        match error {
            RangeError::Status(status) => OriginError::Status(status),
            RangeError::Mismatch(why) => OriginError::Protocol(why),
        }
    }
}

impl OriginError {
    /// The status a client should get for this failure.
    pub fn client_status(&self) -> StatusCode {
        match self {
            OriginError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            OriginError::Status(s) if *s == StatusCode::NOT_FOUND || *s == StatusCode::GONE => *s,
            OriginError::Status(s) if *s == StatusCode::FORBIDDEN => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// What a HEAD (or conditional HEAD) told us about the object: any
/// status; `size` is its `Content-Length` if it sent one.
#[derive(Clone, Debug)]
pub struct OriginHead {
    pub status: StatusCode,
    pub size: Option<u64>,
    pub headers: HeaderMap,
}

impl OriginHead {
    /// A `200` with a length: the one shape the piece path serves.
    pub fn is_whole_file(&self) -> bool {
        self.status == StatusCode::OK && self.size.is_some()
    }
}

/// A request to pass on to the origin as it is (see [`OriginClient::forward`]).
pub struct Forward {
    pub method: http::Method,
    /// Path and query, percent-encoded as the client sent them.
    pub path_and_query: String,
    /// End-to-end request headers (hop-by-hop ones already removed).
    pub headers: HeaderMap,
    /// The request body, streamed, and its progress; `None` when it has
    /// none.
    pub body: Option<(reqwest::Body, Arc<UploadProgress>)>,
}

/// How far a streamed request body has gone: an upload may take as long
/// as it keeps moving; only a pause longer than the read timeout (or a
/// response that does not come within it of the body's end) fails it.
#[derive(Debug)]
pub struct UploadProgress {
    started: std::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Default for UploadProgress {
    fn default() -> Self {
        Self {
            started: std::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl UploadProgress {
    /// A chunk went out.
    pub fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since the last chunk (or the start).
    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

pub struct OriginClient {
    client: reqwest::Client,
    config: OriginClientConfig,
}

/// What a (conditional) fetch of a small document found.
pub enum SmallDocument {
    /// 404, 410 or 403: there is none (for us).
    Missing,
    /// 304: the validators we sent still match.
    NotModified,
    Found(Bytes, HeaderMap),
}

impl OriginClient {
    pub fn new(config: OriginClientConfig) -> Result<Self, OriginError> {
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                OriginError::Setup(format!("cannot read the CA file {}: {e}", path.display()))
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                OriginError::Setup(format!("the CA file {} is not PEM: {e}", path.display()))
            })?;
            if certificates.is_empty() {
                return Err(OriginError::Setup(format!(
                    "the CA file {} holds no certificate",
                    path.display()
                )));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .use_rustls_tls()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(Duration::from_millis(shoal_proto::POOL_IDLE_MS))
            // Ranges must arrive as the origin sent them: no transparent
            // decompression (not compiled in anyway) and no redirects.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OriginError::Setup(shoal_proto::Chain(&e).to_string()))?;
        Ok(Self { client, config })
    }

    pub fn config(&self) -> &OriginClientConfig {
        &self.config
    }

    pub fn url_for(&self, uri_path: &str) -> String {
        format!("{}{}", self.config.base_url.trim_end_matches('/'), uri_path)
    }

    fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.config.read_timeout_ms)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, OriginError> {
        self.send_within(request, self.read_timeout()).await
    }

    async fn send_within(
        &self,
        request: reqwest::RequestBuilder,
        wait: Duration,
    ) -> Result<reqwest::Response, OriginError> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        match tokio::time::timeout(wait, request.send()).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if error.is_timeout() => Err(OriginError::Timeout(wait_ms)),
            Ok(Err(error)) => Err(OriginError::Unreachable(Arc::new(error))),
            Err(_) => Err(OriginError::Timeout(wait_ms)),
        }
    }

    /// [`Self::send`] for a request whose body is streamed: the timeout
    /// counts from the body's last chunk, not from the start.
    async fn send_uploading(
        &self,
        request: reqwest::RequestBuilder,
        progress: &UploadProgress,
    ) -> Result<reqwest::Response, OriginError> {
        let limit = self.read_timeout();
        let send = request.send();
        tokio::pin!(send);
        loop {
            let idle = progress.idle();
            if idle >= limit {
                return Err(OriginError::Timeout(self.config.read_timeout_ms));
            }
            match tokio::time::timeout(limit - idle, &mut send).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(error)) if error.is_timeout() => {
                    return Err(OriginError::Timeout(self.config.read_timeout_ms))
                }
                Ok(Err(error)) => return Err(OriginError::Unreachable(Arc::new(error))),
                // Look at the progress again.
                Err(_) => continue,
            }
        }
    }

    /// HEAD the object, optionally conditional on validators we hold.
    /// Any status is an answer: the resolver decides what it means.
    pub async fn head(
        &self,
        uri_path: &str,
        conditional: &HeaderMap,
    ) -> Result<OriginHead, OriginError> {
        let request = self
            .client
            .head(self.url_for(uri_path))
            .headers(conditional.clone());
        let response = self.send(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let size = if status == StatusCode::OK {
            shoal_proto::body::content_length(&headers)
        } else {
            None
        };
        Ok(OriginHead {
            status,
            size,
            headers,
        })
    }

    /// Fetches a small document (a manifest) in full, optionally
    /// conditional on validators we hold.
    pub async fn get_small(
        &self,
        uri_path: &str,
        conditional: &HeaderMap,
    ) -> Result<SmallDocument, OriginError> {
        let request = self
            .client
            .get(self.url_for(uri_path))
            .headers(conditional.clone());
        let response = self.send(request).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND
            || status == StatusCode::GONE
            || status == StatusCode::FORBIDDEN
        {
            return Ok(SmallDocument::Missing);
        }
        if status == StatusCode::NOT_MODIFIED {
            return Ok(SmallDocument::NotModified);
        }
        if status != StatusCode::OK {
            return Err(OriginError::Status(status));
        }
        let headers = response.headers().clone();
        let limit = self.config.manifest_bytes_max;
        if let Ok(length) = content_length(&headers) {
            if length > limit {
                return Err(OriginError::Protocol(format!(
                    "manifest is {length} bytes, limit is {limit}"
                )));
            }
        }
        let mut body = RangeBody::new(response, self.read_timeout());
        let mut out = Vec::new();
        while let Some(chunk) = body.chunk().await? {
            if out.len() as u64 + chunk.len() as u64 > limit {
                return Err(OriginError::Protocol(format!(
                    "manifest exceeds {limit} bytes"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(SmallDocument::Found(Bytes::from(out), headers))
    }

    /// Starts a range fetch of `span` of an object of `object_size` bytes
    /// and checks the response really is that range.
    pub async fn get_range(
        &self,
        uri_path: &str,
        span: ByteSpan,
        object_size: u64,
    ) -> Result<RangeBody, OriginError> {
        let Some(last) = span.last() else {
            return Err(OriginError::Protocol("empty range requested".into()));
        };
        let request = self
            .client
            .get(self.url_for(uri_path))
            .header(
                http::header::RANGE,
                format!("bytes={}-{}", span.start(), last),
            )
            // Identity only: a range of a compressed representation is not
            // a range of the object.
            .header(http::header::ACCEPT_ENCODING, "identity");
        let response = self.send(request).await?;
        Ok(check_range_response(
            response,
            span,
            object_size,
            self.read_timeout(),
        )?)
    }

    /// Passes a request on to the origin as it is: any method, the
    /// client's end-to-end headers, its body streamed. The response comes
    /// back whatever its status, its body read with the per-chunk timeout.
    pub async fn forward(
        &self,
        forward: Forward,
    ) -> Result<(StatusCode, HeaderMap, RangeBody), OriginError> {
        let base_url = self.config.base_url.clone();
        self.forward_to(&base_url, forward).await
    }

    /// [`Self::forward`] to another upstream than the origin: a shield
    /// cache asked as if it were the origin.
    pub async fn forward_to(
        &self,
        base_url: &str,
        forward: Forward,
    ) -> Result<(StatusCode, HeaderMap, RangeBody), OriginError> {
        self.forward_within(base_url, forward, self.read_timeout())
            .await
    }

    /// [`Self::forward_to`] waiting at most `wait` for the answer's head
    /// (a shield may itself wait for the origin).
    pub async fn forward_within(
        &self,
        base_url: &str,
        forward: Forward,
        wait: Duration,
    ) -> Result<(StatusCode, HeaderMap, RangeBody), OriginError> {
        let url = format!(
            "{}{}",
            base_url.trim_end_matches('/'),
            forward.path_and_query
        );
        let request = self
            .client
            .request(forward.method, url)
            .headers(forward.headers);
        let response = match forward.body {
            None => self.send_within(request, wait).await?,
            Some((body, progress)) => self.send_uploading(request.body(body), &progress).await?,
        };
        let status = response.status();
        let mut headers = response.headers().clone();
        // A redirect to the upstream's own address would send the client
        // around the cache: it becomes relative to the client's host.
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let local = headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| shoal_http::forward::upstream_reference_as_local(v, base_url))
                .and_then(|v| HeaderValue::from_str(&v).ok());
            if let Some(local) = local {
                headers.insert(name, local);
            }
        }
        Ok((
            status,
            headers,
            RangeBody::new(response, self.read_timeout()),
        ))
    }
}

fn content_length(headers: &HeaderMap) -> Result<u64, OriginError> {
    shoal_proto::body::content_length(headers)
        .ok_or_else(|| OriginError::Protocol("origin did not report Content-Length".into()))
}
