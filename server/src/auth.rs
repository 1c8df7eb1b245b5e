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
//!   (`app.rs`).
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
//! `ARCHITECTURE.md`.
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

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pin_project_lite::pin_project;
use pointlock_core::UserId;
use serde::de::IgnoredAny;
use serde::Deserialize;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::AppBody;
use crate::error::{ApiError, Denial, TokenRejection};
use crate::routes::{path_user, route_template};

mod cache;

use cache::{Entry, TokenCache};

/// The scope that acts on every user and on the operator routes.
pub const ADMIN_SCOPE: &str = "points:admin";

/// The clock leeway, in seconds, of `exp` and `nbf`: a token is accepted up to
/// this long after its `exp` and from this long before its `nbf`. Small next to
/// any token's lifetime, large enough for clocks kept by NTP.
pub const LEEWAY_SECS: u64 = 30;

/// The shortest HS256 secret accepted: 32 bytes, the hash's size (RFC 7518,
/// section 3.2).
pub const HS256_SECRET_BYTES_MIN: usize = 32;

/// What a request's path needs (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token.
    Open,
    /// Any valid token (a wallet path with an invalid id: the router answers 400).
    Authenticated,
    /// A valid token for this user, or with the admin scope.
    User(UserId),
    /// A valid token with the admin scope.
    Admin,
}

/// What `path` needs. Wallet paths are read with the router's own grammar
/// ([`path_user`]), so every request the lock layer would lock for a user
/// needs that user's token; `operations_admin_only` protects `/metrics` and
/// `/stats` (`--metrics-require-admin`).
pub fn access(path: &str, operations_admin_only: bool) -> Access {
    match path_user(path) {
        Some(Ok(user)) => Access::User(user),
        Some(Err(_)) => Access::Authenticated,
        None if operations_admin_only && is_operations_route(path) => Access::Admin,
        None => Access::Open,
    }
}

/// `/metrics` and `/stats`: the same numbers, as text and as JSON.
fn is_operations_route(path: &str) -> bool {
    matches!(route_template(path), "/metrics" | "/stats")
}

/// Who a valid token speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The user its `sub` names, if it names one.
    pub user: Option<UserId>,
    /// Whether its `scope` holds [`ADMIN_SCOPE`].
    pub admin: bool,
}

impl Principal {
    /// Whether this principal may make a request that needs `access`.
    pub fn may(&self, access: Access) -> Result<(), Denial> {
        match access {
            Access::Open | Access::Authenticated => Ok(()),
            _ if self.admin => Ok(()),
            Access::User(user) if self.user == Some(user) => Ok(()),
            Access::User(_) => Err(Denial::AnotherUser),
            Access::Admin => Err(Denial::NotAdmin),
        }
    }
}

/// The default bound on verified tokens remembered ([`JwtVerifier::cache_max`]):
/// a token and its verdict take under 1 KiB (RS256; HS256 about half), so at
/// most ~16 MiB. With more clients than this reusing tokens at once, the cache
/// empties and refills, and the extra ones pay for their checks again.
pub const CACHE_MAX_DEFAULT: usize = 16_384;

/// Verifies bearer tokens with the algorithm and key of the configuration,
/// remembering the tokens that passed (see [`cache_max`](Self::cache_max)).
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    cache: Option<TokenCache>,
}

impl fmt::Debug for JwtVerifier {
    /// The algorithm and the checked claims; never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm())
            .field("audience", &self.validation.aud)
            .field("issuer", &self.validation.iss)
            .field("cached", &self.cached())
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// HS256 with a shared `secret` of at least [`HS256_SECRET_BYTES_MIN`] bytes.
    pub fn hs256(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < HS256_SECRET_BYTES_MIN {
            return Err(format!(
                "the HS256 secret has {} bytes; it needs at least {HS256_SECRET_BYTES_MIN} \
                 (for example: openssl rand -base64 48)",
                secret.len()
            ));
        }
        Self::checked(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// RS256 for an RSA public key, ES256 for an EC P-256 public key, in PEM
    /// (`-----BEGIN PUBLIC KEY-----`, or `RSA PUBLIC KEY`). Refuses private
    /// keys, other curves and other kinds of key.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<Self, String> {
        if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
            return Err(
                "this is a private key: give the server the public key only \
                 (openssl pkey -in private.pem -pubout)"
                    .into(),
            );
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Self::checked(key, Algorithm::RS256);
        }
        match DecodingKey::from_ec_pem(pem) {
            Ok(key) => Self::checked(key, Algorithm::ES256),
            Err(_) => Err("not an RSA or EC (P-256) public key in PEM".into()),
        }
    }

