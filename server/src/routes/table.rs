//! The route table: every route the server answers, written once.
//!
//! Everything else about routes is read from [`TABLE`]:
//!
//! - the router's dispatch: [`Route::of`] matches a path against the table's
//!   templates and the router answers [`RouteSpec::method`] only;
//! - the request metrics' `route` labels: [`ROUTE_TEMPLATES`] and
//!   [`route_index`] (a template, never an id; `other` for any other path);
//! - the OpenAPI check: [`ROUTES`], which `tests/openapi.rs` holds the
//!   document's operations to;
//! - the bearer authentication's operator routes ([`route_template`]).

use super::path::{split_wallet_path, template_tail};

/// What answers a request: one variant per row of [`TABLE`], in its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /point/{id}`: the user's balance.
    Point,
    /// `GET /point/{id}/histories`: the user's changes, oldest first.
    Histories,
    /// `PATCH /point/{id}/charge`: add points.
    Charge,
    /// `PATCH /point/{id}/use`: spend points.
    Use,
    /// `GET /health`: liveness.
    Health,
    /// `GET /ready`: readiness (can the store take changes?).
    Ready,
    /// `GET /stats`: the lock's, the service's and the store's statistics.
    Stats,
    /// `GET /metrics`: OpenMetrics text (only when metrics are on).
    Metrics,
    /// `GET /openapi.json`: the OpenAPI 3.1 document of this API.
    OpenApi,
}

/// One row of the route table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// What answers it.
    pub route: Route,
    /// The one method it answers; any other gets a 405 naming this one.
    pub method: &'static str,
    /// The path, with `{id}` for the user's id on the wallet's routes.
    pub template: &'static str,
}

const fn row(route: Route, method: &'static str, template: &'static str) -> RouteSpec {
    RouteSpec {
        route,
        method,
        template,
    }
}

/// Every route, in the order of [`Route`]'s variants.
pub const TABLE: [RouteSpec; 9] = [
    row(Route::Point, "GET", "/point/{id}"),
    row(Route::Histories, "GET", "/point/{id}/histories"),
    row(Route::Charge, "PATCH", "/point/{id}/charge"),
    row(Route::Use, "PATCH", "/point/{id}/use"),
    row(Route::Health, "GET", "/health"),
    row(Route::Ready, "GET", "/ready"),
    row(Route::Stats, "GET", "/stats"),
    row(Route::Metrics, "GET", "/metrics"),
    row(Route::OpenApi, "GET", "/openapi.json"),
];

// Row `i` is `Route` variant `i`: `Route::spec` and `route_index` index the
// table by variant.
const _: () = {
    let mut i = 0;
    while i < TABLE.len() {
        assert!(TABLE[i].route as usize == i, "TABLE is in Route's order");
        i += 1;
    }
};

/// Each row's wallet tail, as [`Route::of`] compares it: the templates split
/// once, at compile time, by the wallet's path grammar.
const WALLET_TAILS: [Option<Option<&str>>; TABLE.len()] = {
    let mut tails = [None; TABLE.len()];
    let mut i = 0;
    while i < TABLE.len() {
        tails[i] = template_tail(TABLE[i].template);
        i += 1;
    }
    tails
};

/// Every route as (method, path template): the list the OpenAPI document's
/// operations must equal (`tests/openapi.rs`) and the router's tests probe.
pub const ROUTES: [(&str, &str); TABLE.len()] = {
    let mut routes = [("", ""); TABLE.len()];
    let mut i = 0;
    while i < TABLE.len() {
        routes[i] = (TABLE[i].method, TABLE[i].template);
        i += 1;
    }
    routes
};

/// The label of a path no route takes.
pub const OTHER: &str = "other";

/// Every value [`route_template`] returns: the table's templates, then
/// [`OTHER`]. A bounded set, whatever the paths.
pub const ROUTE_TEMPLATES: [&str; TABLE.len() + 1] = {
    let mut templates = [OTHER; TABLE.len() + 1];
    let mut i = 0;
    while i < TABLE.len() {
        templates[i] = TABLE[i].template;
        i += 1;
    }
    templates
};

impl Route {
    /// This route's row of [`TABLE`].
    pub fn spec(self) -> RouteSpec {
        TABLE[self as usize]
    }

    /// The route's path, with `{id}` for the user's id.
    pub fn template(self) -> &'static str {
        self.spec().template
    }

    /// The route `path` names, with the raw `{id}` segment of a wallet route
    /// (valid or not: `/point/abc` is [`Route::Point`] with `"abc"`); `None`
    /// when no route takes `path`. Wallet paths are split by the one path
    /// grammar (the split behind [`user_segment`](super::user_segment)),
    /// which also split the table's templates, so a wallet route is named by
    /// its template alone.
    pub fn of(path: &str) -> Option<(Self, Option<&str>)> {
        match split_wallet_path(path) {
            Some((id, tail)) => WALLET_TAILS
                .iter()
                .position(|row| *row == Some(tail))
                .map(|row| (TABLE[row].route, Some(id))),
            None => TABLE
                .iter()
                .find(|spec| spec.template == path)
                .map(|spec| (spec.route, None)),
        }
    }
}

/// The route `path` belongs to, as a template for metrics labels: the wallet's
/// routes with `{id}` in place of the id (valid or not: `/point/abc` is
/// `/point/{id}`, answered 400), the fixed paths as they are, and [`OTHER`]
/// for any path no route takes. Never the raw id: one of [`ROUTE_TEMPLATES`].
pub fn route_template(path: &str) -> &'static str {
    ROUTE_TEMPLATES[route_index(path)]
}

/// The position of [`route_template`]`(path)` in [`ROUTE_TEMPLATES`]: the
/// request metrics' row, found without comparing template strings.
pub fn route_index(path: &str) -> usize {
    Route::of(path).map_or(TABLE.len(), |(route, _)| route as usize)
}
