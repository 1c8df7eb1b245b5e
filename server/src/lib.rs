//! pointlock-server: the HTTP face of pointlock.
//!
//! hyper 1 + tower + tower-http, with [`keylock::layer::KeyedLockLayer`] holding each user's
//! lock for the life of that user's request. See `ARCHITECTURE.md` for the layer
//! stack and `README.md` for the API.
//!
//! Modules depend on each other in one direction only: `app` → `auth` →
//! `routes` → (`amount`, `metrics`) → `error` → pointlock-core and keylock; `metrics` and the
//! stores share the leaf `histogram`. The lock layer is keylock's (it knows
//! no path grammar: [`routes::user_key`] is the wallet's key extractor).

pub mod amount;
pub mod app;
pub mod auth;
pub mod body;
pub mod clock;
pub mod config;
pub mod deadline;
pub mod error;
pub mod histogram;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod request_id;
pub mod routes;
pub mod store;

pub use app::{build_app, serve, serve_with, App, AppOptions, ServeOptions};
pub use config::{Config, StoreSpec};
pub use error::ApiError;
pub use metrics::Metrics;
pub use store::{SqliteOptions, SqliteStore};
