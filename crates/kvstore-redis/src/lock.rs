//! Locks: a `<prefix>\x01kvstore/lock/<key>` string holding `<owner>:<token>` with a PX TTL,
//! renewed at a third of the TTL; waiters wake on the lock key's keyspace notifications.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use kvstore_core::{Error, LockLost, LockLostSignal, LockOptions, Locker, Result};
use tokio_util::task::AbortOnDropHandle;

use crate::BACKEND;
use crate::error::{from_redis, protocol};
use crate::scripts;
use crate::store::Inner;
use crate::watch::{Subscription, subscribe};

struct Held {
    token: u64,
    lost: LockLost,
    signal: LockLostSignal,
    _renewal: AbortOnDropHandle<()>,
}

/// A lock on a key of a [`RedisStore`](crate::RedisStore).
///
/// The fencing token comes from the store's revision counter (`INCR`), so it is strictly
/// greater for every later holder of any lock of this store prefix.
pub struct RedisLocker {
    inner: Arc<Inner>,
    key: String,
    opts: LockOptions,
    owner: String,
    held: Option<Held>,
}

impl fmt::Debug for RedisLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLocker")
            .field("key", &self.key)
            .field("ttl", &self.opts.ttl)
            .field("fencing_token", &self.fencing_token())
            .finish_non_exhaustive()
    }
}

enum Attempt {
    Acquired(u64),
    /// Held by someone else for about this long.
    Held(Duration),
}

/// Releases whatever this owner took if `lock()` is dropped while its acquire script is in
/// flight. The release goes out on the same multiplexed connection after the acquire, so Redis
/// runs it second and it always sees the acquire's result.
struct AbandonGuard {
    inner: Arc<Inner>,
    key: String,
    owner: String,
    armed: bool,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (inner, key, owner) = (self.inner.clone(), self.key.clone(), self.owner.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // Drop cannot wait; this one bounded call runs on its own.
            rt.spawn(async move {
                if let Err(err) = release(&inner, &key, &format!("{owner}:"), false).await {
                    tracing::warn!(backend = BACKEND, key, error = %err, "releasing an abandoned lock attempt failed; it expires with its TTL");
                }
            });
        }
    }
}

async fn release(inner: &Inner, key: &str, holder: &str, delete_value: bool) -> Result<()> {
    let _: i64 = scripts::LOCK_RELEASE
        .key(inner.lock_key(key))
        .key(inner.data_key(key))
        .key(inner.index_key())
        .arg(holder)
        .arg(if delete_value { "1" } else { "0" })
        .arg(key)
        .invoke_async(&mut inner.conn())
        .await
        .map_err(from_redis)?;
    Ok(())
}

/// Renews at a third of the TTL. The hold is lost when the key no longer names this holder, or
/// when no renewal has succeeded for a whole TTL (the server may have expired it). On close it
/// releases. The signal fires when this task ends.
async fn renew(
    inner: Arc<Inner>,
    key: String,
    holder: String,
    ttl: Duration,
    signal: LockLostSignal,
) {
    let period = (ttl / 3).max(Duration::from_millis(10));
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            () = inner.cancel.cancelled() => {
                if let Err(err) = release(&inner, &key, &holder, false).await {
                    tracing::warn!(backend = BACKEND, key, error = %err, "releasing lock on close failed; it expires with its TTL");
                }
                break;
            }
            () = tokio::time::sleep(period) => {}
        }
        let renewed: redis::RedisResult<i64> = scripts::LOCK_RENEW
            .key(inner.lock_key(&key))
            .arg(&holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut inner.conn())
            .await;
        match renewed {
            Ok(1) => last_ok = Instant::now(),
            Ok(_) => {
                tracing::debug!(backend = BACKEND, key, "lock lost: no longer the holder");
                break;
            }
            Err(err) if last_ok.elapsed() >= ttl => {
                tracing::warn!(backend = BACKEND, key, error = %err, "lock lost: no renewal within its TTL");
                break;
            }
            Err(err) => {
                tracing::debug!(backend = BACKEND, key, error = %err, "lock renewal failed; retrying")
            }
        }
    }
    signal.fire();
}

