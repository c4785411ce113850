//! Response bodies: one boxed type for every handler, and small constructors.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// The body type every handler returns.
///
/// An `Err` from the body aborts the response: on HTTP/1 the connection is
/// closed (so a client never mistakes a truncated body for a whole one when
/// the length was announced), on HTTP/2 the stream is reset.
pub type Body = http_body_util::combinators::BoxBody<Bytes, io::Error>;

/// A body made of one buffer (its length is exact, so hyper sends
/// `Content-Length`).
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The sending half of a [`channel_body`].
pub type BodySender = mpsc::Sender<io::Result<Bytes>>;

/// A body fed from a bounded channel: at most `chunks_max` chunks wait
/// between the producer and the socket, so a slow client slows the
/// producer down instead of growing memory.
///
/// The body ends when every sender is dropped. A producer that fails part
/// way must send an `Err` before dropping its sender: a plain drop ends the
/// body normally, which on a chunked response looks complete to the client.
/// When the response carries a `Content-Length`, hyper itself refuses a body
/// that ends short.
pub fn channel_body(chunks_max: usize) -> (BodySender, Body) {
    let (tx, rx) = mpsc::channel(chunks_max.max(1));
    (tx, ChannelBody { rx }.boxed())
}

struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn channel_body_streams_in_order() {
        let (tx, body) = channel_body(1);
        let producer = tokio::spawn(async move {
            for chunk in ["a", "bc", "def"] {
                tx.send(Ok(Bytes::from(chunk)))
                    .await
                    .map_err(|_| ())
                    .expect("receiver alive");
            }
        });
        let collected = body.collect().await.expect("no error").to_bytes();
        producer.await.expect("producer");
        assert_eq!(&collected[..], b"abcdef");
    }

    #[tokio::test]
    async fn channel_body_error_surfaces() {
        let (tx, body) = channel_body(4);
        tx.send(Ok(Bytes::from_static(b"x")))
            .await
            .map_err(|_| ())
            .expect("send");
        tx.send(Err(io::Error::other("disk")))
            .await
            .map_err(|_| ())
            .expect("send");
        drop(tx);
        assert!(body.collect().await.is_err());
    }

    #[tokio::test]
    async fn full_and_empty() {
        assert_eq!(
            &full("xyz").collect().await.expect("ok").to_bytes()[..],
            b"xyz"
        );
        assert!(empty().collect().await.expect("ok").to_bytes().is_empty());
        assert_eq!(http_body::Body::size_hint(&full("xyz")).exact(), Some(3));
    }
}
