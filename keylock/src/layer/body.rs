//! [`KeyedLockBody`]: the inner service's body, or an answer the layer made.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

pin_project! {
    /// The response body of [`KeyedLockService`](super::KeyedLockService): the
    /// inner service's body, or an answer made here (a rejection or a refusal).
    ///
    /// Its [`Default`] is an empty body, so that middleware which answers by
    /// itself with a default body (a request deadline's 408) can sit outside this
    /// layer without boxing the body in between.
    #[project = KeyedLockBodyProj]
    // pin-project-lite takes no docs on a variant's fields; the variants say
    // what each holds.
    #[allow(missing_docs)]
    pub enum KeyedLockBody<B> {
        /// The inner service's body.
        Inner {
            #[pin]
            body: B,
        },
        /// An answer made by the layer (or an empty default body).
        Local {
            body: Full<Bytes>,
        },
    }
}

impl<B> KeyedLockBody<B> {
    /// Wrap the inner service's body.
    pub fn inner(body: B) -> Self {
        Self::Inner { body }
    }
}

impl<B> Default for KeyedLockBody<B> {
    fn default() -> Self {
        Self::Local {
            body: Full::default(),
        }
    }
}

impl<B> Body for KeyedLockBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            KeyedLockBodyProj::Inner { body } => body.poll_frame(cx),
            KeyedLockBodyProj::Local { body } => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Inner { body } => body.is_end_stream(),
            Self::Local { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Inner { body } => body.size_hint(),
            Self::Local { body } => body.size_hint(),
        }
    }
}