    /// The verifier of `key` for `algorithm`, once the key is known to make a
    /// verifier for it (an EC key of another curve than P-256, or an RSA key
    /// that does not parse, is refused here rather than at the first request).
    fn checked(key: DecodingKey, algorithm: Algorithm) -> Result<Self, String> {
        jsonwebtoken::crypto::verify("", b"", &key, algorithm)
            .map_err(|error| format!("the key cannot verify {algorithm:?} tokens: {error}"))?;
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        Ok(Self {
            key,
            validation,
            cache: Some(TokenCache::new(CACHE_MAX_DEFAULT)),
        })
    }

    /// Remember at most `tokens` verified tokens (default
    /// [`CACHE_MAX_DEFAULT`]; 0: none, every request pays for a signature
    /// check). A remembered token answers a later request with a lookup while
    /// it is within its `exp` and `nbf`; refused tokens are never remembered.
    pub fn cache_max(mut self, tokens: usize) -> Self {
        self.cache = (tokens > 0).then(|| TokenCache::new(tokens));
        self
    }

    /// Verified tokens remembered now.
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, TokenCache::len)
    }

    /// Also require this `aud` (a token without it, or for another, is refused).
    pub fn audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.required_spec_claims.insert("aud".into());
        self
    }

    /// Also require this `iss` (a token without it, or from another, is refused).
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation.required_spec_claims.insert("iss".into());
        self
    }

    /// The one algorithm tokens must be signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Who `token` speaks for, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenRejection> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(principal) = self
            .cache
            .as_ref()
            .and_then(|cache| cache.get(token, now, LEEWAY_SECS))
        {
            return Ok(principal);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|error| rejection(error.kind()))?;
        let (principal, times) = data.claims.read()?;
        if let (Some(cache), Some((exp, nbf))) = (&self.cache, times) {
            cache.insert(
                token,
                Entry {
                    principal,
                    exp,
                    nbf,
                },
            );
        }
        Ok(principal)
    }
}

/// The claims this server reads; the registered ones it checks (`exp`, `nbf`,
/// `aud`, `iss`) are read by `jsonwebtoken`'s validation.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<Subject>,
    #[serde(default)]
    scope: Option<Scope>,
    #[serde(default)]
    exp: Option<NumericDate>,
    #[serde(default)]
    nbf: Option<NumericDate>,
}

/// `exp`, `nbf`: seconds since the epoch, read as `jsonwebtoken` reads them
/// (an integer, or a number rounded), for the cache's time checks.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumericDate {
    Integer(u64),
    Number(f64),
    Other(IgnoredAny),
}

impl NumericDate {
    fn seconds(&self) -> Option<u64> {
        match *self {
            Self::Integer(seconds) => Some(seconds),
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Self::Number(seconds)
                if seconds.is_finite() && seconds >= 0.0 && seconds < u64::MAX as f64 =>
            {
                Some(seconds.round() as u64)
            }
            _ => None,
        }
    }
}

/// `sub`: a string (RFC 7519) or, for convenience, a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Subject {
    Text(String),
    Number(u64),
    Other(IgnoredAny),
}

/// `scope`: a space-separated string (RFC 8693, section 4.2).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scope {
    Text(String),
    Other(IgnoredAny),
}

/// A verified token's `exp` and `nbf`, when the cache can check them.
type Times = Option<(u64, Option<u64>)>;

impl Claims {
    /// The principal, and the times the cache checks (`None`: not cached).
    fn read(self) -> Result<(Principal, Times), TokenRejection> {
        let times = match (&self.exp, &self.nbf) {
            (Some(exp), None) => exp.seconds().map(|exp| (exp, None)),
            (Some(exp), Some(nbf)) => exp.seconds().zip(nbf.seconds().map(Some)),
            (None, _) => None,
        };
        Ok((self.principal()?, times))
    }

    fn principal(self) -> Result<Principal, TokenRejection> {
        let user = match self.sub {
            None => None,
            Some(Subject::Text(sub)) => sub.parse::<UserId>().ok(),
            Some(Subject::Number(sub)) => UserId::new(sub).ok(),
            Some(Subject::Other(_)) => return Err(TokenRejection::Claims),
        };
        let admin = match self.scope {
            None => false,
            Some(Scope::Text(scope)) => scope.split(' ').any(|s| s == ADMIN_SCOPE),
            Some(Scope::Other(_)) => return Err(TokenRejection::Claims),
        };
        Ok(Principal { user, admin })
    }
}

