//! HTTP from the tests' side: a hyper client, and raw HTTP/1.1 on a
//! connection of its own (blocking, for the binary's tests on threads; async,
//! for what no client library would send or to watch the connection itself).

use std::io::{Read as _, Write as _};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The hyper client of the in-process tests (HTTP/1.1, pooled).
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// A [`Client`] that keeps up to 256 idle connections per server (the
/// concurrency tests send a hundred requests at once).
pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http()
}

/// How long a raw request waits for its answer: longer than the server's own
/// 10 s request deadline, so a slow answer is seen rather than cut off.
pub const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// `method path` with extra header lines (each ending in `\r\n`) and `body` on
/// a connection of its own (`connection: close`): the whole answer as text
/// (status line, headers, body), or `None` if the connection failed (the
/// server is gone).
pub fn exchange(addr: &str, method: &str, path: &str, headers: &str, body: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(ANSWER_WAIT)).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{headers}\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// [`exchange`] that must be answered.
pub fn send(addr: &str, method: &str, path: &str, headers: &str, body: &str) -> String {
    exchange(addr, method, path, headers, body).expect("the server answers")
}

/// An answer's status, head (status line and headers) and body.
pub fn split(response: &str) -> Option<(u16, &str, &str)> {
    let status = response.get(9..12)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((status, head, body))
}

/// A JSON request on its own connection: `Some((status, body))`, or `None` if
/// the connection failed (the server is gone).
pub fn request(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let headers = "content-type: application/json\r\n";
    let response = exchange(addr, method, path, headers, body)?;
    let (status, _, body) = split(&response)?;
    Some((status, body.to_owned()))
}

/// `GET path`, which must answer 200 with JSON.
pub fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let (status, body) = request(addr, "GET", path, "").expect("server answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A user's whole history, oldest first, following the `Link: <...>;
/// rel="next"` of each page (an answer holds at most
/// `HISTORY_PAGE_MAX` rows), as one JSON array; each page must answer 200.
pub fn get_history(addr: &str, user: u64) -> serde_json::Value {
    let mut rows = Vec::new();
    let mut path = format!("/point/{user}/histories");
    // Bounded: a hundred pages are a million rows, more than any test writes.
    for _ in 0..100 {
        let response = send(addr, "GET", &path, "", "");
        let (status, head, body) = split(&response).expect("an HTTP answer");
        assert_eq!(status, 200, "GET {path}: {body}");
        let page: Vec<serde_json::Value> = serde_json::from_str(body).expect("a JSON array");
        rows.extend(page);
        let next = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("link")
                .then(|| next_link_target(value.trim()))
                .flatten()
                .map(str::to_owned)
        });
        match next {
            Some(next) => path = next,
            None => return serde_json::Value::Array(rows),
        }
    }
    panic!("user {user}: more than 100 history pages")
}

/// The target of a `Link: <target>; rel="next"` header value, the one form
/// the history's pages send; `None` for any other value.
pub fn next_link_target(link: &str) -> Option<&str> {
    Some(link.strip_prefix('<')?.split_once(">; rel=\"next\"")?.0)
}

/// Read from a raw connection until `needle` shows up or the peer closes; bounded
/// to 10 s so a test can never hang on a connection the server keeps open.
pub async fn read_until(raw: &mut tokio::net::TcpStream, needle: &str) -> String {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0_u8; 4096];
        loop {
            match raw.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if String::from_utf8_lossy(&buf).contains(needle) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// What a read from a connection came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// The server closed the connection (with these bytes before).
    Closed(Vec<u8>),
    /// Nothing more within the wait (the connection is still open).
    Open(Vec<u8>),
}

/// Read until the server closes the connection or `wait` passes.
pub async fn read_for(stream: &mut tokio::net::TcpStream, wait: Duration) -> Read {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Read::Open(got),
            Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// One request on a fresh connection (`connection: close`) with extra header
/// lines; the answer's status and body.
pub async fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
    body: &[u8],
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}content-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    match read_for(&mut stream, Duration::from_secs(10)).await {
        Read::Closed(bytes) => status_and_body(&bytes),
        Read::Open(bytes) => panic!("no answer: {}", String::from_utf8_lossy(&bytes)),
    }
}

/// The status (0 if none) and body of an answer's bytes.
pub fn status_and_body(bytes: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
