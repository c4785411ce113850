//! One request and its response as the server saw them, recorded when the
//! response body ends (or is abandoned), for access logs and metrics.
//!
//! The server wraps every response body in a [`TrackedBody`]: it counts the
//! body bytes that went out and, when it is dropped, counts the request by
//! status class and hands an [`Exchange`] to the server's observer (the
//! access log). A request is "in flight" from its head until then, which
//! is what a drain waits for.

use crate::body::Body;
use crate::serve::ConnInfo;
use crate::stats::Counters;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

/// Longest request target kept for a record (longer ones are cut, marked
/// with `…`).
pub const TARGET_LEN_MAX_BYTES: usize = 2048;
/// Longest `Referer`, `User-Agent` or `Host` kept for a record.
pub const FIELD_LEN_MAX_BYTES: usize = 512;

/// How a response body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte went out.
    Complete,
    /// The server ended it with an error (an upstream failed mid-body).
    Aborted,
    /// The client went away (or the connection was dropped) before the end.
    ClientGone,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::Aborted => "aborted",
            Outcome::ClientGone => "client_gone",
        }
    }
}

/// What a role may attach to a response (as an `http` extension, never
/// sent) for its access-log line: a cache says how it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeNote(pub &'static str);

/// One finished request.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub conn: ConnInfo,
    pub method: http::Method,
    /// Path and query as received, at most [`TARGET_LEN_MAX_BYTES`].
    pub target: String,
    pub version: http::Version,
    pub host: Option<String>,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    pub status: u16,
    /// Body bytes handed to the connection (headers not counted).
    pub body_bytes_sent: u64,
    pub outcome: Outcome,
    /// When the request head was read.
    pub started: SystemTime,
    /// From the request head to the end of the response body.
    pub duration: Duration,
    /// The role's note, if it attached one.
    pub note: Option<&'static str>,
}

/// Receives every finished exchange (on the thread that dropped the body:
/// must not block).
pub type Observer = Arc<dyn Fn(Exchange) + Send + Sync>;

/// Counts one request in flight for as long as it lives: dropped with the
/// response body, or with the handler's future when that is dropped first
/// (an HTTP/2 reset, a connection closed while the handler waits).
pub(crate) struct InFlight(Arc<Counters>);

impl InFlight {
    pub(crate) fn start(counters: &Arc<Counters>) -> Self {
        counters.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        Self(counters.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The request half of an exchange, taken before the handler runs.
pub(crate) struct RequestFacts {
    conn: ConnInfo,
    method: http::Method,
    target: String,
    version: http::Version,
    host: Option<String>,
    referer: Option<String>,
    user_agent: Option<String>,
    started: SystemTime,
    clock: Instant,
    _in_flight: InFlight,
}

impl RequestFacts {
    pub(crate) fn of<B>(
        request: &http::Request<B>,
        conn: ConnInfo,
        counters: &Arc<Counters>,
    ) -> Self {
        let header = |name: http::header::HeaderName| {
            request
                .headers()
                .get(name)
                .map(|v| bounded(&String::from_utf8_lossy(v.as_bytes()), FIELD_LEN_MAX_BYTES))
        };
        let target = request
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        Self {
            conn,
            method: request.method().clone(),
            target: bounded(target, TARGET_LEN_MAX_BYTES),
            version: request.version(),
            host: header(http::header::HOST).or_else(|| request.uri().host().map(str::to_string)),
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
            started: SystemTime::now(),
            clock: Instant::now(),
            _in_flight: InFlight::start(counters),
        }
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A response body that records its exchange when it is dropped.
pub(crate) struct TrackedBody {
    inner: Body,
    record: Option<Pending>,
    sent: u64,
    ended: Option<Outcome>,
    /// The announced length, when exact: hyper stops polling once that
    /// many bytes went out, without asking for the end.
    length: Option<u64>,
}

struct Pending {
    facts: RequestFacts,
    status: u16,
    note: Option<&'static str>,
    counters: Arc<Counters>,
    observer: Option<Observer>,
}

impl TrackedBody {
    /// Wraps `response`'s body; counts the request in flight until the
    /// body is dropped.
    pub(crate) fn wrap(
        response: http::Response<Body>,
        facts: RequestFacts,
        counters: Arc<Counters>,
        observer: Option<Observer>,
    ) -> http::Response<TrackedBody> {
        let status = response.status().as_u16();
        let note = response.extensions().get::<ExchangeNote>().map(|n| n.0);
        // What hyper sends in full without polling for the end: nothing
        // for HEAD, else the announced length.
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let head = facts.method == http::Method::HEAD;
        response.map(|inner| TrackedBody {
            length: if head {
                Some(0)
            } else {
                inner.size_hint().exact().or(declared)
            },
            inner,
            record: Some(Pending {
                facts,
                status,
                note,
                counters,
                observer,
            }),
            sent: 0,
            ended: None,
        })
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.ended = Some(Outcome::Aborted),
            Poll::Ready(None) => self.ended = Some(Outcome::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        let Some(pending) = self.record.take() else {
            return;
        };
        let outcome = match self.ended {
            Some(outcome) => outcome,
            // hyper does not poll a body that says it is empty (HEAD,
            // 304, an empty `full`).
            None if self.inner.is_end_stream() || self.length == Some(self.sent) => {
                Outcome::Complete
            }
            None => Outcome::ClientGone,
        };
        let counters = &pending.counters;
        counters.requests_by_class[status_class_index(pending.status)]
            .fetch_add(1, Ordering::Relaxed);
        counters
            .response_body_bytes
            .fetch_add(self.sent, Ordering::Relaxed);
        if outcome != Outcome::Complete {
            counters
                .responses_incomplete
                .fetch_add(1, Ordering::Relaxed);
        }
        if let Some(observer) = &pending.observer {
            let facts = pending.facts;
            observer(Exchange {
                conn: facts.conn,
                method: facts.method,
                target: facts.target,
                version: facts.version,
                host: facts.host,
                referer: facts.referer,
                user_agent: facts.user_agent,
                status: pending.status,
                body_bytes_sent: self.sent,
                outcome,
                started: facts.started,
                duration: facts.clock.elapsed(),
                note: pending.note,
            });
        }
    }
}

/// `1xx` → 0 … `5xx` → 4 (anything else counts as 5xx).
pub(crate) fn status_class_index(status: u16) -> usize {
    match status / 100 {
        1..=5 => usize::from(status / 100 - 1),
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut_on_a_character_boundary() {
        assert_eq!(bounded("abc", 8), "abc");
        let cut = bounded(&"é".repeat(10), 8);
        assert!(cut.len() <= 8, "{cut}");
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class_index(200), 1);
        assert_eq!(status_class_index(101), 0);
        assert_eq!(status_class_index(599), 4);
        assert_eq!(status_class_index(404), 3);
        assert_eq!(status_class_index(999), 4);
    }
}
