//! A response body streamed from an open file: literal segments (multipart
//! delimiters) and spans of the file, read in bounded chunks on the
//! blocking pool.
//!
//! Memory per response is bounded: at most [`READS_IN_FLIGHT_MAX`] chunk is
//! being read ahead while hyper writes the previous one (plus what hyper
//! itself buffers: its write buffer on HTTP/1, the stream's send buffer on
//! HTTP/2). A read that
//! comes back short (the file shrank) is an error, so the response is cut
//! off rather than padded or mislabelled; hyper then closes the connection
//! (HTTP/1) or resets the stream (HTTP/2), and the client sees a truncated
//! body against its `Content-Length`.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use shoal_core::ByteSpan;
use shoal_http::Segment;
use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::task::JoinHandle;

/// Chunks read ahead of the one being sent: double buffering, so the disk
/// read of the next chunk overlaps the send of this one.
pub const READS_IN_FLIGHT_MAX: usize = 1;

/// What comes next in the body, in order.
enum Pending {
    Ready(Bytes),
    Reading(JoinHandle<io::Result<Bytes>>),
}

pub(crate) struct FileBody {
    file: Arc<File>,
    /// Segments not yet started, in order. The front `Data` span shrinks
    /// as reads are started.
    plan: VecDeque<Segment>,
    /// Started segments, in order.
    pending: VecDeque<Pending>,
    reads_in_flight: usize,
    /// Bytes not yet returned, for an exact size hint.
    remaining: u64,
    chunk_bytes: u64,
}

impl FileBody {
    /// A body of `segments` over `file`; `chunk_bytes` bounds each read.
    pub(crate) fn new(file: Arc<File>, segments: Vec<Segment>, chunk_bytes: u64) -> Self {
        let remaining = segments.iter().map(Segment::len).sum();
        Self {
            file,
            plan: segments.into(),
            pending: VecDeque::new(),
            reads_in_flight: 0,
            remaining,
            chunk_bytes: chunk_bytes.max(1),
        }
    }

    /// Starts segments until [`READS_IN_FLIGHT_MAX`] reads are running or
    /// the plan is exhausted.
    fn start_reads(&mut self) {
        while self.reads_in_flight < READS_IN_FLIGHT_MAX {
            match self.plan.pop_front() {
                None => return,
                Some(Segment::Literal(bytes)) => {
                    if !bytes.is_empty() {
                        self.pending.push_back(Pending::Ready(bytes));
                    }
                }
                Some(Segment::Data(span)) => {
                    if span.is_empty() {
                        continue;
                    }
                    let len = span.len().min(self.chunk_bytes);
                    let offset = span.start();
                    if let Some(rest) = ByteSpan::new(offset + len, span.end()) {
                        if !rest.is_empty() {
                            self.plan.push_front(Segment::Data(rest));
                        }
                    }
                    let file = self.file.clone();
                    let handle =
                        tokio::task::spawn_blocking(move || read_chunk(&file, offset, len));
                    self.pending.push_back(Pending::Reading(handle));
                    self.reads_in_flight += 1;
                }
            }
        }
    }
}

fn read_chunk(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    let mut buffer = vec![0u8; len];
    // `read_exact_at` fails with UnexpectedEof if the file shrank.
    file.read_exact_at(&mut buffer, offset)?;
    Ok(Bytes::from(buffer))
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        this.start_reads();
        let bytes = match this.pending.front_mut() {
            None => return Poll::Ready(None),
            Some(Pending::Ready(bytes)) => {
                let bytes = std::mem::take(bytes);
                this.pending.pop_front();
                bytes
            }
            Some(Pending::Reading(handle)) => {
                let result = match Pin::new(handle).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(result) => result,
                };
                this.pending.pop_front();
                this.reads_in_flight -= 1;
                match result {
                    Ok(Ok(bytes)) => bytes,
                    Ok(Err(error)) => {
                        this.plan.clear();
                        this.pending.clear();
                        return Poll::Ready(Some(Err(error)));
                    }
                    Err(join_error) => {
                        this.plan.clear();
                        this.pending.clear();
                        return Poll::Ready(Some(Err(io::Error::other(join_error))));
                    }
                }
            }
        };
        this.remaining = this.remaining.saturating_sub(bytes.len() as u64);
        // Keep the disk busy while hyper sends this chunk.
        this.start_reads();
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && self.pending.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Write;

    fn span(start: u64, end: u64) -> ByteSpan {
        ByteSpan::new(start, end).expect("span")
    }

    fn file_with(data: &[u8]) -> Arc<File> {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(data).expect("write");
        Arc::new(file)
    }

    #[tokio::test]
    async fn streams_segments_in_order_in_small_chunks() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let file = file_with(&data);
        let segments = vec![
            Segment::Literal(Bytes::from_static(b"<")),
            Segment::Data(span(10, 5_000)),
            Segment::Literal(Bytes::from_static(b"|")),
            Segment::Data(span(9_000, 10_000)),
            Segment::Literal(Bytes::from_static(b">")),
        ];
        let body = FileBody::new(file, segments, 333);
        assert_eq!(
            http_body::Body::size_hint(&body).exact(),
            Some(3 + 4_990 + 1_000)
        );
        let collected = body.collect().await.expect("body").to_bytes();
        let mut expected = b"<".to_vec();
        expected.extend_from_slice(&data[10..5_000]);
        expected.push(b'|');
        expected.extend_from_slice(&data[9_000..]);
        expected.push(b'>');
        assert_eq!(collected, expected);
    }

    #[tokio::test]
    async fn short_file_is_an_error() {
        let file = file_with(b"0123456789");
        let body = FileBody::new(file, vec![Segment::Data(span(0, 20))], 4);
        assert!(body.collect().await.is_err());
    }

    #[tokio::test]
    async fn empty_body() {
        let body = FileBody::new(file_with(b""), Vec::new(), 4);
        assert!(http_body::Body::is_end_stream(&body));
        assert!(body.collect().await.expect("ok").to_bytes().is_empty());
    }
}
