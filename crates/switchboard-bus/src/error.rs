//! The bus's error.

use switchboard_core::{FieldError, StorageError};

/// What can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The input had bad fields; every one is listed.
    #[error("invalid input: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// The log failed.
    #[error("event log: {0}")]
    Storage(#[from] StorageError),
    /// The named thing does not exist; `code` names what
    /// (`GROUP_NOT_FOUND`).
    #[error("not found: {message}")]
    NotFound {
        /// What was not found, as an error code.
        code: &'static str,
        /// Which one.
        message: String,
    },
    /// The request contradicts what exists.
    #[error("conflict: {0}")]
    Conflict(String),
    /// An acknowledgement for an event that is not pending.
    #[error("not pending: {0}")]
    NotPending(String),
    /// The bus is shutting down.
    #[error("the bus is shutting down")]
    Closed,
}
