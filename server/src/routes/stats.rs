//! `GET /stats`: the lock's metrics, the service's commit conflicts, and the
//! store's own statistics (`null` for a store that has none, such as the
//! memory store), as JSON.
//!
//! The same sources `GET /metrics` reads at each scrape ([`crate::metrics`]):
//! the two never disagree but for what changed between two reads.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use super::router::SharedService;
use crate::error::json_response;

/// A store's own statistics for `GET /stats` (`store`), as JSON.
#[derive(Clone)]
pub struct StoreStats(Arc<dyn Fn() -> serde_json::Value + Send + Sync>);

impl StoreStats {
    /// Statistics read by calling `read` on every `GET /stats`.
    pub fn new(read: impl Fn() -> serde_json::Value + Send + Sync + 'static) -> Self {
        Self(Arc::new(read))
    }
}

impl std::fmt::Debug for StoreStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreStats(..)")
    }
}

#[derive(Serialize)]
struct Stats {
    lock: pointlock_core::LockMetrics,
    service: ServiceStats,
    store: Option<serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceStats {
    /// Commits refused by the store's condition (then retried).
    commit_conflicts: u64,
}

/// The answer to `GET /stats`.
pub(super) fn response(
    service: &SharedService,
    store: Option<&StoreStats>,
) -> Response<Full<Bytes>> {
    let stats = Stats {
        lock: service.lock().metrics(),
        service: ServiceStats {
            commit_conflicts: service.commit_conflicts(),
        },
        store: store.map(|read| (read.0)()),
    };
    json_response(StatusCode::OK, &stats)
}
