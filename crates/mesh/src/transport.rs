//! Authenticated gossip datagrams for chitchat.
//!
//! chitchat 0.13 neither authenticates nor encrypts, so anyone who can reach
//! the gossip port could inject members and key-values. Every datagram we
//! send is sealed as `payload ‖ unix seconds (u64 BE) ‖ tag` with
//! `tag = BLAKE3-keyed(payload ‖ seconds)[..16]` and a key derived from the
//! cluster secret; anything that does not open (garbage, oversized, forged,
//! stale beyond [`CLOCK_SKEW_MAX_S`]) is dropped and counted before chitchat
//! sees it.
//!
//! chitchat's envelope codec is crate-private; its public `UdpSocket` is not.
//! So this socket uses one `chitchat::transport::UdpSocket` on 127.0.0.1 as
//! the codec: to send, chitchat serialises the envelope to our relay socket
//! and we seal and forward the bytes; to receive, we open a datagram and hand
//! the payload to the codec socket, which deserialises it. Two loopback hops
//! per datagram, a few datagrams per gossip round; `lo` must be up.
//!
//! A replay within the skew window is accepted: chitchat state is versioned
//! and heartbeats only grow, so a replay changes nothing but prompts a reply.

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest UDP payload over IPv4.
pub const DATAGRAM_LEN_MAX_BYTES: usize = 65_507;
/// Seconds ‖ truncated tag.
pub const TRAILER_LEN_BYTES: usize = 8 + 16;
/// Largest difference between a datagram's time and ours.
pub const CLOCK_SKEW_MAX_S: u64 = 30;
/// How long the codec socket may take to hand back what we gave it.
const CODEC_TIMEOUT_MS: u64 = 1_000;

use shoal_core::now_unix_s;

/// The gossip MAC key for a cluster secret (a different derivation context
/// from the request-token key).
pub fn gossip_key(secret: &str) -> [u8; 32] {
    blake3::derive_key("shoal gossip key v1", secret.as_bytes())
}

/// `payload ‖ seconds ‖ tag`.
pub fn seal(key: &[u8; 32], payload: &[u8], now_unix_s: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + TRAILER_LEN_BYTES);
    out.extend_from_slice(payload);
    out.extend_from_slice(&now_unix_s.to_be_bytes());
    let tag = blake3::keyed_hash(key, &out);
    out.extend_from_slice(&tag.as_bytes()[..16]);
    out
}

/// The payload of an authentic, timely datagram; `None` for anything else.
pub fn open_sealed<'a>(key: &[u8; 32], datagram: &'a [u8], now_unix_s: u64) -> Option<&'a [u8]> {
    let n = datagram.len();
    if n <= TRAILER_LEN_BYTES || n > DATAGRAM_LEN_MAX_BYTES {
        return None;
    }
    let (signed, tag) = datagram.split_at(n - 16);
    let want = blake3::keyed_hash(key, signed);
    let mut got = *want.as_bytes();
    got[..16].copy_from_slice(tag);
    // blake3::Hash's == is constant-time.
    if blake3::Hash::from(got) != want {
        return None;
    }
    let mut seconds = [0u8; 8];
    seconds.copy_from_slice(&signed[signed.len() - 8..]);
    let sent_unix_s = u64::from_be_bytes(seconds);
    (now_unix_s.abs_diff(sent_unix_s) <= CLOCK_SKEW_MAX_S).then(|| &signed[..signed.len() - 8])
}

/// Opens [`MacSocket`]s; one per node.
pub struct MacTransport {
    key: [u8; 32],
    /// A socket bound beforehand (so callers can use port 0 and learn the
    /// port before gossip starts).
    prebound: Mutex<Option<tokio::net::UdpSocket>>,
    dropped: Arc<AtomicU64>,
}

impl MacTransport {
    pub fn new(key: [u8; 32], prebound: Option<tokio::net::UdpSocket>) -> Self {
        Self {
            key,
            prebound: Mutex::new(prebound),
            dropped: Arc::default(),
        }
    }

    /// Datagrams dropped (unauthentic, malformed or oversized), shared with
    /// every socket this transport opened.
    pub fn dropped_counter(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }
}

