//! [`Router`]: the tower service that answers every route of the table with
//! JSON (or the metrics' text).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use pointlock_core::{BoxFuture, PointService, PointStore, TransactionType, UserId};
use tower_service::Service;

use super::stats::StoreStats;
use super::table::Route;
use super::{ops, stats, wallet};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// The service type the server runs: any store behind an `Arc`.
pub type SharedService = Arc<PointService<Arc<dyn PointStore>>>;

/// What the router needs to know beyond the service.
#[derive(Clone, Debug)]
pub struct RouterOptions {
    /// The longest a mutation waits for its user's lock when the router must take
    /// it itself (mounted without the lock layer).
    pub lock_timeout: Duration,
    /// The largest accepted request body (named in 413 messages).
    pub body_limit_bytes: usize,
    /// The longest a handler waits for the body once it holds the user's lock.
    pub body_timeout: Duration,
    /// The store's statistics for `GET /stats` (`null` without).
    pub store_stats: Option<StoreStats>,
    /// What `GET /metrics` serves (a 404 without).
    pub metrics: Option<Metrics>,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_millis(3_000),
            body_limit_bytes: 4 * 1024,
            body_timeout: Duration::from_millis(2_000),
            store_stats: None,
            metrics: None,
        }
    }
}

/// The router: a tower [`Service`] answering every request with JSON.
#[derive(Clone)]
pub struct Router {
    service: SharedService,
    options: Arc<RouterOptions>,
}

impl Router {
    /// A router over `service`.
    pub fn new(service: SharedService, options: RouterOptions) -> Self {
        Self {
            service,
            options: Arc::new(options),
        }
    }
}

impl<B> Service<Request<B>> for Router
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let router = self.clone();
        Box::pin(async move {
            Ok(match router.handle(req).await {
                Ok(response) => response,
                Err(error) => error.into_response(),
            })
        })
    }
}

impl Router {
    /// The dispatch: the route from the table, then the user's id (an invalid
    /// one is a 400 whatever the method), then the method (405 naming the
    /// route's), then the handler.
    async fn handle<B>(&self, req: Request<B>) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let not_found = || ApiError::NotFound {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
        };
        let (route, raw_id) = match Route::of(parts.uri.path()) {
            // With metrics off, `/metrics` is a path like any unknown one.
            Some((Route::Metrics, _)) if self.options.metrics.is_none() => return Err(not_found()),
            Some(found) => found,
            None => return Err(not_found()),
        };
        let user = match raw_id {
            Some(raw) => Some(raw.parse::<UserId>()?),
            None => None,
        };
        let allow = route.spec().method;
        if parts.method.as_str() != allow {
            return Err(ApiError::MethodNotAllowed {
                method: parts.method.to_string(),
                allow,
            });
        }
        let service = &self.service;
        match (route, user) {
            (Route::Health, _) => Ok(ops::health()),
            (Route::Ready, _) => ops::ready(service).await,
            (Route::Stats, _) => Ok(stats::response(service, self.options.store_stats.as_ref())),
            (Route::Metrics, _) => ops::scrape(self.options.metrics.as_ref()),
            (Route::OpenApi, _) => Ok(crate::openapi::response()),
            (Route::Point, Some(id)) => wallet::point(service, id, &parts).await,
            (Route::Histories, Some(id)) => wallet::histories(service, id, &parts).await,
            (Route::Charge, Some(id)) => {
                wallet::change(
                    service,
                    &self.options,
                    TransactionType::Charge,
                    id,
                    parts,
                    body,
                )
                .await
            }
            (Route::Use, Some(id)) => {
                wallet::change(
                    service,
                    &self.options,
                    TransactionType::Use,
                    id,
                    parts,
                    body,
                )
                .await
            }
            // `Route::of` names a wallet route only with its id.
            (Route::Point | Route::Histories | Route::Charge | Route::Use, None) => {
                Err(not_found())
            }
        }
    }
}