impl RedisLocker {
    pub(crate) fn new(inner: Arc<Inner>, key: String, opts: LockOptions) -> Self {
        let owner = format!("{:016x}", rand::random::<u64>());
        RedisLocker {
            inner,
            key,
            opts,
            owner,
            held: None,
        }
    }

    async fn attempt(&self) -> Result<Attempt> {
        let mut guard = AbandonGuard {
            inner: self.inner.clone(),
            key: self.key.clone(),
            owner: self.owner.clone(),
            armed: true,
        };
        let reply: redis::RedisResult<(i64, i64)> = scripts::LOCK_ACQUIRE
            .key(self.inner.lock_key(&self.key))
            .key(self.inner.rev_key())
            .key(self.inner.data_key(&self.key))
            .key(self.inner.index_key())
            .arg(&self.owner)
            .arg(self.opts.ttl.as_millis().max(1) as u64)
            .arg(if self.opts.value.is_some() { "1" } else { "0" })
            .arg(self.opts.value.as_deref().unwrap_or_default())
            .arg(&self.key)
            .invoke_async(&mut self.inner.conn())
            .await;
        let (taken, n) = reply.map_err(from_redis)?;
        guard.armed = false;
        match taken {
            1 => Ok(Attempt::Acquired(
                u64::try_from(n).map_err(|_| protocol("lock token"))?,
            )),
            // PTTL -1 (no TTL) cannot happen for our keys; treat it like a short wait.
            0 => Ok(Attempt::Held(Duration::from_millis(
                u64::try_from(n).unwrap_or(100),
            ))),
            _ => Err(protocol("lock status")),
        }
    }
}

#[async_trait]
impl Locker for RedisLocker {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "lock", key = %self.key))]
    async fn lock(&mut self) -> Result<LockLost> {
        if let Some(held) = &self.held
            && !held.lost.is_lost()
        {
            return Ok(held.lost.clone());
        }
        self.held = None;
        self.inner.check_open()?;
        // Subscribe before the first attempt so a release in between is not missed.
        let sub =
            Subscription::Channel(self.inner.keyspace_channel(&self.inner.lock_key(&self.key)));
        let mut events = subscribe(&self.inner, &sub).await?;
        loop {
            self.inner.check_open()?;
            match self.attempt().await? {
                Attempt::Acquired(token) => {
                    let (signal, lost) = LockLost::new();
                    let holder = format!("{}:{token}", self.owner);
                    let renewal = tokio::spawn(renew(
                        self.inner.clone(),
                        self.key.clone(),
                        holder,
                        self.opts.ttl,
                        signal.clone(),
                    ));
                    self.held = Some(Held {
                        token,
                        lost: lost.clone(),
                        signal,
                        _renewal: AbortOnDropHandle::new(renewal),
                    });
                    return Ok(lost);
                }
                Attempt::Held(remaining) => {
                    tokio::select! {
                        () = self.inner.cancel.cancelled() => return Err(Error::Closed { backend: BACKEND }),
                        // Expiry notifications can lag the deadline; retry at it regardless.
                        () = tokio::time::sleep(remaining + Duration::from_millis(1)) => {}
                        event = events.messages.next() => {
                            if event.is_none() {
                                events = subscribe(&self.inner, &sub).await?;
                            }
                        }
                    }
                }
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "unlock", key = %self.key))]
    async fn unlock(&mut self) -> Result<()> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        held.signal.fire();
        let holder = format!("{}:{}", self.owner, held.token);
        drop(held);
        release(&self.inner, &self.key, &holder, self.opts.delete_on_unlock).await
    }

    fn fencing_token(&self) -> Option<u64> {
        self.held
            .as_ref()
            .filter(|h| !h.lost.is_lost())
            .map(|h| h.token)
    }
}
