//! What the flags describe, as the options of the pieces they configure: the
//! stack ([`AppOptions`]), the connections ([`ServeOptions`]), the stores and
//! the bearer authentication.

use std::path::PathBuf;
use std::time::Duration;

use super::{Config, Switch};
use crate::app::{AppOptions, ServeOptions};
use crate::auth::{BearerAuth, JwtVerifier};
use crate::metrics::Metrics;
use pointlock_store::{PostgresOptions, SqliteOptions};

impl Config {
    /// How long idempotency records are kept (at least a millisecond).
    pub fn idempotency_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.idempotency_ttl_hours * 3_600.0).max(Duration::from_millis(1))
    }

    /// The middleware options these flags describe.
    pub fn app_options(&self) -> AppOptions {
        AppOptions {
            lock_timeout: Duration::from_millis(self.lock_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            body_limit_bytes: self.body_limit_bytes,
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            lock_queue_max: self.lock_queue_max.0,
            max_in_flight: self.max_in_flight,
            header_limit_bytes: self.header_limit_bytes,
            metrics: (self.metrics == Switch::On).then(Metrics::new),
            // The store's statistics come with the store; the authentication
            // is read from its files (see `auth`).
            ..AppOptions::default()
        }
    }

    /// Whether bearer JWT authentication is on.
    pub fn jwt_enabled(&self) -> bool {
        self.jwt_hs256_secret_file.is_some() || self.jwt_public_key_file.is_some()
    }

    /// The bearer authentication these flags describe, its key read from its
    /// file (`None`: off). The error names the file, never its content.
    pub fn auth(&self) -> Result<Option<BearerAuth>, String> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let verifier = if let Some(path) = &self.jwt_hs256_secret_file {
            let secret = read(path)?;
            let end = secret
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .map_or(0, |last| last + 1);
            JwtVerifier::hs256(&secret[..end])
                .map_err(|e| format!("--jwt-hs256-secret-file {}: {e}", path.display()))?
        } else if let Some(path) = &self.jwt_public_key_file {
            JwtVerifier::from_public_key_pem(&read(path)?)
                .map_err(|e| format!("--jwt-public-key-file {}: {e}", path.display()))?
        } else {
            return Ok(None);
        };
        let mut verifier = verifier.cache_max(self.jwt_cache_max);
        if let Some(audience) = &self.jwt_audience {
            verifier = verifier.audience(audience);
        }
        if let Some(issuer) = &self.jwt_issuer {
            verifier = verifier.issuer(issuer);
        }
        Ok(Some(
            BearerAuth::new(verifier).operations_admin_only(self.metrics_require_admin),
        ))
    }

    /// The connection limits these flags describe.
    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions {
            drain: Duration::from_secs(30),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            header_limit_bytes: self.header_limit_bytes,
            max_connections: self.max_connections,
            h2_max_concurrent_streams: self.h2_max_streams,
        }
    }

    /// The SQLite store's tuning these flags describe.
    pub fn sqlite_options(&self) -> SqliteOptions {
        SqliteOptions {
            batch_ops_max: self.sqlite_batch_ops_max,
            batch_wait: Duration::from_micros(self.sqlite_batch_wait_us),
            pipeline: self.sqlite_pipeline == Switch::On,
            #[cfg(feature = "test-util")]
            negative_control: self.test_negative_control.map(Into::into),
            ..SqliteOptions::default()
        }
    }

    /// The PostgreSQL store's tuning these flags describe.
    pub fn postgres_options(&self) -> PostgresOptions {
        PostgresOptions {
            pool_size: self.pg_pool_size,
            statement_timeout: Duration::from_millis(self.pg_statement_timeout_ms),
            connect_timeout: Duration::from_millis(self.pg_connect_timeout_ms),
            pipeline: self.pg_pipeline == Switch::On,
            queue_max: self.pg_queue_max,
            user_queue_max: self.pg_user_queue_max,
            writers: self.pg_writers,
            ..PostgresOptions::default()
        }
    }
}
