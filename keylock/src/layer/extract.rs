//! What to lock: the key extractor's answer for one request.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;

/// What the extractor decided for one request.
#[derive(Debug)]
pub enum KeyDecision<K> {
    /// Hold this key's lock for the life of the request.
    Lock(K),
    /// Call the inner service without any lock.
    Pass,
    /// Answer with this response at once: no lock taken, inner service not called.
    Reject(Response<Full<Bytes>>),
}

/// Names the key of a request. Implemented by every
/// `Fn(&Request<B>) -> KeyDecision<K>` (a closure or a function).
pub trait ExtractKey<B> {
    /// The key type.
    type Key;

    /// Decide what to do with `req` (it is read only; the body is not touched).
    fn extract_key(&self, req: &Request<B>) -> KeyDecision<Self::Key>;
}

impl<F, B, K> ExtractKey<B> for F
where
    F: Fn(&Request<B>) -> KeyDecision<K>,
{
    type Key = K;

    fn extract_key(&self, req: &Request<B>) -> KeyDecision<K> {
        self(req)
    }
}
