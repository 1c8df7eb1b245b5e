//! Hostile clients: each connection limit against the client
//! it exists for, over raw TCP on loopback, and the server still answering
//! everyone else afterwards.
//!
//! - a client that never finishes its headers is cut off after the header
//!   timeout, and so is an idle kept-alive connection;
//! - a head over the limit gets 431 JSON and a closed connection; one too large
//!   for hyper's buffer gets hyper's bare 431 and a closed connection;
//! - a client still sending a body over the limit reads its 413 (a lingering
//!   close), not a reset;
//! - past `max_connections` new connections wait until one closes;
//! - HTTP/2: the stream limit is advertised and enforced, a rapid-reset flood
//!   and a CONTINUATION flood end their connection, not the server;
//! - request smuggling (Content-Length with Transfer-Encoding), invalid UTF-8,
//!   deep JSON and huge numbers get a 4xx each and change nothing.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pointlock::core::{KeyedLock, MemoryStore, PointService, PointStore, Policy};
use pointlock::server::app::{build_app, ServeOptions};
use pointlock::server::clock::SystemClock;
use pointlock::server::AppOptions;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::http::{raw_request, read_for, status_and_body, Read};
use support::Served;

/// A server over a memory store with `serve` options; dropped: shut down.
async fn start(serve: ServeOptions) -> Served {
    let store: Arc<dyn PointStore> = Arc::new(MemoryStore::new());
    let service = Arc::new(PointService::with_lock(
        store,
        Policy::default(),
        Arc::new(SystemClock::default()),
        KeyedLock::new(),
    ));
    let app = build_app(
        service,
        &AppOptions {
            header_limit_bytes: serve.header_limit_bytes,
            ..AppOptions::default()
        },
    );
    Served::start(app, serve).await
}

fn quick() -> ServeOptions {
    ServeOptions {
        drain: Duration::from_secs(1),
        header_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    }
}

async fn healthy(addr: SocketAddr) {
    assert_eq!(raw_request(addr, "GET", "/health", "", b"").await.0, 200);
}

async fn balance(addr: SocketAddr, user: u64) -> (u64, usize) {
    let (_, point) = raw_request(addr, "GET", &format!("/point/{user}"), "", b"").await;
    let (_, rows) = raw_request(addr, "GET", &format!("/point/{user}/histories"), "", b"").await;
    let point: serde_json::Value = serde_json::from_str(&point).unwrap();
    let rows: serde_json::Value = serde_json::from_str(&rows).unwrap();
    (
        point["point"].as_u64().unwrap(),
        rows.as_array().unwrap().len(),
    )
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let server = start(quick()).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // The server's timer ends it (300 ms); the bound here only stops a hang.
    assert!(matches!(
        read_for(&mut slow, Duration::from_secs(10)).await,
        Read::Closed(_)
    ));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the timeout"
    );
    // A connection that never sends a byte goes the same way.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(matches!(
        read_for(&mut silent, Duration::from_secs(10)).await,
        Read::Closed(_)
    ));
    healthy(server.addr).await;
}

#[tokio::test]
async fn negative_control_without_a_short_header_timeout_the_slow_client_stays() {
    let server = start(ServeOptions {
        header_timeout: Duration::from_secs(3_600),
        ..quick()
    })
    .await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    assert!(matches!(
        read_for(&mut slow, Duration::from_secs(1)).await,
        Read::Open(_)
    ));
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let server = start(quick()).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The answer comes, then, with nothing more sent, the close.
    match read_for(&mut conn, Duration::from_secs(10)).await {
        Read::Closed(bytes) => assert_eq!(status_and_body(&bytes).0, 200),
        Read::Open(bytes) => panic!("kept open: {}", String::from_utf8_lossy(&bytes)),
    }
}

#[tokio::test]
async fn a_busy_kept_alive_connection_lives_past_its_first_heads_deadline() {
    // One timer per connection, armed by the first head (300 ms): a head read
    // later must get its own 300 ms, and the idle close must count from the
    // last answer.
    let server = start(quick()).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    for _ in 0..4 {
        conn.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // The answer, and the connection still open after it (about 150 ms).
        match read_for(&mut conn, Duration::from_millis(150)).await {
            Read::Open(bytes) => assert_eq!(status_and_body(&bytes).0, 200),
            Read::Closed(bytes) => panic!(
                "closed {:?} in, after {} bytes",
                started.elapsed(),
                bytes.len()
            ),
        }
    }
    // Four rounds of about 150 ms: past the first head's deadline.
    assert!(started.elapsed() >= Duration::from_millis(550));
    let idle = Instant::now();
    assert!(matches!(
        read_for(&mut conn, Duration::from_secs(10)).await,
        Read::Closed(_)
    ));
    assert!(
        idle.elapsed() >= Duration::from_millis(100),
        "closed {:?} after the last answer, not a timeout after it",
        idle.elapsed()
    );
}

