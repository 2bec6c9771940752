//! TTL expiry: the reaper task that deletes expired keys as their deadline passes, and the
//! transaction it runs.

use std::sync::{Arc, Weak};
use std::time::Duration;

use kvstore_core::Result;
use redb::ReadableTable;
use tokio::sync::Notify;

use crate::client::{Change, EXPIRY, KV, Shared, now_ms};
use crate::error::from_redb;

impl Shared {
    /// Deletes every key whose TTL has run out; returns the next expiry time, if any.
    pub(crate) fn reap(&self) -> Result<Option<u64>> {
        let now = now_ms();
        let txn = self.db().begin_write().map_err(from_redb)?;
        let (expired, next) = {
            let mut kv = txn.open_table(KV).map_err(from_redb)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(from_redb)?;
            let mut expired = Vec::new();
            let mut next = None;
            for entry in expiry.iter().map_err(from_redb)? {
                let (k, _) = entry.map_err(from_redb)?;
                let (expires_at, key) = k.value();
                if expires_at > now {
                    next = Some(expires_at);
                    break;
                }
                expired.push((expires_at, key.to_owned()));
            }
            for (expires_at, key) in &expired {
                expiry
                    .remove((*expires_at, key.as_str()))
                    .map_err(from_redb)?;
                // The index entry and the pair are written together, so the pair's own expiry
                // always matches; checking keeps a stale index entry from deleting a newer pair.
                let matches = kv
                    .get(key.as_str())
                    .map_err(from_redb)?
                    .is_some_and(|e| e.value().1 == *expires_at);
                if matches {
                    kv.remove(key.as_str()).map_err(from_redb)?;
                }
            }
            (expired, next)
        };
        if expired.is_empty() {
            txn.abort().map_err(from_redb)?;
        } else {
            txn.commit().map_err(from_redb)?;
            tracing::debug!(
                backend = self.backend,
                count = expired.len(),
                "expired keys"
            );
            for (_, key) in expired {
                self.publish(Change::Key(key.into()));
            }
        }
        Ok(next)
    }
}

/// Deletes expired keys as their TTL runs out, for as long as any handle on the database lives.
pub(crate) async fn reaper(shared: Weak<Shared>, wakeup: Arc<Notify>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let next = match strong.blocking(Shared::reap).await {
            Ok(next) => next,
            Err(err) => {
                tracing::warn!(backend = strong.backend, error = %err, "expiring keys failed; retrying");
                Some(now_ms() + 1000)
            }
        };
        drop(strong);
        let sleep = next.map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
        match sleep {
            Some(d) => {
                tokio::select! {
                    () = tokio::time::sleep(d) => {}
                    () = wakeup.notified() => {}
                }
            }
            None => wakeup.notified().await,
        }
    }
}
