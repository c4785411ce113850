//! shoal-http: HTTP semantics (RFC 9110, RFC 9111) as pure functions.
//!
//! Both the origin server and the edge cache answer the same questions: which
//! bytes does this `Range` header ask for, do the preconditions hold, may this
//! response be stored and for how long, is this request path safe to map onto
//! a file. This crate answers them without I/O, clocks or tokio: every input
//! (header bytes, object size, `now`) is an argument and every answer is a
//! value, so the same code runs in servers, tests, fuzzers and simulators.
//!
//! Every parser here bounds its input with a named limit, returns a typed
//! error and never panics, whatever bytes a client or a peer sends.
//!
//! | module            | question                                            |
//! |-------------------|-----------------------------------------------------|
//! | [`range`]         | `Range` header → byte spans, or 416                 |
//! | [`conditional`]   | `If-*` headers → 412, 304, or proceed (and If-Range)|
//! | [`content_range`] | `Content-Range` parsing and formatting              |
//! | [`multipart`]     | `multipart/byteranges` framing for streaming        |
//! | [`cache_control`] | shared-cache storability and freshness lifetime     |
//! | [`freshness`]     | age; may a stored response answer this request now  |
//! | [`vary`]          | `Vary` fields and the secondary key of a request    |
//! | [`path`]          | request path → safe, normalized object path         |
//! | [`date`]          | HTTP-date parsing and formatting                    |
//! | [`host`]          | `Host` lines → one valid host, or 400               |
//! | [`forward`]       | hop-by-hop fields removed, `Via` added, at a proxy  |
//!
//! # Serving a GET
//!
//! ```
//! use http::{header, HeaderMap, HeaderValue};
//! use shoal_core::ByteSpan;
//! use shoal_http::{
//!     evaluate_preconditions, format_content_range, select_ranges, ConditionalHeaders,
//!     EntityTag, EntityValidators, Precondition, RangeResolution, RequestPath,
//! };
//!
//! let path = RequestPath::parse("/videos/big%20buck.mp4").expect("safe path");
//! assert_eq!(path.as_str(), "/videos/big buck.mp4");
//!
//! let mut request = HeaderMap::new();
//! request.insert(header::RANGE, HeaderValue::from_static("bytes=0-99"));
//! request.insert(header::IF_RANGE, HeaderValue::from_static("\"v1\""));
//!
//! let current = EntityValidators {
//!     etag: Some(EntityTag::strong("v1").expect("valid tag")),
//!     last_modified_unix_s: Some(784_111_777),
//! };
//! let object_size = 1_000;
//! let conditions = ConditionalHeaders::from_headers(&request);
//! let Precondition::Proceed { range_allowed } = evaluate_preconditions(true, &conditions, &current)
//! else {
//!     unreachable!("no If-Match / If-None-Match here");
//! };
//! let range = request.get(header::RANGE).map(|v| v.as_bytes());
//! match select_ranges(range, range_allowed, object_size) {
//!     RangeResolution::Single(span) => {
//!         assert_eq!(span, ByteSpan::new(0, 100).expect("span"));
//!         let value = format_content_range(span, object_size).expect("span inside object");
//!         assert_eq!(value, "bytes 0-99/1000"); // 206 Partial Content
//!     }
//!     other => unreachable!("{other:?}"),
//! }
//! ```

pub mod cache_control;
pub mod conditional;
pub mod content_range;
pub mod date;
pub mod forward;
pub mod freshness;
pub mod host;
pub mod multipart;
pub mod path;
pub mod range;
pub mod vary;

mod syntax;

pub use cache_control::{
    freshness_lifetime_for_headers, freshness_lifetime_s, is_heuristically_cacheable, is_storable,
    may_store_authorized, CacheControl, Expires, RequestCacheControl,
};
pub use conditional::{
    evaluate_preconditions, parse_etag_lines, parse_etag_list, ConditionalHeaders, EntityTag,
    EntityTagError, EntityValidators, EtagList, IfRange, Precondition,
};
pub use content_range::{
    format_content_range, format_unsatisfied, parse_content_range, ContentRange, ContentRangeError,
    ContentRangeHeader,
};
pub use date::DateError;
pub use host::{check_host_lines, parse_host, Host, HostError};
pub use multipart::{boundary_from_seed, MultipartError, MultipartPlan, Segment};
pub use path::{PathError, RequestPath};
pub use range::{
    parse_range, resolve_ranges, select_ranges, RangeError, RangeHeader, RangeResolution, RangeSet,
    RangeSpec,
};