/// The rejection a `jsonwebtoken` error stands for.
fn rejection(kind: &ErrorKind) -> TokenRejection {
    match kind {
        ErrorKind::ExpiredSignature => TokenRejection::Expired,
        ErrorKind::ImmatureSignature => TokenRejection::NotYetValid,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenRejection::Algorithm,
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenRejection::Signature,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" || claim == "iss" => {
            TokenRejection::Audience
        }
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject => TokenRejection::Claims,
        ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => TokenRejection::Audience,
        // Not three base64url parts, not JSON, an unknown `alg` (`none`).
        _ => TokenRejection::Malformed,
    }
}

/// The token of the request's one `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenRejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(TokenRejection::Missing)?;
    if values.next().is_some() {
        return Err(TokenRejection::NotBearer);
    }
    let value = value.to_str().map_err(|_| TokenRejection::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenRejection::NotBearer)?;
    let token = token.trim_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(TokenRejection::NotBearer);
    }
    Ok(token)
}

/// The bearer authentication layer (see the [module docs](self)). Cheap to
/// clone: the verifier is shared.
#[derive(Clone)]
pub struct BearerAuth {
    verifier: Arc<JwtVerifier>,
    operations_admin_only: bool,
}

impl fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuth")
            .field("verifier", &self.verifier)
            .field("operations_admin_only", &self.operations_admin_only)
            .finish()
    }
}

impl BearerAuth {
    /// Tokens verified by `verifier`; `/metrics` and `/stats` open.
    pub fn new(verifier: JwtVerifier) -> Self {
        Self {
            verifier: Arc::new(verifier),
            operations_admin_only: false,
        }
    }

    /// Whether `/metrics` and `/stats` need the admin scope
    /// (`--metrics-require-admin`).
    pub fn operations_admin_only(mut self, admin_only: bool) -> Self {
        self.operations_admin_only = admin_only;
        self
    }

    /// Whether `/metrics` and `/stats` need the admin scope.
    pub fn protects_operations(&self) -> bool {
        self.operations_admin_only
    }

    /// The verifier.
    pub fn verifier(&self) -> &JwtVerifier {
        &self.verifier
    }

    /// Whether `req` may pass: `Ok` for an open route or a token that grants
    /// it, the 401 or 403 error otherwise.
    pub fn check<B>(&self, req: &Request<B>) -> Result<(), ApiError> {
        let access = access(req.uri().path(), self.operations_admin_only);
        if access == Access::Open {
            return Ok(());
        }
        let token = bearer_token(req.headers()).map_err(ApiError::Unauthorized)?;
        let principal = self
            .verifier
            .verify(token)
            .map_err(ApiError::Unauthorized)?;
        principal.may(access).map_err(ApiError::Forbidden)
    }
}

impl<S> Layer<S> for BearerAuth {
    type Service = BearerAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuthService {
            inner,
            auth: self.clone(),
        }
    }
}

/// The service of [`BearerAuth`].
#[derive(Clone, Debug)]
pub struct BearerAuthService<S> {
    inner: S,
    auth: BearerAuth,
}

impl<S, B> Service<Request<B>> for BearerAuthService<S>
where
    S: Service<Request<B>, Response = Response<AppBody>, Error = Infallible>,
{
    type Response = Response<AppBody>;
    type Error = Infallible;
    type Future = BearerAuthFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.auth.check(&req) {
            Ok(()) => BearerAuthFuture::Inner {
                future: self.inner.call(req),
            },
            Err(error) => {
                // Never the token: the reason only (the client's message too).
                tracing::debug!(code = error.code(), %error, "refused by bearer authentication");
                let refused = error.into_response().map(|body| {
                    AppBody::new(http_body_util::BodyExt::map_err(
                        body,
                        |never| match never {},
                    ))
                });
                BearerAuthFuture::Refused {
                    response: Some(refused),
                }
            }
        }
    }
}

pin_project! {
    /// The future of [`BearerAuthService`]: the inner service's, or the
    /// refusal at once.
    #[project = BearerAuthProj]
    pub enum BearerAuthFuture<F> {
        /// The request passed.
        Inner { #[pin] future: F },
        /// Refused (401 or 403): the answer, taken on the first poll.
        Refused { response: Option<Response<AppBody>> },
    }
}

impl<F> Future for BearerAuthFuture<F>
where
    F: Future<Output = Result<Response<AppBody>, Infallible>>,
{
    type Output = Result<Response<AppBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            BearerAuthProj::Inner { future } => future.poll(cx),
            BearerAuthProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests;
