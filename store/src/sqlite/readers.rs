//! The read-only connections: reads never queue behind the writer.
//!
//! A small pool of read-only connections, opened on demand up to the permit
//! count, used from tokio's blocking pool. WAL lets them read the last committed
//! state while the writer writes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pointlock_core::StoreError;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

/// The read-only connections, opened on demand up to the permit count.
pub(super) struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    /// Up to `count` connections to `path`; one is opened now, so a file readers
    /// cannot open fails at start, not at the first read.
    pub(super) fn open(
        path: PathBuf,
        busy_timeout: Duration,
        count: usize,
    ) -> rusqlite::Result<Self> {
        let readers = Self {
            path,
            busy_timeout,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(count.max(1))),
        };
        let first = readers.connect()?;
        readers.idle().push(first);
        Ok(readers)
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        // Push and pop only: a panic cannot leave the vector half-changed.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        Ok(conn)
    }

    /// Whether [`close`](Self::close) has run.
    pub(super) fn is_closed(&self) -> bool {
        self.permits.is_closed()
    }

    /// Refuse further reads and close the idle connections.
    pub(super) fn close(&self) {
        self.permits.close();
        self.idle().clear();
    }

    /// Run `query` on a read-only connection in the blocking pool.
    pub(super) async fn read<T, F>(self: &Arc<Self>, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::new("the SQLite store is closed"))?;
        let readers = Arc::clone(self);
        // The connection goes back to the pool inside the task, so a caller that
        // stops waiting cannot lose it.
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let popped = readers.idle().pop();
            let conn = match popped {
                Some(conn) => conn,
                None => readers.connect()?,
            };
            let result = query(&conn);
            // Checked under the pool's mutex, which `close` takes after
            // closing: a connection that was mid-read then is dropped, never
            // pushed into a closed pool.
            let mut idle = readers.idle();
            if !readers.is_closed() {
                idle.push(conn);
            }
            result
        });
        match task.await {
            Ok(result) => result.map_err(|e| StoreError::new(format!("SQLite read failed: {e}"))),
            Err(e) => Err(StoreError::new(format!("SQLite read task failed: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read in progress while the readers close: its connection is closed
    /// with it, not pushed back into the closed pool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_mid_read_at_close_is_not_pushed_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER)")
            .unwrap();
        let readers = Arc::new(Readers::open(path, Duration::from_secs(1), 2).unwrap());
        let (reading, is_reading) = std::sync::mpsc::channel();
        let (finish, may_finish) = std::sync::mpsc::channel::<()>();
        let read = {
            let readers = Arc::clone(&readers);
            tokio::spawn(async move {
                readers
                    .read(move |conn| {
                        reading.send(()).unwrap();
                        may_finish.recv().unwrap();
                        conn.query_row("SELECT count(*) FROM t", [], |row| row.get::<_, i64>(0))
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || is_reading.recv().unwrap())
            .await
            .unwrap();
        readers.close();
        finish.send(()).unwrap();
        assert_eq!(
            read.await.unwrap().unwrap(),
            0,
            "the read in progress finishes"
        );
        assert!(
            readers.idle().is_empty(),
            "a connection went back into the closed pool"
        );
    }
}
