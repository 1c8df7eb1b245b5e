//! One page of a user's history, read on the read-only connections.

use std::sync::Arc;

use pointlock_core::{PointHistory, StoreError, UserId};
use rusqlite::params;

use super::readers::Readers;
use super::STORE;
use crate::rows::{history_row, to_i64};

/// Rows after id `?2`, at most `?3`: the `(user_id, id)` index gives them in
/// order, and only the page is read.
const SELECT_HISTORIES: &str = "SELECT id, type, amount, time_millis FROM point_history \
     WHERE user_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3";

/// At most `limit` of user `id`'s rows with an id above `after`, oldest first.
pub(super) async fn read_page(
    readers: &Arc<Readers>,
    id: UserId,
    after: u64,
    limit: usize,
) -> Result<Vec<PointHistory>, StoreError> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = readers
        .read(move |conn| {
            let mut stmt = conn.prepare_cached(SELECT_HISTORIES)?;
            let rows = stmt.query_map(params![to_i64(id.get()), after, limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .await?;
    rows.into_iter()
        .map(|(hid, kind, amount, time_millis)| {
            history_row(STORE, id, (hid, kind.as_str(), amount, time_millis))
        })
        .collect()
}
