//! `EventLog` for SQLite.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use rusqlite::OptionalExtension;
use serde_json::{Map, Value};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use switchboard_bus::log::{Appending, Wanted};
use switchboard_bus::{Data, Event, EventLog, NewEvent, Pattern, ReadFrom, Scheduled, Trimmed};
use switchboard_core::{Clock, StorageError, UnixMillis};
use tokio::sync::watch;

use super::batch::BatchWrite;
use super::seen::{Missing, Seen};
use super::{SqliteStore, Writer};
use crate::{corrupt, direct_error, storage_error};

use switchboard_bus::event::ext::PARTITION_KEY;

/// Events per INSERT statement (12 bound values each, well under SQLite's
/// limit on bound values).
const INSERT_CHUNK: usize = 500;

pub(crate) const COLUMNS: &str =
    "seq, id, source, type, topic, subject, time, datacontenttype, data, extensions";

/// Events from an offset on, in order. Built once.
static READ_FROM: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {COLUMNS} FROM events WHERE seq >= ?1 ORDER BY seq LIMIT ?2"));

/// The first event at or after an offset, and when it was appended: one
/// step of a [`ByTime`] search.
const PROBE: &str = "SELECT seq, appended_at FROM events WHERE seq >= ?1 ORDER BY seq LIMIT 1";

/// Finds where the events appended at or after a time start, by halving
/// a range of offsets: `appended_at` never decreases along the log (every
/// writer stamps with [`Seen::stamp`]), so the log needs no index by time.
#[derive(Debug)]
pub(crate) struct ByTime {
    t: UnixMillis,
    /// Every event before `lo` was appended before `t`...
    lo: u64,
    /// ...and every event from `hi` on at or after it.
    hi: u64,
}

impl ByTime {
    /// A search among the offsets up to `last`.
    pub(crate) fn new(t: UnixMillis, last: u64) -> Self {
        Self {
            t,
            lo: 0,
            hi: last.saturating_add(1),
        }
    }

    /// The offset to probe next (the first event at or after it is
    /// wanted), or `None` once [`ByTime::start`] is the answer.
    pub(crate) fn probe(&self) -> Option<u64> {
        (self.lo < self.hi).then(|| self.lo + (self.hi - self.lo) / 2)
    }

    /// What the probe at `at` found: the first event at or after it, with
    /// its `appended_at`, if any.
    pub(crate) fn found(&mut self, at: u64, first: Option<(u64, UnixMillis)>) {
        match first {
            Some((seq, appended)) if seq < self.hi => {
                if appended >= self.t {
                    self.hi = seq;
                } else {
                    self.lo = seq + 1;
                }
            }
            // Nothing from `at` to `hi`.
            _ => self.hi = at,
        }
    }

    /// The offset the events appended at or after `t` start from (every
    /// event at or after it was).
    pub(crate) fn start(&self) -> u64 {
        self.lo
    }
}

/// The offset from which every event was appended at `t` or later.
pub(crate) async fn first_appended_since(
    conn: &mut SqliteConnection,
    t: UnixMillis,
) -> Result<u64, StorageError> {
    let ctx = |e| storage_error("find events by time", e);
    let last: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
        .fetch_one(&mut *conn)
        .await
        .map_err(ctx)?;
    let mut search = ByTime::new(t, last.and_then(|l| u64::try_from(l).ok()).unwrap_or(0));
    while let Some(at) = search.probe() {
        let first: Option<(i64, UnixMillis)> = sqlx::query_as(PROBE)
            .bind(i64::try_from(at).unwrap_or(i64::MAX))
            .fetch_optional(&mut *conn)
            .await
            .map_err(ctx)?;
        search.found(at, first.map(|(s, a)| (u64::try_from(s).unwrap_or(0), a)));
    }
    Ok(search.start())
}

