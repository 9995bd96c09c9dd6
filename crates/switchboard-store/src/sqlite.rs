//! The embedded SQLite backend.
//!
//! One database file, `switchboard.db`, in WAL mode. Writes go through a
//! single connection: SQLite allows one writer at a time, and one connection
//! queues writers in line (`Writer`) instead of making them spin on
//! `SQLITE_BUSY`.
//! Reads use a separate pool of read-only connections, which WAL lets run
//! beside the writer.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use switchboard_core::{Clock, Readiness, StorageError, StorageErrorKind};
use tokio_util::sync::CancellationToken;

use crate::{direct_error, storage_error};

mod agents;
mod auth;
mod batch;
mod events;
mod gateway;
mod groups;
mod head;
mod retention;
mod schedule;
mod seen;
mod tasks;
mod vault;
mod writer;

use agents::LivenessWrite;
use batch::Batcher;
use events::{AppendWrite, Recent};
use groups::GroupWrite;
use seen::Seen;
use writer::Writer;
pub use writer::spawn_writer;

/// The name of the database file under the data directory.
pub const DB_FILE: &str = "switchboard.db";

/// When SQLite waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Commits survive a crash of the process (`kill -9`); the last commits
    /// before a power loss may be lost. One fsync per checkpoint, not per
    /// commit.
    #[default]
    Normal,
    /// Commits also survive a power loss; one fsync per commit.
    Full,
}

impl FromStr for Synchronous {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Self::Normal),
            "full" => Ok(Self::Full),
            other => Err(format!("must be normal or full, not {other:?}")),
        }
    }
}

/// Settings of the SQLite backend.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The directory that holds the database; created if missing.
    pub data_dir: PathBuf,
    /// Durability of commits.
    pub synchronous: Synchronous,
    /// Read connections.
    pub readers: u32,
    /// The clock that stamps appends.
    pub clock: Clock,
}

impl SqliteConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            synchronous: Synchronous::Normal,
            readers: 4,
            clock: Clock::system(),
        }
    }
}

/// The SQLite store. Cheap to clone: the pools are shared.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: Writer,
    /// Group commit of agent liveness (status changes, heartbeats).
    liveness: Batcher<LivenessWrite>,
    /// Group commit of event appends.
    appends: Batcher<AppendWrite>,
    /// Group commit of consumer-group changes.
    group_writes: Batcher<GroupWrite>,
    /// The last durable event's sequence number.
    head: head::Head,
    /// The latest appended events.
    recent: Recent,
    /// Which events the log may hold, for appends' duplicate checks.
    seen: Seen,
    reader: SqlitePool,
    /// One connection that copies the WAL into the database file.
    checkpoints: SqlitePool,
    stop_checkpoints: CancellationToken,
    /// Closed by `close`, after the connections: see [`Flush`].
    flush: Arc<Flush>,
    path: PathBuf,
    /// Stamps appends made outside the batchers (task rounds).
    clock: Clock,
}

/// The direct write connection (see `writer`), set up as the `sqlx` write
/// connection is: the schema is already in place.
fn open_direct(path: &Path, sync: Synchronous) -> Result<rusqlite::Connection, StorageError> {
    let ctx = format!("open {} for direct writes", path.display());
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| direct_error(&ctx, e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| direct_error(&ctx, e))?;
    let sync = match sync {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    // As the `sqlx` connections: no checkpoint inside a commit, and the
    // same 64 MiB page cache as the other writer.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; \
         PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = -65536;"
    ))
    .map_err(|e| direct_error(&ctx, e))?;
    Ok(conn)
}

/// How often the WAL is checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// WAL frames (pages) past which a checkpoint also restarts the WAL.
const RESTART_FRAMES: i64 = 16_384;

