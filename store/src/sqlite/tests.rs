//! The SQLite store as a whole: commits, batches, restarts, reads, the
//! condition, fail-stop, and the files it refuses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pointlock_core::{Amount, Change, KeyedLock, PointStore, TransactionType, UserId};
use rusqlite::Connection;

use super::open::APPLICATION_ID;
use super::*;

/// A charge of `amount` to `point`, computed from `point - amount`. Its guard
/// comes from a lock that excludes nothing: these tests drive the store alone.
fn change(user: u64, point: u64, amount: u64) -> Change {
    change_from(user, Some(point.saturating_sub(amount)), point, amount)
}

/// A charge to `point` whose condition is `expected` (`None`: unconditional).
pub(super) fn change_from(user: u64, expected: Option<u64>, point: u64, amount: u64) -> Change {
    let lock = KeyedLock::unsynchronized();
    let held = lock.try_lock(UserId::new(user).unwrap()).unwrap();
    Change::for_tests(
        Arc::new(held),
        expected,
        point,
        TransactionType::Charge,
        Amount::new(amount).unwrap(),
        1_000 + i64::try_from(user).unwrap(),
    )
}

fn id(raw: u64) -> UserId {
    UserId::new(raw).unwrap()
}

/// Options whose batches close only when full (the wait is far longer than
/// any test): batching becomes deterministic.
/// Batches of up to `ops` changes. The writer keeps collecting until the batch
/// is full or a 200 ms look at the queue finds nothing new: changes spawned
/// together land in one batch even on a loaded machine (with the server's
/// 50 µs look, a busy CI host split them and failed these tests), and a
/// batch that fills up closes at once.
fn batches_of(ops: usize) -> SqliteOptions {
    SqliteOptions {
        batch_ops_max: ops,
        batch_wait: Duration::from_secs(30),
        batch_idle: Duration::from_millis(200),
        ..SqliteOptions::default()
    }
}

