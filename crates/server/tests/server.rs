//! Real sockets on 127.0.0.1: protocols, limits, timeouts, shutdown.
//!
//! Timing assertions only use generous upper bounds (seconds) and loose
//! lower bounds, so a loaded machine does not make them flaky.

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use shoal_server::{bind, channel_body, full, Body, ConnInfo, Server, ServerLimits, ServerStats};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const GENEROUS: Duration = Duration::from_secs(10);

struct Running {
    addr: SocketAddr,
    stats: ServerStats,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(GENEROUS, self.task)
            .await
            .expect("server stops")
            .expect("server task");
    }
}

async fn start<H, Fut>(limits: ServerLimits, handler: H) -> Running
where
    H: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let (listener, addr) = bind("127.0.0.1:0").await.expect("bind");
    // Nothing balances load over these servers: close at once on stop
    // (the delay has a test of its own).
    let server = Server::new(
        listener,
        ServerLimits {
            drain_delay_ms: 0,
            ..limits
        },
    );
    let stats = server.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(handler, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stats,
        stop: Some(stop),
        task,
    }
}

async fn echo(request: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let text = format!(
        "{} {} {:?} from {}",
        request.method(),
        request.uri().path(),
        request.version(),
        conn.peer_addr
    );
    Response::new(full(text))
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "test")
        .body(Empty::new())
        .expect("request")
}

async fn h1_client(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    JoinHandle<()>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, task)
}

/// An HTTP/1 client whose connection comes from `source` (a loopback
/// address), as another client machine would.
async fn h1_client_from(
    addr: SocketAddr,
    source: &str,
) -> (
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    JoinHandle<()>,
) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    let source: std::net::IpAddr = source.parse().expect("address");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind the source address");
    let stream = socket.connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, task)
}

