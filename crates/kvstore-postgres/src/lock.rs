//! Leases: a `keep_alive` key's expiry and a lock's hold, renewed under the loss rule; and
//! the lock's acquire, which waits on the listener for a release or on the holder's expiry.

use kvstore_core::backend::prelude::*;
use tokio::time::Instant;

use crate::client::{Inner, Shared};
use crate::wire::{bigint, millis, revision};

#[async_trait]
impl RenewKey for Inner {
    async fn renew_key(this: &Arc<Self>, key: &str, index: u64, ttl: Duration) -> Result<bool> {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&key, &bigint(index), &millis(ttl)];
        Ok(this.query(&this.sql.renew_key, &params).await?.len() == 1)
    }
}

/// A lock's hold: a row of the locks table at the fencing token.
#[derive(Debug)]
pub(crate) struct LockLease {
    inner: Shared,
    key: String,
    token: u64,
    ttl: Duration,
    delete_on_unlock: bool,
}

#[async_trait]
impl Lease for LockLease {
    async fn renew(&self) -> Result<Renewal> {
        let (inner, key) = (&self.inner, self.key.as_str());
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&key, &bigint(self.token), &millis(self.ttl)];
        let row = inner.query_one(&inner.sql.renew_lock, &params).await?;
        Ok(Renewal::held(row.get(0)))
    }

    async fn release(&self, _why: Release) -> Result<()> {
        let (inner, key) = (&self.inner, self.key.as_str());
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&key, &bigint(self.token), &self.delete_on_unlock];
        inner.query_one(&inner.sql.unlock, &params).await?;
        Ok(())
    }
}

/// Acquires `lock`: one statement takes it unless another live hold exists; then waits for
/// that hold's release (told by the listener) or its expiry, and tries again.
///
/// Cancel safety: the statement runs in a task on `tasks`; when the caller has gone by the
/// time it took the lock, the task gives the hold back.
pub(crate) async fn acquire(inner: &Shared, lock: &LockSpec, tasks: &Tasks) -> Result<HeldLease> {
    let opts = &lock.opts;
    loop {
        let mut sub = inner.hub.subscribe();
        let sent = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let attempt = {
            let (inner, key) = (inner.clone(), lock.key.clone());
            let (value, bound, ttl) = (opts.value.clone(), opts.delete_on_unlock, opts.ttl);
            async move {
                let value = value.as_deref();
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                    [&key, &millis(ttl), &value, &bound];
                let taken = inner.query_one(&inner.sql.lock, &params).await.map(|row| {
                    let token: Option<i64> = row.get(0);
                    (token.map(revision), row.get::<_, i64>(1))
                });
                if let Err(Ok((Some(token), _))) = tx.send(taken) {
                    // The caller went away: give the hold back.
                    let lease = LockLease {
                        inner,
                        key,
                        token,
                        ttl,
                        delete_on_unlock: bound,
                    };
                    let _ = lease.release(Release::Drop).await;
                }
            }
        };
        if tasks.spawn(attempt).is_none() {
            return Err(Error::Closed {
                backend: crate::BACKEND,
            });
        }
        let (token, wait_ms) = rx.await.map_err(|_| Error::Closed {
            backend: crate::BACKEND,
        })??;
        if let Some(token) = token {
            let lease = LockLease {
                inner: inner.clone(),
                key: lock.key.clone(),
                token,
                ttl: opts.ttl,
                delete_on_unlock: opts.delete_on_unlock,
            };
            return Ok(HeldLease::start(
                Arc::new(lease),
                opts.ttl,
                sent,
                token,
                tasks,
            ));
        }
        // Held by another: wait for its release or its expiry (the server's clock said how
        // long), and at most a second, so a release missed while reconnecting costs little.
        let wait =
            Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)).min(Duration::from_secs(1));
        let key = lock.key.clone();
        let released = async move {
            match sub.wait(move |c| c.frees_lock(&key)).await {
                // The listener is reconnecting: the timer alone wakes this wait.
                Err(Error::NotReachable { .. }) => std::future::pending().await,
                other => other,
            }
        };
        tokio::select! {
            woke = released => woke?,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