#[tokio::test]
async fn a_head_over_the_limit_gets_431_json_and_a_closed_connection() {
    let server = start(quick()).await;
    // 16 KiB of headers in one line: the 64 KiB line is over it too.
    for size in [20 * 1024, 60 * 1024] {
        let line = format!("x-big: {}\r\n", "a".repeat(size));
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(
            format!(
                "PATCH /point/1/charge HTTP/1.1\r\nhost: x\r\n{line}content-length: 3\r\n\r\n100"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        // Closed by the server although the client asked for nothing of the kind.
        let Read::Closed(bytes) = read_for(&mut conn, Duration::from_secs(10)).await else {
            panic!("the connection stays open after a 431");
        };
        let (status, body) = status_and_body(&bytes);
        assert_eq!(status, 431, "{size}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["code"], "HEADERS_TOO_LARGE");
        let head = String::from_utf8_lossy(&bytes).to_lowercase();
        assert!(head.contains("connection: close"), "{head}");
    }
    // Past hyper's buffer (4 x the limit): hyper's bare 431, connection closed.
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let huge = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\nx-huge: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let _ = conn.write_all(huge.as_bytes()).await;
    let Read::Closed(bytes) = read_for(&mut conn, Duration::from_secs(10)).await else {
        panic!("open after a head larger than the buffer");
    };
    assert_eq!(status_and_body(&bytes).0, 431);
    // Within the limit: served; nothing above changed anything.
    let line = format!("x-fine: {}\r\n", "a".repeat(15 * 1024));
    assert_eq!(
        raw_request(server.addr, "PATCH", "/point/1/charge", &line, b"7")
            .await
            .0,
        200
    );
    assert_eq!(balance(server.addr, 1).await, (7, 1));
}

/// A client that sends a body over the limit and goes on sending it while the
/// server answers: it reads the 413, not a reset (the server reads and drops
/// what is still coming before it closes: a lingering close). The client
/// writes the whole body before it reads, as a simple client does.
#[tokio::test]
async fn a_client_still_sending_an_oversized_body_reads_its_413() {
    let served = start(quick()).await;
    for round in 0..5 {
        let mut stream = TcpStream::connect(served.addr).await.unwrap();
        let body = vec![b'1'; 16 << 20];
        let head = format!(
            "PATCH /point/1/charge HTTP/1.1\r\nhost: x\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // The 413 is sent as soon as the head is read; the body follows it.
        let sent = stream.write_all(&body).await;
        assert!(sent.is_ok(), "round {round}: writing the body: {sent:?}");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer),
        )
        .await
        .expect("the server closes after its answer");
        assert!(read.is_ok(), "round {round}: reading the answer: {read:?}");
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, 413, "round {round}: {body}");
        assert!(body.contains("PAYLOAD_TOO_LARGE"), "{body}");
    }
    assert_eq!(balance(served.addr, 1).await, (0, 0), "nothing changed");
}

#[tokio::test]
async fn past_max_connections_a_new_connection_waits_until_one_closes() {
    let server = start(ServeOptions {
        max_connections: 2,
        header_timeout: Duration::from_secs(60),
        ..quick()
    })
    .await;
    // Two kept-alive connections, each served once (so both are accepted).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let Read::Open(bytes) = read_for(&mut conn, Duration::from_millis(300)).await else {
            panic!("closed");
        };
        assert_eq!(status_and_body(&bytes).0, 200);
        held.push(conn);
    }
    // A third: the kernel completes the handshake (backlog), the server does
    // not accept it, so its request is not answered while both are held.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_for(&mut third, Duration::from_millis(500)).await,
        Read::Open(Vec::new())
    );
    // The held ones are still served.
    held[0]
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let Read::Open(bytes) = read_for(&mut held[0], Duration::from_millis(300)).await else {
        panic!("closed");
    };
    assert_eq!(status_and_body(&bytes).0, 200);
    // One closes: the third is accepted and answered.
    drop(held.pop());
    let Read::Closed(bytes) = read_for(&mut third, Duration::from_secs(10)).await else {
        panic!("never answered after a slot freed");
    };
    assert_eq!(status_and_body(&bytes).0, 200);
}