fn db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_gets_wal_the_schema_version_and_the_application_id() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    store.commit(change(1, 10, 10)).await.unwrap();
    drop(store);
    let conn = Connection::open(&path).unwrap();
    let get = |pragma: &str| -> String {
        conn.query_row(&format!("PRAGMA {pragma}"), [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
        .map(|v| format!("{v:?}"))
        .unwrap()
    };
    assert_eq!(get("journal_mode"), r#"Text("wal")"#);
    assert_eq!(get("user_version"), format!("Integer({SCHEMA_VERSION})"));
    assert_eq!(get("application_id"), format!("Integer({APPLICATION_ID})"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_balances_and_histories_and_ids_keep_increasing() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let first = store.commit(change(1, 100, 100)).await.unwrap();
    let second = store.commit(change(2, 5, 5)).await.unwrap();
    assert!(second.history.id > first.history.id);
    assert!(store.user_point(id(3)).await.unwrap().is_none());
    drop(store);

    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let point = store.user_point(id(1)).await.unwrap().unwrap();
    assert_eq!((point.point, point.update_millis), (100, 1_001));
    assert_eq!(store.histories(id(1)).await.unwrap(), vec![first.history]);
    assert_eq!(store.histories(id(2)).await.unwrap(), vec![second.history]);
    let third = store.commit(change(1, 150, 50)).await.unwrap();
    assert!(third.history.id > second.history.id, "ids never go back");
    let ids: Vec<u64> = store
        .histories(id(1))
        .await
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids, vec![first.history.id, third.history.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_of_different_users_share_one_transaction() {
    let (_dir, path) = db();
    let store = Arc::new(SqliteStore::open(&path, batches_of(20)).unwrap());
    let tasks: Vec<_> = (1..=20)
        .map(|user| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.commit(change(user, user, user)).await })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap().unwrap().history.id);
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20, "each change has its own history id");
    let stats = store.stats();
    assert_eq!((stats.batches, stats.ops, stats.batch_ops_max), (1, 20, 20));
    assert_eq!(stats.batch_ops_log2[4], 1, "one batch of 16..32");
    for user in 1..=20 {
        assert_eq!(
            store.user_point(id(user)).await.unwrap().unwrap().point,
            user
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_group_commit_every_change_is_its_own_transaction() {
    let (_dir, path) = db();
    let options = SqliteOptions::default().without_group_commit();
    let store = Arc::new(SqliteStore::open(&path, options).unwrap());
    let tasks: Vec<_> = (1..=10)
        .map(|user| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.commit(change(user, 1, 1)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = store.stats();
    assert_eq!((stats.batches, stats.ops, stats.batch_ops_max), (10, 10, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_change_does_not_fail_the_others_in_its_batch() {
    let (_dir, path) = db();
    let store = Arc::new(SqliteStore::open(&path, batches_of(10)).unwrap());
    // User 5's balance does not fit a SQLite INTEGER: its write fails inside
    // the batch, which is then retried one change at a time.
    let tasks: Vec<_> = (1..=10)
        .map(|user| {
            let store = Arc::clone(&store);
            let point = if user == 5 { u64::MAX } else { user };
            tokio::spawn(async move { store.commit(change_from(user, Some(0), point, 1)).await })
        })
        .collect();
    for (user, task) in (1..=10).zip(tasks) {
        let result = task.await.unwrap();
        if user == 5 {
            let error = result.unwrap_err();
            assert!(error.message().contains("does not fit"), "{error}");
        } else {
            assert_eq!(result.unwrap().user_point.point, user);
        }
    }
    let stats = store.stats();
    assert_eq!(
        (stats.batches, stats.batches_retried, stats.ops_failed),
        (1, 1, 1)
    );
    assert!(
        store.user_point(id(5)).await.unwrap().is_none(),
        "nothing of user 5"
    );
    assert!(store.histories(id(5)).await.unwrap().is_empty());
    for user in (1..=10).filter(|u| *u != 5) {
        assert_eq!(
            store.user_point(id(user)).await.unwrap().unwrap().point,
            user
        );
        assert_eq!(store.histories(id(user)).await.unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_wait_for_the_writer() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    store.commit(change(1, 7, 7)).await.unwrap();
    drop(store);
    let store = Arc::new(SqliteStore::open(&path, batches_of(2)).unwrap());
    // The writer now holds a lone change, waiting (a 200 ms look) for more.
    let pending = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.commit(change(2, 3, 3)).await })
    };
    let read = tokio::time::timeout(Duration::from_secs(10), store.user_point(id(1)));
    assert_eq!(read.await.unwrap().unwrap().map(|p| p.point), Some(7));
    // The second change completes the batch.
    store.commit(change(3, 4, 4)).await.unwrap();
    assert_eq!(pending.await.unwrap().unwrap().user_point.point, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_commits_what_is_queued_and_refuses_the_rest() {
    let (_dir, path) = db();
    let store = Arc::new(SqliteStore::open(&path, batches_of(1_000)).unwrap());
    let tasks: Vec<_> = (1..=50)
        .map(|user| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.commit(change(user, 9, 9)).await })
        })
        .collect();
    // The batch would keep collecting toward 1000 changes; closing ends it.
    let closing = Arc::clone(&store);
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .unwrap();
    let mut answered = Vec::new();
    for (user, task) in (1..=50).zip(tasks) {
        match task.await.unwrap() {
            Ok(_) => answered.push(user),
            Err(error) => assert!(error.message().contains("closed"), "{error}"),
        }
    }
    assert!(store.commit(change(99, 1, 1)).await.is_err());
    drop(store);
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    for user in 1..=50 {
        let found = store.user_point(id(user)).await.unwrap().is_some();
        assert_eq!(
            found,
            answered.contains(&user),
            "user {user}: all or nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_an_answer_sees_that_commit_while_a_tiny_cache_churns() {
    // One entry per shard and 64 users: shards are emptied all the time, while
    // readers fill entries from SQLite. Every read after an acknowledged
    // commit must still see that commit (never an older cached balance).
    let (_dir, path) = db();
    let options = SqliteOptions {
        balance_cache_max: CACHE_SHARDS,
        ..SqliteOptions::default()
    };
    let store = Arc::new(SqliteStore::open(&path, options).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|seed| {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut rng = fastrand_like(seed);
                while !stop.load(Ordering::Relaxed) {
                    store.user_point(id(1 + rng() % 64)).await.unwrap();
                }
            })
        })
        .collect();
    let writers: Vec<_> = (1..=64)
        .map(|user| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for point in 1..=30 {
                    let committed = store.commit(change(user, point, 1)).await.unwrap();
                    assert_eq!(committed.user_point.point, point);
                    let read = store.user_point(id(user)).await.unwrap();
                    assert_eq!(read.map(|p| p.point), Some(point), "user {user}");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    for user in 1..=64 {
        assert_eq!(store.user_point(id(user)).await.unwrap().unwrap().point, 30);
    }
}

/// A tiny xorshift generator (no dependency).
fn fastrand_like(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_leaves_the_cached_balance_correct() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    store.commit(change(1, 10, 10)).await.unwrap();
    assert!(store.commit(change(1, u64::MAX, 1)).await.is_err());
    assert_eq!(store.user_point(id(1)).await.unwrap().unwrap().point, 10);
    assert_eq!(store.histories(id(1)).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_after_close_even_when_cached() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    store.commit(change(1, 10, 10)).await.unwrap();
    store.close();
    let error = store.user_point(id(1)).await.unwrap_err();
    assert!(error.message().contains("closed"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_on_the_same_file_is_refused() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let error = SqliteStore::open(&path, SqliteOptions::default()).unwrap_err();
    assert!(matches!(error, OpenError::Locked { .. }), "{error}");
    assert!(error.to_string().contains("in use by another"), "{error}");
    drop(store);
    SqliteStore::open(&path, SqliteOptions::default()).unwrap();
}

fn refused_untouched(path: &Path) -> OpenError {
    let before = std::fs::read(path).unwrap();
    let error = SqliteStore::open(path, SqliteOptions::default()).unwrap_err();
    assert_eq!(std::fs::read(path).unwrap(), before, "the file was changed");
    assert!(error.to_string().contains(&path.display().to_string()));
    error
}

#[test]
fn a_garbage_file_is_refused_and_left_untouched() {
    let (_dir, path) = db();
    std::fs::write(&path, vec![0xA5_u8; 8_192]).unwrap();
    let error = refused_untouched(&path);
    assert!(matches!(error, OpenError::Corrupt { .. }), "{error}");
    assert!(!path.with_extension("db-wal").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_refused_and_left_untouched() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    for user in 1..=200 {
        store.commit(change(user, user, user)).await.unwrap();
    }
    drop(store); // checkpointed into the main file; no -wal left
                 // Scribble over the b-tree header of every page after the first.
    let mut bytes = std::fs::read(&path).unwrap();
    for page in bytes.chunks_mut(4_096).skip(1) {
        page[..16].fill(0xFF);
    }
    std::fs::write(&path, bytes).unwrap();
    let error = refused_untouched(&path);
    assert!(matches!(error, OpenError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("corrupt"), "{error}");
}

#[test]
fn another_applications_database_is_refused() {
    let (_dir, path) = db();
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE notes (body TEXT)")
        .unwrap();
    let error = refused_untouched(&path);
    assert!(matches!(error, OpenError::Foreign { .. }), "{error}");
}

#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let (_dir, path) = db();
    drop(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let error = refused_untouched(&path);
    assert!(matches!(error, OpenError::NewerSchema { .. }), "{error}");
    assert!(
        error.to_string().contains("newer than this build"),
        "{error}"
    );
}

#[test]
fn a_missing_directory_is_refused_and_nothing_created() {
    let (dir, _) = db();
    let path = dir.path().join("no/such/dir/p.db");
    let error = SqliteStore::open(&path, SqliteOptions::default()).unwrap_err();
    assert!(matches!(error, OpenError::Io { .. }), "{error}");
    assert!(!dir.path().join("no").exists());
}

#[test]
fn an_empty_file_is_migrated_once_and_reopening_migrates_nothing() {
    // An empty (0-byte) file is a version-0 database: migrated to the current
    // version; opening it again finds nothing to do (no "table exists" error).
    let (_dir, path) = db();
    std::fs::write(&path, b"").unwrap();
    drop(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
    drop(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN ('user_point', 'point_history')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_changes_from_the_same_read_one_applies_and_the_other_is_refused() {
    let (_dir, path) = db();
    // Not pipelined: the condition checked by the writer, inside the batch's
    // transaction (pipelined, the sequencing check refuses the second first:
    // pipeline_tests.rs).
    let options = SqliteOptions {
        pipeline: false,
        ..batches_of(2)
    };
    let store = Arc::new(SqliteStore::open(&path, options).unwrap());
    store.commit(change(1, 100, 100)).await.unwrap();
    // Both computed from 100 (a lock bypassed), committed in one batch: the
    // condition is checked inside the transaction, change by change.
    let tasks: Vec<_> = [(110, 10), (120, 20)]
        .into_iter()
        .map(|(point, amount)| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.commit(change(1, point, amount)).await })
        })
        .collect();
    let mut applied = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(committed) => applied.push(committed.user_point.point),
            Err(error) => {
                assert!(error.is_conflict(), "{error}");
                assert_eq!(error.code(), "WRITE_CONFLICT");
                refused += 1;
            }
        }
    }
    assert_eq!(
        (applied.len(), refused),
        (1, 1),
        "one applies, one is refused"
    );
    assert_eq!(store.stats().batches, 2, "the two shared one batch");
    assert_eq!(store.stats().conflicts, 1);
    let balance = store.user_point(id(1)).await.unwrap().unwrap().point;
    assert_eq!(balance, applied[0]);
    let history = store.histories(id(1)).await.unwrap();
    let sum: u64 = history.iter().map(|h| h.amount.get()).sum();
    assert_eq!((history.len(), sum), (2, balance), "balance == history");
    // A stale first balance of a user with no row is refused too.
    let stale = store
        .commit(change_from(2, Some(5), 6, 1))
        .await
        .unwrap_err();
    assert!(stale.is_conflict(), "{stale}");
    assert!(store.user_point(id(2)).await.unwrap().is_none());
    assert!(store.histories(id(2)).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_without_the_condition_the_same_two_changes_lose_an_update() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    store.commit(change_from(1, None, 100, 100)).await.unwrap();
    store.commit(change_from(1, None, 110, 10)).await.unwrap();
    store.commit(change_from(1, None, 120, 20)).await.unwrap();
    let history = store.histories(id(1)).await.unwrap();
    let sum: u64 = history.iter().map(|h| h.amount.get()).sum();
    let balance = store.user_point(id(1)).await.unwrap().unwrap().point;
    assert_eq!((sum, balance), (130, 120), "the +10 is in the history only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_stops_the_store_no_retry_writes_refused_reads_go_on() {
    let (_dir, path) = db();
    let fail = Arc::new(AtomicBool::new(false));
    let options = SqliteOptions {
        fail_commits: Some(Arc::clone(&fail)),
        ..batches_of(2)
    };
    let store = Arc::new(SqliteStore::open(&path, options).unwrap());
    store.commit(change(1, 10, 10)).await.unwrap();

    fail.store(true, Ordering::SeqCst);
    let tasks: Vec<_> = [2, 3]
        .into_iter()
        .map(|user| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.commit(change(user, 5, 5)).await })
        })
        .collect();
    for task in tasks {
        let error = task.await.unwrap().unwrap_err();
        assert_eq!(error.code(), "STORE_OUTCOME_UNKNOWN", "{error}");
    }
    // The COMMIT is not retried, even once the fault is gone: fail-stop.
    fail.store(false, Ordering::SeqCst);
    assert!(store.is_stopped());
    let stats = store.stats();
    assert_eq!((stats.batches, stats.batches_retried), (2, 0), "{stats:?}");
    assert!(stats.stopped);
    let later = store.commit(change(4, 1, 1)).await.unwrap_err();
    assert_eq!(later.code(), "STORE_UNAVAILABLE", "{later}");
    assert_eq!(store.stats().batches, 2, "refused without reaching SQLite");
    // Reads go on, and show only what was committed.
    assert_eq!(store.user_point(id(1)).await.unwrap().unwrap().point, 10);
    assert!(store.user_point(id(2)).await.unwrap().is_none());
    assert!(store.histories(id(3)).await.unwrap().is_empty());

    // Reopened, the store takes writes again. (In this process: the failed
    // writer's connection was leaked, not closed, so this does not exercise
    // SQLite's recovery at a cold start; the crash tests do that.)
    drop(store);
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    assert!(!store.is_stopped());
    assert!(store.user_point(id(2)).await.unwrap().is_none());
    store.commit(change(2, 5, 5)).await.unwrap();
    assert_eq!(store.user_point(id(1)).await.unwrap().unwrap().point, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_changes_whole_and_service_resumes_when_space_is_back() {
    // SQLite's view of a full disk: SQLITE_FULL when the file would grow past
    // max_page_count. A statement fails, so the batch rolls back and each change
    // is retried alone and fails alone: nothing half-written, no fail-stop.
    let (_dir, path) = db();
    let limit = Arc::new(std::sync::atomic::AtomicU64::new(1_000_000));
    let options = SqliteOptions {
        page_limit: Some(Arc::clone(&limit)),
        balance_cache_max: 0,
        ..SqliteOptions::default()
    };
    let store = Arc::new(SqliteStore::open(&path, options).unwrap());
    let mut user = 0;
    // Fill the file up to a limit just above its current size.
    let pages: i64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    limit.store(u64::try_from(pages).unwrap() + 2, Ordering::SeqCst);
    let mut applied = 0;
    let error = loop {
        user += 1;
        assert!(user < 100_000, "the page limit never bit");
        match store.commit(change(user, 7, 7)).await {
            Ok(_) => applied += 1,
            Err(error) => break error,
        }
    };
    assert_eq!(error.code(), "STORE_ERROR", "{error}");
    assert!(error.message().contains("full"), "{error}");
    assert!(!store.is_stopped(), "a full disk is not a failed COMMIT");
    // Nothing of the refused change: no balance, no history.
    let refused = UserId::new(user).unwrap();
    assert_eq!(store.user_point(refused).await.unwrap(), None);
    assert!(store.histories(refused).await.unwrap().is_empty());
    // Every applied change whole.
    for earlier in 1..user {
        let id = UserId::new(earlier).unwrap();
        assert_eq!(store.user_point(id).await.unwrap().unwrap().point, 7);
        assert_eq!(store.histories(id).await.unwrap().len(), 1);
    }
    assert!(applied > 0);
    // Space is back: the same change now applies.
    limit.store(1_000_000, Ordering::SeqCst);
    store.commit(change(user, 7, 7)).await.unwrap();
    assert_eq!(store.user_point(refused).await.unwrap().unwrap().point, 7);
}
