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
    /// The bus is shutting down.
    #[error("the bus is shutting down")]
    Closed,
}