#[tokio::test]
async fn smuggling_bad_utf8_deep_json_and_huge_numbers_get_4xx_and_change_nothing() {
    let server = start(quick()).await;
    // Content-Length and Transfer-Encoding together: refused (411: bodies must
    // come with a Content-Length), the connection closed, the rest unread.
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(
        b"PATCH /point/1/charge HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\
          transfer-encoding: chunked\r\n\r\n3\r\n100\r\n0\r\n\r\n\
          PATCH /point/1/charge HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\n999",
    )
    .await
    .unwrap();
    let Read::Closed(bytes) = read_for(&mut conn, Duration::from_secs(10)).await else {
        panic!("the connection stays open after a smuggling attempt");
    };
    let (status, body) = status_and_body(&bytes);
    assert_eq!(status, 411, "{body}");
    assert!(body.contains("LENGTH_REQUIRED"), "{body}");
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(
        text.matches("HTTP/1.1").count(),
        1,
        "one answer, the smuggled request unread: {text}"
    );
    // Bodies that are not a valid amount.
    let deep = format!("{}1{}", "[".repeat(2_000), "]".repeat(2_000));
    let bodies: Vec<&[u8]> = vec![
        b"\xff\xfe\x00",
        b"{\"amount\": \"\xc3\x28\"}",
        deep.as_bytes(),
        b"{\"amount\":{\"amount\":{\"amount\":1}}}",
        b"1e400",
        b"99999999999999999999999999999999",
        b"{\"amount\":18446744073709551616}",
        b"-0",
        b"NaN",
    ];
    for body in bodies {
        let (status, answer) = raw_request(server.addr, "PATCH", "/point/1/charge", "", body).await;
        assert_eq!(
            status,
            400,
            "{}: {answer}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
        let json: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert!(
            json["code"].as_str().unwrap().starts_with("INVALID"),
            "{answer}"
        );
    }
    assert_eq!(balance(server.addr, 1).await, (0, 0));
    healthy(server.addr).await;
}

// HTTP/2 (h2c, prior knowledge).

async fn h2_client(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    (client, driver)
}

fn h2_get(path: &str) -> http::Request<()> {
    http::Request::builder()
        .uri(format!("http://x{path}"))
        .body(())
        .unwrap()
}

#[tokio::test]
async fn h2_the_stream_limit_is_advertised_and_requests_are_served() {
    let server = start(ServeOptions {
        h2_max_concurrent_streams: 7,
        ..quick()
    })
    .await;
    let (client, _driver) = h2_client(server.addr).await;
    let mut client = client.ready().await.unwrap();
    let (response, _) = client.send_request(h2_get("/health"), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    // The server's SETTINGS arrived with the first answer.
    assert_eq!(client.current_max_send_streams(), 7);
}

#[tokio::test]
async fn h2_a_rapid_reset_flood_ends_its_connection_and_not_the_server() {
    let server = start(quick()).await;
    let (mut client, driver) = h2_client(server.addr).await;
    let mut sent = 0;
    for _ in 0..5_000 {
        let Ok(ready) = client.clone().ready().await else {
            break;
        };
        client = ready;
        let Ok((response, mut stream)) = client.send_request(h2_get("/health"), false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        drop(response);
        sent += 1;
    }
    // The server ends the connection (GOAWAY, then close: h2's bound on
    // streams reset before the server took them), and serves everyone else.
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(
        matches!(ended, Ok(Ok(Err(_)))),
        "the flooding connection was not ended by the server: {ended:?} after {sent} resets"
    );
    healthy(server.addr).await;
}

/// An HTTP/2 frame: length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test]
async fn h2_a_continuation_flood_ends_its_connection_and_not_the_server() {
    let server = start(quick()).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                       // HEADERS without END_HEADERS: ":method GET" (indexed 2), ":path /" (4),
                                       // ":scheme http" (6), then a literal header that never ends.
    out.extend(frame(0x1, 0x1, 1, &[0x82, 0x84, 0x86]));
    conn.write_all(&out).await.unwrap();
    // CONTINUATION frames of junk header bytes, 16 KiB each, until the server
    // stops reading or hangs up (at most 64 MiB).
    let junk = frame(0x9, 0, 1, &[0x40; 16 * 1024]);
    let mut written = 0usize;
    let cut = loop {
        match tokio::time::timeout(Duration::from_secs(5), conn.write_all(&junk)).await {
            Ok(Ok(())) if written < 64 * 1024 * 1024 => written += junk.len(),
            Ok(Ok(())) => break false,
            Ok(Err(_)) | Err(_) => break true,
        }
    };
    assert!(cut, "the server kept reading 64 MiB of CONTINUATION frames");
    assert!(
        written < 4 * 1024 * 1024,
        "read {written} bytes of one header block"
    );
    healthy(server.addr).await;
}