/// [`first_appended_since`] on the direct connection.
fn first_appended_since_direct(
    conn: &rusqlite::Connection,
    t: UnixMillis,
) -> Result<u64, StorageError> {
    let ctx = |e| direct_error("find events by time", e);
    let last: Option<i64> = conn
        .query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))
        .map_err(ctx)?;
    let mut search = ByTime::new(t, last.and_then(|l| u64::try_from(l).ok()).unwrap_or(0));
    let mut probe = conn.prepare_cached(PROBE).map_err(ctx)?;
    while let Some(at) = search.probe() {
        let first = probe
            .query_row([i64::try_from(at).unwrap_or(i64::MAX)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, UnixMillis>(1)?))
            })
            .optional()
            .map_err(ctx)?;
        search.found(at, first.map(|(s, a)| (u64::try_from(s).unwrap_or(0), a)));
    }
    Ok(search.start())
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn enqueue(
        &self,
        events: Vec<NewEvent>,
        dedup_window_ms: i64,
    ) -> Result<Appending, StorageError> {
        if events.is_empty() {
            return Ok(Box::pin(std::future::ready(Ok(Vec::new()))));
        }
        // Group committed with every other append waiting.
        let committed = self
            .appends
            .enqueue(AppendItem {
                events,
                dedup_window_ms,
            })
            .await?;
        Ok(Box::pin(committed))
    }

    async fn schedule(
        &self,
        events: Vec<NewEvent>,
        due: Vec<UnixMillis>,
    ) -> Result<Vec<Scheduled>, StorageError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.hold(events, due).await
    }

    async fn release_due(
        &self,
        now: UnixMillis,
        limit: u32,
    ) -> Result<(u32, Option<UnixMillis>), StorageError> {
        self.release(now, limit).await
    }

    async fn trim(
        &self,
        appended_before: Option<UnixMillis>,
        max_bytes: Option<u64>,
        compact: &[Pattern],
    ) -> Result<Trimmed, StorageError> {
        self.trim_log(appended_before, max_bytes, compact).await
    }

    async fn read(&self, from: ReadFrom, limit: u32) -> Result<Vec<Event>, StorageError> {
        let ctx = |e| storage_error("read events", e);
        let mut conn = self.reader.acquire().await.map_err(ctx)?;
        let from = match from {
            ReadFrom::After(seq) => seq.saturating_add(1),
            ReadFrom::Time(t) => first_appended_since(&mut conn, t).await?,
        };
        let rows = sqlx::query(&READ_FROM)
            .bind(i64::try_from(from).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await
            .map_err(ctx)?;
        rows.iter().map(decode).collect()
    }

    fn recent(&self, after: u64, limit: usize) -> Option<Vec<Arc<Event>>> {
        self.recent.after(after, limit)
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn news(&self) -> watch::Receiver<u64> {
        self.head.news()
    }

    fn follow(&self, wanted: Wanted) {
        self.head.follow(wanted);
    }
}

/// Events to append, and how far back to look for duplicates.
pub(crate) struct AppendItem {
    events: Vec<NewEvent>,
    dedup_window_ms: i64,
}

/// Appends batches of events: multi-row INSERTs in one transaction, then
/// moves the head once committed. Duplicates (same source and id within
/// the window, or earlier in the batch) are answered with the event first
/// stored instead of being inserted.
pub(crate) struct AppendWrite {
    pub(crate) clock: Clock,
    pub(crate) head: super::head::Head,
    pub(crate) recent: Recent,
    pub(crate) seen: Seen,
}

/// The latest appended events, kept in memory so the dispatcher need not
/// read back what was just written. Bounded; may have gaps (events other
/// writers append are not kept), which readers detect.
#[derive(Clone, Debug, Default)]
pub(crate) struct Recent(Arc<Mutex<VecDeque<Arc<Event>>>>);

/// Events kept in [`Recent`].
const RECENT: usize = 4096;

impl Recent {
    /// Keeps `events` (in offset order); any not after the newest kept is
    /// dropped, so the window has no holes a reader could miss: a gap
    /// sends the dispatcher to the log.
    pub(super) fn push(&self, events: impl Iterator<Item = Arc<Event>>) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            if q.back().is_some_and(|b| b.offset >= e.offset) {
                continue;
            }
            if q.len() == RECENT {
                q.pop_front();
            }
            q.push_back(e);
        }
    }

    fn after(&self, after: u64, limit: usize) -> Option<Vec<Arc<Event>>> {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let start = q.partition_point(|e| e.offset <= after);
        let first = q.get(start)?;
        if first.offset != after + 1 {
            return None;
        }
        let out = (after + 1..)
            .zip(q.range(start..))
            .take(limit)
            .take_while(|(want, e)| e.offset == *want)
            .map(|(_, e)| e.clone())
            .collect();
        Some(out)
    }
}

/// One event of a batch: what its publisher is answered.
enum Answer {
    /// A copy stored earlier.
    Stored(Arc<Event>),
    /// Inserted by this batch at this offset.
    Fresh(u64),
    /// The same as the batch's event at this position (counted over all
    /// of the batch's events), an earlier one.
    Repeat(usize),
}

impl AppendWrite {
    /// Appends `items` in one transaction on the direct write connection,
    /// on this thread: a look-up of earlier copies only when `seen` says
    /// there may be one, then the new events in as few multi-row inserts
    /// as [`INSERT_ROWS`] allows, then the commit.
    fn append(
        &self,
        conn: &rusqlite::Connection,
        items: Vec<AppendItem>,
    ) -> Result<Vec<Vec<Arc<Event>>>, StorageError> {
        let ctx = "append events";
        let now = self.clock.now_ms();
        let tx = super::writer::Immediate::begin(conn).map_err(|e| direct_error(ctx, e))?;
        let events = || items.iter().flat_map(|it| &it.events);
        // Each event's key, with the oldest append time a copy may have.
        let keys = || {
            items.iter().flat_map(move |it| {
                let t = now.saturating_sub(it.dedup_window_ms);
                it.events
                    .iter()
                    .map(move |e| (e.source.as_str(), e.id.as_str(), t))
            })
        };
        // Almost always there is no candidate, and nothing is read.
        let candidates = match self.seen.copies(keys()) {
            Ok(offsets) => offsets,
            Err(missing) => {
                load_keys(&self.seen, &tx, missing)?;
                self.seen
                    .copies(keys())
                    .map_err(|_| corrupt(ctx, "deduplication keys missing after a load"))?
            }
        };
        let found = stored_copies(&tx, &candidates)?;
        let mut plan: Vec<Answer> = Vec::with_capacity(events().count());
        {
            // Keyed by borrowed strings, so that no lookup copies a key;
            // oldest first.
            let mut earlier: HashMap<(&str, &str), Vec<&StoredCopy>> = HashMap::new();
            for copy in &found {
                let e = &copy.1;
                earlier.entry((&e.source, &e.id)).or_default().push(copy);
            }
            // New events, first occurrence in the batch only.
            let mut first: HashMap<(&str, &str), usize> = HashMap::new();
            let mut fresh: Vec<&NewEvent> = Vec::new();
            for (at, (e, (source, id, since))) in events().zip(keys()).enumerate() {
                let key = (source, id);
                let copy = earlier
                    .get(&key)
                    .and_then(|copies| copies.iter().find(|(appended, _)| *appended >= since));
                if let Some((_, copy)) = copy {
                    plan.push(Answer::Stored(Arc::clone(copy)));
                } else if let Some(&before) = first.get(&key) {
                    plan.push(Answer::Repeat(before));
                } else {
                    first.insert(key, at);
                    fresh.push(e);
                    plan.push(Answer::Fresh(0));
                }
            }
            let stamp = self.seen.stamp();
            let mut seqs = insert_direct(&self.seen, &tx, &fresh, now, stamp)?.into_iter();
            for answer in &mut plan {
                if let Answer::Fresh(seq) = answer {
                    *seq = seqs
                        .next()
                        .ok_or_else(|| corrupt(ctx, "an event lost its place"))?;
                }
            }
        }
        tx.commit().map_err(|e| direct_error(ctx, e))?;
        // Committed: each event moves into its stored form.
        let mut plan = plan.into_iter();
        let mut answered: Vec<Arc<Event>> = Vec::with_capacity(plan.len());
        let mut outputs = Vec::with_capacity(items.len());
        for item in items {
            let mut out = Vec::with_capacity(item.events.len());
            for e in item.events {
                let answer = match plan.next() {
                    Some(Answer::Stored(copy)) => copy,
                    Some(Answer::Fresh(seq)) => Arc::new(Event::new(e, seq, now)),
                    Some(Answer::Repeat(before)) => answered
                        .get(before)
                        .cloned()
                        .ok_or_else(|| corrupt(ctx, "an event lost its place"))?,
                    None => return Err(corrupt(ctx, "an event lost its place")),
                };
                answered.push(answer.clone());
                out.push(answer);
            }
            outputs.push(out);
        }
        Ok(outputs)
    }

