//! `Store::txn`: in a group commit's write transaction (`commit.rs`), checks every condition,
//! then applies every operation under one new revision; a failed condition is a refusal
//! returned before anything is written, so it leaves the rest of the batch intact.

use kvstore_core::backend::{Check, CheckedTxn, Found, Write, condition_error};
use kvstore_core::{KvPair, Result};
use redb::ReadableTable;

use crate::client::{Change, EXPIRY, KV, LOCKS, Shared, is_live, now_ms};
use crate::error::from_redb;
use crate::log::{self, next_revision};

/// Conditions plus operations per transaction: redb has no limit of its own; this keeps a
/// transaction's write set (and the time it holds the write lock) bounded.
pub(crate) const MAX_TXN_OPS: usize = 1024;

impl Shared {
    /// Runs a checked transaction (keys normalized, see `check_txn`) in `w`, a group commit's
    /// transaction; returns what it wrote and the changes to publish once committed.
    pub(crate) fn txn(
        &self,
        w: &redb::WriteTransaction,
        txn: &CheckedTxn,
    ) -> Result<(Vec<Option<KvPair>>, Vec<Change>)> {
        let now = now_ms();
        let written = {
            let mut kv = w.open_table(KV).map_err(from_redb)?;
            let mut expiry = w.open_table(EXPIRY).map_err(from_redb)?;
            let locks = w.open_table(LOCKS).map_err(from_redb)?;
            for condition in &txn.checks {
                let found = match condition {
                    // Held: the lock row names this token and its deadline has not passed.
                    Check::Held {
                        lock_key,
                        fencing_token,
                    } => Found::Held(
                        locks
                            .get(lock_key.as_str())
                            .map_err(from_redb)?
                            .is_some_and(|e| {
                                let (token, expires_at, _) = e.value();
                                token == *fencing_token && expires_at > now
                            }),
                    ),
                    other => Found::Key(
                        kv.get(other.key())
                            .map_err(from_redb)?
                            .map(|e| (e.value().0, e.value().1))
                            .filter(|&(_, expires_at)| is_live(expires_at, now))
                            .map(|(index, _)| index),
                    ),
                };
                if let Some(err) = condition_error(condition, found) {
                    return Err(err);
                }
            }
            let index = next_revision(w)?;
            let mut written = Vec::with_capacity(txn.writes.len());
            let mut live = Vec::with_capacity(txn.writes.len());
            for op in &txn.writes {
                let key = op.key();
                let old_exp = kv.get(key).map_err(from_redb)?.map(|e| e.value().1);
                live.push(old_exp.is_some_and(|e| is_live(e, now)));
                if let Some(old_exp) = old_exp.filter(|&e| e != 0) {
                    expiry.remove((old_exp, key)).map_err(from_redb)?;
                }
                match op {
                    Write::Put { value, .. } => {
                        kv.insert(key, (index, 0, &value[..])).map_err(from_redb)?;
                        written.push(Some(KvPair::new(key, value.clone(), index)));
                    }
                    Write::Delete { .. } => {
                        kv.remove(key).map_err(from_redb)?;
                        written.push(None);
                    }
                }
            }
            // One revision for the whole transaction; a delete of an absent key is no event.
            let events = txn
                .writes
                .iter()
                .zip(&live)
                .filter_map(|(op, was)| match op {
                    Write::Put { key, value } => Some(log::put(key, value, index)),
                    Write::Delete { key } => was.then(|| log::delete(key, index)),
                });
            log::append(w, index, events)?;
            written
        };
        let changes = txn
            .writes
            .iter()
            .map(|op| Change::Key(op.key().into()))
            .collect();
        Ok((written, changes))
    }
}
