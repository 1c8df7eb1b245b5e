//! `GET /point/{id}/histories?limit=&after=`: the history in pages.
//!
//! Without a query the route answers what the course's templates answer, the
//! whole history as one JSON array, up to [`HISTORY_PAGE_MAX`] rows. A user
//! with more gets the first [`HISTORY_PAGE_MAX`] and a `Link` header (RFC 8288)
//! to the rest: `</point/{id}/histories?after={last id}>; rel="next"`. A client
//! may page on its own terms:
//!
//! - `limit`: the most rows per page, 1 to [`HISTORY_PAGE_MAX`] (default: the
//!   maximum);
//! - `after`: answer rows whose id is above this history id (default 0, from
//!   the first row). The `next` link names the last row of the page.
//!
//! A page is complete and ordered like the whole history (oldest first) and is
//! read at the request's place in the user's order, like an unpaged read.
//! Following `next` until it is absent walks every row exactly once, even
//! while changes are added: ids only grow. The `next` link is present exactly
//! when rows follow this page at the time it was read.
//!
//! What a page costs is bounded: the stores read only the page (an index
//! range), the user's lock is released before the JSON is built, and the body
//! holds at most [`HISTORY_PAGE_MAX`] rows (about 90 bytes each).
//!
//! A malformed query (a value that is not decimal digits, out of range, or a
//! parameter given twice) is answered 400 `INVALID_QUERY` before any lock is
//! taken; other parameters are ignored.

use http::HeaderValue;
use pointlock_core::{HistoryPage, UserId};

use crate::error::ApiError;

/// The most rows one history answer holds, with or without `limit`.
pub const HISTORY_PAGE_MAX: usize = 10_000;

/// The paging a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageQuery {
    /// `limit`, if given.
    pub limit: Option<usize>,
    /// `after` (0 if not given).
    pub after: u64,
}

impl PageQuery {
    /// The page to read.
    pub fn page(&self) -> HistoryPage {
        HistoryPage {
            after: self.after,
            limit: self.limit.unwrap_or(HISTORY_PAGE_MAX),
        }
    }

    /// The `Link` header to the page after the one ending at `next_after`: the
    /// same `limit`, if the request gave one.
    pub fn next_link(&self, id: UserId, next_after: u64) -> HeaderValue {
        let link = match self.limit {
            Some(limit) => {
                format!("</point/{id}/histories?limit={limit}&after={next_after}>; rel=\"next\"")
            }
            None => format!("</point/{id}/histories?after={next_after}>; rel=\"next\""),
        };
        // Digits, ASCII punctuation and the path: always a valid header value.
        HeaderValue::try_from(link).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The paging of a request's query string (`None`: no query); see the
/// [module docs](self).
pub fn page_query(query: Option<&str>) -> Result<PageQuery, ApiError> {
    let mut limit = None;
    let mut after = None;
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" => {
                let parsed = digits(value)
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| (1..=HISTORY_PAGE_MAX).contains(n))
                    .ok_or(ApiError::InvalidQuery(LIMIT_RANGE))?;
                if limit.replace(parsed).is_some() {
                    return Err(ApiError::InvalidQuery("limit is given twice"));
                }
            }
            "after" => {
                let parsed = digits(value).filter(|&n| i64::try_from(n).is_ok()).ok_or(
                    ApiError::InvalidQuery(
                        "after must be a history id: an integer from 0 to 9223372036854775807",
                    ),
                )?;
                if after.replace(parsed).is_some() {
                    return Err(ApiError::InvalidQuery("after is given twice"));
                }
            }
            _ => {}
        }
    }
    Ok(PageQuery {
        limit,
        after: after.unwrap_or(0),
    })
}

/// The message of an out-of-range `limit` (the bound in words, at compile time).
const LIMIT_RANGE: &str = "limit must be an integer from 1 to 10000";
const _: () = assert!(HISTORY_PAGE_MAX == 10_000, "LIMIT_RANGE names the maximum");

/// `s` as a number if it is 1 to 20 ASCII digits (and fits a `u64`).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(query: &str) -> Option<&'static str> {
        page_query(Some(query)).err().map(|e| e.code())
    }

    #[test]
    fn no_query_reads_the_capped_first_page() {
        for query in [None, Some(""), Some("x=1"), Some("&&"), Some("limits=0")] {
            let parsed = page_query(query).expect("accepted");
            assert_eq!(
                parsed.page(),
                HistoryPage::first(HISTORY_PAGE_MAX),
                "{query:?}"
            );
        }
    }

    #[test]
    fn limit_and_after_are_read_in_range_and_anything_else_is_400() {
        let parsed = page_query(Some("after=42&limit=5")).expect("accepted");
        assert_eq!(
            parsed.page(),
            HistoryPage {
                after: 42,
                limit: 5
            }
        );
        assert_eq!(
            page_query(Some("limit=10000")).expect("max").page().limit,
            10_000
        );
        assert_eq!(
            page_query(Some("after=9223372036854775807"))
                .expect("max id")
                .after,
            i64::MAX as u64
        );
        for bad in [
            "limit=0",
            "limit=10001",
            "limit=",
            "limit",
            "limit=-1",
            "limit=1.0",
            "limit=%31",
            "limit=+5",
            "limit=99999999999999999999999",
            "after=-1",
            "after=x",
            "after=9223372036854775808",
            "limit=1&limit=2",
            "after=1&after=1",
        ] {
            assert_eq!(code(bad), Some("INVALID_QUERY"), "{bad}");
        }
    }

    #[test]
    fn the_next_link_keeps_the_clients_limit() {
        let id = UserId::new(7).expect("id");
        let given = page_query(Some("limit=3")).expect("accepted");
        assert_eq!(
            given.next_link(id, 12),
            "</point/7/histories?limit=3&after=12>; rel=\"next\""
        );
        let capped = page_query(None).expect("accepted");
        assert_eq!(
            capped.next_link(id, 10_000),
            "</point/7/histories?after=10000>; rel=\"next\""
        );
    }
}
