//! The store revision and the change log: every write transaction takes its revisions from
//! `kvstore_meta` and appends the per-key events it makes to `kvstore_log` in the same
//! transaction, so `watch_events` resumes exactly from any revision the log still holds.
//!
//! The log keeps the last [`LOG_REVISIONS`] revisions and at most [`LOG_BYTES`] of keys and
//! values, whichever is smaller; `log_floor` in `kvstore_meta` is the revision after which
//! every change is in it (the revision the log started at, on a file written before it).

use kvstore_core::backend::Since;
use kvstore_core::{Event, Result, is_descendant};
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use crate::error::from_redb;

/// Store-wide counters.
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("kvstore_meta");
/// The last revision handed out; every write takes the next one, so `last_index` and fencing
/// tokens are persisted, store-wide monotonic, and survive a reopen.
pub(crate) const REVISION: &str = "revision";
/// Every change after this revision is in the log.
const LOG_FLOOR: &str = "log_floor";
/// Bytes of keys and values the log holds.
const LOG_SIZE: &str = "log_bytes";

/// One logged event: (kind: 0 put, 1 delete, key, last_index, value).
pub(crate) type Logged<'a> = (u8, &'a str, u64, &'a [u8]);

/// (revision, sequence within it) → the event.
pub(crate) const LOG: TableDefinition<'_, (u64, u32), Logged<'_>> =
    TableDefinition::new("kvstore_log");

/// Revisions the log keeps.
pub(crate) const LOG_REVISIONS: u64 = 100_000;
/// Bytes of keys and values the log keeps, at most.
pub(crate) const LOG_BYTES: u64 = 64 * 1024 * 1024;

/// Takes the next store revision in `txn`.
pub(crate) fn next_revision(txn: &WriteTransaction) -> Result<u64> {
    let mut meta = txn.open_table(META).map_err(from_redb)?;
    let rev = meta
        .get(REVISION)
        .map_err(from_redb)?
        .map_or(0, |v| v.value())
        + 1;
    meta.insert(REVISION, rev).map_err(from_redb)?;
    Ok(rev)
}

/// Creates the log's table; a file without a log floor gets the current revision as its
/// floor (the changes before it were never logged).
pub(crate) fn create(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(LOG).map_err(from_redb)?;
    let mut meta = txn.open_table(META).map_err(from_redb)?;
    if meta.get(LOG_FLOOR).map_err(from_redb)?.is_none() {
        let current = meta
            .get(REVISION)
            .map_err(from_redb)?
            .map_or(0, |v| v.value());
        meta.insert(LOG_FLOOR, current).map_err(from_redb)?;
    }
    Ok(())
}

/// A put of `key` = `value` at `last_index`.
pub(crate) fn put<'a>(
    key: &'a str,
    value: &'a [u8],
    last_index: u64,
) -> (u8, &'a str, u64, &'a [u8]) {
    (0, key, last_index, value)
}

/// A delete of `key` at `revision`.
pub(crate) fn delete(key: &str, revision: u64) -> Logged<'_> {
    (1, key, revision, &[])
}

/// Appends the events of `revision` to the log in `txn`, then trims it to its bounds.
pub(crate) fn append<'a>(
    txn: &WriteTransaction,
    revision: u64,
    events: impl IntoIterator<Item = Logged<'a>>,
) -> Result<()> {
    let mut log = txn.open_table(LOG).map_err(from_redb)?;
    let mut meta = txn.open_table(META).map_err(from_redb)?;
    let mut size = meta
        .get(LOG_SIZE)
        .map_err(from_redb)?
        .map_or(0, |v| v.value());
    // Every caller takes a new revision and logs it in one call (a transaction's writes, a
    // `delete_tree`'s keys and an expiry batch share theirs), so its sequence starts at 0; an
    // entry already there would be a second call for the revision, refused rather than lost.
    for (n, event) in (0..).zip(events) {
        size += (event.1.len() + event.3.len()) as u64;
        if log
            .insert((revision, n), event)
            .map_err(from_redb)?
            .is_some()
        {
            return Err(kvstore_core::Error::backend(
                crate::BACKEND,
                format!("revision {revision} was logged twice"),
            ));
        }
    }
    // Trims whole revisions, oldest first, until the log is within both bounds; the floor
    // then names the last revision dropped, so it stays exact.
    let cutoff = revision.saturating_sub(LOG_REVISIONS);
    let mut dropped = None;
    while let Some((rev, bytes)) = oldest(&log)? {
        let over = rev <= cutoff || size > LOG_BYTES;
        if !over && dropped != Some(rev) {
            break;
        }
        log.pop_first().map_err(from_redb)?;
        size = size.saturating_sub(bytes);
        dropped = Some(rev);
    }
    if let Some(rev) = dropped {
        let old = meta
            .get(LOG_FLOOR)
            .map_err(from_redb)?
            .map_or(0, |v| v.value());
        meta.insert(LOG_FLOOR, old.max(rev)).map_err(from_redb)?;
    }
    meta.insert(LOG_SIZE, size).map_err(from_redb)?;
    Ok(())
}

/// The revision and the size in bytes of the log's oldest entry.
fn oldest(log: &redb::Table<'_, (u64, u32), Logged<'_>>) -> Result<Option<(u64, u64)>> {
    Ok(log.first().map_err(from_redb)?.map(|(k, v)| {
        let (_, key, _, value) = v.value();
        (k.value().0, (key.len() + value.len()) as u64)
    }))
}

/// The current revision in `txn`.
pub(crate) fn revision(txn: &ReadTransaction) -> Result<u64> {
    let meta = txn.open_table(META).map_err(from_redb)?;
    Ok(meta
        .get(REVISION)
        .map_err(from_redb)?
        .map_or(0, |v| v.value()))
}

/// The events under `dir` after revision `after`, read in `txn`.
pub(crate) fn since(txn: &ReadTransaction, dir: &str, after: u64) -> Result<Since> {
    let meta = txn.open_table(META).map_err(from_redb)?;
    let current = meta
        .get(REVISION)
        .map_err(from_redb)?
        .map_or(0, |v| v.value());
    let floor = meta
        .get(LOG_FLOOR)
        .map_err(from_redb)?
        .map_or(0, |v| v.value());
    if after < floor || after > current {
        return Ok(Since::Unknown);
    }
    let log = txn.open_table(LOG).map_err(from_redb)?;
    let mut events = Vec::new();
    for entry in log.range((after + 1, 0)..).map_err(from_redb)? {
        let (_, v) = entry.map_err(from_redb)?;
        let (kind, key, last_index, value) = v.value();
        if !(dir.is_empty() || is_descendant(key, dir)) {
            continue;
        }
        events.push(if kind == 0 {
            Event::put(key, value.to_vec(), last_index)
        } else {
            Event::delete(key, last_index)
        });
    }
    Ok(Since::Events(events, current))
}
