//! In-process locks persisted in the `kvstore_locks` table, held and renewed by the lease
//! engine of `kvstore_core::backend` (the lease is the lock's deadline in the file).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kvstore_core::Result;
use kvstore_core::backend::{HeldLease, Lease, LockSpec, Release, Renewal, Tasks};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::client::{Change, EXPIRY, KV, LOCKS, Shared, deadline_ms, is_live, now_ms};
use crate::error::from_redb;
use crate::keep_alive::extend_expiry;
use crate::log::{self, next_revision};
use redb::ReadableTable;

/// A held lock for the lease engine: renewal pushes its deadline in the file forward while it
/// is still this holder's (and its value's, when the value lives as long as the hold);
/// release removes it (and its value, with `delete_on_unlock`) in one transaction.
#[derive(Debug)]
struct LockLease {
    shared: Arc<Shared>,
    key: String,
    owner: u64,
    token: u64,
    ttl: Duration,
    delete_on_unlock: bool,
    /// The value was written with the lock's deadline (`delete_on_unlock` with a value).
    bound_value: bool,
}

#[async_trait]
impl Lease for LockLease {
    async fn renew(&self) -> Result<Renewal> {
        let (key, owner, token, ttl) = (self.key.clone(), self.owner, self.token, self.ttl);
        let bound_value = self.bound_value;
        let renewed = self
            .shared
            .group_commit(move |s, txn| {
                let held = s.renew_lock(txn, &key, owner, token, ttl, bound_value)?;
                Ok((held, Vec::new()))
            })
            .await?;
        Ok(Renewal::held(renewed))
    }

    async fn release(&self, _why: Release) -> Result<()> {
        // With `delete_on_unlock` the value ends with the hold, however it ends.
        let delete = self.delete_on_unlock;
        let (key, owner, token) = (self.key.clone(), self.owner, self.token);
        self.shared.release_lock(key, owner, token, delete).await
    }
}

/// Acquires `lock`: one attempt after another, each waiting for the holder's release (its
/// change-feed event) or its expiry, until the lock is free. The value is written in the same
/// transaction that takes the lock.
///
/// Cancel safety: a caller that goes away takes nothing; a hold its transaction took anyway is
/// given back through `tasks`.
pub(crate) async fn acquire(
    shared: &Arc<Shared>,
    lock: &LockSpec,
    tasks: &Tasks,
) -> Result<HeldLease> {
    let owner: u64 = rand::random();
    loop {
        // Subscribe before trying, so a release between the attempt and the wait is seen.
        let mut changes = shared.subscribe();
        let sent = Instant::now();
        match attempt(shared, lock, owner, tasks).await? {
            Acquire::Acquired(token) => {
                let opts = &lock.opts;
                let lease = Arc::new(LockLease {
                    shared: shared.clone(),
                    key: lock.key.clone(),
                    owner,
                    token,
                    ttl: opts.ttl,
                    delete_on_unlock: opts.delete_on_unlock,
                    bound_value: opts.delete_on_unlock && opts.value.is_some(),
                });
                return Ok(HeldLease::start(lease, opts.ttl, sent, token, tasks));
            }
            Acquire::Held(expires_at) => {
                let until = Duration::from_millis(expires_at.saturating_sub(now_ms()) + 1);
                let released = async {
                    loop {
                        match changes.recv().await {
                            Ok(Change::Lock(k)) if *k == *lock.key => return,
                            Ok(_) => {}
                            Err(RecvError::Lagged(_) | RecvError::Closed) => return,
                        }
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(until) => {}
                    () = released => {}
                }
            }
        }
    }
}

/// One attempt at `lock` for `owner`.
async fn attempt(
    shared: &Arc<Shared>,
    lock: &LockSpec,
    owner: u64,
    tasks: &Tasks,
) -> Result<Acquire> {
    let pending = Arc::new(Mutex::new(Pending::Running));
    let mut guard = AbandonGuard {
        pending: pending.clone(),
        shared: shared.clone(),
        tasks: tasks.clone(),
        key: lock.key.clone(),
        owner,
        delete_value: lock.opts.delete_on_unlock,
        armed: true,
    };
    let (key, ttl, value, bound) = (
        lock.key.clone(),
        lock.opts.ttl,
        lock.opts.value.clone(),
        lock.opts.delete_on_unlock,
    );
    // A value that ends with the hold has a deadline the expiry reaper must learn.
    let expires_value = bound && value.is_some();
    // Through the group commit. Whether the caller still waits is read, and a hold recorded,
    // under `pending`'s mutex in the same step as the write, so a caller that leaves either
    // takes nothing or finds the hold to give back (`AbandonGuard`).
    let result = shared
        .group_commit(move |s, txn| {
            let mut state = pending.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(*state, Pending::Abandoned) {
                // Nobody waits for the answer; "held" makes no one retry.
                return Ok((Acquire::Held(0), Vec::new()));
            }
            let (outcome, changes) =
                s.try_acquire(txn, &key, owner, ttl, value.as_deref(), bound)?;
            if let Acquire::Acquired(token) = outcome {
                *state = Pending::Acquired(token);
            }
            Ok((outcome, changes))
        })
        .await;
    if expires_value && matches!(result, Ok(Acquire::Acquired(_))) {
        shared.expiry_wakeup.notify_one();
    }
    guard.armed = false;
    result
}

enum Pending {
    Running,
    Abandoned,
    Acquired(u64),
}

struct AbandonGuard {
    pending: Arc<Mutex<Pending>>,
    shared: Arc<Shared>,
    tasks: Tasks,
    key: String,
    owner: u64,
    delete_value: bool,
    armed: bool,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match *state {
            Pending::Running => *state = Pending::Abandoned,
            Pending::Acquired(token) => {
                // The transaction committed but nobody will take the result: give it back.
                // `Drop` must not block: the release is a tracked task (`close` waits for
                // it) whose transaction runs on the blocking pool.
                let (shared, key, owner) = (self.shared.clone(), self.key.clone(), self.owner);
                let delete_value = self.delete_value;
                self.tasks.spawn(async move {
                    let released = shared.release_lock(key, owner, token, delete_value).await;
                    if let Err(err) = released {
                        tracing::warn!(error = %err, "releasing an abandoned lock failed; it expires with its TTL");
                    }
                });
            }
            Pending::Abandoned => {}
        }
    }
}