/// Copies committed pages from the WAL into the database file, without
/// blocking the writer (PASSIVE), every [`CHECKPOINT_EVERY`]. Keeping this
/// off the writer keeps the fsyncs of a checkpoint out of commit latency.
///
/// A passive checkpoint never waits for the writer, so under continuous
/// writes it seldom finds the WAL fully copied at the moment a new write
/// begins, and SQLite only starts the WAL over at such a moment: the WAL
/// grew by hundreds of megabytes a minute, and every lookup in it slowed
/// with it. So once the WAL holds more than [`RESTART_FRAMES`] pages (64
/// MiB of 4 KiB pages), a RESTART checkpoint runs on the writer's own
/// connection, between two of its transactions: it copies what the
/// passive ones left and starts the WAL over. (Run beside the writer, it
/// would make the writer's next transaction fail with `SQLITE_BUSY`.)
///
/// Writes wait while it runs, and most of its time is two fsyncs that
/// must come before the WAL is overwritten: the WAL's tail, then the
/// database file. A passive checkpoint that does not reach the WAL's end
/// (under load, none does) leaves the pages it copied unflushed, so the
/// restart's fsync of the database file had to write all of them: at
/// 5,000 tasks/s (about 100 MB of WAL a second) a restart took 16–57 ms.
/// So before it takes the writer, the checkpointer flushes the database
/// file itself, twice, each after a passive checkpoint (see [`Flush`]);
/// the restart then writes only what was copied or appended since.
async fn checkpointer(
    pool: SqlitePool,
    writer: Writer,
    flush: Arc<Flush>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let log = match passive(&pool).await {
            Ok(log) => log,
            Err(error) => {
                tracing::warn!(%error, "WAL checkpoint failed");
                continue;
            }
        };
        if log <= RESTART_FRAMES {
            continue;
        }
        let started = std::time::Instant::now();
        let flushed = async {
            flush.database()?;
            passive(&pool).await?;
            flush.database()
        }
        .await;
        if let Err(error) = flushed {
            // A write the disk refused may be reported to one descriptor
            // only; SQLite's own fsync might then succeed over lost pages,
            // so the WAL is not started over until a flush succeeds.
            tracing::error!(%error, "flushing the database failed; the WAL is not restarted");
            continue;
        }
        let flushing = started.elapsed();
        let asked = std::time::Instant::now();
        let restarted = match writer.lock().await {
            Ok(mut conn) => {
                let locked = std::time::Instant::now();
                sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                    .execute(&mut *conn)
                    .await
                    .map(|_| (locked - asked, locked.elapsed()))
                    .map_err(|e| storage_error("restart the WAL", e))
            }
            Err(e) => Err(e),
        };
        match restarted {
            Ok((waited, held)) => {
                tracing::debug!(frames = log, ?flushing, ?waited, ?held, "WAL restarted")
            }
            Err(error) => tracing::warn!(%error, "WAL restart failed"),
        }
    }
}

/// A passive checkpoint; the WAL's length in pages.
async fn passive(pool: &SqlitePool) -> Result<i64, StorageError> {
    // Columns: busy, frames in the WAL, frames copied.
    let (_, log, _) = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(pool)
        .await
        .map_err(|e| storage_error("checkpoint the WAL", e))?;
    Ok(log)
}

/// A handle on the database file through which the checkpointer flushes
/// it to disk (`fdatasync`) without SQLite, and so without the writer.
/// SQLite's own fsyncs keep the database safe; this one only leaves them
/// less to write.
///
/// It stays open until [`SqliteStore::close`] has closed every
/// connection: closing any descriptor of a file drops every POSIX lock the
/// process holds on it, SQLite's included. (A store dropped without
/// `close` keeps it, with its checkpointer and connections, open.)
#[derive(Debug)]
struct Flush {
    db: std::sync::Mutex<Option<std::fs::File>>,
}

