//! The first GET of a path this cache knows nothing about: one origin
//! request that both answers the client and tells which path the object
//! takes.
//!
//! The client's GET goes on (to the path's shield in a mesh, else to the
//! origin) with a probe range added for the first S bytes, S being
//! `small_object_bytes_max` (`bytes=0-0` when it is 0: every file with a
//! length takes the piece path):
//!
//! - a `206` whose complete length is at least S is a file for the piece
//!   path: the part is dropped (at most S bytes) and its fields, made into
//!   the head of the whole file, install the version — as a `HEAD` would
//!   have, which is therefore not sent;
//! - a `206` of a smaller file holds the whole representation: it is that
//!   representation (a `200`), stored whole when it may be;
//! - a `200` (the origin ignores ranges here: a page, a dynamic answer)
//!   and every other status are the answer to the client's own request,
//!   stored whole by RFC 9111's rules or passed through;
//! - a `416` (an empty file) or a `206` the cache cannot read is asked for
//!   again without the range.
//!
//! So a page, a redirect or an error costs the origin exactly one request,
//! as it would without a cache; a large file costs what it did with a
//! `HEAD` first. A large file the piece path may not keep (`no-store`,
//! over `object_bytes_max`) costs a second request, and its path is then
//! passed through without a probe for [`PASS_VERDICT_MS`]. Concurrent
//! first GETs of one key wait for the first.

use crate::origin_client::OriginHead;
use crate::proxy::{self, ForwardBody, PassReason};
use crate::resolve::Resolved;
use crate::serve::CacheService;
use http::{header, HeaderValue, Request, Response, StatusCode};
use shoal_http::content_range::{parse_content_range, ContentRangeHeader};
use shoal_http::path::RequestPath;
use shoal_server::Body;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a path found not to be for the piece path is passed through
/// without a probe: short, so a republished file is soon taken up.
pub const PASS_VERDICT_MS: u64 = 10_000;
/// Paths whose verdict is remembered (older ones are forgotten first).
const PASS_VERDICTS_MAX: usize = 4_096;

/// Paths recently found not to be for the piece path, and when.
#[derive(Default)]
pub(crate) struct PassVerdicts(Mutex<HashMap<String, Instant>>);

impl PassVerdicts {
    fn note(&self, path: &str) {
        let mut verdicts = lock(&self.0);
        if verdicts.len() >= PASS_VERDICTS_MAX {
            let window = Duration::from_millis(PASS_VERDICT_MS);
            verdicts.retain(|_, at| at.elapsed() < window);
            if verdicts.len() >= PASS_VERDICTS_MAX {
                verdicts.clear();
            }
        }
        verdicts.insert(path.to_string(), Instant::now());
    }

    fn holds(&self, path: &str) -> bool {
        let mut verdicts = lock(&self.0);
        match verdicts.get(path) {
            Some(at) if at.elapsed() < Duration::from_millis(PASS_VERDICT_MS) => true,
            Some(_) => {
                verdicts.remove(path);
                false
            }
            None => false,
        }
    }

