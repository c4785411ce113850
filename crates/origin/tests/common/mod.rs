//! Shared helpers for the origin's socket tests: a running origin on
//! 127.0.0.1:0, small HTTP clients (hyper and raw TCP), test data.

#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use shoal_origin::{OriginConfig, OriginServer};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PIECE: usize = 262_144;
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub struct RunningOrigin {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningOrigin {
    pub async fn start(root: &Path) -> Self {
        Self::start_with(OriginConfig::new(
            root,
            "127.0.0.1:0".parse().expect("addr"),
        ))
        .await
    }

    pub async fn start_with(mut config: OriginConfig) -> Self {
        // In-process: no access lines in the test output, and no load
        // balancer to wait for on stop.
        config.access_log.format = shoal_server::AccessLogFormat::Off;
        config.limits.drain_delay_ms = 0;
        let server = OriginServer::bind(config).await.expect("bind origin");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(TIMEOUT, task)
                .await
                .expect("origin stops")
                .expect("origin task");
        }
    }
}

#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request over a fresh HTTP/1.1 connection.
pub async fn fetch(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Fetched {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "origin.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::<Bytes>::new()).expect("request");
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
        .await
        .expect("in time")
        .expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(TIMEOUT, response.into_body().collect())
        .await
        .expect("in time")
        .expect("body")
        .to_bytes();
    Fetched {
        status,
        headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Fetched {
    fetch(addr, "GET", path, headers).await
}

/// Sends `head` (a request line and headers, without the final blank
/// line) over raw TCP with `Connection: close`; returns the status code and
/// everything after the response head.
pub async fn raw_get(addr: SocketAddr, target: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("in time")
        .expect("read");
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let status_line = String::from_utf8_lossy(&response[..head_end])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let code = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, response[head_end + 4..].to_vec())
}

/// Deterministic, non-repeating-looking bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Parses a `multipart/byteranges` body: (Content-Range, data) per part.
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .expect("multipart content type");
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    rest = rest
        .strip_prefix(delimiter.as_bytes())
        .expect("starts with a delimiter");
    loop {
        if rest.starts_with(b"--") {
            assert_eq!(&rest[2..], b"\r\n", "closing delimiter then CRLF");
            return parts;
        }
        rest = rest.strip_prefix(b"\r\n").expect("CRLF after delimiter");
        let head_end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("part head");
        let head = String::from_utf8(rest[..head_end].to_vec()).expect("ascii head");
        let content_range = head
            .lines()
            .find_map(|line| line.strip_prefix("Content-Range: "))
            .expect("part Content-Range")
            .to_string();
        rest = &rest[head_end + 4..];
        let next = format!("\r\n{delimiter}");
        let data_end = rest
            .windows(next.len())
            .position(|w| w == next.as_bytes())
            .expect("next delimiter");
        parts.push((content_range, rest[..data_end].to_vec()));
        rest = &rest[data_end + next.len()..];
    }
}