    /// Called after a batch committed, before any caller is answered.
    fn committed(&self, outputs: &[Vec<Arc<Event>>]) {
        let mut fresh: Vec<Arc<Event>> = outputs.iter().flatten().cloned().collect();
        fresh.sort_by_key(|e| e.offset);
        fresh.dedup_by_key(|e| e.offset);
        self.recent.push(fresh.iter().cloned());
        if let Some(last) = fresh.last() {
            self.head.appended(last.offset, &fresh);
        }
    }
}

impl BatchWrite for AppendWrite {
    type Item = AppendItem;
    type Output = Vec<Arc<Event>>;

    /// On the direct connection: the group commit has a thread of its own,
    /// so SQLite's work runs on it, with no hop to `sqlx`'s thread and
    /// back.
    async fn commit(
        &self,
        writer: &Writer,
        items: Vec<AppendItem>,
    ) -> Result<Vec<Vec<Arc<Event>>>, StorageError> {
        let outputs = self.append(&*writer.lock_direct().await?, items)?;
        self.committed(&outputs);
        Ok(outputs)
    }
}

/// An event of the log, with when it was appended.
type StoredCopy = (UnixMillis, Arc<Event>);

/// An event and when it was appended, by offset. Built once.
static STORED_AT: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {COLUMNS}, appended_at FROM events WHERE seq = ?1"));

