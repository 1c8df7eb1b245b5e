//! The response body type of the whole stack, in a module of its own so that
//! the layers below the app (`auth`, `limits`) can name it without depending on
//! the module that assembles them.

use bytes::Bytes;
use tower_http::body::UnsyncBoxBody;

/// The boxed error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body of the whole stack (tower-http's, which `CatchPanic` makes).
pub type AppBody = UnsyncBoxBody<Bytes, BoxError>;
