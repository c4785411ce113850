//! Answering one request: path → file, validators, preconditions, ranges.
//!
//! # Decisions, in order
//!
//! 1. Method: GET and HEAD only, else `405` with `Allow: GET, HEAD`.
//! 2. Path: [`RequestPath::parse`] (dot segments, `//`, encoded slashes,
//!    control characters → `400`). Hidden segments → `404` unless
//!    configured, except the manifests under `/.shoal/manifests/`.
//! 3. File: the path is joined onto the canonical root and canonicalized;
//!    a result outside the root (a symlink pointing out) → `404`, as is
//!    anything but a regular file. Unreadable → `403`.
//! 4. Preconditions (RFC 9110 §13.2.2): `412` or `304`.
//! 5. `Range` (GET only; HEAD ignores it as RFC 9110 §14.2 requires):
//!    unknown unit or a failed `If-Range` → `200` with the whole file;
//!    malformed, more than 16 ranges, several `Range` lines, or nothing
//!    satisfiable → `416` with `Content-Range: bytes */LEN`; one span →
//!    `206`; several → `206 multipart/byteranges`.
//!
//! The validators of a file are a strong entity tag
//! `"<mtime in ns, hex>-<size, hex>"` and `Last-Modified` (mtime seconds).
//! Bodies are streamed from the open file ([`crate::file_body`]), so memory
//! per response does not depend on the file's size.

use crate::config::{OriginConfig, OriginError, READ_CHUNK_BYTES_MAX, READ_CHUNK_BYTES_MIN};
use crate::content_type::content_type_for;
use crate::file_body::FileBody;
use crate::publish::SHOAL_DIR;
use http::header::{
    ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    LAST_MODIFIED, RANGE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use shoal_core::ByteSpan;
use shoal_http::date::format_http_date_unix_s;
use shoal_http::{
    boundary_from_seed, evaluate_preconditions, format_content_range, format_unsatisfied,
    select_ranges, ConditionalHeaders, EntityTag, EntityValidators, MultipartPlan, Precondition,
    RangeResolution, RequestPath, Segment,
};
use shoal_server::{full, Body};
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// The static file handler of an origin. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Origin {
    /// Canonical (symlink-free, absolute) root.
    root: PathBuf,
    read_chunk_bytes: u64,
    serve_hidden: bool,
    cache_control: Option<HeaderValue>,
}

/// A file opened for one response, with its validators.
struct Entity {
    file: File,
    size: u64,
    etag: EntityTag,
    last_modified_unix_s: Option<u64>,
    content_type: &'static str,
}

/// Why a path did not lead to a servable file.
enum OpenError {
    NotFound,
    Forbidden,
    Internal(io::Error),
}

