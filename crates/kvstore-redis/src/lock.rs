//! Locks: a `<prefix>\x01kvstore/lock/<key>` string holding `<owner>:<token>` with a PX TTL,
//! held and renewed by the lease engine of `kvstore_core::backend`; waiters wake on the lock
//! key's keyspace notifications. With `delete_on_unlock` the value gets the lock's PX too and
//! each renewal extends both, so a lost hold's value expires with it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kvstore_core::backend::{HeldLease, Lease, Release, Renewal, ttl_millis};
use kvstore_core::{Error, LockLost, LockOptions, Locker, Result};
use tokio::time::Instant;

use crate::BACKEND;
use crate::client::Inner;
use crate::error::{from_redis, protocol};
use crate::pubsub::{Subscribed, Subscription, subscribe};
use crate::scripts;

/// The protocol steps of a held lock for the lease engine: renew with `PEXPIRE` while the lock
/// key still names this holder (and the value with it, when it lives as long as the hold);
/// release by deleting it (and the value, with `delete_on_unlock`) in one script.
struct LockLease {
    inner: Arc<Inner>,
    key: String,
    holder: String,
    ttl: Duration,
    delete_on_unlock: bool,
    /// The token of the value this hold wrote with the lock's PX (`delete_on_unlock` with a
    /// value), which renewals extend.
    bound_value: Option<u64>,
}

impl fmt::Debug for LockLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockLease")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lease for LockLease {
    async fn renew(&self) -> Result<Renewal> {
        let renewed: i64 = scripts::LOCK_RENEW
            .key(self.inner.lock_key(&self.key))
            .key(self.inner.data_key(&self.key))
            .arg(&self.holder)
            .arg(ttl_millis(self.ttl))
            .arg(self.bound_value.map(|t| t.to_string()).unwrap_or_default())
            .invoke_async(&mut self.inner.write_conn())
            .await
            .map_err(from_redis)?;
        Ok(Renewal::held(renewed == 1))
    }

    async fn release(&self, _why: Release) -> Result<()> {
        // With `delete_on_unlock` the value ends with the hold, however it ends.
        release(&self.inner, &self.key, &self.holder, self.delete_on_unlock).await
    }
}

/// A lock on a key of a [`RedisStore`](crate::RedisStore).
///
/// The fencing token comes from the store's revision counter (`INCR`), so it is strictly
/// greater for every later holder of any lock of this store prefix.
pub(crate) struct RedisLocker {
    inner: Arc<Inner>,
    key: String,
    opts: LockOptions,
    owner: String,
    held: Option<HeldLease>,
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
    delete_value: bool,
    armed: bool,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (inner, key, owner) = (self.inner.clone(), self.key.clone(), self.owner.clone());
        let delete_value = self.delete_value;
        // Drop cannot wait; the release is a tracked task that `close()` waits for.
        self.inner.tasks.spawn(async move {
            if let Err(err) = release(&inner, &key, &format!("{owner}:"), delete_value).await {
                tracing::warn!(backend = BACKEND, key, error = %err, "releasing an abandoned lock attempt failed; it expires with its TTL");
            }
        });
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
        .invoke_async(&mut inner.write_conn())
        .await
        .map_err(from_redis)?;
    Ok(())
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
            delete_value: self.opts.delete_on_unlock,
            armed: true,
        };
        let reply: redis::RedisResult<(i64, i64)> = scripts::LOCK_ACQUIRE
            .key(self.inner.lock_key(&self.key))
            .key(self.inner.rev_key())
            .key(self.inner.data_key(&self.key))
            .key(self.inner.index_key())
            .arg(&self.owner)
            .arg(ttl_millis(self.opts.ttl))
            .arg(match (&self.opts.value, self.opts.delete_on_unlock) {
                (None, _) => "0",
                (Some(_), false) => "1",
                (Some(_), true) => "2",
            })
            .arg(self.opts.value.as_deref().unwrap_or_default())
            .arg(&self.key)
            .invoke_async(&mut self.inner.write_conn())
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

/// The next keyspace event of the lock key, or `None` when the subscription ended.
async fn next_event(events: &mut Option<Subscribed>) -> Option<()> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

#[async_trait]
impl Locker for RedisLocker {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "lock", key = %self.key))]
    async fn lock(&mut self) -> Result<LockLost> {
        if let Some(held) = &self.held
            && held.token().is_some()
        {
            return Ok(held.lost());
        }
        self.held = None;
        self.inner.check_open()?;
        // The subscription (a pub/sub connection) is opened only once the lock turns out to
        // be held, and the attempt repeated right after it, so a release in between is not
        // missed and an uncontended lock costs two requests: acquire and release.
        let sub =
            Subscription::Channel(self.inner.keyspace_channel(&self.inner.lock_key(&self.key)));
        let mut events = None;
        loop {
            self.inner.check_open()?;
            // The loss rule measures from the send of the acquire.
            let sent = Instant::now();
            match self.attempt().await? {
                Attempt::Acquired(token) => {
                    if self.opts.value.is_some() {
                        // A write without keep_alive (a lock's value too) ends a registration.
                        self.inner.registrations.remove(&self.key);
                    }
                    let lease = Arc::new(LockLease {
                        inner: self.inner.clone(),
                        key: self.key.clone(),
                        holder: format!("{}:{token}", self.owner),
                        ttl: self.opts.ttl,
                        delete_on_unlock: self.opts.delete_on_unlock,
                        bound_value: (self.opts.delete_on_unlock && self.opts.value.is_some())
                            .then_some(token),
                    });
                    let held =
                        HeldLease::start(lease, self.opts.ttl, sent, token, &self.inner.tasks);
                    let lost = held.lost();
                    self.held = Some(held);
                    return Ok(lost);
                }
                Attempt::Held(_) if events.is_none() => {
                    events = Some(subscribe(&self.inner, &sub).await?);
                }
                Attempt::Held(remaining) => {
                    tokio::select! {
                        () = self.inner.cancel.cancelled() => return Err(Error::Closed { backend: BACKEND }),
                        // Expiry notifications can lag the deadline; retry at it regardless.
                        () = tokio::time::sleep(remaining + Duration::from_millis(1)) => {}
                        event = next_event(&mut events) => {
                            if event.is_none() {
                                events = Some(subscribe(&self.inner, &sub).await?);
                            }
                        }
                    }
                }
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "unlock", key = %self.key))]
    async fn unlock(&mut self) -> Result<()> {
        match self.held.take() {
            Some(held) => held.release(Release::Unlock).await,
            None => Ok(()),
        }
    }

    fn fencing_token(&self) -> Option<u64> {
        self.held.as_ref().and_then(HeldLease::token)
    }
}