#[async_trait]
impl Transport for MacTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let prebound = self
            .prebound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let outer = match prebound {
            Some(socket) => socket,
            None => tokio::net::UdpSocket::bind(listen_addr).await?,
        };
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let codec = chitchat::transport::UdpSocket::open(loopback).await?;
        let relay = tokio::net::UdpSocket::bind(loopback).await?;
        let codec_addr = codec.local_addr()?;
        let relay_addr = relay.local_addr()?;
        Ok(Box::new(MacSocket {
            outer,
            codec,
            codec_addr,
            relay,
            relay_addr,
            key: self.key,
            buf: vec![0u8; DATAGRAM_LEN_MAX_BYTES + 1].into_boxed_slice(),
            pending_from: None,
            dropped: self.dropped.clone(),
        }))
    }
}

pub struct MacSocket {
    /// Faces the network.
    outer: tokio::net::UdpSocket,
    /// chitchat's own codec, on loopback.
    codec: chitchat::transport::UdpSocket,
    codec_addr: SocketAddr,
    /// Our end of the codec's conversation.
    relay: tokio::net::UdpSocket,
    relay_addr: SocketAddr,
    key: [u8; 32],
    /// One byte more than the largest datagram, to notice truncation.
    buf: Box<[u8]>,
    /// The real sender of the datagram the codec is decoding.
    pending_from: Option<SocketAddr>,
    dropped: Arc<AtomicU64>,
}

#[async_trait]
impl Socket for MacSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.outer.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        // chitchat serialises the envelope to our relay socket.
        self.codec.send(self.relay_addr, envelope).await?;
        let n = loop {
            let recv = self.relay.recv_from(&mut self.buf);
            let (n, from) =
                tokio::time::timeout(Duration::from_millis(CODEC_TIMEOUT_MS), recv).await??;
            if from == self.codec_addr {
                break n;
            }
        };
        if n + TRAILER_LEN_BYTES > DATAGRAM_LEN_MAX_BYTES {
            // Only a delta within 24 bytes of the datagram limit; it is
            // resent in a later round.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let sealed = seal(&self.key, &self.buf[..n], now_unix_s());
        let num_bytes_sent = match self.outer.send_to(&sealed, to).await {
            Ok(sent) => sent,
            // An unreachable peer is the failure detector's business.
            Err(error) => {
                tracing::debug!(%to, %error, "gossip send failed");
                0
            }
        };
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some(from_addr) = self.pending_from {
                // chitchat skips undecodable datagrams silently; the
                // timeout unblocks us then.
                match tokio::time::timeout(Duration::from_millis(100), self.codec.recv()).await {
                    Ok(outcome) => {
                        let outcome = outcome?;
                        if outcome.from_addr == self.relay_addr {
                            self.pending_from = None;
                            return Ok(RecvOutcome {
                                from_addr,
                                ..outcome
                            });
                        }
                    }
                    Err(_) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        self.pending_from = None;
                    }
                }
                continue;
            }
            let (n, from) = match self.outer.recv_from(&mut self.buf).await {
                Ok(received) => received,
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                // Ends chitchat's loop: only for a broken socket.
                Err(error) => return Err(error.into()),
            };
            let Some(payload) = open_sealed(&self.key, &self.buf[..n], now_unix_s()) else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            self.relay.send_to(payload, self.codec_addr).await?;
            self.pending_from = Some(from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn sealed_datagrams_open_and_tampered_ones_do_not() {
        let sealed = seal(&KEY, b"hello", 1000);
        assert_eq!(open_sealed(&KEY, &sealed, 1000), Some(&b"hello"[..]));
        assert_eq!(
            open_sealed(&KEY, &sealed, 1000 + CLOCK_SKEW_MAX_S),
            Some(&b"hello"[..])
        );
        assert_eq!(
            open_sealed(&KEY, &sealed, 1000 + CLOCK_SKEW_MAX_S + 1),
            None
        );
        assert_eq!(open_sealed(&[8; 32], &sealed, 1000), None);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(open_sealed(&KEY, &bad, 1000), None, "flip at {i}");
        }
        assert_eq!(open_sealed(&KEY, &sealed[..sealed.len() - 1], 1000), None);
        assert_eq!(
            open_sealed(&KEY, &[0; DATAGRAM_LEN_MAX_BYTES + 1], 1000),
            None
        );
    }

    proptest! {
        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), now in any::<u64>()) {
            let _ = open_sealed(&KEY, &bytes, now);
        }
    }
}