impl Origin {
    /// Checks the configuration and resolves the root.
    pub fn new(config: &OriginConfig) -> Result<Self, OriginError> {
        let root = fs::canonicalize(&config.root).map_err(|source| OriginError::Root {
            path: config.root.clone(),
            source,
        })?;
        if !root.is_dir() {
            return Err(OriginError::RootNotDirectory(config.root.clone()));
        }
        if !(READ_CHUNK_BYTES_MIN..=READ_CHUNK_BYTES_MAX).contains(&config.read_chunk_bytes) {
            return Err(OriginError::Config(format!(
                "read_chunk_bytes must be between {READ_CHUNK_BYTES_MIN} and {READ_CHUNK_BYTES_MAX}, not {}",
                config.read_chunk_bytes
            )));
        }
        let cache_control = match &config.cache_control {
            None => None,
            Some(value) => Some(HeaderValue::from_str(value).map_err(|_| {
                OriginError::Config(format!(
                    "cache_control {value:?} is not a valid header value"
                ))
            })?),
        };
        Ok(Self {
            root,
            read_chunk_bytes: config.read_chunk_bytes,
            serve_hidden: config.serve_hidden,
            cache_control,
        })
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Answers one request. The request body, if any, is ignored.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body> {
        let is_head = match *request.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                return response;
            }
        };
        let path = match RequestPath::parse(request.uri().path()) {
            Ok(path) => path,
            Err(error) => {
                tracing::debug!("bad request path {:?}: {error}", request.uri().path());
                return text(StatusCode::BAD_REQUEST, "bad request path\n");
            }
        };
        if !self.may_serve(&path) {
            return not_found();
        }
        let root = self.root.clone();
        let opened = tokio::task::spawn_blocking(move || open_beneath(&root, &path)).await;
        let entity = match opened {
            Ok(Ok(entity)) => entity,
            Ok(Err(OpenError::NotFound)) => return not_found(),
            Ok(Err(OpenError::Forbidden)) => return text(StatusCode::FORBIDDEN, "forbidden\n"),
            Ok(Err(OpenError::Internal(error))) => {
                tracing::warn!("cannot open {}: {error}", request.uri().path());
                return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
            }
            Err(join_error) => {
                tracing::error!("open task failed: {join_error}");
                return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
            }
        };
        self.respond(entity, request.headers(), is_head)
    }

    /// Hidden segments are refused unless configured, but the manifest tree
    /// is always served (its object part must not be hidden either).
    fn may_serve(&self, path: &RequestPath) -> bool {
        if self.serve_hidden {
            return true;
        }
        let mut segments = path.segments().peekable();
        if segments.peek() == Some(&SHOAL_DIR) {
            segments.next();
            if segments.next() != Some("manifests") {
                return false;
            }
        }
        segments.all(|segment| !segment.starts_with('.'))
    }

    /// The response for an open file: preconditions first, then the range
    /// asked for; every 200, 206 and 304 carries the validators.
    fn respond(
        &self,
        entity: Entity,
        request_headers: &HeaderMap,
        is_head: bool,
    ) -> Response<Body> {
        let validators = EntityValidators {
            etag: Some(entity.etag.clone()),
            last_modified_unix_s: entity.last_modified_unix_s,
        };
        let conditions = ConditionalHeaders::from_headers(request_headers);
        let range_allowed = match evaluate_preconditions(true, &conditions, &validators) {
            Precondition::Failed => {
                return text(StatusCode::PRECONDITION_FAILED, "precondition failed\n")
            }
            Precondition::NotModified => return self.not_modified(&entity),
            Precondition::Proceed { range_allowed } => range_allowed,
        };
        let size = entity.size;
        let selection = if is_head {
            RangeResolution::Full
        } else {
            resolve_range(request_headers, range_allowed, size)
        };
        let file = Arc::new(entity.file);
        let mut response = match selection {
            RangeResolution::Full => self.whole_file(file, size, entity.content_type, is_head),
            RangeResolution::Unsatisfiable => return range_not_satisfiable(size),
            RangeResolution::Single(span) => {
                let Ok(content_range) = format_content_range(span, size) else {
                    return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
                };
                self.single_range(file, span, &content_range, entity.content_type)
            }
            RangeResolution::Multi(spans) => {
                let boundary = boundary_from_seed(random_seed());
                let plan =
                    match MultipartPlan::new(&spans, size, Some(entity.content_type), &boundary) {
                        Ok(plan) => plan,
                        Err(error) => {
                            tracing::error!("multipart plan: {error}");
                            return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
                        }
                    };
                self.multipart(file, plan)
            }
        };
        response
            .headers_mut()
            .insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        self.validator_headers(
            &entity.etag,
            entity.last_modified_unix_s,
            response.headers_mut(),
        );
        response
    }

    /// `304 Not Modified`: no body, the validators only.
    fn not_modified(&self, entity: &Entity) -> Response<Body> {
        let mut response = Response::new(shoal_server::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        self.validator_headers(
            &entity.etag,
            entity.last_modified_unix_s,
            response.headers_mut(),
        );
        response
    }

    /// `200` with the whole file (its head only for HEAD).
    fn whole_file(
        &self,
        file: Arc<File>,
        size: u64,
        content_type: &'static str,
        is_head: bool,
    ) -> Response<Body> {
        let segments = ByteSpan::new(0, size)
            .filter(|s| !s.is_empty())
            .map(Segment::Data);
        let mut response = Response::new(self.body(file, segments.into_iter().collect(), is_head));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(size));
        response
    }

    /// `206` with one span of the file, `content_range` naming it.
    fn single_range(
        &self,
        file: Arc<File>,
        span: ByteSpan,
        content_range: &str,
        content_type: &'static str,
    ) -> Response<Body> {
        let mut response = Response::new(self.body(file, vec![Segment::Data(span)], false));
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        insert_text(response.headers_mut(), CONTENT_RANGE, content_range);
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(span.len()));
        response
    }

    /// `206 multipart/byteranges` with the parts `plan` lays out.
    fn multipart(&self, file: Arc<File>, plan: MultipartPlan) -> Response<Body> {
        let mut response = Response::new(self.body(file, plan.parts, false));
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        insert_text(
            response.headers_mut(),
            CONTENT_TYPE,
            &plan.content_type_header,
        );
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(plan.content_length));
        response
    }

    fn body(&self, file: Arc<File>, segments: Vec<Segment>, is_head: bool) -> Body {
        if is_head {
            return shoal_server::empty();
        }
        let body = FileBody::new(file, segments, self.read_chunk_bytes);
        http_body_util::BodyExt::boxed(body)
    }

    /// `ETag`, `Last-Modified` and the configured `Cache-Control`: sent on
    /// 200, 206 and 304 alike.
    fn validator_headers(
        &self,
        etag: &EntityTag,
        last_modified_unix_s: Option<u64>,
        headers: &mut HeaderMap,
    ) {
        insert_text(headers, ETAG, &etag.to_string());
        if let Some(unix_s) = last_modified_unix_s {
            insert_text(headers, LAST_MODIFIED, &format_http_date_unix_s(unix_s));
        }
        if let Some(cache_control) = &self.cache_control {
            headers.insert(CACHE_CONTROL, cache_control.clone());
        }
    }
}

