//! The one connection that writes, taken in turn.
//!
//! SQLite has one writer at a time, so the store keeps one write
//! connection and its users wait for it in line (a fair lock), rather than
//! spinning on `SQLITE_BUSY`. It is not a `sqlx` pool of one: a pool hands a
//! connection back through a task it spawns, which first pings it (a round
//! trip to SQLite's thread), so on a busy hub the next writer waited
//! milliseconds for the connection to come back after every write. Here
//! the connection is free again the moment its user is done.
//!
//! The lock guards two connections to the one database: the `sqlx`
//! connection most writers use, whose statements run on a thread of
//! `sqlx`'s and are awaited, and a direct one (`rusqlite`) whose
//! statements run on the caller's own thread. The group commit of event
//! appends, which owns a thread, uses the direct one: each of its batches
//! then costs no hop to another thread and back. Whoever holds the lock
//! may use either, never both in one transaction.
//!
//! A transaction dropped unfinished (its caller's future dropped) queues
//! its rollback on the `sqlx` connection, which SQLite's thread runs before
//! the next user's first statement. Until it has run, the direct
//! connection's writes wait for it (`busy_timeout`).

use std::future::Future;
use std::sync::Arc;

use sqlx::SqliteConnection;
use switchboard_core::{StorageError, StorageErrorKind};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

/// The write connections; cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer(Arc<Mutex<Option<Conns>>>);

/// The two connections behind the lock.
struct Conns {
    sqlx: SqliteConnection,
    direct: rusqlite::Connection,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    pub(crate) fn new(sqlx: SqliteConnection, direct: rusqlite::Connection) -> Self {
        Self(Arc::new(Mutex::new(Some(Conns { sqlx, direct }))))
    }

    /// Waits for the `sqlx` connection; an error once the store is closed.
    pub(crate) async fn lock(
        &self,
    ) -> Result<MappedMutexGuard<'_, SqliteConnection>, StorageError> {
        MutexGuard::try_map(self.0.lock().await, |c| c.as_mut().map(|c| &mut c.sqlx))
            .map_err(|_| closed())
    }

    /// Waits for the direct connection; an error once the store is
    /// closed. Its statements block the calling thread.
    pub(crate) async fn lock_direct(
        &self,
    ) -> Result<MappedMutexGuard<'_, rusqlite::Connection>, StorageError> {
        MutexGuard::try_map(self.0.lock().await, |c| c.as_mut().map(|c| &mut c.direct))
            .map_err(|_| closed())
    }

    /// Waits for the connections' current user, then closes them: every
    /// later `lock` fails.
    pub(crate) async fn close(&self) {
        let conns = self.0.lock().await.take();
        if let Some(Conns { sqlx, direct }) = conns {
            if let Err((_, error)) = direct.close() {
                tracing::warn!(%error, "closing the direct write connection failed");
            }
            if let Err(error) = sqlx::Connection::close(sqlx).await {
                tracing::warn!(%error, "closing the write connection failed");
            }
        }
    }
}

/// The error of a write once the store is closed.
pub(super) fn closed() -> StorageError {
    StorageError::new(StorageErrorKind::Unavailable, "the store is closed")
}

/// Ends the transaction a failed script left open on `conn` (a script that
/// begins its own transaction stops inside it when a statement fails), so
/// that the connection's next user does not write into it.
pub(crate) async fn rollback(conn: &mut SqliteConnection, what: &str) {
    if let Err(error) = sqlx::query("ROLLBACK").execute(conn).await {
        tracing::debug!(%error, "rollback after a failed {what}");
    }
}

/// Runs `work`, a task that takes the write connection, on a thread of its
/// own with a runtime of its own; the returned future resolves to its
/// output.
///
/// A task holds the connection from the moment the lock is handed to it
/// until it is next polled after its last statement. Among the request
/// handlers of a busy hub, a task can wait in the runtime's queue for
/// milliseconds at each of those moments while every other writer waits
/// for it. On a thread of its own it is polled as soon as the system
/// schedules the thread. The hot writers (the task engine, the audit log,
/// the group commits, the checkpointer) run this way.
pub fn spawn_writer<F>(
    name: &str,
    work: F,
) -> std::io::Result<impl Future<Output = Option<F::Output>> + Send + 'static + use<F>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _entered = span.enter();
            let out = runtime.block_on(work);
            drop(runtime);
            let _ = done.send(out);
        })?;
    Ok(async move { finished.await.ok() })
}

/// [`spawn_writer`] for a store task that ends on its own (when its queue
/// closes or the store stops): nothing waits for its end.
pub(super) fn spawn_detached<F>(name: &str, work: F) -> Result<(), StorageError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    spawn_writer(name, work).map(drop).map_err(|e| {
        StorageError::new(
            StorageErrorKind::Unavailable,
            format!("start the {name} thread: {e}"),
        )
    })
}

/// A write transaction on the direct connection, begun and committed with
/// statements prepared once and kept in the connection's cache (rusqlite's
/// `Transaction` has SQLite parse `BEGIN` and `COMMIT` anew each time).
/// Dropped unfinished, or after a failed commit, it rolls back.
pub(crate) struct Immediate<'c> {
    conn: &'c rusqlite::Connection,
    open: bool,
}

impl<'c> Immediate<'c> {
    /// `BEGIN IMMEDIATE`: the write lock is taken now, not at the first write.
    pub(crate) fn begin(conn: &'c rusqlite::Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Self { conn, open: true })
    }

    pub(crate) fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for Immediate<'_> {
    type Target = rusqlite::Connection;

    fn deref(&self) -> &rusqlite::Connection {
        self.conn
    }
}

impl Drop for Immediate<'_> {
    fn drop(&mut self) {
        if self.open
            && !self.conn.is_autocommit()
            && let Err(error) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(%error, "rolling back an unfinished append failed");
        }
    }
}
