//! The transparent reverse proxy: whatever the cache does not serve from
//! its store goes to the origin as the client sent it and comes back as
//! the origin answered it.
//!
//! - **Any method**: its body streamed to the origin. A non-error answer
//!   to an unsafe method invalidates the stored version of the target path
//!   and of the paths its `Location` and `Content-Location` name (RFC 9111
//!   §4.4) here and, through a soft purge, at the path's shield (whose
//!   purge log the rest of the mesh follows).
//! - **Any status**: `1xx` interim answers stay between the origin and us;
//!   `204`, `304` and HEAD answers carry no body; every other body is
//!   streamed, whether or not its length is known.
//! - **Headers**: end-to-end fields pass both ways, hop-by-hop ones and
//!   those `Connection` lists do not (RFC 9110 §7.6.1); this hop adds
//!   itself to `Via`; the origin learns the client in `X-Forwarded-For`,
//!   `X-Forwarded-Host` and `X-Forwarded-Proto`.
//! - **Errors**: an answer the cache made up itself (the origin was
//!   unreachable, too slow) carries `x-shoal-error`; the origin's own
//!   errors come through with their bodies and without it.

use crate::fault::Fault;
use crate::origin_client::{Forward, UploadProgress};
use crate::serve::{error_response, CacheService, BODY_CHUNKS_MAX};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use shoal_http::path::RequestPath;
use shoal_server::Body;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// This hop's name in `Via`.
pub const VIA_PSEUDONYM: &str = "shoal";
/// Response header value of [`crate::serve::CACHE_STATUS_HEADER`] on a
/// response passed through from the origin.
pub const PASS: &str = "PASS";

/// Why a request is passed through, for the logs and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassReason {
    /// A method the cache does not answer from its store.
    Method,
    /// A request target the store does not key (a query, a directory).
    Target,
    /// The origin's answer is not one the cache stores (its status, its
    /// directives, an unknown length, an origin error).
    Response,
}

/// Longest an unsafe request's answer waits for the shield to hear that a
/// path it changed is stale.
pub const SHIELD_INVALIDATION_WAIT_MS: u64 = 2_000;

/// A request body the proxy can stream on to the origin.
pub trait ForwardBody:
    http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Sync
    + 'static
{
}

impl<B> ForwardBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Sync
        + 'static
{
}

/// A client's request body on its way to the origin, each chunk counted
/// as progress (see [`UploadProgress`]).
struct CountedBody<B> {
    inner: std::pin::Pin<Box<B>>,
    progress: Arc<UploadProgress>,
}

