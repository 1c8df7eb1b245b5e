//! Graceful shutdown: stop accepting, finish what is in flight.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use pointlock::core::{KeyedLock, Policy};
use pointlock::server::app::{build_app, service};
use pointlock::server::clock::SystemClock;
use support::app::drain;
use support::{patient, ProbeStore, Served};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_then_returns() {
    let gate = Arc::new(Semaphore::new(0));
    let store = ProbeStore::new(0).with_gate(gate.clone());
    let mut entered = store.entered();
    let lock = KeyedLock::new();
    let svc = service(
        Arc::new(store),
        Policy::default(),
        Arc::new(SystemClock::default()),
        lock.clone(),
    );
    let app = build_app(svc, &patient());
    let mut server = Served::start(app, drain(Duration::from_secs(10))).await;
    let addr = server.addr;

    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"PATCH /point/1/charge HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n50")
        .await
        .unwrap();
    entered.recv().await.unwrap();
    server.stop();
    // New connections are refused once the accept loop has stopped.
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "still accepting after shutdown");
    assert!(!server.is_finished(), "waits for the in-flight request");
    gate.add_permits(1);
    let mut response = vec![0; 1024];
    let n = raw.read(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(
        response.starts_with(&format!("HTTP/1.1 {}", StatusCode::OK.as_u16())),
        "{response}"
    );
    assert!(response.contains(r#""point":50"#), "{response}");
    drop(raw);
    tokio::time::timeout(Duration::from_secs(10), server.finished())
        .await
        .expect("serve returns after draining")
        .unwrap();
    assert!(lock.is_empty());
}
