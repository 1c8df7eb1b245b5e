//! Opening a database file: the file lock, the checks, WAL, and migrations.
//!
//! Schema changes are embedded migrations counted by `PRAGMA user_version`; the
//! file is marked with `PRAGMA application_id`. Opening fails fast, changing
//! nothing, on: a file that is not a SQLite database or fails `PRAGMA
//! quick_check`, a SQLite database of some other application, a schema newer than
//! this build knows, a file another process holds (an exclusive advisory lock on
//! the database file is taken for the store's life), or a file or directory the
//! process cannot write.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};
use thiserror::Error;

use super::SqliteOptions;

/// `PRAGMA application_id` of a pointlock database: "PLK1".
pub(super) const APPLICATION_ID: i32 = 0x504C_4B31;

/// The embedded migrations: `MIGRATIONS[i]` takes `user_version` from `i` to `i + 1`.
/// Append only; never edit a step that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: balances, and the history with a store-wide id that never goes back
    // (AUTOINCREMENT: ids are not reused even after the newest row is deleted).
    "CREATE TABLE user_point (
        id            INTEGER PRIMARY KEY CHECK (id > 0),
        point         INTEGER NOT NULL CHECK (point >= 0),
        update_millis INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE point_history (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id     INTEGER NOT NULL CHECK (user_id > 0),
        type        TEXT    NOT NULL CHECK (type IN ('CHARGE', 'USE')),
        amount      INTEGER NOT NULL CHECK (amount > 0),
        time_millis INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX point_history_by_user ON point_history (user_id, id);",
    // 2: idempotency records, written in the transaction of the change they
    // record (the balance the change left and when), per user and key; the
    // index serves the sweep of expired records.
    "CREATE TABLE idempotency (
        user_id     INTEGER NOT NULL CHECK (user_id > 0),
        key         TEXT    NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
        type        TEXT    NOT NULL CHECK (type IN ('CHARGE', 'USE')),
        amount      INTEGER NOT NULL CHECK (amount > 0),
        point       INTEGER NOT NULL CHECK (point >= 0),
        time_millis INTEGER NOT NULL,
        PRIMARY KEY (user_id, key)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX idempotency_by_time ON idempotency (time_millis);",
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Why a database file could not be opened. Nothing was changed in the file.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The file could not be opened or created for writing.
    #[error("cannot open {path} for reading and writing: {source} (is the file and its directory writable by this user?)")]
    Io {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Another process (or another store in this one) has the file open.
    #[error("{path} is in use by another pointlock process (its lock is held); stop that process or choose another --store file")]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// Not a SQLite database, or a damaged one.
    #[error("{path} is not a valid SQLite database or is corrupt: {detail}; it was left untouched (restore it from a backup or move it away)")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
    /// A SQLite database of some other application.
    #[error(
        "{path} is a SQLite database but not a pointlock one ({detail}); it was left untouched"
    )]
    Foreign {
        /// The database file.
        path: PathBuf,
        /// What gave it away.
        detail: String,
    },
    /// Written by a newer pointlock.
    #[error("{path} has schema version {found}, newer than this build understands ({known}); run a newer pointlock (the file was left untouched)")]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The file's `user_version`.
        found: i64,
        /// [`SCHEMA_VERSION`].
        known: i64,
    },
    /// Any other SQLite failure while preparing the file.
    #[error("cannot use {path}: {step}: {source} (SQLite needs to create {path}-wal and {path}-shm next to it: is the directory writable?)")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// What SQLite reported.
        source: rusqlite::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the SQLite writer thread: {0}")]
    Thread(io::Error),
}

/// file is only read until it is known to be a pointlock database this build
/// understands (or a new, empty one).
pub(super) fn open_writer(path: &Path, options: &SqliteOptions) -> Result<Connection, OpenError> {
    let sqlite = |step: &'static str| {
        move |source: rusqlite::Error| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
                OpenError::Corrupt {
                    path: path.to_path_buf(),
                    detail: source.to_string(),
                }
            }
            _ => OpenError::Sqlite {
                path: path.to_path_buf(),
                step,
                source,
            },
        }
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite("opening the database"))?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(sqlite("setting the busy timeout"))?;

    // Read-only checks first.
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite("reading the schema version"))?;
    let application_id: i32 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(sqlite("reading the application id"))?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(sqlite("reading the schema"))?;
    let foreign = |detail: String| OpenError::Foreign {
        path: path.to_path_buf(),
        detail,
    };
    if application_id != APPLICATION_ID && (application_id != 0 || objects > 0) {
        return Err(foreign(format!(
            "application_id {application_id:#x}, {objects} schema objects"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    if options.quick_check && objects > 0 {
        let started = Instant::now();
        let report: Vec<String> = conn
            .prepare("PRAGMA quick_check")
            .and_then(|mut stmt| {
                stmt.query_map([], |row| row.get::<_, String>(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(sqlite("checking integrity"))?;
        if report != ["ok"] {
            return Err(OpenError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("PRAGMA quick_check: {}", report.join("; ")),
            });
        }
        tracing::debug!(elapsed = ?started.elapsed(), "PRAGMA quick_check: ok");
    }

    // Now the file is ours: WAL, fsync on every commit, migrations.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(sqlite("switching to WAL mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::Sqlite {
            path: path.to_path_buf(),
            step: "switching to WAL mode",
            source: rusqlite::Error::InvalidQuery,
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sqlite("setting synchronous=FULL"))?;
    migrate(&conn, version).map_err(sqlite("migrating the schema"))?;
    Ok(conn)
}

/// Apply the migrations after `from`, each in its own transaction with its
/// `user_version` bump.
fn migrate(conn: &Connection, from: i64) -> rusqlite::Result<()> {
    let from = usize::try_from(from).unwrap_or(0);
    for (index, step) in MIGRATIONS.iter().enumerate().skip(from) {
        let to = index + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             {step};
             PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = {to};
             COMMIT;"
        ))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
        tracing::info!(version = to, "SQLite schema migrated");
    }
    Ok(())
}

/// Create or open `path` and take an exclusive advisory lock on it for the
/// store's life (the returned file holds it), so two servers never share one
/// database file.
pub(super) fn lock_file(path: &Path) -> Result<File, OpenError> {
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    match fs4::FileExt::try_lock(&lock) {
        Ok(()) => Ok(lock),
        Err(fs4::TryLockError::WouldBlock) => Err(OpenError::Locked {
            path: path.to_path_buf(),
        }),
        Err(fs4::TryLockError::Error(source)) => Err(OpenError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}
