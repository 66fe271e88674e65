//! Errors of the pure core. Inputs that do not fit the state are not errors (they are
//! ignored with a reason, see `Outcome`); what remains is text from outside that does not
//! parse.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A stored status string that names no `Status`.
    UnknownStatus(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownStatus(value) => write!(f, "unknown saga status {value:?}"),
        }
    }
}

impl std::error::Error for Error {}
