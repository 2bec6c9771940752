//! `Store::txn`: one Lua script (one round trip) that checks every condition, and the type of
//! every key it writes, before its first write — Redis does not roll a script back — then
//! applies every operation under one new revision.

use kvstore_core::backend::{Check, CheckedTxn, Write};
use kvstore_core::{Error, KvPair, Result};

use crate::client::Inner;
use crate::error::{from_redis, protocol};
use crate::scripts::{self, EXISTS, MODIFIED, NOT_FOUND, NOT_HELD};

/// Conditions plus operations per transaction: each is one key of the script; this keeps a
/// script's run (during which Redis serves no one else) short.
pub(crate) const MAX_TXN_OPS: usize = 1024;

impl Inner {
    /// Runs a checked transaction.
    pub(crate) async fn txn(&self, txn: &CheckedTxn) -> Result<Vec<Option<KvPair>>> {
        let mut script = scripts::TXN.prepare_invoke();
        script
            .key(self.rev_key())
            .key(self.index_key())
            .arg(txn.checks.len())
            .arg(txn.writes.len());
        for check in &txn.checks {
            match check {
                Check::IndexIs { key, last_index } => {
                    script.key(self.data_key(key)).arg("index").arg(last_index)
                }
                Check::Exists { key } => script.key(self.data_key(key)).arg("exists").arg(""),
                Check::Missing { key } => script.key(self.data_key(key)).arg("missing").arg(""),
                Check::Held {
                    lock_key,
                    fencing_token,
                } => script
                    .key(self.lock_key(lock_key))
                    .arg("held")
                    .arg(fencing_token),
            };
        }
        for write in &txn.writes {
            match write {
                Write::Put { key, value } => script
                    .key(self.data_key(key))
                    .arg("put")
                    .arg(&value[..])
                    .arg(key),
                Write::Delete { key } => script
                    .key(self.data_key(key))
                    .arg("delete")
                    .arg("")
                    .arg(key),
            };
        }
        let (status, n): (i64, i64) = script
            .invoke_async(&mut self.write_conn())
            .await
            .map_err(from_redis)?;
        if status != 0 {
            let check = usize::try_from(status - 1)
                .ok()
                .and_then(|i| txn.checks.get(i))
                .ok_or_else(|| protocol("txn check position"))?;
            let key = check.key().to_owned();
            return Err(match n {
                EXISTS => Error::KeyExists { key },
                NOT_FOUND => Error::KeyNotFound { key },
                MODIFIED => Error::KeyModified { key },
                NOT_HELD => Error::LockNotHeld { lock_key: key },
                _ => protocol("txn status"),
            });
        }
        let index = u64::try_from(n).map_err(|_| protocol("txn index"))?;
        Ok(txn.written(index))
    }
}