/// `416` naming the file's length; no validators.
fn range_not_satisfiable(size: u64) -> Response<Body> {
    let mut response = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
    insert_text(
        response.headers_mut(),
        CONTENT_RANGE,
        &format_unsatisfied(size),
    );
    response
        .headers_mut()
        .insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response
}

/// Resolves `path` under the root without leaving it, and opens it.
/// Blocking.
fn open_beneath(root: &Path, path: &RequestPath) -> Result<Entity, OpenError> {
    let mut candidate = root.to_path_buf();
    for segment in path.segments() {
        candidate.push(segment);
    }
    let canonical = fs::canonicalize(&candidate).map_err(open_error)?;
    if !canonical.starts_with(root) {
        tracing::debug!("{} resolves outside the root", path);
        return Err(OpenError::NotFound);
    }
    // Check before opening: opening a FIFO would block.
    if !fs::metadata(&canonical).map_err(open_error)?.is_file() {
        return Err(OpenError::NotFound);
    }
    let file = File::open(&canonical).map_err(open_error)?;
    let meta = file.metadata().map_err(open_error)?;
    if !meta.is_file() {
        return Err(OpenError::NotFound);
    }
    let size = meta.len();
    let since_epoch = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
    let mtime_ns = since_epoch.map_or(0, |d| d.as_nanos());
    let etag = EntityTag::strong(&format!("{mtime_ns:x}-{size:x}"))
        .map_err(|e| OpenError::Internal(io::Error::other(e.to_string())))?;
    Ok(Entity {
        file,
        size,
        etag,
        last_modified_unix_s: since_epoch.map(|d| d.as_secs()),
        content_type: content_type_for(path.file_name()),
    })
}

/// The `Range` header of a GET, resolved against the file (RFC 9110
/// §14.2 policy in [`shoal_http::select_ranges`]). `Range` is not a list
/// header, so several `Range` lines are malformed: `416`.
fn resolve_range(headers: &HeaderMap, range_allowed: bool, size: u64) -> RangeResolution {
    let mut lines = headers.get_all(RANGE).iter();
    let first = lines.next();
    if range_allowed && first.is_some() && lines.next().is_some() {
        return RangeResolution::Unsatisfiable;
    }
    select_ranges(first.map(HeaderValue::as_bytes), range_allowed, size)
}

fn open_error(error: io::Error) -> OpenError {
    match error.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::InvalidInput => {
            OpenError::NotFound
        }
        io::ErrorKind::PermissionDenied => OpenError::Forbidden,
        // ENAMETOOLONG and ELOOP (Linux numbers): the client named
        // something that cannot exist.
        _ if matches!(error.raw_os_error(), Some(36) | Some(40)) => OpenError::NotFound,
        _ => OpenError::Internal(error),
    }
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Inserts a header whose value we formatted ourselves (always visible
/// ASCII); a value that is somehow invalid is logged and left out rather
/// than panicking.
fn insert_text(headers: &mut HeaderMap, name: http::header::HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => tracing::error!("invalid {name} value {value:?}"),
    }
}

/// A seed for multipart boundaries that a client cannot predict: std's
/// per-process random hasher keys, mixed with a counter.
fn random_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}
