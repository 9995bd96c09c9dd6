//! The vocabulary every Switchboard component shares, and nothing else.
//!
//! Layout:
//! - [`FieldError`]: one bad field of an input, with the reason; components
//!   return a list of them so the API can name every bad field at once.
//! - [`StorageError`]: what a storage backend reports, classified by kind so
//!   callers never match on message text.
//! - [`Clock`]: where "now" comes from, so timers can be driven in tests.
//! - [`ident`]: the rule for identifiers (agent ids, types, capabilities).
//! - [`wake`]: answers handed to the tasks of another thread with one wake
//!   per thread (the group commit answers many connections at once).
//!
//! This crate does no IO and depends on no runtime.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub mod ident;
pub mod wake;

/// One field of an input that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// A path to the field as the client wrote it: `capabilities[2]`,
    /// `configuration.max_concurrent_tasks`, or a query parameter name.
    pub field: String,
    /// Why the value was refused, as a sentence fragment without a final dot.
    pub reason: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Collects field errors while a whole input is checked, so that every bad
/// field is reported, not only the first.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// Starts an empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one bad field.
    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(field, reason));
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was recorded, otherwise every recorded error.
    pub fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// The kind of a [`StorageError`]; decides retries and HTTP mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// The backend could not be reached or is shutting down; worth retrying.
    Unavailable,
    /// The backend is busy (a lock, a full pool); worth retrying.
    Busy,
    /// A constraint refused the write.
    Conflict,
    /// Stored data could not be decoded: a bug or a tampered database.
    Corrupt,
    /// Anything else.
    Other,
}

/// An error from a storage backend.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage {kind:?}: {message}")]
pub struct StorageError {
    kind: StorageErrorKind,
    message: String,
}

impl StorageError {
    /// Builds an error of the given kind.
    pub fn new(kind: StorageErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The classification of this error.
    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }

    /// Whether the same call may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            StorageErrorKind::Unavailable | StorageErrorKind::Busy
        )
    }
}

/// Milliseconds since the Unix epoch, the one time unit stored and compared.
pub type UnixMillis = i64;

/// Where components read the current time from.
///
/// Production uses the system clock; tests can use a manual clock to move
/// time forward without sleeping.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that stands still at `start` until [`Clock::advance`] moves it.
    pub fn manual(start: UnixMillis) -> Self {
        Self {
            manual: Some(Arc::new(AtomicI64::new(start))),
        }
    }

    /// The current time in milliseconds since the epoch.
    pub fn now_ms(&self) -> UnixMillis {
        match &self.manual {
            Some(t) => t.load(Ordering::Relaxed),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        }
    }

    /// Moves a manual clock forward; does nothing to the system clock.
    pub fn advance(&self, by_ms: i64) {
        if let Some(t) = &self.manual {
            t.fetch_add(by_ms, Ordering::Relaxed);
        }
    }
}

/// Something the hub needs to serve, and can check: a store, a broker.
///
/// `GET /readyz` asks every one of them.
pub trait Readiness: Send + Sync + 'static {
    /// A short name for reports (`sqlite`).
    fn name(&self) -> &str;

    /// Resolves to `Ok` when the dependency answers.
    fn check(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + '_>>;
}
