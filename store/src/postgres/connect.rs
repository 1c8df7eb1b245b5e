//! Opening the store: the URL, the connection pool, the first connection and
//! the migrations; and a connection from the pool for each call.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use pointlock_core::{StoreError, StoreErrorKind};
use thiserror::Error;
use tokio_postgres::NoTls;

use super::queue::{Bounds, Queue};
use super::schema::migrate;
use super::{writer, Open, PostgresOptions, PostgresStore};

/// Why the store could not be opened.
#[derive(Debug, Error)]
pub enum PgOpenError {
    /// The URL is not a PostgreSQL connection string.
    #[error(
        "invalid PostgreSQL URL ({0}); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
    )]
    Url(String),
    /// The database could not be reached or refused the connection.
    #[error("cannot connect to PostgreSQL at {target}: {detail}")]
    Connect {
        /// Host, port and database (no password).
        target: String,
        /// What went wrong.
        detail: String,
    },
    /// A migration failed (nothing of it was applied).
    #[error("cannot migrate the PostgreSQL schema: {0}")]
    Migrate(String),
    /// A session does not run with `synchronous_commit = on`: an answer
    /// could be given before its change is durable.
    #[error("PostgreSQL sessions run with synchronous_commit = {0}, not on; pointlock answers only durable changes and cannot run so")]
    NotDurable(String),
    /// The schema is newer than this build.
    #[error("the database has schema version {found}, newer than this build understands ({known}); run a newer pointlock")]
    NewerSchema {
        /// The database's version.
        found: i32,
        /// [`SCHEMA_VERSION`](super::SCHEMA_VERSION).
        known: i32,
    },
}

impl PostgresStore {
    /// Connect to `url` (`postgres://` or `postgresql://`), check that the
    /// database answers, and migrate it to [`SCHEMA_VERSION`](super::SCHEMA_VERSION) (once, whatever the
    /// number of instances starting together). Fails fast with a clear error when
    /// the URL is wrong, the server is unreachable or the schema is newer.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, PgOpenError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| PgOpenError::Url(e.to_string()))?;
        let target = describe(&config);
        let statement_ms = options.statement_timeout.as_millis().max(1);
        config
            .connect_timeout(options.connect_timeout)
            .application_name("pointlock")
            // Durable before answered, whatever the server's or the
            // database's default: a session option overrides both.
            .options(format!(
                "-c statement_timeout={statement_ms} -c synchronous_commit=on"
            ));
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| PgOpenError::Connect {
                target: target.clone(),
                detail: e.to_string(),
            })?;
        let client = pool.get().await.map_err(|e| PgOpenError::Connect {
            target: target.clone(),
            detail: pool_error(&e),
        })?;
        let durable = client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .map_err(|e| PgOpenError::Connect {
                target: target.clone(),
                detail: e.to_string(),
            })?;
        let durable: String = durable.get(0);
        if durable != "on" {
            return Err(PgOpenError::NotDurable(durable));
        }
        migrate(&client).await?;
        drop(client);
        let queue = Arc::new(Queue::new(Bounds {
            total: options.queue_max.max(1),
            per_user: options.user_queue_max.max(1),
            batch_users: options.batch_users.max(1),
            batch_per_user: options.batch_per_user.max(1),
        }));
        let store = Self {
            pool,
            counters: Arc::default(),
            target: target.into(),
            _open: Some(Arc::new(Open(Arc::clone(&queue)))),
            queue,
            pipeline: options.pipeline,
            #[cfg(any(test, feature = "test-util"))]
            panic_amount: options.panic_amount,
        };
        writer::spawn(&store, options.writers);
        Ok(store)
    }

    /// A connection from the pool within the connect timeout, or
    /// [`StoreErrorKind::Unavailable`] (nothing was changed).
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            StoreError::with_kind(
                StoreErrorKind::Unavailable,
                format!(
                    "PostgreSQL at {} is unavailable: {}; nothing was changed",
                    self.target,
                    pool_error(&e)
                ),
            )
        })
    }
}

/// `host:port/dbname` of a configuration, never its password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(default database)");
    format!("{host}:{port}/{db}")
}

/// A pool error in words (a connection error's cause included).
fn pool_error(error: &PoolError) -> String {
    match error {
        PoolError::Timeout(_) => "no connection within the connect timeout".into(),
        PoolError::Backend(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
        other => other.to_string(),
    }
}

#[cfg(any(test, feature = "test-util"))]
impl PostgresStore {
    /// A setting as the store's sessions see it (`SHOW name`; `name` is
    /// letters and underscores). Only with the `test-util` feature.
    pub async fn session_setting(&self, name: &str) -> Result<String, StoreError> {
        if !name.chars().all(|c| c.is_ascii_alphabetic() || c == '_') {
            return Err(StoreError::new(format!("not a setting name: {name}")));
        }
        let client = self.client().await?;
        let row = client
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .map_err(|e| self.failed(&e, false))?;
        Ok(row.get(0))
    }
}
