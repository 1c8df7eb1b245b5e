//! [`Config::validate`]: settings that cannot work together, refused before
//! the server opens a store.

use super::{Config, StoreSpec};

/// PostgreSQL's largest `statement_timeout`, in milliseconds (an `int`: `i32::MAX`).
pub const PG_STATEMENT_TIMEOUT_MS_MAX: u64 = 2_147_483_647;

impl Config {
    /// Reject settings that cannot work together.
    pub fn validate(&self) -> Result<(), String> {
        if self.lock_timeout_ms == 0 {
            return Err("--lock-timeout-ms must be at least 1".into());
        }
        if self.request_timeout_ms <= self.lock_timeout_ms {
            return Err(format!(
                "--request-timeout-ms ({}) must be longer than --lock-timeout-ms ({})",
                self.request_timeout_ms, self.lock_timeout_ms
            ));
        }
        if self.body_timeout_ms == 0 || self.body_timeout_ms >= self.request_timeout_ms {
            return Err(format!(
                "--body-timeout-ms ({}) must be at least 1 and shorter than --request-timeout-ms ({})",
                self.body_timeout_ms, self.request_timeout_ms
            ));
        }
        if let StoreSpec::Sqlite(_) = self.store {
            if self.max_balance > pointlock_core::domain::VALUE_MAX {
                return Err(format!(
                    "--max-balance ({}) must be at most {} with the SQLite store",
                    self.max_balance,
                    pointlock_core::domain::VALUE_MAX
                ));
            }
            if self.sqlite_batch_ops_max == 0 || self.sqlite_batch_ops_max > 4_096 {
                return Err("--sqlite-batch-ops-max must be between 1 and 4096".into());
            }
            if self.sqlite_batch_wait_us > 1_000 {
                return Err("--sqlite-batch-wait-us must be at most 1000".into());
            }
        }
        if let StoreSpec::Postgres(_) = self.store {
            if self.max_balance > pointlock_core::domain::VALUE_MAX {
                return Err(format!(
                    "--max-balance ({}) must be at most {} with the PostgreSQL store",
                    self.max_balance,
                    pointlock_core::domain::VALUE_MAX
                ));
            }
            if self.pg_pool_size == 0 || self.pg_pool_size > 1_000 {
                return Err("--pg-pool-size must be between 1 and 1000".into());
            }
            if self.pg_queue_max == 0 || self.pg_user_queue_max == 0 {
                return Err("--pg-queue-max and --pg-user-queue-max must be at least 1".into());
            }
            if self.pg_writers == 0 || self.pg_writers > self.pg_pool_size {
                return Err(format!(
                    "--pg-writers ({}) must be between 1 and --pg-pool-size ({})",
                    self.pg_writers, self.pg_pool_size
                ));
            }
            if self.pg_statement_timeout_ms == 0 || self.pg_connect_timeout_ms == 0 {
                return Err(
                    "--pg-statement-timeout-ms and --pg-connect-timeout-ms must be at least 1"
                        .into(),
                );
            }
            if self.pg_statement_timeout_ms > PG_STATEMENT_TIMEOUT_MS_MAX {
                return Err(format!(
                    "--pg-statement-timeout-ms ({}) must be at most {PG_STATEMENT_TIMEOUT_MS_MAX} \
                     (PostgreSQL's largest statement_timeout)",
                    self.pg_statement_timeout_ms
                ));
            }
            let worst = self
                .pg_connect_timeout_ms
                .checked_add(self.pg_statement_timeout_ms);
            if worst.is_none_or(|worst| worst >= self.request_timeout_ms) {
                let worst = worst.map_or_else(|| "too large".to_owned(), |ms| ms.to_string());
                return Err(format!(
                    "--pg-connect-timeout-ms + --pg-statement-timeout-ms ({worst}) must be shorter \
                     than --request-timeout-ms ({}) so a stuck database gets a 503, not a 408",
                    self.request_timeout_ms
                ));
            }
        }
        if !self.jwt_enabled() {
            for (set, flag) in [
                (self.jwt_audience.is_some(), "--jwt-audience"),
                (self.jwt_issuer.is_some(), "--jwt-issuer"),
                (self.metrics_require_admin, "--metrics-require-admin"),
            ] {
                if set {
                    return Err(format!(
                        "{flag} needs bearer JWT: --jwt-hs256-secret-file or --jwt-public-key-file"
                    ));
                }
            }
        }
        if self.body_limit_bytes < 64 {
            return Err("--body-limit-bytes must be at least 64".into());
        }
        Ok(())
    }
}
