//! `keep_alive` keys for the lease engine: the key's deadline is in the file.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kvstore_core::Result;
use kvstore_core::backend::RenewKey;
use redb::ReadableTable;

use crate::client::{EXPIRY, KV, Shared, deadline_ms, is_live, now_ms};
use crate::error::from_redb;

/// A `keep_alive` key's deadline is in the file, pushed forward through the group commit.
#[async_trait]
impl RenewKey for Shared {
    async fn renew_key(this: &Arc<Self>, key: &str, index: u64, ttl: Duration) -> Result<bool> {
        let key = key.to_owned();
        this.group_commit(move |_, txn| Ok((extend_expiry(txn, &key, index, ttl)?, Vec::new())))
            .await
    }
}

/// In `txn`, pushes the expiry of `key` to now + `ttl` if it still holds the write with
/// `index` and has not expired; `false` otherwise. Shared by kept-alive keys and by lock values
/// that live as long as their hold.
pub(crate) fn extend_expiry(
    txn: &redb::WriteTransaction,
    key: &str,
    index: u64,
    ttl: Duration,
) -> Result<bool> {
    let mut kv = txn.open_table(KV).map_err(from_redb)?;
    let mut expiry = txn.open_table(EXPIRY).map_err(from_redb)?;
    let current = kv.get(key).map_err(from_redb)?.map(|e| {
        let (index, expires_at, value) = e.value();
        (index, expires_at, value.to_vec())
    });
    match current {
        Some((have, expires_at, value)) if have == index && is_live(expires_at, now_ms()) => {
            let renewed = deadline_ms(ttl);
            if expires_at != 0 {
                expiry.remove((expires_at, key)).map_err(from_redb)?;
            }
            expiry.insert((renewed, key), ()).map_err(from_redb)?;
            kv.insert(key, (index, renewed, value.as_slice()))
                .map_err(from_redb)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}
