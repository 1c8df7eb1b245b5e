//! The routes and their JSON, compatible with the course's NestJS and Spring templates.
//!
//! | route                      | body                                  |
//! |----------------------------|---------------------------------------|
//! | `GET /point/{id}`          | –                                     |
//! | `GET /point/{id}/histories`| – (`?limit=&after=`: pages, `page.rs`) |
//! | `PATCH /point/{id}/charge` | `{"amount": 100}` or a bare `100`     |
//! | `PATCH /point/{id}/use`    | same                                  |
//! | `GET /health`, `GET /stats`| – (liveness; lock and store metrics)  |
//! | `GET /ready`               | – (readiness: can the store take changes?) |
//! | `GET /metrics`             | – (Prometheus/OpenMetrics text; when metrics are on) |
//! | `GET /openapi.json`        | – (the OpenAPI 3.1 document of this API) |
//!
//! | file | holds |
//! |---|---|
//! | `table.rs` | [`TABLE`], the one list of routes; [`ROUTES`] and the metrics' [`ROUTE_TEMPLATES`] derived from it |
//! | `path.rs` | the wallet's path grammar: [`user_key`] (the lock layer's key), [`path_user`] (the authentication's owner check) |
//! | `router.rs` | [`Router`], the tower service: dispatch by the table |
//! | `wallet.rs` | the handlers of the four wallet routes, and the user's guard handed to the service |
//! | `page.rs` | the history's paging: `limit`, `after`, the `Link` to the next page, [`HISTORY_PAGE_MAX`] |
//! | `amount.rs` | the charge's or use's body: read within limit and deadline, then parsed |
//! | `idempotency_key.rs` | the `Idempotency-Key` and `Idempotent-Replayed` headers |
//! | `stats.rs` | `GET /stats` |
//! | `ops.rs` | `GET /health`, `GET /ready`, `GET /metrics` |
//!
//! `GET /openapi.json` serves [`crate::openapi::DOCUMENT`]; `tests/openapi.rs`
//! holds it to [`ROUTES`], and this module's tests hold the dispatch to it.

mod amount;
mod idempotency_key;
mod ops;
pub mod page;
mod path;
mod router;
mod stats;
mod table;
mod wallet;

pub use amount::{parse_amount, read_amount};
pub use idempotency_key::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
pub use page::{page_query, PageQuery, HISTORY_PAGE_MAX};
pub use path::{path_user, user_key, user_segment};
pub use router::{Router, RouterOptions, SharedService};
pub use stats::StoreStats;
pub use table::{
    route_index, route_template, Route, RouteSpec, OTHER, ROUTES, ROUTE_TEMPLATES, TABLE,
};

#[cfg(test)]
mod tests;