impl Flush {
    fn open(path: &Path) -> Result<Self, StorageError> {
        // Writable: some systems flush only what a handle may write.
        let db = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| {
                StorageError::new(
                    StorageErrorKind::Unavailable,
                    format!("open {} to flush it: {e}", path.display()),
                )
            })?;
        Ok(Self {
            db: std::sync::Mutex::new(Some(db)),
        })
    }

    fn database(&self) -> Result<(), StorageError> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match db.as_ref() {
            Some(f) => f.sync_data().map_err(|e| {
                StorageError::new(
                    StorageErrorKind::Unavailable,
                    format!("flush the database file: {e}"),
                )
            }),
            None => Err(StorageError::new(
                StorageErrorKind::Unavailable,
                "the store is closed",
            )),
        }
    }

    /// Closes the descriptor; only once no connection is open.
    fn close(&self) {
        self.db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database under `config.data_dir` and
    /// brings its schema up to date.
    pub async fn open(config: &SqliteConfig) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StorageError::new(
                StorageErrorKind::Unavailable,
                format!("create data directory {}: {e}", config.data_dir.display()),
            )
        })?;
        let path = config.data_dir.join(DB_FILE);
        let sync = match config.synchronous {
            Synchronous::Normal => SqliteSynchronous::Normal,
            Synchronous::Full => SqliteSynchronous::Full,
        };
        let base = SqliteConnectOptions::new()
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            .pragma("temp_store", "memory")
            // Checkpoints run in the background (see `checkpointer`), not
            // inside whichever commit happens to cross the threshold.
            .pragma("wal_autocheckpoint", "0");
        // The writer touches the newest pages of every table and index at
        // every commit: a 64 MiB page cache keeps them (SQLite's default is
        // 2 MiB; under a steady write load the writer's time per commit grew
        // with the database).
        let mut conn = base
            .clone()
            .create_if_missing(true)
            .pragma("cache_size", "-65536")
            .connect()
            .await
            .map_err(|e| storage_error(&format!("open {}", path.display()), e))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut conn)
            .await
            .map_err(|e| {
                StorageError::new(
                    StorageErrorKind::Other,
                    format!("migrate {}: {e}", path.display()),
                )
            })?;
        let head = head::Head::new(events::last_seq(&mut conn).await?);
        let seen = Seen::new(
            config.clock.clone(),
            events::last_appended(&mut conn).await?,
        );
        let writer = Writer::new(conn, open_direct(&path, config.synchronous)?);
        // A local file cannot drop a connection the way a network can, so
        // read connections are not pinged each time they are taken from
        // their pool: the ping is one more round trip to SQLite's thread.
        let reader = SqlitePoolOptions::new()
            .max_connections(config.readers.max(1))
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base.clone().read_only(true))
            .await
            .map_err(|e| storage_error(&format!("open {} for reading", path.display()), e))?;
        let checkpoints = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(base)
            .await
            .map_err(|e| storage_error(&format!("open {} for checkpoints", path.display()), e))?;
        let flush = Arc::new(Flush::open(&path)?);
        let recent = Recent::default();
        let stop = CancellationToken::new();
        // It holds the writer while it restarts the WAL: on a thread of its
        // own, like the other writers.
        writer::spawn_detached(
            "store-checkpoint",
            checkpointer(
                checkpoints.clone(),
                writer.clone(),
                flush.clone(),
                stop.clone(),
            ),
        )?;
        tracing::info!(path = %path.display(), "store opened");
        Ok(Self {
            liveness: Batcher::start(
                "store-liveness",
                writer.clone(),
                LivenessWrite {
                    clock: config.clock.clone(),
                    head: head.clone(),
                    seen: seen.clone(),
                },
            )?,
            appends: Batcher::start(
                "store-appends",
                writer.clone(),
                AppendWrite {
                    clock: config.clock.clone(),
                    head: head.clone(),
                    recent: recent.clone(),
                    seen: seen.clone(),
                },
            )?,
            recent,
            group_writes: Batcher::start(
                "store-groups",
                writer.clone(),
                GroupWrite {
                    head: head.clone(),
                    seen: seen.clone(),
                },
            )?,
            seen,
            head,
            writer,
            reader,
            checkpoints,
            stop_checkpoints: stop,
            flush,
            path,
            clock: config.clock.clone(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checkpoints the WAL into the database file and closes every pool,
    /// waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.stop_checkpoints.cancel();
        self.reader.close().await;
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.checkpoints)
            .await
        {
            tracing::warn!(%error, "final checkpoint failed");
        }
        self.checkpoints.close().await;
        self.writer.close().await;
        self.flush.close();
    }
}

impl Readiness for SqliteStore {
    fn name(&self) -> &str {
        "sqlite"
    }

    fn check(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + '_>>
    {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&self.reader)
                .await
                .map_err(|e| storage_error("readiness read", e))?;
            sqlx::query("SELECT 1")
                .execute(&mut *self.writer.lock().await?)
                .await
                .map_err(|e| storage_error("readiness write connection", e))?;
            Ok(())
        })
    }
}