/// The events at `offsets` still in the log, with when each was
/// appended, in the same order.
fn stored_copies(
    conn: &rusqlite::Connection,
    offsets: &[u64],
) -> Result<Vec<StoredCopy>, StorageError> {
    let ctx = |e| direct_error("read earlier copies of events", e);
    if offsets.is_empty() {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(&STORED_AT).map_err(ctx)?;
    let mut found = Vec::with_capacity(offsets.len());
    for &offset in offsets {
        let mut rows = stmt
            .query([i64::try_from(offset).unwrap_or(i64::MAX)])
            .map_err(ctx)?;
        if let Some(row) = rows.next().map_err(ctx)? {
            let appended: UnixMillis = row.get("appended_at").map_err(ctx)?;
            found.push((appended, Arc::new(decode_direct(row)?)));
        }
    }
    Ok(found)
}

/// Hands `seen` the keys of the events appended within `missing`.
fn load_keys(
    seen: &Seen,
    conn: &rusqlite::Connection,
    missing: Missing,
) -> Result<(), StorageError> {
    let ctx = |e| direct_error("load deduplication keys", e);
    let from = first_appended_since_direct(conn, missing.since)?;
    let mut stmt = conn
        .prepare("SELECT seq, source, id, appended_at FROM events WHERE seq >= ?1 ORDER BY seq")
        .map_err(ctx)?;
    let mut rows = stmt
        .query([i64::try_from(from).unwrap_or(i64::MAX)])
        .map_err(ctx)?;
    let mut loading = seen.loading(missing);
    let mut n = 0u64;
    while let Some(row) = rows.next().map_err(ctx)? {
        let appended: UnixMillis = row.get(3).map_err(ctx)?;
        if appended >= missing.until {
            break;
        }
        let seq: i64 = row.get(0).map_err(ctx)?;
        let text = |i| row.get_ref(i).and_then(|v| Ok(v.as_str()?)).map_err(ctx);
        loading.add(
            text(1)?,
            text(2)?,
            u64::try_from(seq).unwrap_or(0),
            appended,
        );
        n += 1;
    }
    seen.loaded(loading);
    tracing::debug!(keys = n, "deduplication keys loaded from the log");
    Ok(())
}

/// The head of every insert into the log; its 12 columns are bound in
/// this order.
const INSERT_INTO: &str = "INSERT INTO events (id, source, type, topic, subject, time, \
     appended_at, datacontenttype, data, extensions, size, key) ";

/// Rows per prepared insert on the direct connection, largest first. A
/// batch goes in as few statements as these sizes allow: SQLite writes
/// the log's `AUTOINCREMENT` counter back once per statement, so one
/// statement per event cost one more write per event.
const INSERT_ROWS: [usize; 4] = [64, 16, 4, 1];

/// An insert of `INSERT_ROWS[i]` events (see [`INSERT_INTO`]) for each
/// `i`. Built once; prepared once per connection (cached).
static INSERT_MANY: LazyLock<[String; 4]> = LazyLock::new(|| {
    INSERT_ROWS.map(|rows| {
        let row = format!("({})", ["?"; 12].join(", "));
        format!("{INSERT_INTO}VALUES {}", vec![row; rows].join(", "))
    })
});

/// [`insert_events`] on the direct connection, on this thread: the events
/// in as few multi-row statements as [`INSERT_ROWS`] allows, each
/// prepared once.
fn insert_direct(
    seen: &Seen,
    tx: &rusqlite::Connection,
    events: &[&NewEvent],
    now: UnixMillis,
    stamp: UnixMillis,
) -> Result<Vec<u64>, StorageError> {
    let ctx = "append events";
    let err = |e| direct_error(ctx, e);
    let mut seqs = Vec::with_capacity(events.len());
    let mut rest = events;
    while !rest.is_empty() {
        // The last size is 1, so one always fits.
        let size = INSERT_ROWS
            .iter()
            .position(|&rows| rows <= rest.len())
            .unwrap_or(INSERT_ROWS.len() - 1);
        let (chunk, after) = rest.split_at(INSERT_ROWS[size].min(rest.len()));
        let mut stmt = tx.prepare_cached(&INSERT_MANY[size]).map_err(err)?;
        let mut at = 1;
        for e in chunk {
            let row = event_row(e);
            let time = e.time.unwrap_or(now);
            let values: [&dyn rusqlite::ToSql; 12] = [
                &e.id,
                &e.source,
                &e.event_type,
                &e.topic,
                &e.subject,
                &time,
                &stamp,
                &e.datacontenttype,
                &row.data,
                &row.extensions,
                &row.size,
                &row.key,
            ];
            for value in values {
                stmt.raw_bind_parameter(at, value).map_err(err)?;
                at += 1;
            }
        }
        let n = stmt.raw_execute().map_err(err)? as u64;
        // Rows are numbered in the order of VALUES, one after another (one
        // writer, AUTOINCREMENT).
        let last = u64::try_from(tx.last_insert_rowid()).unwrap_or(0);
        seqs.extend(inserted(last, n, chunk.len())?);
        rest = after;
    }
    note(seen, stamp, events, &seqs);
    Ok(seqs)
}

/// Notes `events`, stored at `seqs` with `stamp`, in `seen`.
fn note(seen: &Seen, stamp: UnixMillis, events: &[&NewEvent], seqs: &[u64]) {
    seen.note(
        stamp,
        events
            .iter()
            .zip(seqs)
            .map(|(e, &seq)| (e.source.as_str(), e.id.as_str(), seq)),
    );
}

/// The stored form of an event's computed columns.
pub(crate) struct EventRow<'e> {
    /// `data` as JSON text.
    pub(crate) data: Option<&'e str>,
    /// The extensions as a JSON object's text.
    pub(crate) extensions: String,
    /// Bytes stored (attributes and data), for retention by size.
    pub(crate) size: i64,
    /// The partition key.
    pub(crate) key: Option<String>,
}

/// The computed columns of `e`.
pub(crate) fn event_row(e: &NewEvent) -> EventRow<'_> {
    let data = e.data.as_ref().map(Data::json);
    // A map of JSON values always serializes.
    let extensions = serde_json::to_string(&e.extensions).unwrap_or_else(|_| "{}".to_owned());
    let size = e.id.len()
        + e.source.len()
        + e.event_type.len()
        + e.topic.len()
        + e.subject.as_ref().map_or(0, String::len)
        + e.datacontenttype.len()
        + data.map_or(0, str::len)
        + extensions.len();
    let key = e.extensions.get(PARTITION_KEY).map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    EventRow {
        data,
        extensions,
        size: i64::try_from(size).unwrap_or(i64::MAX),
        key,
    }
}

/// Pushes one `INSERT INTO events … VALUES …` for `events` onto `q`.
fn push_insert_events<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    events: &'a [&NewEvent],
    now: UnixMillis,
    stamp: UnixMillis,
) {
    q.push(INSERT_INTO);
    q.push_values(events, |mut b, e| {
        let row = event_row(e);
        b.push_bind(&e.id)
            .push_bind(&e.source)
            .push_bind(&e.event_type)
            .push_bind(&e.topic)
            .push_bind(&e.subject)
            .push_bind(e.time.unwrap_or(now))
            .push_bind(stamp)
            .push_bind(&e.datacontenttype)
            .push_bind(row.data)
            .push_bind(row.extensions)
            .push_bind(row.size)
            .push_bind(row.key);
    });
}

