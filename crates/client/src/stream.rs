//! Stream mode: bytes delivered in order as pieces verify, to stdout or to
//! a local HTTP endpoint a player (ffplay, mpv, VLC) opens and seeks with
//! ranges.
//!
//! Both read verified pieces back from the part file (only verified pieces
//! are ever written there) as [`Ready`] says they are in. A range request
//! on the endpoint moves the scheduler's playhead, so a seek is served
//! from pieces fetched next, not after everything before it.

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use shoal_core::{PieceIndex, PieceLayout};
use shoal_http::range::{select_ranges, RangeResolution};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// Which pieces are verified on disk, shared with the readers.
pub struct Ready {
    words: Vec<AtomicU64>,
    changed: watch::Sender<u64>,
    /// Where each reader is (the playhead is the one furthest behind).
    readers: std::sync::Mutex<std::collections::HashMap<u64, u32>>,
    next_reader: AtomicU64,
    /// The playhead when no one reads.
    last_playhead: AtomicU32,
    /// Times a reader had to wait for a piece after its first bytes.
    waits: AtomicU64,
}

impl Ready {
    pub fn new(piece_count: u32) -> Arc<Self> {
        Arc::new(Self {
            words: (0..piece_count.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            changed: watch::channel(0).0,
            readers: std::sync::Mutex::default(),
            next_reader: AtomicU64::new(0),
            last_playhead: AtomicU32::new(0),
            waits: AtomicU64::new(0),
        })
    }

    pub fn mark(&self, piece: PieceIndex) {
        if let Some(word) = self.words.get(piece.0 as usize / 64) {
            word.fetch_or(1 << (piece.0 % 64), Ordering::Release);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    pub fn is_ready(&self, piece: PieceIndex) -> bool {
        self.words
            .get(piece.0 as usize / 64)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (piece.0 % 64)) != 0)
    }

    /// Bytes ready in order from the start.
    pub fn contiguous_bytes(&self, layout: &PieceLayout) -> u64 {
        let count = layout.piece_count();
        let first_missing = (0..count)
            .find(|i| !self.is_ready(PieceIndex(*i)))
            .unwrap_or(count);
        if first_missing == count {
            layout.object_size()
        } else {
            u64::from(first_missing) * layout.piece_size().bytes()
        }
    }

    /// Waits until `piece` is verified; `waited` says whether it had to.
    async fn wait(&self, piece: PieceIndex) -> bool {
        let mut changes = self.changed.subscribe();
        let mut waited = false;
        while !self.is_ready(piece) {
            waited = true;
            if changes.changed().await.is_err() {
                break;
            }
        }
        waited
    }

    /// Where readers are (the scheduler takes pieces from here first): the
    /// reader furthest behind, so none starves.
    pub fn playhead(&self) -> PieceIndex {
        let readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        PieceIndex(
            readers
                .values()
                .min()
                .copied()
                .unwrap_or_else(|| self.last_playhead.load(Ordering::Relaxed)),
        )
    }

    fn reader(self: &Arc<Self>) -> Reader {
        Reader {
            ready: self.clone(),
            id: self.next_reader.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }
}

/// One reader's position; gone from the playhead when dropped.
struct Reader {
    ready: Arc<Ready>,
    id: u64,
}

impl Reader {
    fn at(&self, piece: u32) {
        self.ready
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.id, piece);
        self.ready.last_playhead.store(piece, Ordering::Relaxed);
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.ready
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

fn read_piece_part(
    file: &std::fs::File,
    layout: &PieceLayout,
    piece: PieceIndex,
    from: u64,
    to: u64,
) -> std::io::Result<Bytes> {
    let span = layout
        .piece_span(piece)
        .ok_or_else(|| std::io::Error::other("piece out of range"))?;
    let start = span.start().max(from);
    let end = span.end().min(to);
    let mut buffer = vec![0u8; end.saturating_sub(start) as usize];
    file.read_exact_at(&mut buffer, start)?;
    Ok(Bytes::from(buffer))
}

/// Writes the object to stdout in order as pieces are verified.
pub async fn to_stdout(
    ready: Arc<Ready>,
    file: Arc<std::fs::File>,
    layout: PieceLayout,
) -> std::io::Result<()> {
    let mut out = tokio::io::stdout();
    let reader = ready.reader();
    for index in 0..layout.piece_count() {
        let piece = PieceIndex(index);
        reader.at(index);
        if ready.wait(piece).await && index > 0 {
            ready.waits.fetch_add(1, Ordering::Relaxed);
        }
        let (file, layout2) = (file.clone(), layout);
        let bytes = tokio::task::spawn_blocking(move || {
            read_piece_part(&file, &layout2, piece, 0, u64::MAX)
        })
        .await
        .map_err(std::io::Error::other)??;
        out.write_all(&bytes).await?;
    }
    out.flush().await
}

/// The content type players want, from the file name.
pub fn content_type_of(name: &str) -> &'static str {
    let extension = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match extension.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "ts" => "video/mp2t",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        _ => "application/octet-stream",
    }
}

/// Serves the object at every path on `listener` (GET/HEAD, ranges)
/// until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ready: Arc<Ready>,
    file: Arc<std::fs::File>,
    layout: PieceLayout,
    content_type: &'static str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    shoal_server::serve(
        listener,
        shoal_server::ServerLimits::default(),
        move |request: Request<hyper::body::Incoming>, _conn| {
            let (ready, file) = (ready.clone(), file.clone());
            async move { answer(request, ready, file, layout, content_type) }
        },
        shutdown,
    )
    .await;
}

