//! Infrastructure faults wait; business faults decide.
//!
//! A handler that could not *ask* (Redis unreachable, a lock not had in time, Postgres
//! unreachable, a pool exhausted, a deadlock, a statement timeout) has learnt nothing about
//! the business: answering `Failed` would spend the saga's retries, then its compensations,
//! on an outage, and park it with the customer charged. Such an error is an
//! infrastructure fault: the consumer loop keeps the message and waits, with backoff, until
//! the dependency answers, without counting an attempt (`kafka::consumer`). Only errors
//! that are not faults (a participant's own failure, a constraint, bad data) spend the
//! message's budget and end in `Failed` or the dead-letter topic.
//!
//! [`is_fault`] decides by walking the error's chain; code that knows better (a lock not
//! acquired within its wait) marks its error [`Unavailable`].

use deadpool_redis::redis::RedisError;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// A dependency did not answer, or did not grant what was asked in time.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl Unavailable {
    pub fn error(what: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Self(what.into()))
    }
}

/// Whether `err` is an infrastructure fault (wait and try again) rather than a failure
/// (spend the budget).
pub fn is_fault(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.is::<Unavailable>()
            || cause.downcast_ref::<DieselError>().is_some_and(database)
            || cause.is::<diesel_async::pooled_connection::deadpool::PoolError>()
            || cause.is::<deadpool_redis::PoolError>()
            || cause.downcast_ref::<RedisError>().is_some_and(redis)
            || cause.is::<std::io::Error>()
    })
}

/// A database error that says nothing about the data: the connection, a conflict between
/// transactions, a timeout. Postgres's codes for deadlocks, lock and statement timeouts
/// reach diesel only as their messages (its kinds do not name them); the server's messages
/// are English unless `lc_messages` says otherwise.
pub fn database(err: &DieselError) -> bool {
    match err {
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::ClosedConnection => true,
            DatabaseErrorKind::Unknown => {
                let message = info.message();
                [
                    "deadlock detected",
                    "canceling statement due to statement timeout",
                    "canceling statement due to lock timeout",
                    "could not obtain lock",
                    "terminating connection",
                    "the database system is",
                    "connection",
                ]
                .iter()
                .any(|known| message.starts_with(known))
            }
            _ => false,
        },
        DieselError::BrokenTransactionManager => true,
        _ => false,
    }
}

fn redis(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        || err.is_timeout()
        || err.is_unrecoverable_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn faults_are_told_from_failures_through_any_context() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(is_fault(&anyhow::Error::new(refused).context("redis pool")));
        assert!(is_fault(
            &Unavailable::error("locks not acquired within 5s").context("coupon.claim")
        ));
        let deadlock = DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("deadlock detected".to_owned()),
        );
        assert!(is_fault(&anyhow::Error::new(deadlock)));
        let unique = DieselError::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            Box::new("duplicate key".to_owned()),
        );
        assert!(!is_fault(&anyhow::Error::new(unique)));
        assert!(!is_fault(&anyhow::anyhow!("payout must be positive")));
        let bad_data: anyhow::Result<()> = Err(anyhow::anyhow!("no such user")).context("x");
        assert!(!is_fault(&bad_data.unwrap_err()));
    }
}
