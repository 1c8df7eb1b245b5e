//! pointlock-server: the HTTP face of pointlock (hyper 1 + tower + tower-http).
//!
//! # Map
//!
//! | module | holds |
//! |---|---|
//! | [`app`] | the stack assembled around the router ([`app::build_stack`]), the accept loop ([`app::serve_with`]), the idempotency sweeper |
//! | [`routes`] | the one route table, the path grammar, the router and its handlers |
//! | [`auth`] | bearer JWT: access policy, token header, verifier, claims, cache, layer |
//! | [`middleware`] | generic middleware: request id, request head limits, deadlines |
//! | [`metrics`] | `GET /metrics` and the request-counting layer |
//! | [`config`] | the flags ([`Config`]), their validation, the options they describe |
//! | [`cli`] | the binary's life: flags, logs, store, stack, serve, close |
//! | [`error`] | [`ApiError`]: every failure as a status code and a JSON body, in one place |
//! | [`body`], [`clock`], [`openapi`] | the stack's response body, the system clock, the OpenAPI document |
//!
//! # The stack, outermost first
//!
//! request metrics → request id → header limit → bearer auth → JSON errors →
//! trace → catch panic → request deadline → body limit → per-user lock →
//! router. One `ServiceBuilder` chain in [`app::build_stack`]; why each sits
//! where it does is in its documentation.
//!
//! Modules depend on each other in one direction only: `cli` → `config` →
//! `app` → `auth` → `routes` → (`metrics`, `middleware`) → `error` → keylock's layer
//! and pointlock-core; `metrics` reads the stores of pointlock-store. The lock layer knows no path grammar
//! ([`routes::user_key`] is the wallet's key extractor) and serves in front of
//! any tower HTTP service.

pub mod app;
pub mod auth;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod routes;

pub use app::{build_app, serve, serve_with, App, AppOptions, ServeOptions};
pub use config::{Config, StoreSpec};
pub use error::ApiError;
pub use metrics::Metrics;
