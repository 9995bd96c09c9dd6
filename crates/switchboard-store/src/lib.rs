//! Storage backends. This is the only crate that speaks SQL.
//!
//! Layout:
//! - [`sqlite`]: [`SqliteStore`], the embedded default: one database file in
//!   WAL mode under the data directory, a single writer connection and a
//!   small pool of readers.
//!
//! Each component defines the storage trait it needs (the registry's
//! `AgentStore`, …) and each backend here implements all of them, so a new
//! backend (PostgreSQL) is added next to SQLite without touching the
//! components.

pub mod sqlite;

pub use sqlite::{SqliteConfig, SqliteStore, Synchronous, spawn_writer};

use switchboard_core::{StorageError, StorageErrorKind};

/// Classifies a sqlx error.
pub(crate) fn storage_error(context: &str, e: sqlx::Error) -> StorageError {
    let kind = match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StorageErrorKind::Unavailable
        }
        sqlx::Error::Database(db) => {
            // SQLite primary result codes: 5 BUSY, 6 LOCKED.
            match db.code().as_deref() {
                Some("5") | Some("6") => StorageErrorKind::Busy,
                _ if db.is_unique_violation()
                    || db.is_foreign_key_violation()
                    || db.is_check_violation() =>
                {
                    StorageErrorKind::Conflict
                }
                _ => StorageErrorKind::Other,
            }
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StorageErrorKind::Corrupt,
        _ => StorageErrorKind::Other,
    };
    StorageError::new(kind, format!("{context}: {e}"))
}

/// [`storage_error`] for an error of a direct (`rusqlite`) connection.
pub(crate) fn direct_error(context: &str, e: rusqlite::Error) -> StorageError {
    use rusqlite::ErrorCode;
    let kind = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StorageErrorKind::Busy,
        Some(ErrorCode::ConstraintViolation) => StorageErrorKind::Conflict,
        Some(ErrorCode::CannotOpen | ErrorCode::SystemIoFailure | ErrorCode::DiskFull) => {
            StorageErrorKind::Unavailable
        }
        _ => match e {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => StorageErrorKind::Corrupt,
            _ => StorageErrorKind::Other,
        },
    };
    StorageError::new(kind, format!("{context}: {e}"))
}

/// An error for stored data that does not decode.
pub(crate) fn corrupt(context: &str, detail: impl std::fmt::Display) -> StorageError {
    StorageError::new(StorageErrorKind::Corrupt, format!("{context}: {detail}"))
}
