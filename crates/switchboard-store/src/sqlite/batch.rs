//! Group commit: many small writes of one kind share one transaction and,
//! where the kind allows, one statement.
//!
//! A [`Batcher`] owns a queue of items. One task takes every item waiting
//! (up to [`MAX_BATCH`]), hands them to [`BatchWrite::commit`], which writes
//! them in one transaction on a write connection and commits once, and
//! only then answers each caller. No caller is answered before its write is
//! committed. Under light load a batch is a single item, so nothing waits
//! for a batch to fill; under heavy load one commit (and one statement)
//! serves hundreds of writes. The answers of one commit are handed over
//! with one wake per thread whose tasks wait for them
//! (`switchboard_core::wake`), not one per caller.

use std::future::Future;

use super::Writer;
use super::writer::{closed, spawn_detached};
use sqlx::Connection;
use sqlx::SqliteConnection;
use switchboard_core::wake::{Answer, Wakes, answer};
use switchboard_core::{StorageError, StorageErrorKind};
use tokio::sync::mpsc;

use crate::storage_error;

/// The most items committed together.
pub(crate) const MAX_BATCH: usize = 512;
/// Items waiting beyond this make callers wait (backpressure).
const QUEUE: usize = 8192;

/// A kind of write that can be applied many at a time.
pub(crate) trait BatchWrite: Send + Sync + 'static {
    /// One write.
    type Item: Send + Sync + 'static;
    /// What its caller is answered.
    type Output: Send + 'static;

    /// Writes `items` in order in one transaction on `writer`'s
    /// connections and commits it; one output per item, in the same order.
    fn commit(
        &self,
        writer: &Writer,
        items: Vec<Self::Item>,
    ) -> impl Future<Output = Result<Vec<Self::Output>, StorageError>> + Send;
}

/// A [`BatchWrite`] on the `sqlx` write connection.
pub(crate) trait SqlxWrite: Send + Sync + 'static {
    /// One write.
    type Item: Send + Sync + 'static;
    /// What its caller is answered.
    type Output: Send + 'static;

    /// Applies `items` in order on `conn`, inside a transaction, and
    /// returns one output per item, in the same order.
    fn write(
        &self,
        conn: &mut SqliteConnection,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Output>, StorageError>> + Send;

    /// Called after the batch committed, before any caller is answered.
    fn committed(&self, _outputs: &[Self::Output]) {}
}

type Pending<W> = (
    <W as BatchWrite>::Item,
    Answer<Result<<W as BatchWrite>::Output, StorageError>>,
);

/// The queue of one kind of write. Cheap to clone.
pub(crate) struct Batcher<W: BatchWrite> {
    tx: mpsc::Sender<Pending<W>>,
}

impl<W: BatchWrite> Clone for Batcher<W> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<W: BatchWrite> std::fmt::Debug for Batcher<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<W: BatchWrite> Batcher<W> {
    /// Starts the batching task on `writer`, on a thread of its own (see
    /// `spawn_writer`); it ends when every clone of the returned `Batcher`
    /// is dropped.
    pub(crate) fn start(name: &str, writer: Writer, kind: W) -> Result<Self, StorageError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        spawn_detached(name, run(writer, kind, rx))?;
        Ok(Self { tx })
    }

    /// Writes one item; resolves after it is committed.
    pub(crate) async fn write(&self, item: W::Item) -> Result<W::Output, StorageError> {
        self.enqueue(item).await?.await
    }

    /// Queues one item; the returned future resolves after it is
    /// committed. Items queued one after another are written in that
    /// order.
    pub(crate) async fn enqueue(
        &self,
        item: W::Item,
    ) -> Result<impl Future<Output = Result<W::Output, StorageError>> + use<W>, StorageError> {
        let (reply, answered) = answer();
        self.tx.send((item, reply)).await.map_err(|_| closed())?;
        Ok(async move { answered.await.map_err(|_| closed())? })
    }
}

async fn run<W: BatchWrite>(writer: Writer, kind: W, mut rx: mpsc::Receiver<Pending<W>>) {
    let mut pending: Vec<Pending<W>> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut pending, MAX_BATCH).await > 0 {
        let (items, replies): (Vec<_>, Vec<_>) = pending.drain(..).unzip();
        let n = items.len();
        let mut wakes = Wakes::default();
        match kind
            .commit(&writer, items)
            .await
            .and_then(|o| counted(o, n))
        {
            Ok(outputs) => {
                for (reply, out) in replies.into_iter().zip(outputs) {
                    reply.send(Ok(out), &mut wakes);
                }
            }
            Err(error) => {
                tracing::warn!(%error, items = n, "batched commit failed");
                for reply in replies {
                    reply.send(Err(error.clone()), &mut wakes);
                }
            }
        }
    }
}

impl<W: SqlxWrite> BatchWrite for W {
    type Item = W::Item;
    type Output = W::Output;

    async fn commit(
        &self,
        writer: &Writer,
        items: Vec<W::Item>,
    ) -> Result<Vec<W::Output>, StorageError> {
        let ctx = "batched write";
        let mut conn = writer.lock().await?;
        let mut tx = conn.begin().await.map_err(|e| storage_error(ctx, e))?;
        let outputs = counted(self.write(&mut tx, &items).await?, items.len())?;
        tx.commit().await.map_err(|e| storage_error(ctx, e))?;
        self.committed(&outputs);
        Ok(outputs)
    }
}

/// `outputs`, if there is one for each of the `items` written.
fn counted<T>(outputs: Vec<T>, items: usize) -> Result<Vec<T>, StorageError> {
    if outputs.len() == items {
        Ok(outputs)
    } else {
        Err(StorageError::new(
            StorageErrorKind::Other,
            format!("batched write: {} outputs for {items} items", outputs.len()),
        ))
    }
}
