//! `Store::txn`: one etcd `Txn` (source: etcd docs, "API reference" → `Txn`: the compares, then
//! the success or the failure list, in one revision).
//!
//! The compares: `IndexIs` is `mod_revision == last_index` of the key; `Exists` is
//! `create_revision > 0` and `Missing` `create_revision == 0` (etcd compares an absent key as
//! all zeros); `Held` is `mod_revision == fencing_token` of the lock's hidden holder key, which
//! the holder writes with its lease as it takes the lock (so it goes with the lease). The
//! failure list reads every compared key, so a failed transaction names its first failing
//! condition from the same revision, without a second request.

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use kvstore_core::backend::{Check, CheckedTxn, Found, Write, first_failure};
use kvstore_core::{Error, KvPair, Result};

use crate::BACKEND;
use crate::client::{Inner, revision};

/// Conditions plus operations per transaction: etcd's default `--max-txn-ops` (128) bounds
/// each of a transaction's lists.
pub(crate) const MAX_TXN_OPS: usize = 128;

impl Inner {
    /// The etcd key a check compares.
    fn check_key(&self, check: &Check) -> String {
        match check {
            Check::Held { lock_key, .. } => self.holder_key(lock_key),
            other => self.data_key(other.key()),
        }
    }

    /// Runs a checked transaction.
    pub(crate) async fn txn(&self, txn: &CheckedTxn) -> Result<Vec<Option<KvPair>>> {
        let compares: Vec<Compare> = txn
            .checks
            .iter()
            .map(|check| {
                let key = self.check_key(check);
                match check {
                    Check::IndexIs { last_index, .. } => {
                        Compare::mod_revision(key, CompareOp::Equal, revision(*last_index))
                    }
                    Check::Exists { .. } => Compare::create_revision(key, CompareOp::Greater, 0),
                    Check::Missing { .. } => Compare::create_revision(key, CompareOp::Equal, 0),
                    Check::Held { fencing_token, .. } => {
                        Compare::mod_revision(key, CompareOp::Equal, revision(*fencing_token))
                    }
                }
            })
            .collect();
        let writes: Vec<TxnOp> = txn
            .writes
            .iter()
            .map(|write| match write {
                Write::Put { key, value } => TxnOp::put(self.data_key(key), value.to_vec(), None),
                Write::Delete { key } => TxnOp::delete(self.data_key(key), None),
            })
            .collect();
        let reads: Vec<TxnOp> = txn
            .checks
            .iter()
            .map(|check| TxnOp::get(self.check_key(check), None))
            .collect();
        let resp = self
            .call(
                self.client()
                    .txn(Txn::new().when(compares).and_then(writes).or_else(reads)),
            )
            .await?;
        if !resp.succeeded() {
            let read: Vec<Option<i64>> = resp
                .op_responses()
                .into_iter()
                .map(|r| match r {
                    TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision()),
                    _ => None,
                })
                .collect();
            let mut reads = read.into_iter();
            let failure = first_failure(&txn.checks, |check| {
                let found = reads.next().flatten();
                match check {
                    Check::Held { fencing_token, .. } => {
                        Found::Held(found == Some(revision(*fencing_token)))
                    }
                    _ => Found::Key(found.and_then(|r| u64::try_from(r).ok())),
                }
            });
            // The compares failed, so one check must: anything else is a race with nothing
            // to name (the reads run in the same revision as the compares).
            return Err(failure.unwrap_or_else(|| {
                Error::backend(
                    BACKEND,
                    "the transaction's compares failed but every read held",
                )
            }));
        }
        let index = resp
            .header()
            .and_then(|h| u64::try_from(h.revision()).ok())
            .ok_or_else(|| Error::backend(BACKEND, "the transaction returned no revision"))?;
        Ok(txn.written(index))
    }
}
