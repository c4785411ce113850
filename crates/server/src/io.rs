//! A socket wrapper that remembers when bytes last moved, and the watchdog
//! that closes a connection once it has been idle too long.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a connection last read or wrote a byte: milliseconds since `base`,
/// in an atomic so that recording costs one relaxed store.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Milliseconds since a byte last moved (or since the connection
    /// opened).
    pub(crate) fn idle_ms(&self) -> u64 {
        u64::try_from(self.last().elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once no byte has moved for `idle`. Never resolves while
    /// bytes keep moving.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.last() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// An IO object that records each successful read or write in an
/// [`Activity`].
#[derive(Debug)]
pub(crate) struct ActivityIo<T> {
    inner: T,
    activity: Arc<Activity>,
    egress: Option<Arc<Egress>>,
    /// Pending wait for egress tokens.
    egress_wait: Option<Pin<Box<tokio::time::Sleep>>>,
    /// This writer's place in the egress queue while it waits.
    egress_ticket: Option<u64>,
    /// Its timer is the recheck of a writer behind others (not a wait
    /// for tokens).
    egress_queued: bool,
}

impl<T> ActivityIo<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>, egress: Option<Arc<Egress>>) -> Self {
        Self {
            inner,
            activity,
            egress,
            egress_wait: None,
            egress_ticket: None,
            egress_queued: false,
        }
    }
}

impl<T> Drop for ActivityIo<T> {
    fn drop(&mut self) {
        // A writer that leaves while waiting gives up its place.
        if let (Some(egress), Some(ticket)) = (&self.egress, self.egress_ticket) {
            egress.state().leave(ticket);
        }
    }
}

/// The server-wide egress token bucket; its rate can change while the
/// server runs (0: no cap, and no lock taken per write).
///
/// Writers that must wait queue in arrival order and are served one grant
/// at a time, each at most [`EGRESS_GRANT_MAX_BYTES`]: under a cap every
/// connection gets its share in turn. (Whoever happened to look first
/// used to win; with a few dozen clients on a capped cache some waited
/// over a second between grants and were judged stalled.)
#[derive(Debug)]
pub struct Egress {
    bytes_per_s: std::sync::atomic::AtomicU64,
    state: std::sync::Mutex<EgressState>,
    base: Instant,
}

#[derive(Debug)]
struct EgressState {
    bucket: shoal_core::TokenBucket,
    /// Waiting writers by ticket (the lowest is served next), with the
    /// waker to call when it is their turn.
    queue: std::collections::BTreeMap<u64, std::task::Waker>,
    next_ticket: u64,
}

impl EgressState {
    fn head(&self) -> Option<u64> {
        self.queue.first_key_value().map(|(t, _)| *t)
    }

    /// `ticket` leaves the queue; the next writer is woken if it was first.
    fn leave(&mut self, ticket: u64) {
        let was_head = self.head() == Some(ticket);
        self.queue.remove(&ticket);
        if was_head {
            if let Some((_, waker)) = self.queue.first_key_value() {
                waker.wake_by_ref();
            }
        }
    }
}

/// One grant is at most this much, so a writer with a large buffer does
/// not take the whole burst while others queue.
const EGRESS_GRANT_MAX_BYTES: u64 = 2 * EGRESS_GRANT_MIN_BYTES;
/// A queued writer that is not first looks again this often anyway (the
/// cap may have been lifted).
const EGRESS_QUEUED_RECHECK: Duration = Duration::from_millis(250);

/// A capped write waits until this much may go at once (or all it has,
/// if less). Granting whatever the bucket held when a writer looked made
/// writes of a few kilobytes when many connections shared the cap: the
/// kernel's per-`writev` cost then outweighed copying the bytes (`perf`
/// of an 8-cache warm-up on 2 cores: mostly syscall overhead).
const EGRESS_GRANT_MIN_BYTES: u64 = 64 * 1024;

/// The burst is 1/20 s of traffic (at least two write chunks, so a
/// writer waiting for a chunk does not need a full bucket and tokens are
/// not lost to a full one), so the cap holds over short windows too.
fn burst_for(bytes_per_s: u64) -> u64 {
    (bytes_per_s / 20).max(2 * EGRESS_GRANT_MIN_BYTES)
}

impl Egress {
    pub(crate) fn new(bytes_per_s: u64) -> Arc<Self> {
        Arc::new(Self {
            bytes_per_s: std::sync::atomic::AtomicU64::new(bytes_per_s),
            state: std::sync::Mutex::new(EgressState {
                bucket: shoal_core::TokenBucket::new(bytes_per_s, burst_for(bytes_per_s)),
                queue: Default::default(),
                next_ticket: 0,
            }),
            base: Instant::now(),
        })
    }

    /// The cap now, bytes per second (0: none).
    pub fn bytes_per_s(&self) -> u64 {
        self.bytes_per_s.load(Ordering::Relaxed)
    }

