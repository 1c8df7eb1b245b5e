//! [`BearerAuth`], the tower layer: its service checks each request in `call`
//! and answers a refusal at once, without calling the inner service.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::header::bearer_token;
use super::policy::{access, Access};
use super::verifier::JwtVerifier;
use crate::body::AppBody;
use crate::error::ApiError;
use crate::middleware::refused::RefusedOr;

/// The bearer authentication layer (see the [module docs](super)). Cheap to
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
            Ok(()) => RefusedOr::inner(self.inner.call(req)),
            Err(error) => {
                // Never the token: the reason only (the client's message too).
                tracing::debug!(code = error.code(), %error, "refused by bearer authentication");
                RefusedOr::refused(error)
            }
        }
    }
}

/// The future of [`BearerAuthService`]: the inner service's, or the refusal
/// (401 or 403) at once.
pub type BearerAuthFuture<F> = RefusedOr<F>;