fn answer<B>(
    request: Request<B>,
    ready: Arc<Ready>,
    file: Arc<std::fs::File>,
    layout: PieceLayout,
    content_type: &'static str,
) -> Response<shoal_server::Body> {
    let plain = |status: StatusCode, text: &str| {
        let mut response = Response::new(shoal_server::full(text.to_string()));
        *response.status_mut() = status;
        response
    };
    let head = match *request.method() {
        http::Method::GET => false,
        http::Method::HEAD => true,
        _ => return plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n"),
    };
    let size = layout.object_size();
    let range = request.headers().get(header::RANGE).map(|v| v.as_bytes());
    let (status, from, to) = match select_ranges(range, true, size) {
        RangeResolution::Single(span) => (StatusCode::PARTIAL_CONTENT, span.start(), span.end()),
        // Several ranges: players never ask; the whole object is allowed.
        RangeResolution::Full | RangeResolution::Multi(_) => (StatusCode::OK, 0, size),
        RangeResolution::Unsatisfiable => {
            let mut response = plain(StatusCode::RANGE_NOT_SATISFIABLE, "");
            if let Ok(value) = format!("bytes */{size}").parse() {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return response;
        }
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, to - from);
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {from}-{}/{size}", to.saturating_sub(1)),
        );
    }
    if head || to == from {
        return builder
            .body(shoal_server::empty())
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, ""));
    }
    let first = (from >> layout.piece_size().log2()) as u32;
    let last = ((to - 1) >> layout.piece_size().log2()) as u32;
    // A seek: fetch from here first.
    let reader = ready.reader();
    reader.at(first);
    let (sender, body) = shoal_server::channel_body(4);
    tokio::spawn(async move {
        for index in first..=last {
            let piece = PieceIndex(index);
            reader.at(index);
            if ready.wait(piece).await && index > first {
                ready.waits.fetch_add(1, Ordering::Relaxed);
            }
            let (file, layout2) = (file.clone(), layout);
            let part = tokio::task::spawn_blocking(move || {
                read_piece_part(&file, &layout2, piece, from, to)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            let failed = part.is_err();
            if sender.send(part).await.is_err() || failed {
                return;
            }
        }
    });
    builder
        .body(body)
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, ""))
}

/// Binds the endpoint's address (a clear error if taken).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
