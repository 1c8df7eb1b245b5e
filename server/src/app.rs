//! The server assembled: the middleware stack around the router, and the
//! accept loop that serves it.
//!
//! | file | holds |
//! |---|---|
//! | `stack.rs` | [`build_stack`] / [`build_app`]: the layers in order, one `ServiceBuilder` chain, and [`AppOptions`] |
//! | `front.rs` | [`FrontLayer`]: the per-request work above the wallet (metrics, request id, in-flight bound, head limits, deadline, JSON errors) in one layer |
//! | `answers.rs` | the stack's own answers: 408 and 413 as JSON, a panic as a 500 |
//! | `serve.rs` | [`serve_with`]: the hyper accept loop and its connection limits ([`ServeOptions`]); [`shutdown_signal`] |
//! | `head_timer.rs` | [`head_timer::ConnectionTimer`]: hyper's HTTP/1 header timeout on one tokio timer per connection |
//! | `linger.rs` | [`linger::Lingering`]: a connection the server closes reads and drops what its client still sends, for a bounded time |
//! | `sweeper.rs` | [`spawn_idempotency_sweeper`]: expired idempotency records removed in bounded steps |
//!
//! The layers, outermost first: the front layer (request metrics, request id,
//! in-flight bound, head limits, request deadline, JSON errors), bearer
//! authentication, trace, catch panic, body limit, the per-user lock, the
//! router (each explained on [`build_stack`]).

mod answers;
pub mod front;
pub mod head_timer;
pub mod linger;
mod serve;
mod stack;
mod sweeper;

use std::sync::Arc;

use pointlock_core::{Clock, KeyedLock, PointService, PointStore, Policy, UserId};

pub use crate::body::{AppBody, BoxError};
use crate::routes::SharedService;
pub use front::{Front, FrontFuture, FrontLayer};
pub use serve::{serve, serve_with, shutdown_signal, ServeOptions, MAX_CONNECTIONS_DEFAULT};
pub use stack::{build_app, build_stack, App, AppOptions, LOCK_QUEUE_MAX_DEFAULT};
pub use sweeper::{spawn_idempotency_sweeper, SWEEP_STEP, SWEEP_STEPS_MAX};

/// A `PointService` over `store` sharing `lock` with the layer.
pub fn service(
    store: Arc<dyn PointStore>,
    policy: Policy,
    clock: Arc<dyn Clock>,
    lock: KeyedLock<UserId>,
) -> SharedService {
    Arc::new(PointService::with_lock(store, policy, clock, lock))
}