impl<B: ForwardBody> http_body::Body for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &polled {
            self.progress.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a method is safe (RFC 9110 §9.2.1): it cannot change what the
/// origin stores, so its answer invalidates nothing.
pub fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The request headers the origin gets: the client's end-to-end fields,
/// this hop in `Via`, the client in `X-Forwarded-*`. `Host` is the
/// origin's own (from its URL).
pub fn request_headers(
    client_headers: &HeaderMap,
    version: http::Version,
    client_ip: Option<std::net::IpAddr>,
) -> HeaderMap {
    let mut headers = client_headers.clone();
    shoal_http::forward::remove_hop_by_hop(&mut headers);
    // shoal's own fields are between shoal's hops, never a client's say.
    remove_shoal_fields(&mut headers);
    let host = headers.remove(header::HOST);
    // A cache asking its shield passes on the host its client named.
    let client_host = if client_headers.contains_key(shoal_proto::TIER_HEADER) {
        headers.get("x-forwarded-host").cloned().or(host)
    } else {
        host
    };
    // This hop says who the client is (below); what a client claims about
    // earlier hops in `Forwarded` is not passed on as if it were ours.
    headers.remove(header::FORWARDED);
    // The expectation was the client's of us; hyper answers it.
    headers.remove(header::EXPECT);
    // HTTP/2 clients split `Cookie` into one field per pair (RFC 9113
    // §8.2.3); an HTTP/1.1 origin expects one line, `; `-joined.
    let cookies: Vec<&[u8]> = client_headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if cookies.len() > 1 {
        if let Ok(joined) = HeaderValue::from_bytes(&cookies.join(&b"; "[..])) {
            headers.insert(header::COOKIE, joined);
        }
    }
    // RFC 9110 §7.6.2: one hop less on the way (0 was answered here).
    if let Some(hops) = headers
        .get(header::MAX_FORWARDS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
    {
        headers.insert(
            header::MAX_FORWARDS,
            HeaderValue::from(hops.saturating_sub(1)),
        );
    }
    if let Some(ip) = client_ip {
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert("x-forwarded-for", value);
        }
    }
    // What this hop saw, whatever the client claims.
    match client_host {
        Some(host) => {
            headers.insert("x-forwarded-host", host);
        }
        None => {
            headers.remove("x-forwarded-host");
        }
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    shoal_http::forward::append_via(&mut headers, version, VIA_PSEUDONYM);
    headers
}

/// The response headers the client gets: the origin's end-to-end fields
/// and this hop in `Via` (the origin spoke HTTP/1.1 to us).
pub fn response_headers(origin_headers: &HeaderMap) -> HeaderMap {
    let mut headers = origin_headers.clone();
    shoal_http::forward::remove_hop_by_hop(&mut headers);
    remove_shoal_fields(&mut headers);
    shoal_http::forward::append_via(&mut headers, http::Version::HTTP_11, VIA_PSEUDONYM);
    headers
}

/// Removes `x-shoal-*` fields from an upstream's answer: this cache's
/// own (`x-shoal-cache`, `x-shoal-error`, …) mean what it says, not what
/// an origin (or a shoal in front of another) said.
pub fn remove_shoal_fields(headers: &mut HeaderMap) {
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-shoal-"))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Whether a response to `method` with `status` carries a body.
fn has_body(method: &Method, status: StatusCode) -> bool {
    !(*method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

impl CacheService {
    /// Passes `request` on to the origin and its answer back. `target` is
    /// the path and query to ask for (percent-encoded).
    pub(crate) async fn forward<B: ForwardBody>(
        self: &Arc<Self>,
        request: Request<B>,
        target: String,
        client_ip: Option<std::net::IpAddr>,
        reason: PassReason,
    ) -> Response<Body> {
        self.stats
            .pass_through_requests
            .fetch_add(1, Ordering::Relaxed);
        let host = crate::serve::request_host(&request);
        let (parts, body) = request.into_parts();
        let method = parts.method.clone();
        let headers = request_headers(&parts.headers, parts.version, client_ip);
        let body = (!http_body::Body::is_end_stream(&body)).then(|| {
            let progress = Arc::new(UploadProgress::default());
            let counted = CountedBody {
                inner: Box::pin(body),
                progress: progress.clone(),
            };
            (reqwest::Body::wrap(counted), progress)
        });
        tracing::debug!(%method, target = %target, ?reason, "passing through to the origin");
        let forwarded = self
            .origin
            .forward(Forward {
                method: method.clone(),
                path_and_query: target.clone(),
                headers,
                body,
            })
            .await;
        let (status, origin_headers, mut origin_body) = match forwarded {
            Ok(parts) => parts,
            Err(error) => {
                tracing::warn!(%method, target = %target, error = %shoal_proto::Chain(&error), "the origin did not answer a passed-through request");
                return error_response(
                    error.client_status(),
                    Fault::Origin,
                    &format!("{}\n", shoal_proto::Chain(&error)),
                );
            }
        };
        if !is_safe(&method) && (status.is_success() || status.is_redirection()) {
            // Before the client has its answer (its next request must not
            // get what it just changed): here, and at the shield, whose
            // record this cache would otherwise adopt again — waiting for
            // the shield at most `SHIELD_INVALIDATION_WAIT_MS`.
            let invalidated = self
                .invalidate_after_unsafe(&target, host.as_ref(), &origin_headers)
                .await;
            for path in invalidated {
                let wait = std::time::Duration::from_millis(SHIELD_INVALIDATION_WAIT_MS);
                let _ = tokio::time::timeout(wait, self.invalidate_at_shield(&path)).await;
            }
        }
        let mut response = Response::new(shoal_server::empty());
        *response.status_mut() = status;
        *response.headers_mut() = response_headers(&origin_headers);
        response.headers_mut().insert(
            crate::serve::CACHE_STATUS_HEADER,
            HeaderValue::from_static(PASS),
        );
        if !has_body(&method, status) {
            return response;
        }
        let (sender, response_body) = shoal_server::channel_body(BODY_CHUNKS_MAX);
        tokio::spawn(async move {
            loop {
                match origin_body.chunk().await {
                    Ok(Some(chunk)) => {
                        if sender.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(error) => {
                        // The client sees a cut response, never a
                        // complete-looking wrong one.
                        let _ = sender
                            .send(Err(std::io::Error::other(error.to_string())))
                            .await;
                        return;
                    }
                }
            }
        });
        *response.body_mut() = response_body;
        response
    }

    /// RFC 9111 §4.4: after a non-error answer to an unsafe method, the
    /// target path and the paths `Location` and `Content-Location` name
    /// (on this host) are stale here; the piece-path versions it made
    /// stale are returned, for their shield to hear of.
    async fn invalidate_after_unsafe(
        self: &Arc<Self>,
        target: &str,
        host: Option<&HeaderValue>,
        headers: &HeaderMap,
    ) -> Vec<RequestPath> {
        let mut invalidated = Vec::new();
        let mut paths = vec![target.to_string()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
                if let Some(path) = same_origin_path(value, &self.origin.config().base_url) {
                    paths.push(path);
                }
            }
        }
        for raw in paths {
            // Whole responses stored for the exact target go at once.
            let exact = raw.split('#').next().unwrap_or_default();
            let ignored = self.key_policy.ignored(
                host.and_then(|h| h.to_str().ok()),
                exact.split('?').next().unwrap_or_default(),
            );
            let keyed = crate::serve::key_target(exact, ignored);
            self.responses
                .remove(&crate::response::cache_key(&keyed, host));
            let raw_path = raw.split(['?', '#']).next().unwrap_or_default();
            let Ok(path) = RequestPath::parse(raw_path) else {
                continue;
            };
            if self.resolver.invalidate(&path).await {
                tracing::info!(path = %path.as_str(), "stored version invalidated by an unsafe request");
                self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
                invalidated.push(path);
            }
        }
        invalidated
    }

    /// Sends a soft purge of `path` to its shield (when that is another
    /// cache): the shield logs it, and the mesh follows its log.
    async fn invalidate_at_shield(&self, path: &RequestPath) {
        let Some(mesh) = &self.mesh else { return };
        let view = mesh.node.view();
        let Some(shield) = view
            .shield(&shoal_mesh::shield_key(path.as_str()))
            .filter(|m| m.node_id != view.self_id)
            .cloned()
        else {
            return;
        };
        let event = crate::purge::PurgeEvent::new_now(
            crate::purge::PurgeTarget::Path(path.as_str().to_string()),
            true,
            mesh.self_id(),
        );
        if let Err(error) = mesh.purge(&shield, &event).await {
            tracing::warn!(path = %path.as_str(), shield = %shield.node_id, error = %shoal_proto::Chain(&error), "could not invalidate at the shield");
        }
    }
}

/// The path of `location` when it names the origin's own host (or is
/// relative); `None` for another host (RFC 9111 §4.4: only same-origin
/// URIs are invalidated).
fn same_origin_path(location: &str, base_url: &str) -> Option<String> {
    if location.starts_with('/') && !location.starts_with("//") {
        return Some(location.to_string());
    }
    let uri: http::Uri = location.parse().ok()?;
    let base: http::Uri = base_url.parse().ok()?;
    (uri.authority()? == base.authority()?).then(|| uri.path().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cookie_fields_are_joined_for_the_origin() {
        let mut client = HeaderMap::new();
        client.append(header::COOKIE, HeaderValue::from_static("a=1"));
        client.append(header::COOKIE, HeaderValue::from_static("b=2"));
        let sent = request_headers(&client, http::Version::HTTP_2, None);
        let cookies: Vec<_> = sent.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
        let mut one = HeaderMap::new();
        one.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        assert_eq!(
            request_headers(&one, http::Version::HTTP_11, None)[header::COOKIE],
            "a=1; b=2"
        );
    }

    #[test]
    fn request_headers_keep_end_to_end_fields_and_name_the_client() {
        let mut client = HeaderMap::new();
        for (name, value) in [
            ("host", "video.example"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("authorization", "Bearer t"),
            ("range", "bytes=0-1"),
            ("origin", "https://player.example"),
            ("expect", "100-continue"),
            ("x-forwarded-for", "10.0.0.1"),
        ] {
            client.append(
                http::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let ip = "192.0.2.7".parse().ok();
        let out = request_headers(&client, http::Version::HTTP_11, ip);
        assert_eq!(out.get("authorization").unwrap(), "Bearer t");
        assert_eq!(out.get("range").unwrap(), "bytes=0-1");
        assert_eq!(out.get("origin").unwrap(), "https://player.example");
        assert_eq!(out.get("x-forwarded-for").unwrap(), "10.0.0.1, 192.0.2.7");
        assert_eq!(out.get("x-forwarded-host").unwrap(), "video.example");
        let mut spoofed = client.clone();
        spoofed.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let out_spoofed = request_headers(&spoofed, http::Version::HTTP_11, ip);
        assert_eq!(out_spoofed.get("x-forwarded-proto").unwrap(), "http");
        let mut origin = HeaderMap::new();
        origin.insert("x-shoal-error", HeaderValue::from_static("origin"));
        origin.insert("x-kept", HeaderValue::from_static("1"));
        let back = response_headers(&origin);
        assert!(!back.contains_key("x-shoal-error"));
        assert!(back.contains_key("x-kept"));
        assert_eq!(out.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(out.get("via").unwrap(), "1.1 shoal");
        for gone in ["host", "connection", "x-hop", "expect"] {
            assert!(!out.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn bodies_and_safety() {
        assert!(!has_body(&Method::HEAD, StatusCode::OK));
        assert!(!has_body(&Method::GET, StatusCode::NOT_MODIFIED));
        assert!(!has_body(&Method::GET, StatusCode::NO_CONTENT));
        assert!(has_body(&Method::GET, StatusCode::NOT_FOUND));
        assert!(has_body(&Method::POST, StatusCode::MOVED_PERMANENTLY));
        assert!(is_safe(&Method::OPTIONS));
        assert!(!is_safe(&Method::POST));
        assert!(!is_safe(&Method::from_bytes(b"PURGE").unwrap()));
    }

    #[test]
    fn only_same_origin_locations_are_invalidated() {
        let base = "http://127.0.0.1:8080";
        assert_eq!(same_origin_path("/a/b", base).as_deref(), Some("/a/b"));
        assert_eq!(
            same_origin_path("http://127.0.0.1:8080/x", base).as_deref(),
            Some("/x")
        );
        assert_eq!(same_origin_path("http://evil.example/x", base), None);
        assert_eq!(same_origin_path("//evil.example/x", base), None);
    }
}
