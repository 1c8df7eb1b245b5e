//! [`BearerAuth`]: a user's points are read and moved only by that user, and
//! by operators holding the admin scope (bearer JWT, RFC 6750).
//!
//! Off unless the server is started with `--jwt-hs256-secret-file` or
//! `--jwt-public-key-file`: the course's templates have no authentication, so
//! the open API stays the default. On, each request's path decides what it
//! needs ([`access`]):
//!
//! | path                                  | needs                                                    |
//! |---------------------------------------|----------------------------------------------------------|
//! | `/point/{id}`, `/point/{id}/...`      | a token whose `sub` is `{id}`, or whose `scope` holds `points:admin` |
//! | `/point/{invalid id}/...`             | any valid token (then 400 `INVALID_USER_ID`, as without authentication) |
//! | `/metrics`, `/stats`                  | nothing; `points:admin` with `--metrics-require-admin`  |
//! | `/health`, `/ready`, `/openapi.json`, any other path | nothing (an unknown path answers 404)      |
//!
//! - **Starts and ends in `call`**: the token is checked synchronously, before
//!   the inner service is called. A refused request is answered at once, 401
//!   `UNAUTHORIZED` with `WWW-Authenticate: Bearer …` (no token, or one this
//!   server does not accept) or 403 `FORBIDDEN` (a valid token without the
//!   right to this user or route), and never reaches the layers below: **it
//!   never waits for, takes or holds a user's lock**, and its body is never
//!   read. That is why this layer sits above the lock layer in the stack
//!   (`app/stack.rs`).
//! - **Order of checks**: authentication comes before anything about the
//!   request's content, so an anonymous client learns nothing but
//!   "authenticate": not whether an id is valid (`/point/abc` is a 401 without
//!   a token, a 400 with one), not the body limit. Only the request id (every
//!   answer carries one) and the header limit (431/411, which also bounds the
//!   token's size) come first.
//! - **The token**: `Authorization: Bearer <JWT>` (the scheme in any case, one
//!   header), verified by the `jsonwebtoken` crate with the one algorithm and
//!   key of the configuration ([`JwtVerifier`]): HS256 with a shared secret,
//!   or RS256 or ES256 with a public key. The token's `alg` header never
//!   chooses: `alg: none` is not a JWT here, and a server configured for RS256
//!   refuses an HS256 token whatever it was signed with (the classic
//!   confusion: HS256 signed with the public key as the secret). `exp` is
//!   required and `nbf` honoured, each with a leeway of [`LEEWAY_SECS`] for
//!   clocks that disagree a little. `aud` and `iss` are checked when
//!   configured; a token that names an `aud` is refused when none is.
//! - **Claims**: `sub` is the user id, as a decimal string or a number (a `sub`
//!   that names no valid user, such as a service's name, acts on no user);
//!   `scope` is a space-separated string, and one holding [`ADMIN_SCOPE`] acts
//!   on every user and operator route.
//! - **Cost**: a signature check per new token (RS256 ~2.5 million
//!   instructions, ES256 ~3.3 million, HS256 ~36,000, against ~25,000 for a
//!   whole charge), then a lookup for as long as the client reuses it: the
//!   verifier remembers up to [`CACHE_MAX_DEFAULT`] tokens that passed, and
//!   checks their `exp` and `nbf` again at every use. Nothing for the open
//!   routes, and no layer at all when authentication is off. See
//!   docs/performance.md.
//!
//! What this protects and what it does not (the threat model) is in
//! `docs/authentication.md`.
//!
//! # Example
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use pointlock_server::app::AppBody;
//! use pointlock_server::auth::{BearerAuth, JwtVerifier};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let verifier = JwtVerifier::hs256(b"a shared secret of at least 32 bytes").unwrap();
//! let service = ServiceBuilder::new()
//!     .layer(BearerAuth::new(verifier))
//!     .service(service_fn(|_req: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(AppBody::default()))
//!     }));
//! // No token: 401, and the inner service is not called.
//! let req = Request::builder().uri("/point/7").body(()).unwrap();
//! let res = service.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(res.headers()["www-authenticate"], r#"Bearer realm="pointlock""#);
//! // The open routes need none.
//! let req = Request::builder().uri("/health").body(()).unwrap();
//! assert_eq!(service.oneshot(req).await.unwrap().status(), StatusCode::OK);
//! # });
//! ```

//!
//! | file | holds |
//! |---|---|
//! | `policy.rs` | [`Access`] (what a path needs) and [`Principal`] (what a token grants) |
//! | `header.rs` | [`bearer_token`]: the one `Authorization: Bearer` header |
//! | `verifier.rs` | [`JwtVerifier`]: signature, algorithm, `exp`/`nbf`/`aud`/`iss` |
//! | `claims.rs` | the claims read from a verified token (`sub`, `scope`) |
//! | `cache.rs` | verified tokens remembered, bounded, checked in time at each use |
//! | `layer.rs` | [`BearerAuth`], its service and future |

mod cache;
mod claims;
mod header;
mod layer;
mod policy;
mod verifier;

pub use header::bearer_token;
pub use layer::{BearerAuth, BearerAuthFuture, BearerAuthService};
pub use policy::{access, Access, Principal, ADMIN_SCOPE};
pub use verifier::{JwtVerifier, CACHE_MAX_DEFAULT, HS256_SECRET_BYTES_MIN, LEEWAY_SECS};

#[cfg(test)]
mod tests;
