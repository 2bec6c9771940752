//! `Store::txn`: one `PUT /v1/txn` (source: Consul docs, "Transaction - HTTP API": the
//! operations run atomically, and a rolled-back transaction answers 409 with the index of the
//! failing operation).
//!
//! Each condition and write maps onto one or two KV operations: `IndexIs` is `get` (fails for an
//! absent key: `KeyNotFound`) then `check-index` (`KeyModified`); `Exists` is `get`; `Missing`
//! is `check-not-exists`; `Held` is `check-index` of the lock's hidden key
//! `.kvstore-locks/<key>` against the fencing token (the index of the acquisition, which no
//! renewal changes, and which goes with the key when the session ends); a put is `delete` then
//! `set` (the delete detaches the session of an earlier TTL write); a delete is `delete`.

use kvstore_core::backend::{Check, CheckedTxn, Write};
use kvstore_core::{Error, KvPair, Result};
use serde_json::Value;

use crate::api::{Txn, op, op_index, op_value};
use crate::client::Inner;

/// Conditions plus operations per transaction: at most two Consul operations each, within the
/// 128 that Consul 1.14 and later allow per transaction.
pub(crate) const MAX_TXN_OPS: usize = 64;

impl Inner {
    /// Runs a checked transaction.
    pub(crate) async fn txn(&self, txn: &CheckedTxn) -> Result<Vec<Option<KvPair>>> {
        let mut ops: Vec<Value> = Vec::with_capacity(2 * (txn.checks.len() + txn.writes.len()));
        // What a failure of each operation means: the error of the check it belongs to.
        let mut meaning: Vec<Option<Error>> = Vec::with_capacity(ops.capacity());
        for check in &txn.checks {
            let key = check.key().to_owned();
            match check {
                Check::IndexIs { last_index, .. } => {
                    let consul_key = self.consul_key(&key);
                    ops.push(op("get", &consul_key));
                    meaning.push(Some(Error::KeyNotFound { key: key.clone() }));
                    ops.push(op_index("check-index", &consul_key, *last_index));
                    meaning.push(Some(Error::KeyModified { key }));
                }
                Check::Exists { .. } => {
                    ops.push(op("get", &self.consul_key(&key)));
                    meaning.push(Some(Error::KeyNotFound { key }));
                }
                Check::Missing { .. } => {
                    ops.push(op("check-not-exists", &self.consul_key(&key)));
                    meaning.push(Some(Error::KeyExists { key }));
                }
                Check::Held { fencing_token, .. } => {
                    ops.push(op_index(
                        "check-index",
                        &self.lock_key(&key),
                        *fencing_token,
                    ));
                    meaning.push(Some(Error::LockNotHeld { lock_key: key }));
                }
            }
        }
        for write in &txn.writes {
            let consul_key = self.consul_key(write.key());
            ops.push(op("delete", &consul_key));
            meaning.push(None);
            if let Write::Put { value, .. } = write {
                ops.push(op_value("set", &consul_key, value));
                meaning.push(None);
            }
        }
        match self.api.txn(ops).await? {
            Txn::Done(results) => {
                // Every write of one transaction gets its raft index, the largest index in
                // the results (a `get` returns the older index of what it read).
                let index = results.iter().map(|e| e.modify_index).max().unwrap_or(0);
                Ok(txn.written(index))
            }
            Txn::Failed { op, what } => Err(meaning
                .get_mut(op)
                .and_then(Option::take)
                .unwrap_or_else(|| crate::error::from_txn_failure(what))),
        }
    }
}