/// Reads until EOF or error; returns what was read.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + GENEROUS;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn http1_request_works() {
    let server = start(ServerLimits::default(), echo).await;
    let (mut sender, _conn) = h1_client(server.addr).await;
    for path in ["/a", "/b/c"] {
        let response = sender.send_request(get(path)).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_11);
        assert!(response.headers().contains_key("date"));
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let text = String::from_utf8(body.to_vec()).expect("utf8");
        assert!(
            text.starts_with(&format!("GET {path} HTTP/1.1 from 127.0.0.1:")),
            "{text}"
        );
    }
    assert_eq!(server.stats.connections_accepted(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn http2_prior_knowledge_works() {
    let server = start(ServerLimits::default(), echo).await;
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // Several concurrent streams on one connection.
    let mut pending = Vec::new();
    for i in 0..4 {
        let request = Request::get(format!("http://test/s{i}"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        pending.push(sender.send_request(request));
    }
    for (i, response) in pending.into_iter().enumerate() {
        let response = response.await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_2);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let text = String::from_utf8(body.to_vec()).expect("utf8");
        assert!(
            text.starts_with(&format!("GET /s{i} HTTP/2.0 from ")),
            "{text}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn half_sent_head_is_cut_off_by_header_timeout() {
    let limits = ServerLimits {
        header_read_timeout_ms: 300,
        idle_timeout_ms: 60_000,
        ..ServerLimits::default()
    };
    let server = start(limits, echo).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: te")
        .await
        .expect("write");
    let started = Instant::now();
    let received = tokio::time::timeout(GENEROUS, read_until_closed(&mut stream))
        .await
        .expect("server disconnects");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "closed too early: {waited:?}"
    );
    assert!(
        !received.starts_with(b"HTTP/1.1 200"),
        "no response to a half head"
    );
    // The idle watchdog did not do it: hyper's header timeout did.
    assert_eq!(server.stats.connections_idle_closed(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn silent_connection_is_closed_by_idle_watchdog() {
    // Nothing at all is sent: hyper is still sniffing the protocol, where
    // its header timeout does not run. The watchdog must close it.
    let limits = ServerLimits {
        header_read_timeout_ms: 0,
        idle_timeout_ms: 300,
        ..ServerLimits::default()
    };
    let server = start(limits, echo).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(b"GE").await.expect("write");
    tokio::time::timeout(GENEROUS, read_until_closed(&mut stream))
        .await
        .expect("server disconnects");
    wait_for("idle counter", || {
        server.stats.connections_idle_closed() == 1
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let limits = ServerLimits {
        header_read_timeout_ms: 0,
        idle_timeout_ms: 300,
        ..ServerLimits::default()
    };
    let server = start(limits, echo).await;
    let (mut sender, conn) = h1_client(server.addr).await;
    let response = sender.send_request(get("/x")).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.expect("body");
    let started = Instant::now();
    tokio::time::timeout(GENEROUS, conn)
        .await
        .expect("server closes idle connection")
        .expect("client task");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed too early"
    );
    assert_eq!(server.stats.connections_idle_closed(), 1);
    wait_for("no active connection", || {
        server.stats.connections_active() == 0
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn client_that_stops_reading_is_closed() {
    let limits = ServerLimits {
        idle_timeout_ms: 300,
        ..ServerLimits::default()
    };
    let server = start(limits, |_request, _conn| async {
        let (tx, body) = channel_body(2);
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'z'; 64 * 1024]);
            while tx.send(Ok(chunk.clone())).await.is_ok() {}
        });
        Response::new(body)
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /endless HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    // Never read: socket buffers fill, writes stall, the watchdog fires.
    wait_for("idle close of a stalled writer", || {
        server.stats.connections_idle_closed() == 1
    })
    .await;
    drop(stream);
    server.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_when_none_is_idle() {
    let limits = ServerLimits {
        connections_max: 2,
        ..ServerLimits::default()
    };
    // Both connections are in a request: neither may be shed.
    let release = Arc::new(tokio::sync::Notify::new());
    let held = release.clone();
    let server = start(limits, move |_request, _conn| {
        let held = held.clone();
        async move {
            held.notified().await;
            Response::new(full("released"))
        }
    })
    .await;
    let (mut first, _c1) = h1_client(server.addr).await;
    let (mut second, _c2) = h1_client(server.addr).await;
    let first_response = tokio::spawn(async move { first.send_request(get("/a")).await });
    let second_response = tokio::spawn(async move { second.send_request(get("/b")).await });
    wait_for("two active connections", || {
        server.stats.connections_active() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    let mut third = TcpStream::connect(server.addr)
        .await
        .expect("kernel accepts");
    let _ = third
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    let received = tokio::time::timeout(GENEROUS, read_until_closed(&mut third))
        .await
        .expect("closed");
    assert!(received.is_empty(), "a refused connection gets no response");
    assert_eq!(server.stats.connections_refused_over_limit(), 1);
    assert_eq!(server.stats.connections_accepted(), 2);
    assert_eq!(server.stats.connections_shed_idle(), 0);

    release.notify_waiters();
    for response in [first_response, second_response] {
        let response = response.await.expect("task").expect("response");
        assert_eq!(response.status(), StatusCode::OK);
    }
    server.shutdown().await;
}

/// Many silent connections from one address: a client elsewhere is still
/// served at once (an idle one is shed for it), and every silent one is
/// closed within the header timeout of its accept.
#[tokio::test]
async fn silent_connections_cannot_lock_clients_out() {
    let limits = ServerLimits {
        connections_max: 20,
        connections_per_address_max: 0,
        header_read_timeout_ms: 2_000,
        ..ServerLimits::default()
    };
    let server = start(limits, echo).await;
    let mut silent = Vec::new();
    for _ in 0..60 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    wait_for("the server full of silent connections", || {
        server.stats.connections_active() == 20
    })
    .await;
    // Idle long enough to be shed.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let started = Instant::now();
    let (mut sender, _conn) = h1_client_from(server.addr, "127.0.0.2").await;
    let response = tokio::time::timeout(Duration::from_secs(1), sender.send_request(get("/x")))
        .await
        .expect("served within a second")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(server.stats.connections_shed_idle() >= 1);
    // Every silent connection is closed by the first-request deadline (or
    // was refused or shed): none outlives it by much.
    for mut stream in silent {
        tokio::time::timeout(Duration::from_secs(4), read_until_closed(&mut stream))
            .await
            .expect("a silent connection is closed within the header timeout");
    }
    assert!(server.stats.connections_first_request_timeout() >= 1);
    server.shutdown().await;
}

#[tokio::test]
async fn one_address_holds_at_most_its_share() {
    let limits = ServerLimits {
        connections_per_address_max: 5,
        ..ServerLimits::default()
    };
    // `/hold` stays in its handler until released: a connection in a
    // request is never shed, so the share is full whatever the timing.
    let release = Arc::new(tokio::sync::Notify::new());
    let held_up = release.clone();
    let server = start(limits, move |request: Request<Incoming>, _conn| {
        let held_up = held_up.clone();
        async move {
            if request.uri().path() == "/hold" {
                held_up.notified().await;
            }
            Response::new(full("ok"))
        }
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let (mut sender, conn) = h1_client(server.addr).await;
        held.push((
            tokio::spawn(async move {
                let response = sender.send_request(get("/hold")).await;
                (sender, response)
            }),
            conn,
        ));
    }
    wait_for("five connections", || {
        server.stats.connections_active() == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut sixth = TcpStream::connect(server.addr).await.expect("connect");
    let _ = sixth
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    let received = tokio::time::timeout(GENEROUS, read_until_closed(&mut sixth))
        .await
        .expect("closed");
    assert!(received.is_empty(), "over its share: no response");
    assert_eq!(server.stats.connections_refused_per_address(), 1);
    let (mut sender, _conn) = h1_client_from(server.addr, "127.0.0.2").await;
    let response = sender.send_request(get("/x")).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    // Once its connections sit idle, the address's own idle connection
    // makes room for a new one (a NAT's other user).
    release.notify_waiters();
    // The five stay open, idle (their senders kept).
    let mut idle = Vec::new();
    for (answered, conn) in held {
        let (sender, response) = answered.await.expect("task");
        assert_eq!(response.expect("response").status(), StatusCode::OK);
        idle.push((sender, conn));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (mut sender, _conn) = h1_client(server.addr).await;
    let response = sender.send_request(get("/y")).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(server.stats.connections_shed_idle() >= 1);
    server.shutdown().await;
}

/// RFC 9112 §3.2: an HTTP/1.1 request without exactly one valid Host is
/// answered 400; HTTP/1.0 may omit it.
#[tokio::test]
async fn host_lines_are_checked() {
    let server = start(ServerLimits::default(), echo).await;
    let cases: [(&[u8], &str); 6] = [
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", "HTTP/1.1 400"),
        (
            b"GET / HTTP/1.1\r\nHost: a.example:80\r\n\r\n",
            "HTTP/1.1 200",
        ),
        (b"GET / HTTP/1.0\r\n\r\n", "HTTP/1.0 200"),
    ];
    for (request, expected) in cases {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        stream.shutdown().await.expect("half-close");
        let received = tokio::time::timeout(GENEROUS, read_until_closed(&mut stream))
            .await
            .expect("answered");
        let head = String::from_utf8_lossy(&received);
        assert!(
            head.starts_with(expected),
            "{:?} → {head:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(server.stats.requests_bad_host(), 4);
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_head_gets_431_and_server_keeps_serving() {
    let server = start(ServerLimits::default(), echo).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut request = b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 100 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let (mut reader, mut writer) = stream.split();
    // Write and read at once: the server answers before it has read it all.
    let write = async {
        let _ = writer.write_all(&request).await;
    };
    let read = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    let ((), received) = tokio::time::timeout(GENEROUS, async { tokio::join!(write, read) })
        .await
        .expect("answered");
    let head = String::from_utf8_lossy(&received);
    assert!(
        head.starts_with("HTTP/1.1 431") || head.starts_with("HTTP/1.1 400"),
        "got {head:?}"
    );

    let (mut sender, _conn) = h1_client(server.addr).await;
    let response = sender
        .send_request(get("/after"))
        .await
        .expect("still serving");
    assert_eq!(response.status(), StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_request_gets_400() {
    let server = start(ServerLimits::default(), echo).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"THIS IS NOT HTTP\r\n\r\n")
        .await
        .expect("write");
    let received = tokio::time::timeout(GENEROUS, read_until_closed(&mut stream))
        .await
        .expect("closed");
    let head = String::from_utf8_lossy(&received);
    assert!(head.starts_with("HTTP/1.1 400"), "got {head:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn panicking_handler_gets_500_and_server_survives() {
    let server = start(
        ServerLimits::default(),
        |request: Request<Incoming>, _conn| async move {
            if request.uri().path() == "/panic" {
                panic!("handler bug");
            }
            Response::new(full("fine"))
        },
    )
    .await;
    let (mut sender, _conn) = h1_client(server.addr).await;
    let response = sender.send_request(get("/panic")).await.expect("response");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    response.into_body().collect().await.expect("body");
    let response = sender
        .send_request(get("/ok"))
        .await
        .expect("same connection still works");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.stats.handler_panics(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let server = start(ServerLimits::default(), |_request, _conn| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Response::new(full("slow but complete"))
    })
    .await;
    let addr = server.addr;
    let (mut sender, _conn) = h1_client(addr).await;
    let in_flight = tokio::spawn(async move {
        let response = sender.send_request(get("/slow")).await.expect("response");
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
    });
    wait_for("request in flight", || {
        server.stats.connections_active() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.shutdown().await;
    let body = tokio::time::timeout(GENEROUS, in_flight)
        .await
        .expect("finishes")
        .expect("task");
    assert_eq!(&body[..], b"slow but complete");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener is closed after shutdown"
    );
}

#[tokio::test]
async fn shutdown_grace_is_bounded() {
    let limits = ServerLimits {
        shutdown_grace_ms: 200,
        ..ServerLimits::default()
    };
    let server = start(limits, |_request, _conn| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Response::new(full("never"))
    })
    .await;
    let (mut sender, _conn) = h1_client(server.addr).await;
    let in_flight = tokio::spawn(async move { sender.send_request(get("/stuck")).await });
    wait_for("request in flight", || {
        server.stats.connections_active() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    server.shutdown().await;
    assert!(started.elapsed() < GENEROUS);
    let outcome = tokio::time::timeout(GENEROUS, in_flight)
        .await
        .expect("client sees the end")
        .expect("task");
    assert!(outcome.is_err(), "the stuck request was cut off");
}

/// The egress cap holds across connections: two clients together cannot
/// get more than burst + rate × time. (A lower bound on time only: a slow
/// machine makes it pass more easily, never fail.)
#[tokio::test]
async fn egress_cap_limits_all_connections_together() {
    const RATE: u64 = 4 * 1024 * 1024;
    const BODY: usize = 2 * 1024 * 1024;
    let limits = ServerLimits {
        egress_bytes_per_s: RATE,
        ..ServerLimits::default()
    };
    let running = start(limits, |_request, _conn| async {
        Response::new(full(Bytes::from(vec![7u8; BODY])))
    })
    .await;
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let addr = running.addr;
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            read_until_closed(&mut stream).await.len()
        }));
    }
    for client in clients {
        assert!(client.await.unwrap() > BODY);
    }
    let elapsed = started.elapsed().as_secs_f64();
    // 4 MiB in total at 4 MiB/s with a 205 KiB burst: at least ~0.9 s.
    let floor = (2 * BODY) as f64 / RATE as f64 * 0.85;
    assert!(
        elapsed >= floor,
        "4 MiB went out in {elapsed:.2} s, faster than the cap allows"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_drain_says_so_keeps_accepting_for_its_delay_then_closes() {
    let (listener, addr) = bind("127.0.0.1:0").await.expect("bind");
    let limits = ServerLimits {
        drain_delay_ms: 700,
        ..ServerLimits::default()
    };
    let lifecycle = shoal_server::Lifecycle::new();
    lifecycle.set_ready();
    let exchanges = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = exchanges.clone();
    let server = Server::new(listener, limits)
        .with_lifecycle(lifecycle.clone())
        .with_observer(Arc::new(move |exchange| {
            seen.lock().unwrap().push(exchange)
        }));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(echo, async move {
        let _ = stopped.await;
    }));
    let (mut sender, _conn) = h1_client(addr).await;
    let response = sender.send_request(get("/before")).await.expect("response");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();

    let _ = stop.send(());
    wait_for("draining", || lifecycle.is_draining()).await;
    assert_eq!(
        lifecycle.readyz(None).status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Within the delay a new client still gets an answer.
    let (mut late, _late_conn) = h1_client(addr).await;
    let response = late.send_request(get("/during")).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    tokio::time::timeout(GENEROUS, task)
        .await
        .expect("server stops")
        .expect("server task");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "closed after the delay"
    );

    let exchanges = exchanges.lock().unwrap();
    let first = exchanges
        .iter()
        .find(|e| e.target == "/before")
        .expect("recorded");
    assert_eq!(first.status, 200);
    assert_eq!(first.body_bytes_sent, body.len() as u64);
    assert_eq!(first.outcome, shoal_server::Outcome::Complete);
    assert_eq!(first.method, http::Method::GET);
}