    /// Changes the cap for every connection, from now on (0: none).
    pub fn set_bytes_per_s(&self, bytes_per_s: u64) {
        let now = self.now_ns();
        let mut state = self.state();
        state
            .bucket
            .set_rate(now, bytes_per_s, burst_for(bytes_per_s));
        self.bytes_per_s.store(bytes_per_s, Ordering::Relaxed);
        // Everyone waiting looks again under the new cap.
        for waker in state.queue.values() {
            waker.wake_by_ref();
        }
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EgressState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T> ActivityIo<T> {
    /// How many of `want` bytes may be written now; `Pending` (with a timer
    /// armed) when the bucket is empty.
    fn poll_egress(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<usize> {
        let Some(egress) = self.egress.clone() else {
            return Poll::Ready(want);
        };
        if egress.bytes_per_s() == 0 {
            self.egress_wait = None;
            if let Some(ticket) = self.egress_ticket.take() {
                egress.state().leave(ticket);
            }
            return Poll::Ready(want);
        }
        loop {
            // Queued behind others and woken: the turn may be ours now,
            // whatever the recheck timer says.
            if self.egress_ticket.is_some()
                && self.egress_wait.is_some()
                && egress.state().head() == self.egress_ticket
                && self.egress_queued
            {
                self.egress_wait = None;
            }
            if let Some(wait) = self.egress_wait.as_mut() {
                if std::future::Future::poll(wait.as_mut(), cx).is_pending() {
                    return Poll::Pending;
                }
                self.egress_wait = None;
            }
            let now = egress.now_ns();
            let mut state = egress.state();
            let my_turn = state
                .head()
                .is_none_or(|head| Some(head) == self.egress_ticket);
            let want_now = (want as u64).min(EGRESS_GRANT_MAX_BYTES);
            if my_turn {
                let granted = state
                    .bucket
                    .take_chunk(now, want_now, EGRESS_GRANT_MIN_BYTES)
                    as usize;
                if granted > 0 || want == 0 {
                    if let Some(ticket) = self.egress_ticket.take() {
                        state.leave(ticket);
                    }
                    return Poll::Ready(granted);
                }
            }
            let ticket = match self.egress_ticket {
                Some(ticket) => ticket,
                None => {
                    let ticket = state.next_ticket;
                    state.next_ticket += 1;
                    self.egress_ticket = Some(ticket);
                    ticket
                }
            };
            state.queue.insert(ticket, cx.waker().clone());
            self.egress_queued = state.head() != Some(ticket);
            let wait = if !self.egress_queued {
                // First in line: wait for the chunk's tokens (at least
                // every 100 ms: the cap may change).
                Duration::from_nanos(
                    state
                        .bucket
                        .wait_ns(now, want_now.min(EGRESS_GRANT_MIN_BYTES))
                        .clamp(1_000_000, 100_000_000),
                )
            } else {
                EGRESS_QUEUED_RECHECK
            };
            drop(state);
            self.egress_wait = Some(Box::pin(tokio::time::sleep(wait)));
        }
    }

    fn refund_egress(&self, unused: usize) {
        if let (Some(egress), true) = (&self.egress, unused > 0) {
            if egress.bytes_per_s() == 0 {
                return;
            }
            egress.state().bucket.refund(unused as u64);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let allowed = match self.poll_egress(cx, buf.len()) {
            Poll::Ready(allowed) => allowed,
            Poll::Pending => return Poll::Pending,
        };
        let result = Pin::new(&mut self.inner).poll_write(cx, &buf[..allowed]);
        match &result {
            Poll::Ready(Ok(n)) => {
                if *n > 0 {
                    self.activity.touch();
                }
                self.refund_egress(allowed - n);
            }
            _ => self.refund_egress(allowed),
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let allowed = match self.poll_egress(cx, total) {
            Poll::Ready(allowed) => allowed,
            Poll::Pending => return Poll::Pending,
        };
        // Every byte passes the egress cap: the slices are cut to what it
        // allows. Vectored, so hyper queues body chunks instead of copying
        // them into its write buffer (a copy of every byte served).
        let result = if allowed == total {
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        } else {
            let mut left = allowed;
            let mut limited = Vec::with_capacity(bufs.len());
            for buf in bufs {
                if left == 0 {
                    break;
                }
                let take = buf.len().min(left);
                limited.push(io::IoSlice::new(&buf[..take]));
                left -= take;
            }
            Pin::new(&mut self.inner).poll_write_vectored(cx, &limited)
        };
        match &result {
            Poll::Ready(Ok(n)) => {
                if *n > 0 {
                    self.activity.touch();
                }
                self.refund_egress(allowed.saturating_sub(*n));
            }
            _ => self.refund_egress(allowed),
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn writers_sharing_a_cap_are_served_in_turn() {
        // 10 writers of 1 MB each under a 1 MB/s cap: served in turn,
        // 64-128 KiB at a time, all finish within two rounds (~1.3 s; the
        // first also had the initial burst) of each other near 10 s.
        let egress = Egress::new(1_000_000);
        let start = Instant::now();
        let mut writers = Vec::new();
        for _ in 0..10 {
            let (a, mut b) = tokio::io::duplex(1 << 20);
            let mut io = ActivityIo::new(a, Arc::new(Activity::new()), Some(egress.clone()));
            writers.push(tokio::spawn(async move {
                let reader = tokio::spawn(async move {
                    let mut sink = Vec::new();
                    b.read_to_end(&mut sink).await.map(|_| sink.len())
                });
                io.write_all(&vec![7u8; 1_000_000]).await.expect("write");
                drop(io);
                assert_eq!(reader.await.unwrap().unwrap(), 1_000_000);
                start.elapsed()
            }));
        }
        let mut finished = Vec::new();
        for writer in writers {
            finished.push(writer.await.unwrap());
        }
        let first = finished.iter().min().unwrap();
        let last = finished.iter().max().unwrap();
        assert!(
            *last >= Duration::from_millis(9_800),
            "the cap held: {last:?}"
        );
        assert!(
            *last - *first < Duration::from_millis(1_500),
            "in turn: first {first:?}, last {last:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_resolves_only_after_quiet_period() {
        let activity = Arc::new(Activity::new());
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = ActivityIo::new(a, activity.clone(), None);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(400)).await;
        io.write_all(b"x").await.expect("write");
        let mut byte = [0u8; 1];
        b.read_exact(&mut byte).await.expect("read");
        activity.idle_for(Duration::from_millis(500)).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(900), "{waited:?}");
        assert!(waited < Duration::from_millis(1000), "{waited:?}");
    }
}
