//! [`RefusedOr`]: the future of a layer that either passes a request on or
//! answers it at once with an error (the header limit, the in-flight bound,
//! the bearer authentication).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::AppBody;
use crate::error::ApiError;

pin_project! {
    /// The inner service's future, or a refusal answered on the first poll.
    #[project = RefusedOrProj]
    // pin-project-lite takes no docs on a variant's fields; the variants say
    // what each holds.
    #[allow(missing_docs)]
    pub enum RefusedOr<F> {
        /// Passed on: the inner service's future.
        Inner { #[pin] future: F },
        /// Refused: the answer, taken on the first poll.
        Refused { response: Option<Response<AppBody>> },
    }
}

impl<F> RefusedOr<F> {
    /// The request passed: `future` answers it.
    pub fn inner(future: F) -> Self {
        Self::Inner { future }
    }

    /// The request is refused with `error`'s JSON answer.
    pub fn refused(error: ApiError) -> Self {
        let response = error.into_response().map(|body| {
            AppBody::new(http_body_util::BodyExt::map_err(
                body,
                |never| match never {},
            ))
        });
        Self::Refused {
            response: Some(response),
        }
    }
}

impl<F> Future for RefusedOr<F>
where
    F: Future<Output = Result<Response<AppBody>, Infallible>>,
{
    type Output = Result<Response<AppBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RefusedOrProj::Inner { future } => future.poll(cx),
            // Polled again after its answer: stays pending, as a finished
            // future may.
            RefusedOrProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}
