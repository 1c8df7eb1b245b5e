//! The answer a store's writer (the SQLite writer thread, a PostgreSQL
//! writer task) sends back to the caller it works for.
//!
//! A writer that stops before answering (it panicked, or the runtime is
//! shutting down) drops the reply channel. What it had been asked to do may
//! have been done already (a batch may have committed), so the caller is
//! answered [`StoreErrorKind::OutcomeUnknown`] (`STORE_OUTCOME_UNKNOWN`), the
//! same on both stores.

use pointlock_core::{StoreError, StoreErrorKind};
use tokio::sync::oneshot;

/// A writer's reply on its way.
pub(crate) type Reply<T> = oneshot::Receiver<Result<T, StoreError>>;

/// Wait for `reply` from `writer` ("the SQLite writer", "the PostgreSQL
/// writer"); the outcome is unknown if the writer stopped before answering.
pub(crate) async fn received<T>(reply: Reply<T>, writer: &str) -> Result<T, StoreError> {
    received_else(reply, writer, || {}).await
}

/// [`received`], calling `on_stopped` first when the writer stopped before
/// answering (a store that fail-stops then: stopped before its caller hears).
pub(crate) async fn received_else<T>(
    reply: Reply<T>,
    writer: &str,
    on_stopped: impl FnOnce(),
) -> Result<T, StoreError> {
    match reply.await {
        Ok(answer) => answer,
        Err(_) => {
            on_stopped();
            Err(stopped_before_answering(writer))
        }
    }
}

/// The error of a caller whose writer stopped before answering.
fn stopped_before_answering(writer: &str) -> StoreError {
    StoreError::with_kind(
        StoreErrorKind::OutcomeUnknown,
        format!("{writer} stopped before answering; the outcome is unknown (read the history)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_writer_that_stops_before_answering_leaves_the_outcome_unknown() {
        let (sender, reply) = oneshot::channel::<Result<u32, StoreError>>();
        drop(sender);
        let error = received(reply, "the SQLite writer").await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::OutcomeUnknown);
        assert_eq!(error.code(), "STORE_OUTCOME_UNKNOWN");
        assert!(
            error.message().starts_with("the SQLite writer stopped"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_answer_is_passed_on_as_it_is() {
        let (sender, reply) = oneshot::channel();
        sender.send(Err(StoreError::conflict("refused"))).unwrap();
        let error = received::<u32>(reply, "the PostgreSQL writer")
            .await
            .unwrap_err();
        assert!(error.is_conflict());
        let (sender, reply) = oneshot::channel();
        sender.send(Ok(7)).unwrap();
        assert_eq!(received(reply, "the PostgreSQL writer").await, Ok(7));
    }
}
