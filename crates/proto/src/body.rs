//! Reading a body from another role (an origin or a sibling cache) with a
//! per-chunk timeout, and checking that a range response is the range that
//! was asked for. The errors say what went wrong, not whose fault it is:
//! the caller knows whom it asked and classifies them.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use shoal_core::ByteSpan;
use std::time::Duration;

/// A body that could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body read failed")]
    Read(#[source] reqwest::Error),
    #[error("no body bytes for {0} ms")]
    Stalled(u64),
}

/// A response that is not the range asked for.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("{0}")]
    Mismatch(String),
}

/// A streaming range response whose status and Content-Range were checked.
pub struct RangeBody {
    response: reqwest::Response,
    read_timeout: Duration,
    pub headers: HeaderMap,
}

impl RangeBody {
    pub fn new(response: reqwest::Response, read_timeout: Duration) -> Self {
        let headers = response.headers().clone();
        Self {
            response,
            read_timeout,
            headers,
        }
    }

    /// The next chunk of the body; `Ok(None)` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        match tokio::time::timeout(self.read_timeout, self.response.chunk()).await {
            Ok(Ok(chunk)) => Ok(chunk),
            Ok(Err(error)) => Err(BodyError::Read(error)),
            Err(_) => Err(BodyError::Stalled(self.read_timeout.as_millis() as u64)),
        }
    }
}

/// Checks that a response really is `span` of an object of `object_size`
/// bytes (206 with the matching Content-Range, or 200 with everything when
/// everything was asked for) and wraps its body.
pub fn check_range_response(
    response: reqwest::Response,
    span: ByteSpan,
    object_size: u64,
    read_timeout: Duration,
) -> Result<RangeBody, RangeError> {
    let Some(last) = span.last() else {
        return Err(RangeError::Mismatch("empty range requested".into()));
    };
    let status = response.status();
    let headers = response.headers().clone();
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let value = headers
                .get(http::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| RangeError::Mismatch("206 without Content-Range".into()))?;
            let parsed = shoal_http::content_range::parse_content_range(value.as_bytes())
                .map_err(|e| RangeError::Mismatch(format!("bad Content-Range `{value}`: {e}")))?;
            let shoal_http::content_range::ContentRangeHeader::Range(range) = parsed else {
                return Err(RangeError::Mismatch(format!(
                    "206 with unsatisfied Content-Range `{value}`"
                )));
            };
            if range.span() != span || range.complete_length() != object_size {
                return Err(RangeError::Mismatch(format!(
                    "asked for bytes {}-{}/{object_size}, got `{value}` (object changed?)",
                    span.start(),
                    last
                )));
            }
        }
        // An origin without range support sends everything: usable only
        // when we wanted the whole object anyway.
        StatusCode::OK if span.start() == 0 && span.end() == object_size => {
            if content_length(&headers) != Some(object_size) {
                return Err(RangeError::Mismatch("object size changed".into()));
            }
        }
        StatusCode::OK => return Err(RangeError::Mismatch("the Range header was ignored".into())),
        other => return Err(RangeError::Status(other)),
    }
    Ok(RangeBody {
        response,
        read_timeout,
        headers,
    })
}

/// The Content-Length of a response, if it gave a valid one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}
