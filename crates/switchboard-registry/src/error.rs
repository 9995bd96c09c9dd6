//! The registry's error.

use switchboard_core::{FieldError, StorageError};

/// What can go wrong in the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The input had bad fields; every one is listed.
    #[error("invalid input: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// No agent has this id.
    #[error("agent {0} is not registered")]
    NotFound(String),
    /// The store failed.
    #[error("registry storage: {0}")]
    Storage(#[from] StorageError),
}

impl RegistryError {
    /// Whether this error means the agent does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }
}
