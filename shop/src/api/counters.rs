//! Counter changes from the API (stock adjustments, wallet top-ups): under the
//! participants' concurrency strategy (`crate::adjuster`), and recorded with their
//! `Idempotency-Key` in the same transaction as the change.

use crate::guarded::{self, Adjusted, Counter};
use diesel_async::AsyncConnection as _;
use futures_util::future::BoxFuture;
use platform::db::Connection;
use serde::Serialize;
use serde::de::DeserializeOwned;

use engine::api::State;
use engine::api::idempotency::{self, Key};
use engine::api::problem::{ApiError, ApiResult};

/// What to change: `delta` on the counter of row `row`, guarded by the lock `resource`.
pub struct Change<'a> {
    pub counter: Counter,
    pub resource: &'a str,
    pub row: &'a str,
    pub delta: i64,
}

/// Applies `change`, then lets `respond` turn its result into the answer (or an error,
/// which rolls the change back). Returns the answer and whether it is a replay.
pub async fn adjust<T>(
    state: &State,
    shop: &super::Shop,
    key: Option<Key>,
    change: Change<'_>,
    respond: impl for<'c> FnOnce(&'c mut Connection, Adjusted) -> BoxFuture<'c, ApiResult<T>> + Send,
) -> ApiResult<(T, bool)>
where
    T: Serialize + DeserializeOwned + Send + Sync,
{
    let held = shop.adjuster.hold(change.resource).await?;
    let result = async {
        let mut pooled = state.database.get().await?;
        let conn: &mut Connection = &mut pooled;
        conn.transaction::<_, ApiError, _>(async |conn: &mut Connection| {
            if let Some(key) = &key
                && let Some(first) = idempotency::begin::<T>(conn, key).await?
            {
                return Ok((first, true));
            }
            let Change {
                counter,
                resource,
                row,
                delta,
            } = change;
            let adjusted = guarded::adjust(conn, &held.context, counter, resource, row, delta)
                .await
                .map_err(crate::adjuster::Error::from)?;
            let answer = respond(conn, adjusted).await?;
            if let Some(key) = &key {
                idempotency::finish(conn, key, 200, &answer).await?;
            }
            Ok((answer, false))
        })
        .await
    }
    .await;
    shop.adjuster.release(held).await;
    result
}
