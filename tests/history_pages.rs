//! `GET /point/{id}/histories` in bounded pages, over real loopback HTTP
//! (server/src/routes/page.rs says what the route takes): the course's
//! unparameterised answer up to the cap, a `Link: rel="next"` past it,
//! `limit`/`after` pages that walk the history exactly once, 400
//! `INVALID_QUERY` before any lock, and the user free while a large body is
//! still being sent. The paging runs on every store (the SQL stores read only
//! the page).

mod support;

use std::sync::Arc;

use http::StatusCode;
use pointlock::core::{Amount, KeyedLock, ManualClock, PointService, PointStore, Policy, UserId};
use pointlock::server::routes::HISTORY_PAGE_MAX;
use serde_json::Value;
use support::http::next_link_target;
use support::{patient, Backend, ProbeStore, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// `rows` history rows for user 1 written through a service of its own over
/// `store` (alternating charge and use of 1, so the balance stays in bounds).
async fn seed(store: &Arc<ProbeStore>, rows: usize) {
    let service = PointService::new(
        Arc::clone(store) as Arc<dyn PointStore>,
        Policy::default(),
        Arc::new(ManualClock::new(1_733_000_000_000)),
    );
    let user = UserId::new(1).expect("id");
    let one = Amount::new(1).expect("amount");
    for row in 0..rows {
        let held = Arc::new(service.lock().lock(user).await);
        if row % 2 == 0 {
            service.charge(held, one).await.expect("charge");
        } else {
            service.use_points(held, one).await.expect("use");
        }
    }
}

/// The `next` target of a `Link` header, if the reply has one.
fn next_of(reply: &support::app::Reply) -> Option<String> {
    let link = reply.headers.get("link")?.to_str().expect("ASCII");
    next_link_target(link).map(str::to_owned)
}

/// Follow `next` from `first` to the end: the rows and the pages' sizes.
async fn walk(server: &TestServer, first: &str) -> (Vec<Value>, Vec<usize>) {
    let (mut rows, mut sizes) = (Vec::new(), Vec::new());
    let mut path = Some(first.to_owned());
    while let Some(at) = path {
        let reply = server.get(&at).await;
        assert_eq!(reply.status, StatusCode::OK, "{at}: {}", reply.json);
        let page = reply.json.as_array().expect("an array").clone();
        sizes.push(page.len());
        rows.extend(page);
        path = next_of(&reply);
        assert!(sizes.len() <= 100, "a bounded walk");
    }
    (rows, sizes)
}

fn ids(rows: &[Value]) -> Vec<u64> {
    rows.iter()
        .map(|row| row["id"].as_u64().expect("id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_the_course_answer_is_capped_and_links_to_the_rest() {
    let rows = 2 * HISTORY_PAGE_MAX + 5_000;
    let store = Arc::new(ProbeStore::on(Backend::Memory, 0).await);
    seed(&store, rows).await;
    let server =
        TestServer::start_shared(store, patient(), KeyedLock::new(), Policy::default(), true).await;

    // The unparameterised answer: the first HISTORY_PAGE_MAX rows, oldest
    // first, and where the rest starts.
    let first = server.get("/point/1/histories").await;
    let page = first.json.as_array().expect("an array");
    assert_eq!(page.len(), HISTORY_PAGE_MAX);
    let last = page[HISTORY_PAGE_MAX - 1]["id"].as_u64().expect("id");
    assert_eq!(
        next_of(&first).as_deref(),
        Some(format!("/point/1/histories?after={last}").as_str())
    );

    // Following the links walks every row once, in order.
    let (walked, sizes) = walk(&server, "/point/1/histories").await;
    assert_eq!(sizes, [HISTORY_PAGE_MAX, HISTORY_PAGE_MAX, 5_000]);
    let walked_ids = ids(&walked);
    assert_eq!(walked_ids.len(), rows);
    assert!(
        walked_ids.windows(2).all(|w| w[0] < w[1]),
        "ascending, no repeat"
    );

    // A client's own limit is kept in every link.
    let (limited, sizes) = walk(&server, "/point/1/histories?limit=7000").await;
    assert_eq!(sizes, [7_000, 7_000, 7_000, 4_000]);
    assert_eq!(ids(&limited), walked_ids);
    let second = server
        .get(&format!(
            "/point/1/histories?limit=7000&after={}",
            walked_ids[6_999]
        ))
        .await;
    assert_eq!(
        next_of(&second),
        Some(format!(
            "/point/1/histories?limit=7000&after={}",
            walked_ids[13_999]
        ))
    );
    // A page ending exactly at the last row has no next.
    let exact = server
        .get(&format!(
            "/point/1/histories?limit=5000&after={}",
            walked_ids[19_999]
        ))
        .await;
    assert_eq!(exact.json.as_array().expect("an array").len(), 5_000);
    assert_eq!(next_of(&exact), None);
}

/// The page tests on one store: a short history is the course's plain array
/// (no `Link`), and small pages walk it whole.
async fn small_pages_walk_the_history_on(backend: Backend) {
    let server = TestServer::start(ProbeStore::on(backend, 0).await, patient()).await;
    for amount in 1..=10 {
        assert_eq!(server.charge(1, amount).await.status, StatusCode::OK);
    }
    let whole = server.get("/point/1/histories").await;
    assert_eq!(whole.json.as_array().expect("an array").len(), 10);
    assert!(whole.headers.get("link").is_none(), "{:?}", whole.headers);

    let (walked, sizes) = walk(&server, "/point/1/histories?limit=3").await;
    assert_eq!(sizes, [3, 3, 3, 1]);
    assert_eq!(walked, *whole.json.as_array().expect("an array"));
    let amounts: Vec<u64> = walked
        .iter()
        .map(|row| row["amount"].as_u64().unwrap())
        .collect();
    assert_eq!(amounts, (1..=10).collect::<Vec<_>>());
    // Another user's rows never appear in the pages, and `after` past the end is empty.
    assert_eq!(server.charge(2, 5).await.status, StatusCode::OK);
    let last = walked[9]["id"].as_u64().unwrap();
    let past = server
        .get(&format!("/point/1/histories?after={last}"))
        .await;
    assert_eq!(past.json, serde_json::json!([]));
    assert!(past.headers.get("link").is_none());
}

on_every_store! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    small_pages_walk_the_history / sqlite_small_pages_walk_the_history / pg_small_pages_walk_the_history => small_pages_walk_the_history_on;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_query_is_400_at_once_without_waiting_for_the_user() {
    let gate = Arc::new(Semaphore::new(0));
    let store = ProbeStore::on(Backend::Memory, 0)
        .await
        .with_gate(gate.clone());
    let server = Arc::new(TestServer::start(store, patient()).await);
    let holder = server.spawn_charge(1, 5);
    server.wait_for_lock("the holder", |l| l.len() == 1).await;
    for bad in [
        "limit=0",
        "limit=10001",
        "limit=x",
        "after=-1",
        "limit=1&limit=2",
    ] {
        let reply = server.get(&format!("/point/1/histories?{bad}")).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            reply.json
        );
        assert_eq!(reply.json["code"], "INVALID_QUERY", "{bad}");
    }
    assert_eq!(
        server.lock.waiters(),
        0,
        "no refused read queued for the user"
    );
    gate.add_permits(1_000);
    assert_eq!(holder.await.unwrap().status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_is_free_while_a_full_page_is_still_being_sent() {
    let store = Arc::new(ProbeStore::on(Backend::Memory, 0).await);
    seed(&store, HISTORY_PAGE_MAX + 1).await;
    let server =
        TestServer::start_shared(store, patient(), KeyedLock::new(), Policy::default(), true).await;
    // A client with a small receive window asks for the capped page (about
    // 900 KB) and reads only the start of the answer.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4_096).expect("buffer");
    let mut slow = socket.connect(server.addr).await.expect("connect");
    slow.write_all(b"GET /point/1/histories HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("request");
    let mut head = [0u8; 512];
    let n = slow.read(&mut head).await.expect("the answer starts");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
    // With its body unread, the user's lock is free and the user's next
    // change is served.
    assert_eq!(
        server.lock.len(),
        0,
        "no user locked while the body is sent"
    );
    assert_eq!(server.use_points(1, 1).await.status, StatusCode::OK);
    drop(slow);
}
