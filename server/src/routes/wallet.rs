//! The wallet's handlers: a user's balance, history, charges and uses.
//!
//! Every handler takes the user's guard over from the request's [`HeldLock`]
//! extension, put there by the lock layer, and hands it to the service. A
//! change keeps the user locked until it is settled or, on a pipelined store,
//! sequenced (the answer still waits until it is durable); a read keeps its
//! place in the user's order and shows every change before it, durable (see
//! `docs/concurrency.md`, "Reads"). Mounted without the layer, the mutating
//! handlers acquire the lock themselves (with the same timeout), so the router
//! alone is never unsafe; reads then read durable state directly.

use std::sync::Arc;

use bytes::Bytes;
use http::header::LINK;
use http::request::Parts;
use http::{Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use pointlock_core::{KeyGuard, PointError, TransactionType, UserId, UserPoint};

use super::amount::read_amount;
use super::idempotency_key::{idempotency_key, IDEMPOTENT_REPLAYED};
use super::page::page_query;
use super::router::{RouterOptions, SharedService};
use crate::error::{json_bytes_response, json_response, ApiError};
use keylock::layer::HeldLock;

/// `GET /point/{id}`: at the request's place in the user's order when the
/// lock layer lent its guard (see [`PointService::point_in_order`]), a plain
/// read otherwise.
///
/// [`PointService::point_in_order`]: pointlock_core::PointService::point_in_order
pub(super) async fn point(
    service: &SharedService,
    id: UserId,
    parts: &Parts,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let point = match lent(service, parts.extensions.get(), id) {
        Some(held) => service.point_in_order(held).await?,
        None => service.point(id).await?,
    };
    Ok(point_response(&point))
}

/// `GET /point/{id}/histories`, in order like [`point`], one bounded page
/// (see [`page`](super::page)); the user is released before the body is built.
pub(super) async fn histories(
    service: &SharedService,
    id: UserId,
    parts: &Parts,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let query = page_query(parts.uri.query())?;
    let read = match lent(service, parts.extensions.get(), id) {
        Some(held) => service.histories_page_in_order(held, query.page()).await?,
        None => service.histories_page(id, query.page()).await?,
    };
    let mut response = json_response(StatusCode::OK, &read.rows);
    if let Some(next_after) = read.next_after {
        response
            .headers_mut()
            .insert(LINK, query.next_link(id, next_after));
    }
    Ok(response)
}

/// `PATCH /point/{id}/charge` and `PATCH /point/{id}/use`: the key header
/// first, then the user's guard, then the body (read under the guard, within
/// the body timeout), then the change.
pub(super) async fn change<B>(
    service: &SharedService,
    options: &RouterOptions,
    kind: TransactionType,
    id: UserId,
    parts: Parts,
    body: B,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let key = idempotency_key(&parts.headers)?;
    let from_layer = parts.extensions.get::<HeldLock<UserId>>();
    let held = held(service, options, from_layer, id).await?;
    let amount = read_amount(body, options.body_limit_bytes, options.body_timeout).await?;
    // The guard goes to the service, which releases the user as soon as the
    // store allows (a pipelined store: once the change is sequenced) and
    // answers once the change is durable.
    let applied = service.apply(held, kind, amount, key.as_ref()).await?;
    let mut response = point_response(&applied.point);
    if applied.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, http::HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The user's guard: from the lock layer, or acquired here when mounted without it.
async fn held(
    service: &SharedService,
    options: &RouterOptions,
    from_layer: Option<&HeldLock<UserId>>,
    id: UserId,
) -> Result<Arc<KeyGuard<UserId>>, ApiError> {
    if let Some(guard) = lent(service, from_layer, id) {
        return Ok(guard);
    }
    let acquire = service
        .lock()
        .lock_timeout(id, tokio::time::sleep(options.lock_timeout));
    match acquire.await {
        Ok(guard) => Ok(Arc::new(guard)),
        Err(_) => Err(PointError::LockTimeout.into()),
    }
}

/// The layer's guard, if it is a guard of this service's lock for this user
/// (a layer given another lock would only earn a ForeignGuard error): taken
/// over, so that the service decides when the user is released.
fn lent(
    service: &SharedService,
    from_layer: Option<&HeldLock<UserId>>,
    id: UserId,
) -> Option<Arc<KeyGuard<UserId>>> {
    from_layer
        .filter(|held| *held.key() == id)
        .filter(|held| {
            held.guard()
                .is_some_and(|guard| guard.is_from(service.lock()))
        })
        .and_then(HeldLock::take)
}

/// A balance as its answer, `{"id":…,"point":…,"updateMillis":…}`: what
/// [`UserPoint`]'s `Serialize` writes (tested against it), written directly
/// into one exact-size buffer. Every change and every balance read answers
/// with one; through serde it cost about 700 instructions and two
/// allocations (docs/performance.md).
fn point_response(point: &UserPoint) -> Response<Full<Bytes>> {
    json_bytes_response(StatusCode::OK, point_json(point))
}

fn point_json(point: &UserPoint) -> Bytes {
    // `{"id":` 20 digits `,"point":` 20 digits `,"updateMillis":` 20 `}`.
    let mut out = [0u8; 96];
    let mut len = 0;
    let mut put = |part: &[u8]| {
        out[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    };
    let mut number = itoa::Buffer::new();
    put(br#"{"id":"#);
    put(number.format(point.id.get()).as_bytes());
    put(br#","point":"#);
    put(number.format(point.point).as_bytes());
    put(br#","updateMillis":"#);
    put(number.format(point.update_millis).as_bytes());
    put(b"}");
    Bytes::copy_from_slice(&out[..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_balance_is_written_as_serde_writes_it() {
        let mut n: u64 = 0x2545_F491_4F6C_DD1D;
        let mut points = vec![
            (1, 0, 0),
            (u64::MAX, u64::MAX, i64::MIN),
            (9_007_199_254_740_991, 1, i64::MAX),
            (42, 100, -1),
        ];
        for _ in 0..1_000 {
            n ^= n << 13;
            n ^= n >> 7;
            n ^= n << 17;
            let millis = i64::from_ne_bytes(n.rotate_left(17).to_ne_bytes());
            points.push(((n >> (n % 64)).max(1), n >> (n % 61), millis >> (n % 63)));
        }
        for (id, point, update_millis) in points {
            let Ok(id) = UserId::new(id) else {
                continue;
            };
            let point = UserPoint {
                id,
                point,
                update_millis,
            };
            let by_serde = serde_json::to_vec(&point).expect("serializes");
            assert_eq!(point_json(&point), by_serde, "{point:?}");
        }
    }
}
