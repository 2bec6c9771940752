//! `keep_alive` keys for the lease engine: the key lease (its deadline in the file) and the
//! registrar that writes a lost registration again; and the per-handle session that owns the
//! registrations and background tasks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::Result;
use kvstore_core::backend::{
    Lease, Registrar, Registrations, Release, Renewal, Tasks, write_again,
};
use redb::ReadableTable;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{EXPIRY, KV, Shared, deadline_ms, is_live, now_ms};
use crate::error::from_redb;

impl Shared {
    /// Pushes the expiry of a kept-alive key to now + `ttl`; `false` when the key is no
    /// longer the write that registered it (rewritten, deleted or expired).
    pub(crate) fn renew_key(&self, key: &str, index: u64, ttl: Duration) -> Result<bool> {
        let txn = self.db().begin_write().map_err(from_redb)?;
        if !extend_expiry(&txn, key, index, ttl)? {
            return Ok(false);
        }
        txn.commit().map_err(from_redb)?;
        Ok(true)
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

/// A `keep_alive` key's lease: its own deadline in the file, pushed forward while the key
/// still holds the write that registered it.
pub(crate) struct KeyLease {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: String,
    pub(crate) index: u64,
    pub(crate) ttl: Duration,
}

impl fmt::Debug for KeyLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyLease")
            .field("key", &self.key)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lease for KeyLease {
    async fn renew(&self) -> Result<Renewal> {
        let (key, index, ttl) = (self.key.clone(), self.index, self.ttl);
        let renewed = self
            .shared
            .blocking(move |s| s.renew_key(&key, index, ttl))
            .await?;
        Ok(Renewal::held(renewed))
    }

    /// Nothing to give back: the key's deadline is the lease.
    async fn release(&self, _why: Release) -> Result<()> {
        Ok(())
    }
}

/// Writes a lost registration again (the process was paused past its TTL and the key
/// expired): only where the key is absent or still holds the registered value.
pub(crate) struct KeyRegistrar(pub(crate) Arc<Shared>);

#[async_trait]
impl Registrar for KeyRegistrar {
    async fn register_again(
        &self,
        key: &str,
        value: &Bytes,
        ttl: Duration,
    ) -> Result<Option<(Arc<dyn Lease>, Instant)>> {
        let sent = Instant::now();
        let read = || {
            let k = key.to_owned();
            self.0.blocking(move |s| s.read_key(&k))
        };
        let write = |expect| {
            self.0
                .commit_write(key.to_owned(), value.to_vec(), Some(ttl), expect)
        };
        Ok(write_again(value, read, write).await?.map(|pair| {
            let lease: Arc<dyn Lease> = Arc::new(KeyLease {
                shared: self.0.clone(),
                key: key.to_owned(),
                index: pair.last_index,
                ttl,
            });
            (lease, sent)
        }))
    }
}

/// How long `close` waits for lock releases.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-handle state: its background work (lock renewals, registrations) and the token that
/// ends its watches and locks.
pub(crate) struct Session {
    pub(crate) tasks: Tasks,
    pub(crate) registrations: Registrations,
}

impl Session {
    pub(crate) fn new() -> Self {
        let tasks = Tasks::new();
        Session {
            registrations: Registrations::new(&tasks),
            tasks,
        }
    }

    pub(crate) fn cancel(&self) -> &CancellationToken {
        self.tasks.cancel_token()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.tasks.cancel_token().cancel();
    }
}