/// Inserts events in order inside the caller's transaction; their
/// sequence numbers, in the same order. The head must be advanced after
/// the transaction commits.
///
/// Every writer that appends events holds the write connection and goes
/// through here (or stamps and notes its events in `seen` itself), so
/// that `appended_at` never decreases along the log and `seen` knows
/// every event in it.
pub(crate) async fn insert_events(
    seen: &Seen,
    conn: &mut SqliteConnection,
    events: &[&NewEvent],
    now: UnixMillis,
) -> Result<Vec<u64>, StorageError> {
    let ctx = "append events";
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let stamp = seen.stamp();
    let mut seqs: Vec<u64> = Vec::with_capacity(events.len());
    for chunk in events.chunks(INSERT_CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new("");
        push_insert_events(&mut q, chunk, now, stamp);
        // Rows are numbered in the order of VALUES, one after another (one
        // writer, AUTOINCREMENT), so the last number and the count give
        // every offset: one row back instead of one per event.
        q.push("; SELECT last_insert_rowid(), changes()");
        let rows: Vec<(i64, i64)> = q
            .build_query_as()
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| storage_error(ctx, e))?;
        let (last, n) = rows.first().map_or((0, 0), |&(last, n)| {
            (
                u64::try_from(last).unwrap_or(0),
                u64::try_from(n).unwrap_or(0),
            )
        });
        seqs.extend(inserted(last, n, chunk.len())?);
    }
    note(seen, stamp, events, &seqs);
    Ok(seqs)
}

/// The offsets of `n` events inserted together, the last of which took
/// `last`: one after another up to it, since there is one writer and the
/// log is `AUTOINCREMENT`. `None` when no `n` offsets end at `last`.
pub(crate) fn consecutive(last: u64, n: u64) -> Option<std::ops::RangeInclusive<u64>> {
    (n > 0 && last >= n).then(|| last - n + 1..=last)
}

/// The offsets of the `events` events one insert stored: `n` rows, the
/// last at `last` (see [`consecutive`]); an error if that is not one row
/// per event.
fn inserted(
    last: u64,
    n: u64,
    events: usize,
) -> Result<std::ops::RangeInclusive<u64>, StorageError> {
    match consecutive(last, n) {
        Some(offsets) if n == events as u64 => Ok(offsets),
        _ => Err(corrupt(
            "append events",
            format!("{n} rows up to offset {last} for {events} events"),
        )),
    }
}

/// The last sequence number in the log (0 when empty).
pub(crate) async fn last_seq(conn: &mut SqliteConnection) -> Result<u64, StorageError> {
    // The sequence, not the table: retention may have emptied the table.
    let seq: i64 = sqlx::query_scalar(
        "SELECT MAX(COALESCE((SELECT MAX(seq) FROM events), 0), \
         COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0))",
    )
    .fetch_one(conn)
    .await
    .map_err(|e| storage_error("read the log head", e))?;
    Ok(u64::try_from(seq).unwrap_or(0))
}

