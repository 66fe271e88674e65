//! `Idempotency-Key`: a request repeated with the same key gets the first answer again,
//! marked with `Idempotent-Replayed: true`, and changes nothing; the same key with another
//! request (other path or body) is refused with 422. Keys live for [`RETENTION`].
//!
//! The key is taken, looked up and recorded inside the transaction of the request's effect:
//! [`begin`] takes a transaction-scoped advisory lock on the key, so concurrent duplicates
//! run one after the other and the second sees the first one's answer; [`finish`] records
//! the answer, which commits exactly when the effect does.

use chrono::{TimeDelta, Utc};
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use platform::db::{Connection, prepared};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::problem::{ApiError, ApiResult};
use crate::auth::Caller;
use crate::schema::idempotency_keys;

/// How long a key is remembered; after that it may be used again.
pub const RETENTION: TimeDelta = TimeDelta::hours(24);

/// The name of the response header that marks a replay.
pub const REPLAYED: &str = "Idempotent-Replayed";

/// A key as used by one request.
#[derive(Debug, Clone)]
pub struct Key {
    caller: String,
    key: String,
    fingerprint: String,
}

impl Key {
    /// `None` when the request carries no key. Keys are the caller's own: another API key
    /// using the same one neither replays nor blocks it. The fingerprint covers the method,
    /// the path and the body as parsed (so formatting and key order do not matter).
    pub fn of(
        caller: &Caller,
        key: Option<&str>,
        method: &str,
        path: &str,
        body: &impl Serialize,
    ) -> ApiResult<Option<Key>> {
        let Some(key) = key else {
            return Ok(None);
        };
        let body = serde_json::to_vec(body).map_err(ApiError::internal)?;
        let mut hasher = Sha256::new();
        for part in [method.as_bytes(), b" ", path.as_bytes(), b"\n", &body] {
            hasher.update(part);
        }
        let fingerprint = hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Ok(Some(Key {
            caller: caller.name.clone(),
            key: key.to_owned(),
            fingerprint,
        }))
    }
}

/// Takes the key for this transaction and returns the answer stored for it, if the same
/// request used it before. Call first thing in the effect's transaction.
pub async fn begin<T: DeserializeOwned>(conn: &mut Connection, key: &Key) -> ApiResult<Option<T>> {
    prepared("SELECT pg_advisory_xact_lock(hashtext($1 || ':' || $2))")
        .bind::<Text, _>(&key.caller)
        .bind::<Text, _>(&key.key)
        .execute(conn)
        .await?;
    let stored: Option<(String, Value)> = idempotency_keys::table
        .find((&key.caller, &key.key))
        .filter(idempotency_keys::created_at.gt(Utc::now() - RETENTION))
        .select((idempotency_keys::fingerprint, idempotency_keys::response))
        .first(conn)
        .await
        .optional()?;
    let Some((fingerprint, response)) = stored else {
        return Ok(None);
    };
    if fingerprint != key.fingerprint {
        return Err(ApiError::unprocessable(
            "Idempotency-Key",
            "this Idempotency-Key was used for a different request; use a new key",
        ));
    }
    serde_json::from_value(response)
        .map(Some)
        .map_err(ApiError::internal)
}

/// Records the answer to the request; call after the effect, in the same transaction.
/// An expired record of the same key is replaced.
pub async fn finish(
    conn: &mut Connection,
    key: &Key,
    status: u16,
    response: &impl Serialize,
) -> ApiResult<()> {
    let response = serde_json::to_value(response).map_err(ApiError::internal)?;
    let status = i16::try_from(status).map_err(ApiError::internal)?;
    diesel::insert_into(idempotency_keys::table)
        .values((
            idempotency_keys::caller.eq(&key.caller),
            idempotency_keys::key.eq(&key.key),
            idempotency_keys::fingerprint.eq(&key.fingerprint),
            idempotency_keys::status.eq(status),
            idempotency_keys::response.eq(&response),
            idempotency_keys::created_at.eq(Utc::now()),
        ))
        .on_conflict((idempotency_keys::caller, idempotency_keys::key))
        .do_update()
        .set((
            idempotency_keys::fingerprint.eq(&key.fingerprint),
            idempotency_keys::status.eq(status),
            idempotency_keys::response.eq(&response),
            idempotency_keys::created_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes keys past their retention; returns how many.
pub async fn expire(conn: &mut Connection) -> QueryResult<usize> {
    diesel::delete(idempotency_keys::table)
        .filter(idempotency_keys::created_at.le(Utc::now() - RETENTION))
        .execute(conn)
        .await
}
