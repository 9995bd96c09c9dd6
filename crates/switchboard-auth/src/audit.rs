//! The audit log: who did what, when, from where, and how it ended, in an
//! append-only chain of hashes.
//!
//! Each record's `hash` is SHA-256 over its fields and the previous
//! record's hash ([`AuditRecord::compute_hash`]), so editing a record
//! breaks its hash, and deleting or inserting one breaks the link of the
//! next ([`verify`]). Truncating the tail leaves a valid shorter chain:
//! compare the head [`verify`] reports with one kept elsewhere.
//!
//! [`AuditLog`] is the writer: one task owns the end of the chain, takes
//! every record waiting, chains and stores them in one transaction, then
//! answers each caller. A call is answered only after its record is stored.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchboard_core::{StorageError, UnixMillis};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::secret::hex;
use crate::store::{AuditQuery, AuthStore};

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When, in milliseconds since the epoch.
    pub at: UnixMillis,
    /// Who: a principal id, or `anonymous`.
    pub principal: String,
    /// What kind of principal (`agent`, `operator`, `service`, `anonymous`).
    pub principal_kind: String,
    /// What: the method and route (`POST /api/v1/agents/{id}/heartbeat`),
    /// or an action of the hub (`secret.read`).
    pub action: String,
    /// On what: the request path.
    pub resource: String,
    /// How it ended: the HTTP status.
    pub outcome: u16,
    /// Why, for refusals and failures: the error code.
    pub reason: String,
    /// From where: the client's address.
    pub source: String,
    /// The request's correlation id.
    pub correlation_id: String,
}

/// An entry in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// The entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// The previous record's hash ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

impl AuditRecord {
    /// The hash a record with these fields must have: SHA-256 (hex) of a
    /// JSON array of every field in a fixed order, ending with `prev_hash`.
    pub fn compute_hash(seq: u64, e: &AuditEntry, prev_hash: &str) -> String {
        let canonical = serde_json::json!([
            seq,
            e.at,
            e.principal,
            e.principal_kind,
            e.action,
            e.resource,
            e.outcome,
            e.reason,
            e.source,
            e.correlation_id,
            prev_hash,
        ]);
        hex(&Sha256::digest(canonical.to_string().as_bytes()))
    }

    fn chain(seq: u64, entry: AuditEntry, prev_hash: String) -> Self {
        let hash = Self::compute_hash(seq, &entry, &prev_hash);
        Self {
            seq,
            entry,
            prev_hash,
            hash,
        }
    }
}

/// One break in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBreak {
    /// The record where the chain breaks.
    pub seq: u64,
    /// What is wrong.
    pub problem: String,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Records checked.
    pub checked: u64,
    /// The last record's sequence number and hash.
    pub head_seq: u64,
    /// The last record's hash.
    pub head_hash: String,
    /// Every break found; empty when the chain is intact.
    pub breaks: Vec<ChainBreak>,
}

/// Checks records that continue from `(after_seq, prev_hash)` (`(0,
/// GENESIS)` for the whole log); call it page by page with the state it
/// returns.
#[derive(Debug, Clone)]
pub struct Verifier {
    seq: u64,
    prev_hash: String,
    result: Verification,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            seq: 0,
            prev_hash: GENESIS.into(),
            result: Verification::default(),
        }
    }
}

impl Verifier {
    /// Checks the next records, in order.
    pub fn feed(&mut self, records: &[AuditRecord]) {
        for r in records {
            self.result.checked += 1;
            if r.seq != self.seq + 1 {
                self.result.breaks.push(ChainBreak {
                    seq: r.seq,
                    problem: format!(
                        "records {} to {} are missing",
                        self.seq + 1,
                        r.seq.saturating_sub(1)
                    ),
                });
            } else if r.prev_hash != self.prev_hash {
                self.result.breaks.push(ChainBreak {
                    seq: r.seq,
                    problem: "its prev_hash is not the previous record's hash (a record was removed, replaced or inserted)".into(),
                });
            }
            if AuditRecord::compute_hash(r.seq, &r.entry, &r.prev_hash) != r.hash {
                self.result.breaks.push(ChainBreak {
                    seq: r.seq,
                    problem: "its content does not match its hash (the record was edited)".into(),
                });
            }
            self.seq = r.seq;
            self.prev_hash.clone_from(&r.hash);
        }
    }

    /// The result so far.
    pub fn finish(mut self) -> Verification {
        self.result.head_seq = self.seq;
        self.result.head_hash = self.prev_hash;
        self.result
    }
}

/// Checks a whole log given oldest first.
pub fn verify(records: &[AuditRecord]) -> Verification {
    let mut v = Verifier::default();
    v.feed(records);
    v.finish()
}

type Reply = oneshot::Sender<Result<u64, StorageError>>;

/// The handle that appends to the audit log.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<(AuditEntry, Reply)>,
    store: Arc<dyn AuthStore>,
}