/// When the newest event in the log was appended, if there is one.
pub(crate) async fn last_appended(
    conn: &mut SqliteConnection,
) -> Result<Option<UnixMillis>, StorageError> {
    sqlx::query_scalar("SELECT appended_at FROM events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(conn)
        .await
        .map_err(|e| storage_error("read the log's last append time", e))
}

/// The columns of [`COLUMNS`], as read.
struct Columns {
    seq: i64,
    id: String,
    source: String,
    event_type: String,
    topic: String,
    subject: Option<String>,
    time: UnixMillis,
    datacontenttype: String,
    data: Option<String>,
    extensions: String,
}

impl Columns {
    fn event(self) -> Result<Event, StorageError> {
        let data = self
            .data
            .map(|d| Data::from_json(d).map_err(|e| corrupt("event data", e)))
            .transpose()?;
        let extensions: Map<String, Value> =
            serde_json::from_str(&self.extensions).map_err(|e| corrupt("event extensions", e))?;
        Ok(Event {
            offset: u64::try_from(self.seq).unwrap_or(0),
            id: self.id,
            source: self.source,
            event_type: self.event_type,
            topic: self.topic,
            subject: self.subject,
            time: self.time,
            datacontenttype: self.datacontenttype,
            data,
            extensions,
            rendered: Default::default(),
        })
    }
}

/// An event from a row of [`COLUMNS`].
pub(crate) fn decode(row: &SqliteRow) -> Result<Event, StorageError> {
    let get = |e| storage_error("decode event", e);
    Columns {
        seq: row.try_get("seq").map_err(get)?,
        id: row.try_get("id").map_err(get)?,
        source: row.try_get("source").map_err(get)?,
        event_type: row.try_get("type").map_err(get)?,
        topic: row.try_get("topic").map_err(get)?,
        subject: row.try_get("subject").map_err(get)?,
        time: row.try_get("time").map_err(get)?,
        datacontenttype: row.try_get("datacontenttype").map_err(get)?,
        data: row.try_get("data").map_err(get)?,
        extensions: row.try_get("extensions").map_err(get)?,
    }
    .event()
}

/// [`decode`] for a row of the direct connection.
fn decode_direct(row: &rusqlite::Row<'_>) -> Result<Event, StorageError> {
    let get = |e| direct_error("decode event", e);
    Columns {
        seq: row.get("seq").map_err(get)?,
        id: row.get("id").map_err(get)?,
        source: row.get("source").map_err(get)?,
        event_type: row.get("type").map_err(get)?,
        topic: row.get("topic").map_err(get)?,
        subject: row.get("subject").map_err(get)?,
        time: row.get("time").map_err(get)?,
        datacontenttype: row.get("datacontenttype").map_err(get)?,
        data: row.get("data").map_err(get)?,
        extensions: row.get("extensions").map_err(get)?,
    }
    .event()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(offset: u64) -> Event {
        Event {
            offset,
            id: offset.to_string(),
            source: "/t".into(),
            event_type: "t".into(),
            topic: "t".into(),
            subject: None,
            time: 0,
            datacontenttype: "application/json".into(),
            data: None,
            extensions: Map::new(),
            rendered: Default::default(),
        }
    }

    fn offsets(got: Option<Vec<Arc<Event>>>) -> Option<Vec<u64>> {
        got.map(|v| v.iter().map(|e| e.offset).collect())
    }

    #[test]
    fn recent_answers_only_contiguous_runs() {
        let r = Recent::default();
        r.push([1, 2, 3, 5, 6].into_iter().map(event).map(Arc::new));
        r.push([6, 4].into_iter().map(event).map(Arc::new)); // repeats and older ones are ignored
        assert_eq!(
            offsets(r.after(0, 10)),
            Some(vec![1, 2, 3]),
            "stops at the gap"
        );
        assert_eq!(offsets(r.after(1, 1)), Some(vec![2]), "limit");
        assert_eq!(
            offsets(r.after(3, 10)),
            None,
            "4 was never kept: read the log"
        );
        assert_eq!(offsets(r.after(4, 10)), Some(vec![5, 6]));
        assert_eq!(offsets(r.after(6, 10)), None, "nothing newer");
        r.push((7..7 + RECENT as u64).map(event).map(Arc::new));
        assert_eq!(offsets(r.after(0, 10)), None, "evicted");
        assert_eq!(
            offsets(r.after(7 + RECENT as u64 - 3, 10)).map(|v| v.len()),
            Some(2)
        );
    }

    /// The search finds what a scan finds, over logs with gaps (removed
    /// events) and runs of one time.
    #[test]
    fn by_time_finds_the_first_event_appended_at_or_after() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _ in 0..500 {
            // (offset, appended_at), both never decreasing.
            let mut log: Vec<(u64, UnixMillis)> = Vec::new();
            let (mut seq, mut at) = (0u64, 100i64);
            for _ in 0..next(40) {
                seq += 1 + next(3);
                at += i64::try_from(next(3)).unwrap_or(0);
                log.push((seq, at));
            }
            let last = seq + next(3);
            for t in 95..=at + 2 {
                let mut search = ByTime::new(t, last);
                let mut probes = 0;
                while let Some(p) = search.probe() {
                    probes += 1;
                    search.found(p, log.iter().copied().find(|&(s, _)| s >= p));
                }
                let want = log.iter().find(|&&(_, a)| a >= t).map(|&(s, _)| s);
                let got = log
                    .iter()
                    .find(|&&(s, _)| s >= search.start())
                    .map(|&(s, _)| s);
                assert_eq!(got, want, "t {t} in {log:?}");
                if let Some(&(s, _)) = log.iter().rev().find(|&&(_, a)| a < t) {
                    assert!(search.start() > s, "t {t} in {log:?}");
                }
                assert!(probes <= 8, "{probes} probes");
            }
        }
    }

    /// A clock that steps back does not make the log go back in time:
    /// reading by time and expiring by age still find every event.
    #[tokio::test]
    async fn a_clock_stepping_back_keeps_the_log_in_time_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let clock = Clock::manual(1_000_000);
        let store = SqliteStore::open(&manual_config(&dir, &clock))
            .await
            .expect("open");
        let window = 60_000;
        store
            .append(vec![new_event("a")], window)
            .await
            .expect("append");
        clock.advance(-10_000);
        store
            .append(vec![new_event("b")], window)
            .await
            .expect("append");
        clock.advance(20_000);
        store
            .append(vec![new_event("c")], window)
            .await
            .expect("append");
        let ids = |log: Vec<Event>| log.into_iter().map(|e| e.id).collect::<Vec<_>>();
        let from = |t| store.read(ReadFrom::Time(t), 10);
        assert_eq!(ids(from(1_000_000).await.expect("read")), ["a", "b", "c"]);
        assert_eq!(ids(from(1_000_001).await.expect("read")), ["c"]);
        assert_eq!(
            ids(from(1_010_001).await.expect("read")),
            Vec::<String>::new()
        );

        let trimmed = store.trim(Some(1_000_001), None, &[]).await.expect("trim");
        assert_eq!(trimmed.expired, 2);
        assert_eq!(ids(from(0).await.expect("read")), ["c"]);
        store.close().await;
    }

    fn new_event(id: &str) -> NewEvent {
        NewEvent {
            id: id.into(),
            source: "/t".into(),
            event_type: "t".into(),
            topic: "t".into(),
            subject: None,
            time: None,
            datacontenttype: "application/json".into(),
            data: Some(serde_json::json!({ "id": id }).into()),
            extensions: Map::new(),
        }
    }

    /// Settings for a store in `dir` on a manual `clock`.
    fn manual_config(dir: &tempfile::TempDir, clock: &Clock) -> super::super::SqliteConfig {
        let mut config = super::super::SqliteConfig::new(dir.path());
        config.clock = clock.clone();
        config
    }

    /// Makes the log refuse (or accept again) events whose id is `poison`.
    async fn refuse_poison(store: &SqliteStore, refuse: bool) {
        let sql = if refuse {
            "CREATE TEMP TRIGGER refuse BEFORE INSERT ON main.events \
             WHEN NEW.id = 'poison' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        } else {
            "DROP TRIGGER temp.refuse"
        };
        // On the connection appends use: a temporary trigger is its
        // connection's own.
        store
            .writer
            .lock_direct()
            .await
            .expect("writer")
            .execute_batch(sql)
            .expect("trigger");
    }

    async fn open(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&super::super::SqliteConfig::new(dir.path()))
            .await
            .expect("open")
    }

    /// The bus's dispatcher is woken only by commits holding an event a
    /// live subscription takes, and delivers those as before.
    #[tokio::test]
    async fn the_dispatcher_hears_only_of_events_someone_follows() {
        use switchboard_bus::{Bus, BusConfig, SubscriptionSpec};
        let dir = tempfile::tempdir().expect("tmp");
        let store = open(&dir).await;
        let bus = Bus::new(
            Arc::new(store.clone()),
            BusConfig::default(),
            Clock::system(),
        );
        let mut news = store.news();
        let on = |topic: &str, id: &str| NewEvent {
            topic: topic.into(),
            ..new_event(id)
        };

        store.append(vec![on("x.y", "1")], 0).await.expect("append");
        assert!(
            !news.has_changed().expect("open"),
            "no one follows anything"
        );

        let shutdown = tokio_util::sync::CancellationToken::new();
        let dispatcher = tokio::spawn(bus.dispatcher().run(shutdown.clone()));
        let filter = serde_json::json!({ "level": ["high"] });
        let mut sub = bus.subscribe(SubscriptionSpec {
            patterns: vec![Pattern::parse("a.>").expect("pattern")],
            filter: switchboard_bus::Filter::parse(filter.as_object().expect("object"))
                .expect("filter"),
            start: switchboard_bus::Start::Now,
        });
        let level = |e: NewEvent, level: &str| NewEvent {
            data: Some(serde_json::json!({ "level": level }).into()),
            ..e
        };
        store.append(vec![on("x.y", "2")], 0).await.expect("append");
        assert!(!news.has_changed().expect("open"), "x.y is not followed");
        store
            .append(vec![level(on("a.b", "3"), "low")], 0)
            .await
            .expect("append");
        assert!(!news.has_changed().expect("open"), "the filter refuses it");
        store
            .append(vec![on("x.y", "4"), level(on("a.b", "5"), "high")], 0)
            .await
            .expect("append");
        assert!(news.has_changed().expect("open"), "a.b at high is followed");
        assert_eq!(*news.borrow_and_update(), 5);

        let got = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
            .await
            .expect("delivered in time")
            .expect("delivered");
        assert_eq!((got.id.as_str(), got.offset), ("5", 5));
        shutdown.cancel();
        dispatcher.await.expect("dispatcher");
    }

    /// The offsets an append answers are the ones stored: across the
    /// chunks of a large batch, and after the newest events were removed
    /// (AUTOINCREMENT never hands their numbers out again).
    #[tokio::test]
    async fn answered_offsets_are_the_stored_ones() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = open(&dir).await;
        let window = 60_000;
        let stored_offsets = |log: &[Event]| -> HashMap<String, u64> {
            log.iter().map(|e| (e.id.clone(), e.offset)).collect()
        };

        let n = 2 * INSERT_CHUNK + 7;
        let batch: Vec<NewEvent> = (0..n).map(|i| new_event(&format!("e{i}"))).collect();
        let answered = store.append(batch, window).await.expect("append");
        let log = store.read(ReadFrom::After(0), 5000).await.expect("read");
        assert_eq!(log.len(), n);
        let stored = stored_offsets(&log);
        for e in &answered {
            assert_eq!(stored.get(&e.id), Some(&e.offset), "event {}", e.id);
        }
        let offsets: Vec<u64> = answered.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, (1..=n as u64).collect::<Vec<_>>());

        sqlx::query("DELETE FROM events WHERE seq > ?")
            .bind(i64::try_from(n).expect("small") - 5)
            .execute(&mut *store.writer.lock().await.expect("writer"))
            .await
            .expect("delete the newest");
        let later = store
            .append(vec![new_event("x"), new_event("y")], window)
            .await
            .expect("append after the delete");
        let offsets: Vec<u64> = later.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![n as u64 + 1, n as u64 + 2], "never reused");
        let log = store.read(ReadFrom::After(0), 5000).await.expect("read");
        let stored = stored_offsets(&log);
        for e in &later {
            assert_eq!(stored.get(&e.id), Some(&e.offset), "event {}", e.id);
        }
        store.close().await;
    }

    /// Repeats of stored events, and repeats within a batch, are answered
    /// with the copy the log holds and not stored again (whether or not
    /// the look-up of earlier copies was skipped); in a batch of
    /// several insert chunks the new events around them keep their order
    /// and are answered with their own offsets. Past its window, the same
    /// event is new.
    #[tokio::test]
    async fn repeats_are_answered_with_the_stored_copy() {
        let dir = tempfile::tempdir().expect("tmp");
        let clock = Clock::manual(1_000_000);
        let config = manual_config(&dir, &clock);
        let store = SqliteStore::open(&config).await.expect("open");
        let window = 60_000;
        // A window after the opening, `seen` knows every event in the log:
        // appends of new events skip the look-up.
        clock.advance(window + 1);
        let first = store
            .append(vec![new_event("a"), new_event("b")], window)
            .await
            .expect("append a, b");
        let (a, b) = (first[0].offset, first[1].offset);

        clock.advance(1_000);
        let n = 2 * INSERT_CHUNK + 7;
        let mut batch: Vec<NewEvent> = (0..n).map(|i| new_event(&format!("e{i}"))).collect();
        batch[0] = new_event("b");
        batch[3] = new_event("x");
        batch[INSERT_CHUNK + 100] = new_event("a");
        batch[n - 1] = new_event("x");
        let answered = store.append(batch.clone(), window).await.expect("append");
        assert_eq!(answered.len(), n);
        assert_eq!(answered[0].offset, b);
        assert_eq!(answered[INSERT_CHUNK + 100].offset, a);
        assert_eq!(answered[n - 1].offset, answered[3].offset, "x once");
        let log = store.read(ReadFrom::After(0), 5000).await.expect("read");
        assert_eq!(log.len(), 2 + n - 3, "each event stored once");
        let stored: HashMap<&str, u64> = log.iter().map(|e| (e.id.as_str(), e.offset)).collect();
        assert_eq!(stored.len(), log.len());
        for (sent, got) in batch.iter().zip(&answered) {
            assert_eq!(got.id, sent.id);
            assert_eq!(
                stored.get(sent.id.as_str()),
                Some(&got.offset),
                "{}",
                sent.id
            );
        }
        let repeats = [0, INSERT_CHUNK + 100, n - 1];
        let new_offsets: Vec<u64> = (0..n)
            .filter(|i| !repeats.contains(i))
            .map(|i| answered[i].offset)
            .collect();
        assert_eq!(
            new_offsets,
            (b + 1..=b + (n - 3) as u64).collect::<Vec<_>>(),
            "new events stored in the order sent"
        );

        // `a` was stored 1 s ago: a window of 500 ms does not reach it.
        let again = store
            .append(vec![new_event("a"), new_event("b")], 500)
            .await
            .expect("append past the window");
        assert!(again.iter().all(|e| e.offset > a && e.offset > b));
        assert_ne!(again[0].offset, again[1].offset);
        store.close().await;
    }

    /// Events other writers append (hub events, in their own
    /// transactions) are known to the duplicate check too, also when the
    /// store opened long before; so are those in the log before it opened.
    #[tokio::test]
    async fn repeats_of_events_appended_by_other_writers_are_found() {
        let dir = tempfile::tempdir().expect("tmp");
        let clock = Clock::manual(1_000_000);
        let config = manual_config(&dir, &clock);
        let store = SqliteStore::open(&config).await.expect("open");
        let window = 60_000;
        let before = store
            .append(vec![new_event("before")], window)
            .await
            .expect("append");
        clock.advance(window / 2);
        store.close().await;

        let store = SqliteStore::open(&config).await.expect("reopen");
        clock.advance(window + 1);
        let hub = new_event("hub");
        let offset = {
            let mut conn = store.writer.lock().await.expect("writer");
            let mut tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
            let seqs = insert_events(&store.seen, &mut tx, &[&hub], clock.now_ms())
                .await
                .expect("insert");
            tx.commit().await.expect("commit");
            seqs[0]
        };
        clock.advance(1);
        let answered = store
            .append(vec![new_event("new"), hub.clone()], window)
            .await
            .expect("append");
        assert_eq!(answered[1].offset, offset, "the hub's event, not a copy");
        assert!(answered[0].offset > offset);

        // `before` was appended 1.5 windows ago: a window of 2 reaches it,
        // though the store opened after it.
        let again = store
            .append(vec![new_event("before")], 2 * window)
            .await
            .expect("append");
        assert_eq!(again[0].offset, before[0].offset);
        let log = store.read(ReadFrom::After(0), 100).await.expect("read");
        let ids: Vec<&str> = log.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, vec!["before", "hub", "new"]);
        store.close().await;
    }

    /// A batch of several insert chunks sent without the look-up (`BEGIN`
    /// with the first chunk) that fails in its second chunk stores
    /// nothing; its retry, whose keys the failed attempt noted, takes the
    /// look-up, finds no copy and is stored whole, once.
    #[tokio::test]
    async fn a_batch_failing_in_a_later_chunk_stores_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let clock = Clock::manual(1_000_000);
        let config = manual_config(&dir, &clock);
        let store = SqliteStore::open(&config).await.expect("open");
        let window = 60_000;
        refuse_poison(&store, true).await;
        let n = 2 * INSERT_CHUNK + 7;
        let mut batch: Vec<NewEvent> = (0..n).map(|i| new_event(&format!("e{i}"))).collect();
        batch[INSERT_CHUNK + 3] = new_event("poison");
        let failed = store.append(batch.clone(), window).await;
        assert!(failed.is_err(), "{failed:?}");
        let log = store.read(ReadFrom::After(0), 5000).await.expect("read");
        assert!(log.is_empty(), "nothing of the failed batch");

        refuse_poison(&store, false).await;
        clock.advance(1);
        let retried = store.append(batch, window).await.expect("retry");
        let offsets: Vec<u64> = retried.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, (1..=n as u64).collect::<Vec<_>>());
        let log = store.read(ReadFrom::After(0), 5000).await.expect("read");
        assert_eq!(log.len(), n);
        store.close().await;
    }

    /// A group commit that fails part way (here: its second event is
    /// refused) stores none of its events and leaves the writer usable:
    /// the retry of the same events is stored whole, each event once.
    #[tokio::test]
    async fn a_failed_append_stores_nothing_and_its_retry_is_stored_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = open(&dir).await;
        let window = 60_000;
        let first = store
            .append(vec![new_event("a")], window)
            .await
            .expect("append a");
        refuse_poison(&store, true).await;
        let batch = || vec![new_event("b"), new_event("poison")];
        let failed = store.append(batch(), window).await;
        assert!(failed.is_err(), "{failed:?}");

        refuse_poison(&store, false).await;
        let retried = store.append(batch(), window).await.expect("retry");
        let offsets: Vec<u64> = retried.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![first[0].offset + 1, first[0].offset + 2]);
        let log = store
            .read(ReadFrom::After(0), 100)
            .await
            .expect("read the log");
        let ids: Vec<&str> = log.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, vec!["a", "b", "poison"], "nothing of the failed batch");
        store.close().await;
    }
}
