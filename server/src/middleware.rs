//! The generic HTTP middleware of the stack and its pieces: none of them
//! knows the wallet. The first three are steps of the stack's front layer
//! (`app::FrontLayer`).
//!
//! - [`request_id`]: `x-request-id` on every response, and the request's id on
//!   every log line of a failed request.
//! - [`limits`]: 431 for a request head over the limit, 411 for a body framed
//!   by `Transfer-Encoding`, before any lock.
//! - [`in_flight`]: a bound on the requests in the stack at once, 503 beyond it.
//! - [`deadline`]: a deadline that makes no timer when the work is done in its
//!   first poll (the whole request's and the body's).
//! - [`refused`]: the future of a layer that may answer at once (the front
//!   layer, the bearer authentication): the inner service's, or a refusal.
//!
//! Where each sits in the stack: the `app` module.

pub mod deadline;
pub mod in_flight;
pub mod limits;
pub mod refused;
pub mod request_id;