impl AuditLog {
    /// Starts the writer, continuing the chain the store holds.
    pub(crate) async fn open(
        store: Arc<dyn AuthStore>,
        shutdown: CancellationToken,
    ) -> Result<(Self, AuditWriter), StorageError> {
        let tail = store.audit_tail().await?;
        let (tx, rx) = mpsc::channel(4096);
        Ok((
            Self {
                tx,
                store: store.clone(),
            },
            AuditWriter {
                rx,
                store,
                seq: tail.as_ref().map_or(0, |r| r.seq),
                prev_hash: tail.map_or_else(|| GENESIS.to_owned(), |r| r.hash),
                shutdown,
            },
        ))
    }

    /// Appends `entry`; resolves to its sequence number once it is stored.
    pub async fn record(&self, entry: AuditEntry) -> Result<u64, StorageError> {
        let (reply, answer) = oneshot::channel();
        let closed = || {
            StorageError::new(
                switchboard_core::StorageErrorKind::Unavailable,
                "the audit log is closed",
            )
        };
        self.tx.send((entry, reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// A page of the log.
    pub async fn read(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        self.store.read_audit(query).await
    }

    /// Checks the whole chain as stored.
    pub async fn verify(&self) -> Result<Verification, StorageError> {
        let mut v = Verifier::default();
        let mut after = 0;
        loop {
            let page = self
                .store
                .read_audit(&AuditQuery {
                    after,
                    limit: 1000,
                    principal: None,
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            v.feed(&page);
        }
        Ok(v.finish())
    }
}

/// The task that owns the end of the chain.
pub struct AuditWriter {
    rx: mpsc::Receiver<(AuditEntry, Reply)>,
    store: Arc<dyn AuthStore>,
    seq: u64,
    prev_hash: String,
    shutdown: CancellationToken,
}

impl AuditWriter {
    /// Writes until shutdown, then writes what is still queued.
    pub async fn run(mut self) {
        let mut batch = Vec::new();
        loop {
            let first = tokio::select! {
                biased;
                m = self.rx.recv() => m,
                () = self.shutdown.cancelled() => {
                    self.rx.close();
                    self.rx.recv().await
                }
            };
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < 1024 {
                match self.rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            self.write(&mut batch).await;
        }
    }

    async fn write(&mut self, batch: &mut Vec<(AuditEntry, Reply)>) {
        let mut records = Vec::with_capacity(batch.len());
        let (mut seq, mut prev) = (self.seq, self.prev_hash.clone());
        for (entry, _) in batch.iter() {
            seq += 1;
            let r = AuditRecord::chain(seq, entry.clone(), prev);
            prev = r.hash.clone();
            records.push(r);
        }
        let result = self.store.append_audit(&records).await;
        match &result {
            Ok(()) => {
                self.seq = seq;
                self.prev_hash = prev;
            }
            Err(error) => {
                tracing::error!(%error, records = records.len(), "audit records could not be stored");
            }
        }
        for ((_, reply), r) in batch.drain(..).zip(&records) {
            let _ = reply.send(result.clone().map(|()| r.seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u16) -> AuditEntry {
        AuditEntry {
            at: 1_700_000_000_000 + i64::from(i),
            principal: "key:abc".into(),
            principal_kind: "operator".into(),
            action: "POST /api/v1/agents/register".into(),
            resource: "/api/v1/agents/register".into(),
            outcome: 201,
            reason: String::new(),
            source: "127.0.0.1".into(),
            correlation_id: format!("c{i}"),
        }
    }

    fn chain(n: u16) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|i| {
                let r = AuditRecord::chain(u64::from(i), entry(i), prev.clone());
                prev.clone_from(&r.hash);
                r
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let v = verify(&c);
        assert_eq!((v.checked, v.head_seq), (5, 5));
        assert_eq!(v.head_hash, c[4].hash);
        assert!(v.breaks.is_empty(), "{:?}", v.breaks);
        // Page by page gives the same answer.
        let mut p = Verifier::default();
        p.feed(&c[..2]);
        p.feed(&c[2..]);
        assert_eq!(p.finish(), v);
    }

    #[test]
    fn edits_deletions_and_insertions_are_found() {
        let mut edited = chain(5);
        edited[2].entry.outcome = 200;
        assert_eq!(verify(&edited).breaks.len(), 1);
        assert_eq!(verify(&edited).breaks[0].seq, 3);

        let mut deleted = chain(5);
        deleted.remove(1);
        let b = verify(&deleted).breaks;
        assert_eq!(b[0].seq, 3);
        assert!(b[0].problem.contains("missing"), "{}", b[0].problem);

        // Re-hashing an edited record does not help: the next link breaks.
        let mut rehashed = chain(5);
        rehashed[1].entry.principal = "someone-else".into();
        rehashed[1].hash = AuditRecord::compute_hash(2, &rehashed[1].entry, &rehashed[1].prev_hash);
        let b = verify(&rehashed).breaks;
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].seq, 3);
    }
}
