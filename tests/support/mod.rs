//! The integration tests' one harness: every test file says `mod support;`
//! and takes what it needs.
//!
//! - [`binary`]: the `pointlock` binary: a clean command, started on a free
//!   port, stopped or killed.
//! - [`app`]: in-process servers: any app on a loopback port, and the wallet
//!   over a [`ProbeStore`] with the requests the tests send ([`TestServer`]).
//! - [`http`]: HTTP from the tests' side: a hyper client and raw HTTP/1.1.
//! - [`probe`]: the instrumented store, on every backend, with fault injection.
//! - [`pg`]: the test PostgreSQL, a fresh database per test.
//! - [`jwt`]: test tokens for the bearer authentication.
//! - [`model`]: the runner of the model-based property tests.
//! - [`openmetrics`]: a strict reader of the OpenMetrics text.
//!
//! Each test file uses a part of it: the rest is dead code there.
#![allow(dead_code)]

pub mod app;
pub mod binary;
pub mod http;
pub mod jwt;
pub mod model;
pub mod openmetrics;
pub mod pg;
pub mod probe;
pub mod service;

// The names most test files use; a file that uses none of them is no error.
#[allow(unused_imports)]
pub use app::{patient, Served, TestServer};
#[allow(unused_imports)]
pub use pg::postgres_skipped;
#[allow(unused_imports)]
pub use probe::{Backend, Fault, ProbeStore};

/// Scenarios on PostgreSQL with pipelined commits: `name => scenario;`
/// (skipped without `POINTLOCK_TEST_PG_URL`, outside CI).
#[macro_export]
macro_rules! on_pg_pipelined {
    (#[$test:meta] $($name:ident => $scenario:ident;)*) => {$(
        #[$test]
        async fn $name() {
            if $crate::support::postgres_skipped() {
                return;
            }
            $scenario($crate::support::Backend::PostgresPipelined).await;
        }
    )*};
}

/// Each scenario `async fn scenario(backend: Backend)` as three tests, with the
/// test attribute given first: on the memory store (the plain name), on SQLite
/// (`sqlite_` + name) and on PostgreSQL (`pg_` + name; skipped without
/// `POINTLOCK_TEST_PG_URL`, outside CI).
#[macro_export]
macro_rules! on_every_store {
    (#[$test:meta] $($name:ident / $sqlite:ident / $pg:ident => $scenario:ident;)*) => {$(
        #[$test]
        async fn $name() {
            $scenario($crate::support::Backend::Memory).await;
        }

        #[$test]
        async fn $sqlite() {
            $scenario($crate::support::Backend::Sqlite).await;
        }

        #[$test]
        async fn $pg() {
            if $crate::support::postgres_skipped() {
                return;
            }
            $scenario($crate::support::Backend::Postgres).await;
        }
    )*};
}
