//! The test PostgreSQL: a fresh database per test in the cluster that
//! `./scripts/test.sh` starts (`scripts/pg-cluster.sh`), found through
//! `POINTLOCK_TEST_PG_URL`.
//!
//! Without that variable the PostgreSQL tests are skipped (they pass after a
//! note on stderr), except under `CI=true`, where they fail: CI must run them.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio_postgres::NoTls;

/// The variable that names the test cluster (a superuser's URL).
pub const URL_VAR: &str = "POINTLOCK_TEST_PG_URL";

/// The test cluster's URL, or `None` when the PostgreSQL tests are to be skipped.
/// Panics when it is unset under `CI=true`.
pub fn cluster_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "{URL_VAR} is unset, but CI=true: the PostgreSQL tests must run in CI \
             (./scripts/test.sh starts a cluster and sets it)"
        ),
        _ => {
            eprintln!("skipped: {URL_VAR} is unset (./scripts/test.sh starts a cluster)");
            None
        }
    }
}

/// Whether to skip a test on PostgreSQL: `POINTLOCK_TEST_PG_URL` is unset (a note
/// goes to stderr). Panics instead under `CI=true`.
pub fn postgres_skipped() -> bool {
    cluster_url().is_none()
}

/// A database of its own in the test cluster, dropped (best effort) with this value.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// `CREATE DATABASE pl_<random hex>` in the cluster at `POINTLOCK_TEST_PG_URL`.
    /// Panics when the variable is unset (check [`cluster_url`] first to skip).
    pub async fn create() -> Self {
        let admin_url = std::env::var(URL_VAR).unwrap_or_else(|_| {
            panic!("{URL_VAR} is unset (./scripts/test.sh starts a cluster and sets it)")
        });
        let name = format!("pl_{:016x}", random_u64());
        let url = with_database(&admin_url, &name);
        let client = connect(&admin_url).await;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} at {admin_url}: {e}"));
        Self {
            admin_url,
            name,
            url,
        }
    }

    /// [`create`](Self::create) outside any runtime (the tests of the binary
    /// are synchronous), on a thread and runtime of its own.
    pub fn create_blocking() -> Self {
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(Self::create())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// [`create_blocking`](Self::create_blocking), left in the cluster
    /// rather than dropped: a database's drop forces a checkpoint, seconds
    /// after a heavy load, and the cluster is thrown away after the tests
    /// anyway. Its URL.
    pub fn create_left() -> String {
        let database = Self::create_blocking();
        let url = database.url.clone();
        std::mem::forget(database);
        url
    }

    /// The URL of this database (same user and server as the cluster's URL).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    /// `DROP DATABASE … WITH (FORCE)` (ends the sessions still on it), on a thread
    /// and runtime of its own: a drop may run inside or outside a runtime, even
    /// while the test's runtime shuts down. Failures are ignored; the cluster is
    /// thrown away anyway.
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), async {
                    let (client, connection) =
                        tokio_postgres::connect(&admin_url, NoTls).await.ok()?;
                    let connection = tokio::spawn(connection);
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let dropped = client.batch_execute(&sql).await;
                    drop(client);
                    let _ = connection.await;
                    dropped.ok()
                })
                .await
                .ok()
                .flatten()
            })
        });
        let _ = dropper.join();
    }
}

/// A client of `url` whose connection runs on the current runtime.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the test PostgreSQL at {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Wait until a session of `url`'s database waits for a lock (another
/// session holds a row the store's next statement needs). Bounded: fails the
/// test after ~10 s.
pub async fn until_a_session_waits_for_a_lock(url: &str) {
    let watcher = connect(url).await;
    for _ in 0..2_000 {
        let blocked: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if blocked > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("no session of {url} ever waited for a lock");
}

/// `url` with its database replaced by `name` (query parameters kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Unpredictable enough for names: the std's per-process random keys, the time
/// and a counter.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    std::process::id().hash(&mut hasher);
    COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut hasher);
    SystemTime::now().hash(&mut hasher);
    hasher.finish()
}