#[derive(Debug)]
pub(crate) enum Acquire {
    /// Taken, with this fencing token.
    Acquired(u64),
    /// Held by someone else until this time (Unix milliseconds) unless renewed.
    Held(u64),
}

impl Shared {
    /// In `txn` (a group commit's transaction), takes the lock on `key` for `owner` if it is
    /// free or its holder's TTL ran out; writes the lock's value in the same transaction — with
    /// the lock's deadline when `bound`, so the reaper deletes it if the hold is lost. Returns
    /// the outcome and the changes to publish once committed.
    pub(crate) fn try_acquire(
        &self,
        txn: &redb::WriteTransaction,
        key: &str,
        owner: u64,
        ttl: Duration,
        value: Option<&[u8]>,
        bound: bool,
    ) -> Result<(Acquire, Vec<Change>)> {
        let mut locks = txn.open_table(LOCKS).map_err(from_redb)?;
        if let Some(entry) = locks.get(key).map_err(from_redb)? {
            let (_, expires_at, _) = entry.value();
            if expires_at > now_ms() {
                return Ok((Acquire::Held(expires_at), Vec::new()));
            }
        }
        let token = next_revision(txn)?;
        let deadline = deadline_ms(ttl);
        locks
            .insert(key, (token, deadline, owner))
            .map_err(from_redb)?;
        let mut changes = Vec::new();
        if let Some(value) = value {
            let mut kv = txn.open_table(KV).map_err(from_redb)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(from_redb)?;
            let old_exp = kv.get(key).map_err(from_redb)?.map(|e| e.value().1);
            if let Some(old_exp) = old_exp.filter(|&e| e != 0) {
                expiry.remove((old_exp, key)).map_err(from_redb)?;
            }
            let expires_at = if bound { deadline } else { 0 };
            kv.insert(key, (token, expires_at, value))
                .map_err(from_redb)?;
            if bound {
                expiry.insert((expires_at, key), ()).map_err(from_redb)?;
            }
            log::append(txn, token, [log::put(key, value, token)])?;
            changes.push(Change::Key(key.into()));
        }
        Ok((Acquire::Acquired(token), changes))
    }

    /// In `txn` (a group commit's transaction), extends a held lock (and its value, when
    /// `bound_value` and the value is still the one the lock wrote); `false` when it is no
    /// longer held by `owner` with `token`.
    pub(crate) fn renew_lock(
        &self,
        txn: &redb::WriteTransaction,
        key: &str,
        owner: u64,
        token: u64,
        ttl: Duration,
        bound_value: bool,
    ) -> Result<bool> {
        {
            let mut locks = txn.open_table(LOCKS).map_err(from_redb)?;
            let held = locks.get(key).map_err(from_redb)?.is_some_and(|e| {
                e.value().0 == token && e.value().2 == owner && e.value().1 > now_ms()
            });
            if !held {
                return Ok(false);
            }
            locks
                .insert(key, (token, deadline_ms(ttl), owner))
                .map_err(from_redb)?;
        }
        if bound_value {
            extend_expiry(txn, key, token, ttl)?;
        }
        Ok(true)
    }

    /// Releases a lock held by `owner` with `token` (deleting the key too when asked) through
    /// the group commit.
    pub(crate) async fn release_lock(
        self: &Arc<Self>,
        key: String,
        owner: u64,
        token: u64,
        delete_value: bool,
    ) -> Result<()> {
        self.group_commit(move |s, txn| {
            let changes = s.release_in(txn, &key, owner, token, delete_value)?;
            Ok(((), changes))
        })
        .await
    }

    /// In `txn`, releases a lock held by `owner` with `token`, deleting the key too when asked;
    /// returns the changes to publish once committed.
    fn release_in(
        &self,
        txn: &redb::WriteTransaction,
        key: &str,
        owner: u64,
        token: u64,
        delete_value: bool,
    ) -> Result<Vec<Change>> {
        let mut locks = txn.open_table(LOCKS).map_err(from_redb)?;
        let ours = locks
            .get(key)
            .map_err(from_redb)?
            .is_some_and(|e| e.value().0 == token && e.value().2 == owner);
        if !ours {
            return Ok(Vec::new());
        }
        locks.remove(key).map_err(from_redb)?;
        let mut changes = vec![Change::Lock(key.into())];
        if delete_value {
            let mut kv = txn.open_table(KV).map_err(from_redb)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(from_redb)?;
            if let Some(old_exp) = kv.remove(key).map_err(from_redb)?.map(|e| e.value().1) {
                changes.push(Change::Key(key.into()));
                if old_exp != 0 {
                    expiry.remove((old_exp, key)).map_err(from_redb)?;
                }
                // An expired value was already gone for readers: only a live one is news.
                if is_live(old_exp, now_ms()) {
                    let revision = next_revision(txn)?;
                    log::append(txn, revision, [log::delete(key, revision)])?;
                }
            }
        }
        Ok(changes)
    }
}
