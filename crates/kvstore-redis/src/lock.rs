//! Locks: a `<prefix>\x01kvstore/lock/<key>` string holding `<owner>:<token>` with a PX TTL,
//! held and renewed by the lease engine of `kvstore_core::backend`; waiters wake on the lock
//! key's keyspace notifications. With `delete_on_unlock` the value gets the lock's PX too and
//! each renewal extends both, so a lost hold's value expires with it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kvstore_core::Result;
use kvstore_core::backend::{HeldLease, Lease, LockSpec, Release, Renewal, Tasks, ttl_millis};
use tokio::time::Instant;

use crate::BACKEND;
use crate::client::Inner;
use crate::error::{from_redis, protocol};
use crate::pubsub::{Subscribed, Subscription, subscribe};
use crate::scripts;

/// The protocol steps of a held lock for the lease engine: renew with `PEXPIRE` while the lock
/// key still names this holder (and the value with it, when it lives as long as the hold);
/// release by deleting it (and the value, with `delete_on_unlock`) in one script.
#[derive(Debug)]
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

#[async_trait]
impl Lease for LockLease {
    async fn renew(&self) -> Result<Renewal> {
        let renewed: i64 = scripts::LOCK_RENEW
            .key(self.inner.lock_key(&self.key))
            .key(self.inner.data_key(&self.key))
            .key(self.inner.rev_key())
            .arg(&self.holder)
            .arg(ttl_millis(self.ttl))
            .arg(self.bound_value.map(|t| t.to_string()).unwrap_or_default())
            .arg(&self.key)
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

enum Attempt {
    Acquired(u64),
    /// Held by someone else for about this long.
    Held(Duration),
}

/// Releases whatever this owner took if `lock()` is dropped while its acquire script is in
/// flight. The release goes out on the same multiplexed connection after the acquire, so Redis
/// runs it second and it always sees the acquire's result.
struct AbandonGuard<'a> {
    inner: Arc<Inner>,
    tasks: &'a Tasks,
    key: String,
    owner: String,
    delete_value: bool,
    armed: bool,
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (inner, key, owner) = (self.inner.clone(), self.key.clone(), self.owner.clone());
        let delete_value = self.delete_value;
        // Drop cannot wait; the release is a tracked task that `close()` waits for.
        self.tasks.spawn(async move {
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
        .key(inner.rev_key())
        .arg(holder)
        .arg(if delete_value { "1" } else { "0" })
        .arg(key)
        .invoke_async(&mut inner.write_conn())
        .await
        .map_err(from_redis)?;
    Ok(())
}

/// One attempt at `lock` for `owner`.
async fn attempt(
    inner: &Arc<Inner>,
    lock: &LockSpec,
    owner: &str,
    tasks: &Tasks,
) -> Result<Attempt> {
    let (key, opts) = (&lock.key, &lock.opts);
    let mut guard = AbandonGuard {
        inner: inner.clone(),
        tasks,
        key: key.clone(),
        owner: owner.to_owned(),
        delete_value: opts.delete_on_unlock,
        armed: true,
    };
    let reply: redis::RedisResult<(i64, i64)> = scripts::LOCK_ACQUIRE
        .key(inner.lock_key(key))
        .key(inner.rev_key())
        .key(inner.data_key(key))
        .key(inner.index_key())
        .arg(owner)
        .arg(ttl_millis(opts.ttl))
        .arg(match (&opts.value, opts.delete_on_unlock) {
            (None, _) => "0",
            (Some(_), false) => "1",
            (Some(_), true) => "2",
        })
        .arg(opts.value.as_deref().unwrap_or_default())
        .arg(key)
        .invoke_async(&mut inner.write_conn())
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

async fn next_event(events: &mut Option<Subscribed>) -> Option<()> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// Acquires `lock`: one attempt after another, waiting for the lock key's keyspace
/// notifications (or its expiry) in between.
///
/// Cancel safety: an attempt whose caller went away is given back through `tasks`.
pub(crate) async fn acquire(
    inner: &Arc<Inner>,
    lock: &LockSpec,
    tasks: &Tasks,
) -> Result<HeldLease> {
    let owner = format!("{:016x}", rand::random::<u64>());
    // The subscription (a pub/sub connection) is opened only once the lock turns out to
    // be held, and the attempt repeated right after it, so a release in between is not
    // missed and an uncontended lock costs two requests: acquire and release.
    let sub = Subscription::Channel(inner.keyspace_channel(&inner.lock_key(&lock.key)));
    let mut events = None;
    loop {
        // The loss rule measures from the send of the acquire.
        let sent = Instant::now();
        match attempt(inner, lock, &owner, tasks).await? {
            Attempt::Acquired(token) => {
                let opts = &lock.opts;
                let lease = Arc::new(LockLease {
                    inner: inner.clone(),
                    key: lock.key.clone(),
                    holder: format!("{owner}:{token}"),
                    ttl: opts.ttl,
                    delete_on_unlock: opts.delete_on_unlock,
                    bound_value: (opts.delete_on_unlock && opts.value.is_some()).then_some(token),
                });
                return Ok(HeldLease::start(lease, opts.ttl, sent, token, tasks));
            }
            Attempt::Held(_) if events.is_none() => {
                events = Some(subscribe(inner, &sub).await?);
            }
            Attempt::Held(remaining) => {
                tokio::select! {
                    // Expiry notifications can lag the deadline; retry at it regardless.
                    () = tokio::time::sleep(remaining + Duration::from_millis(1)) => {}
                    event = next_event(&mut events) => {
                        if event.is_none() {
                            events = Some(subscribe(inner, &sub).await?);
                        }
                    }
                }
            }
        }
    }
}
