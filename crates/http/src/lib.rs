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
//! | [`path`]          | request path → safe, normalized object path         |
//! | [`date`]          | HTTP-date parsing and formatting                    |

pub mod cache_control;
pub mod conditional;
pub mod content_range;
pub mod date;
pub mod multipart;
pub mod path;
pub mod range;

mod syntax;

pub use cache_control::{freshness_lifetime_s, is_storable, CacheControl, Expires};
pub use conditional::{
    evaluate_preconditions, parse_etag_list, ConditionalHeaders, EntityTag, EntityTagError,
    EntityValidators, EtagList, IfRange, Precondition,
};
pub use content_range::{
    format_content_range, format_unsatisfied, parse_content_range, ContentRange, ContentRangeError,
    ContentRangeHeader,
};
pub use date::DateError;
pub use multipart::{boundary_from_seed, MultipartError, MultipartPlan, Segment};
pub use path::{PathError, RequestPath};
pub use range::{
    parse_range, resolve_ranges, RangeError, RangeHeader, RangeResolution, RangeSet, RangeSpec,
};
