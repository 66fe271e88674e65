//! Cursor pagination shared by the list endpoints. Lists are ordered by a time-ordered id
//! (uuid v7), newest first, so the cursor is simply the last id of the previous page: stable
//! under inserts, no offsets.

use poem_openapi::Object;
use uuid::Uuid;

use super::problem::ApiError;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

/// Checks `limit` (1..=200, default 50).
pub fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid(
            "limit",
            format!("limit must be between 1 and {MAX_LIMIT}, got {n}"),
        )),
    }
}

/// A page of items and the cursor of the next page (absent on the last page).
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct PageInfo {
    /// Pass as `cursor` to get the next page.
    pub next_cursor: Option<Uuid>,
}

/// Given `limit + 1` rows, trims to `limit` and computes the next cursor.
pub fn split<T>(mut rows: Vec<T>, limit: i64, id: impl Fn(&T) -> Uuid) -> (Vec<T>, PageInfo) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(&id)
    } else {
        None
    };
    (rows, PageInfo { next_cursor })
}