    /// Forgets every verdict (a purge: what was purged is probed afresh).
    pub(crate) fn clear(&self) {
        lock(&self.0).clear();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the first contact decided.
pub(crate) enum FirstContact<B> {
    /// The client has its answer (from the origin, stored whole or not).
    Answered(Response<Body>),
    /// The path is a file for the piece path (its version installed, or
    /// for the shield to describe): serve the request from pieces.
    PiecePath(Request<B>),
}

impl CacheService {
    /// Sends a client's GET of an unknown path on with the probe range and
    /// decides from the answer (see the module doc).
    pub(crate) async fn first_contact<B: ForwardBody>(
        self: &Arc<Self>,
        request: Request<B>,
        path: &RequestPath,
        key: String,
        target: String,
        client_ip: Option<std::net::IpAddr>,
    ) -> FirstContact<B> {
        let turn = self.responses.turn(&key).await;
        // Another request may have settled the path while this one waited.
        if self.resolver.local_entry(path).is_some() {
            return FirstContact::PiecePath(request);
        }
        if turn.is_none() {
            // The first probe is slow (the origin is): the path lock of
            // the piece path collapses what waits now.
            return FirstContact::PiecePath(request);
        }
        if self.pass_verdicts.holds(path.as_str()) {
            drop(turn);
            return FirstContact::Answered(
                self.forward(request, target, client_ip, PassReason::Response)
                    .await,
            );
        }
        if self.responses.has(&key) {
            drop(turn);
            return FirstContact::Answered(
                self.respond_whole(request, key, target, client_ip, PassReason::Response)
                    .await,
            );
        }
        let request_unix_s = shoal_core::now_unix_s();
        let client_headers = request.headers().clone();
        let mut headers = proxy::request_headers(&client_headers, request.version(), client_ip);
        let small_bytes_max = self.resolver.small_object_bytes_max;
        let probe_last = small_bytes_max.saturating_sub(1);
        headers.insert(
            header::RANGE,
            HeaderValue::from_str(&format!("bytes=0-{probe_last}"))
                .unwrap_or(HeaderValue::from_static("bytes=0-0")),
        );
        let (mut status, mut origin_headers, body) =
            match self.get_upstream(&target, headers, &client_headers).await {
                Ok(parts) => parts,
                Err(response) => return FirstContact::Answered(response),
            };
        if status == StatusCode::PARTIAL_CONTENT {
            let range = origin_headers
                .get(header::CONTENT_RANGE)
                .and_then(|v| parse_content_range(v.as_bytes()).ok());
            let complete = match range {
                Some(ContentRangeHeader::Range(range)) if range.span().start() == 0 => {
                    Some((range.span().len(), range.complete_length()))
                }
                _ => None,
            };
            match complete {
                Some((part, length)) if part == length && length < small_bytes_max => {
                    // The whole representation: its own `200`.
                    status = StatusCode::OK;
                    origin_headers.remove(header::CONTENT_RANGE);
                    origin_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
                }
                Some((part, length)) => {
                    // The part is dropped unread, but the origin sent it.
                    drop(body);
                    self.stats.probe_bytes.fetch_add(part, Ordering::Relaxed);
                    // The others wait until the version is installed, then
                    // find it.
                    let decided = self
                        .piece_path_from_probe(
                            path,
                            &target,
                            &client_headers,
                            length,
                            origin_headers,
                        )
                        .await;
                    drop(turn);
                    return match decided {
                        Some(()) => FirstContact::PiecePath(request),
                        None => FirstContact::Answered(
                            self.forward(request, target, client_ip, PassReason::Response)
                                .await,
                        ),
                    };
                }
                None => {
                    drop(body);
                    drop(turn);
                    return FirstContact::Answered(
                        self.forward(request, target, client_ip, PassReason::Response)
                            .await,
                    );
                }
            }
        } else if status == StatusCode::RANGE_NOT_SATISFIABLE {
            drop(body);
            drop(turn);
            return FirstContact::Answered(
                self.respond_whole(request, key, target, client_ip, PassReason::Response)
                    .await,
            );
        }
        self.stats
            .pass_through_requests
            .fetch_add(1, Ordering::Relaxed);
        FirstContact::Answered(self.store_and_answer(
            Some(&request),
            &client_headers,
            key,
            request_unix_s,
            status,
            origin_headers,
            body,
            turn,
        ))
    }

    /// A probe showed a file of `length` bytes: install its version from
    /// the probe's fields (or, below a shield, let the shield describe it)
    /// for the request to be served from pieces. `None`: the piece path may
    /// not keep it, so the request is to be passed through.
    async fn piece_path_from_probe(
        self: &Arc<Self>,
        path: &RequestPath,
        target: &str,
        client_headers: &http::HeaderMap,
        length: u64,
        mut headers: http::HeaderMap,
    ) -> Option<()> {
        if self.tier_shield(target).is_some() {
            // The shield answered: the version is the shield's to describe
            // (asked now, so the requests waiting find it). An error is
            // left for the piece path to report.
            return match self.resolver.resolve(path).await {
                Ok(Resolved::PassThrough) => None,
                Ok(Resolved::Cached(_)) | Err(_) => Some(()),
            };
        }
        // The piece path fetches ranges without the client's fields: an
        // answer shaped by them (a content coding, credentials, a cookie)
        // may not be the file those fetches get. The resolver asks for
        // that itself (a HEAD). (`Vary` alone does not change the bytes:
        // the piece path keeps one variant's fields, docs/conformance.md.)
        let shaped_by_client = headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
            || client_headers.contains_key(header::AUTHORIZATION)
            || client_headers.contains_key(header::COOKIE);
        if shaped_by_client {
            return match self.resolver.resolve(path).await {
                Ok(Resolved::PassThrough) => None,
                Ok(Resolved::Cached(_)) | Err(_) => Some(()),
            };
        }
        headers.remove(header::CONTENT_RANGE);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        let head = OriginHead {
            status: StatusCode::OK,
            size: Some(length),
            headers,
        };
        match self
            .resolver
            .install_probed(path, head, client_headers)
            .await
        {
            Ok(Resolved::Cached(_)) => Some(()),
            // Not for the piece path after all (its directives, its size).
            Ok(Resolved::PassThrough) => {
                self.pass_verdicts.note(path.as_str());
                None
            }
            Err(error) => {
                tracing::warn!(path = %path.as_str(), error = %shoal_proto::Chain(&error), "could not take on the version the origin described: passing the request through");
                None
            }
        }
    }
}
