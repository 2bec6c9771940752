//! Coordination recipes written once over the [`Store`] contract, so every store — and every
//! third-party one — has them: [`update`] and [`update_many`] (read-modify-write that retries
//! on conflict), [`Counter`], [`Group`], [`Semaphore`] and [`RwLock`].

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;

use crate::{
    Error, KvPair, LockLost, LockOptions, Locker, Result, Store, Txn, WatchTreeStream,
    WriteOptions, normalize_key,
};

/// How [`update`] and [`update_many`] retry a conflict.
///
/// # Examples
///
/// ```
/// use kvstore_core::UpdateOptions;
///
/// let opts = UpdateOptions::default().with_max_attempts(100);
/// assert_eq!(opts.max_attempts, 100);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpdateOptions {
    /// Attempts before giving up with the last conflict (at least 1). Default
    /// [`DEFAULT_UPDATE_ATTEMPTS`].
    pub max_attempts: u32,
    /// The first pause after a conflict; it doubles (with jitter) up to `max_delay`. Default
    /// 2 ms.
    pub min_delay: Duration,
    /// The longest pause between attempts. Default 200 ms.
    pub max_delay: Duration,
}

/// Attempts of [`update`] and [`update_many`] before they give up: with the default pauses
/// (2 ms doubling to 200 ms, jittered) that is about 20 s of contention.
pub const DEFAULT_UPDATE_ATTEMPTS: u32 = 100;

impl Default for UpdateOptions {
    fn default() -> Self {
        UpdateOptions {
            max_attempts: DEFAULT_UPDATE_ATTEMPTS,
            min_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(200),
        }
    }
}

impl UpdateOptions {
    /// Sets the attempts before giving up.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets the pauses between attempts: from `min` doubling up to `max`.
    pub fn with_delays(mut self, min: Duration, max: Duration) -> Self {
        self.min_delay = min;
        self.max_delay = max;
        self
    }

    fn pauses(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// Whether `err` is a lost race that a fresh read may win.
fn is_conflict(err: &Error) -> bool {
    matches!(
        err,
        Error::KeyModified { .. } | Error::KeyExists { .. } | Error::KeyNotFound { .. }
    )
}

/// The retry budget of one [`update`] or [`update_many`] call.
struct Retry {
    pauses: Box<dyn Iterator<Item = Duration> + Send>,
    left: u32,
}

impl Retry {
    fn new(opts: Option<&UpdateOptions>) -> Retry {
        let opts = opts.cloned().unwrap_or_default();
        Retry {
            pauses: Box::new(opts.pauses()),
            left: opts.max_attempts.max(1),
        }
    }

    /// After a failed attempt: pauses and returns `Ok` when `err` is a conflict and attempts
    /// are left; else returns `err`.
    async fn again(&mut self, err: Error) -> Result<()> {
        self.left = self.left.saturating_sub(1);
        if !is_conflict(&err) || self.left == 0 {
            return Err(err);
        }
        tracing::trace!(error = %err, "update conflicted; retrying");
        if let Some(pause) = self.pauses.next() {
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }
}

/// The pair at `key`, or `None` when it is absent.
async fn read(store: &dyn Store, key: &str) -> Result<Option<KvPair>> {
    match store.get(key, None).await {
        Ok(pair) => Ok(Some(pair)),
        Err(Error::KeyNotFound { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Read-modify-write of one key: reads it, asks `f` for its new value (`None`: delete it, or
/// leave it absent), and writes that with a compare-and-swap on what was read; a conflict (an
/// other client wrote between the read and the write) reads again and calls `f` again, after a
/// pause that doubles with each conflict, up to [`UpdateOptions::max_attempts`].
///
/// Returns the pair written, or `None` when the key ends absent. `f` may run several times
/// and must not have side effects that matter.
///
/// # Errors
///
/// The last conflict (`KeyModified`, `KeyExists` or `KeyNotFound`) once every attempt lost a
/// race; `InvalidKey`, `ValueTooLarge` and connection errors at once.
///
/// # Cancel safety
///
/// Dropping the future between attempts writes nothing more; one dropped during the write may
/// or may not have written (as any dropped `atomic_put`).
///
/// # Examples
///
/// ```
/// # async fn run(store: &dyn kvstore_core::Store) -> kvstore_core::Result<()> {
/// use bytes::Bytes;
///
/// // Append to a comma-separated list, whatever other clients do meanwhile.
/// kvstore_core::update(store, "config/hosts", |current| {
///     let mut hosts = current.map(|p| p.value.to_vec()).unwrap_or_default();
///     if !hosts.is_empty() {
///         hosts.push(b',');
///     }
///     hosts.extend_from_slice(b"10.0.0.7");
///     Some(Bytes::from(hosts))
/// }, None)
/// .await?;
/// # Ok(())
/// # }
/// ```
pub async fn update<F>(
    store: &dyn Store,
    key: &str,
    mut f: F,
    opts: Option<&UpdateOptions>,
) -> Result<Option<KvPair>>
where
    F: FnMut(Option<&KvPair>) -> Option<Bytes> + Send,
{
    normalize_key(key)?;
    let mut retry = Retry::new(opts);
    loop {
        let current = read(store, key).await?;
        let written = match (&current, f(current.as_ref())) {
            (None, None) => return Ok(None),
            (Some(previous), None) => store.atomic_delete(key, previous).await.map(|()| None),
            (previous, Some(value)) => store
                .atomic_put(key, &value, previous.as_ref(), None)
                .await
                .map(Some),
        };
        match written {
            Ok(pair) => return Ok(pair),
            Err(err) => retry.again(err).await?,
        }
    }
}

/// Read-modify-write of several keys at once (a software transactional memory over
/// [`Store::txn`]): reads every key, asks `f` for their new values (one per key, in order;
/// `None`: delete, or leave absent), and commits one transaction that checks every key still
/// holds what was read (`when_index`, or `when_missing` for an absent key) and writes those
/// whose value changed. A conflict reads again and calls `f` again, as [`update`] does, so the
/// values `f` saw were all current at the moment the transaction applied (serializable).
///
/// Returns the pairs after the call, one per key (`None`: absent), as they were at one moment.
/// When `f` changes nothing, nothing is written: the keys are read a second time, and the
/// pairs are returned once no `last_index` moved between the two reads (a move counts as a
/// conflict).
///
/// # Errors
///
/// `InvalidTxn` when `f` returns another number of values than keys, a key appears twice, or
/// the keys exceed `Capabilities::max_txn_ops`; the last conflict once every attempt lost a
/// race; `CallNotSupported` on a store without transactions; `InvalidKey`, `ValueTooLarge`
/// and connection errors at once.
///
/// # Cancel safety
///
/// As [`update`]: a future dropped during the commit may or may not have applied it, whole.
///
/// # Examples
///
/// ```
/// # async fn run(store: &dyn kvstore_core::Store) -> kvstore_core::Result<()> {
/// use bytes::Bytes;
///
/// // Move 10 from one balance to another: both change, or neither.
/// let number = |p: &Option<kvstore_core::KvPair>| {
///     p.as_ref().and_then(|p| p.value_str()?.parse::<i64>().ok()).unwrap_or(0)
/// };
/// kvstore_core::update_many(store, &["bank/a", "bank/b"], |now| {
///     let (a, b) = (number(&now[0]), number(&now[1]));
///     vec![
///         Some(Bytes::from((a - 10).to_string())),
///         Some(Bytes::from((b + 10).to_string())),
///     ]
/// }, None)
/// .await?;
/// # Ok(())
/// # }
/// ```
pub async fn update_many<F>(
    store: &dyn Store,
    keys: &[&str],
    mut f: F,
    opts: Option<&UpdateOptions>,
) -> Result<Vec<Option<KvPair>>>
where
    F: FnMut(&[Option<KvPair>]) -> Vec<Option<Bytes>> + Send,
{
    for key in keys {
        normalize_key(key)?;
    }
    let mut retry = Retry::new(opts);
    loop {
        let reads = futures::future::join_all(keys.iter().map(|k| read(store, k))).await;
        let current: Vec<Option<KvPair>> = reads.into_iter().collect::<Result<_>>()?;
        let wanted = f(&current);
        if wanted.len() != keys.len() {
            return Err(Error::InvalidTxn {
                reason: format!(
                    "update_many: {} values for {} keys",
                    wanted.len(),
                    keys.len()
                ),
            });
        }
        let mut txn = Txn::new();
        let mut changed = Vec::new();
        for (i, (key, now)) in keys.iter().zip(&current).enumerate() {
            txn = match now {
                Some(pair) => txn.when_index(key, pair.last_index),
                None => txn.when_missing(key),
            };
            match (now, &wanted[i]) {
                (Some(pair), Some(value)) if pair.value == *value => {}
                (None, None) => {}
                (_, Some(value)) => {
                    txn = txn.put(key, value.clone());
                    changed.push(i);
                }
                (Some(_), None) => {
                    txn = txn.delete(key);
                    changed.push(i);
                }
            }
        }
        if changed.is_empty() {
            // Nothing to commit: the reads must still show one moment. Read again; a key
            // whose `last_index` did not move was unchanged from its first read to its second,
            // and the first round ended before the second began, so at the end of the first
            // round every key held what was read.
            let again = futures::future::join_all(keys.iter().map(|k| read(store, k))).await;
            let again: Vec<Option<KvPair>> = again.into_iter().collect::<Result<_>>()?;
            let moved = current.iter().zip(&again).position(|(first, second)| {
                first.as_ref().map(|p| p.last_index) != second.as_ref().map(|p| p.last_index)
            });
            match moved {
                None => return Ok(current),
                Some(i) => {
                    retry
                        .again(Error::KeyModified {
                            key: keys[i].to_owned(),
                        })
                        .await?;
                    continue;
                }
            }
        }
        match store.txn(&txn).await {
            Ok(results) => {
                let mut after = current;
                for (i, result) in changed.into_iter().zip(results) {
                    after[i] = result;
                }
                return Ok(after);
            }
            Err(err) => retry.again(err).await?,
        }
    }
}

/// A 64-bit signed counter stored at a key as decimal text (so any client can read it:
/// `kvctl get`, `redis-cli HGET key v`, `etcdctl get`). An absent key counts 0.
///
/// [`add`](Counter::add) is exact under any concurrency — no update is lost. Where the store
/// has an atomic increment ([`Store::increment`]: a Redis script, one redb write transaction)
/// it is one step; elsewhere it reads the value and writes the sum with a compare-and-swap on
/// what it read,
/// retrying a lost race after a jittered pause (1 ms doubling to 50 ms, up to 10,000
/// attempts): two round trips when uncontended, and several under contention.
///
/// Clone it freely: clones share the store and key.
///
/// # Examples
///
/// ```
/// # async fn run(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
/// let visits = kvstore_core::Counter::new(store, "stats/visits");
/// let now = visits.add(1).await?;
/// assert!(now >= 1);
/// assert!(visits.get().await? >= now);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Counter {
    store: Arc<dyn Store>,
    key: String,
    retry: UpdateOptions,
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counter")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Counter {
    /// The counter at `key` of `store` (nothing is read or written yet).
    pub fn new(store: Arc<dyn Store>, key: &str) -> Counter {
        Counter {
            store,
            key: key.to_owned(),
            retry: UpdateOptions::default()
                .with_max_attempts(10_000)
                .with_delays(Duration::from_millis(1), Duration::from_millis(50)),
        }
    }

    /// The key the counter is stored at.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Adds `delta` (which may be negative) and returns the new value: the value this call
    /// made, which no other `add` returns.
    ///
    /// # Errors
    ///
    /// `InvalidValue` when the key holds something other than a decimal `i64`, or the sum
    /// would overflow (nothing is written); the last conflict after 10,000 lost races;
    /// `InvalidKey` and connection errors.
    ///
    /// # Cancel safety
    ///
    /// A future dropped during its write may or may not have added `delta`.
    pub async fn add(&self, delta: i64) -> Result<i64> {
        normalize_key(&self.key)?;
        if let Some(sum) = self.store.increment(&self.key, delta).await? {
            return Ok(sum);
        }
        let mut retry = Retry::new(Some(&self.retry));
        loop {
            let current = read(&*self.store, &self.key).await?;
            let sum = self
                .parse(current.as_ref())?
                .checked_add(delta)
                .ok_or_else(|| Error::InvalidValue {
                    key: self.key.clone(),
                    reason: format!("adding {delta} overflows a 64-bit counter"),
                })?;
            let text = sum.to_string();
            match (self.store)
                .atomic_put(&self.key, text.as_bytes(), current.as_ref(), None)
                .await
            {
                Ok(_) => return Ok(sum),
                Err(err) => retry.again(err).await?,
            }
        }
    }

    /// The current value (0 when the key is absent).
    ///
    /// # Errors
    ///
    /// `InvalidValue` when the key holds something other than a decimal `i64`; `InvalidKey`
    /// and connection errors.
    pub async fn get(&self) -> Result<i64> {
        let current = read(&*self.store, &self.key).await?;
        self.parse(current.as_ref())
    }

    fn parse(&self, pair: Option<&KvPair>) -> Result<i64> {
        let Some(pair) = pair else { return Ok(0) };
        pair.value_str()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Error::InvalidValue {
                key: self.key.clone(),
                reason: "not a decimal 64-bit integer".into(),
            })
    }
}

/// TTL of a group membership when [`Group::join`] is given none.
pub const DEFAULT_GROUP_TTL: Duration = Duration::from_secs(15);

/// Group membership under a directory: each member is a `keep_alive` key `<dir>/<member>`
/// holding its value, so a member whose process dies or is cut off leaves within its TTL (plus
/// the backend's slack), and [`Group::follow`] sees every join and leave.
///
/// # Examples
///
/// ```
/// # async fn run(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
/// use futures::StreamExt;
/// use kvstore_core::Group;
///
/// let me = Group::join(store.clone(), "workers", "w1", "10.0.0.7:9000", None).await?;
/// let mut members = Group::follow(&*store, "workers").await?;
/// if let Some(Ok(now)) = members.next().await {
///     println!("{} workers", now.len());
/// }
/// me.leave().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Group;

impl Group {
    /// Joins the group at `dir` as `member` (one key segment) with `value`: writes
    /// `<dir>/<member>` as a `keep_alive` registration with `opts`' TTL
    /// ([`DEFAULT_GROUP_TTL`] when it has none; `keep_alive` is always on). Joining again
    /// under the same name overwrites the earlier value.
    ///
    /// The membership lasts until [`Membership::leave`], its drop, or the store's close; a
    /// lost lease is written again under §3's loss rule, as every registration.
    ///
    /// # Errors
    ///
    /// `InvalidKey` for a member name that is not one valid key segment; `InvalidConfig` for
    /// a TTL the store cannot keep; `ValueTooLarge`; connection errors.
    pub async fn join(
        store: Arc<dyn Store>,
        dir: &str,
        member: &str,
        value: impl Into<Bytes>,
        opts: Option<&WriteOptions>,
    ) -> Result<Membership> {
        if member.is_empty() || member.contains('/') {
            return Err(Error::InvalidKey {
                key: member.to_owned(),
                reason: "a group member is one key segment",
            });
        }
        let key = normalize_key(&format!("{dir}/{member}"))?.to_owned();
        let ttl = opts.and_then(|o| o.ttl).unwrap_or(DEFAULT_GROUP_TTL);
        let write = WriteOptions::default().with_ttl(ttl).with_keep_alive(true);
        let value: Bytes = value.into();
        let pair = store.put(&key, &value, Some(&write)).await?;
        Ok(Membership {
            store,
            pair,
            left: false,
        })
    }

    /// The members of the group at `dir`: the current ones first, then the whole list again
    /// after every join or leave (a [`Store::watch_tree`] of `dir`), each a pair whose key is
    /// `<dir>/<member>`, sorted by key.
    ///
    /// # Errors
    ///
    /// As [`Store::watch_tree`].
    pub async fn follow(store: &dyn Store, dir: &str) -> Result<WatchTreeStream> {
        store.watch_tree(dir, None).await
    }
}

/// One member's place in a [`Group`]. Dropping it leaves the group (in a background task of
/// the current Tokio runtime; [`leave`](Membership::leave) waits for it).
pub struct Membership {
    store: Arc<dyn Store>,
    pair: KvPair,
    left: bool,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("key", &self.pair.key)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// The member's key, `<dir>/<member>`.
    pub fn key(&self) -> &str {
        &self.pair.key
    }

    /// The pair written when joining.
    pub fn pair(&self) -> &KvPair {
        &self.pair
    }

    /// Leaves the group: deletes the member's key, which ends its registration.
    ///
    /// # Errors
    ///
    /// Connection errors (the key then expires within its TTL once this store stops renewing
    /// it, which it does now). A key already gone is not an error.
    pub async fn leave(mut self) -> Result<()> {
        self.left = true;
        match self.store.delete(&self.pair.key).await {
            Ok(()) | Err(Error::KeyNotFound { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        let (store, key) = (self.store.clone(), self.pair.key.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = store.delete(&key).await {
                    tracing::debug!(key, error = %err, "leaving the group on drop failed");
                }
            });
        }
    }
}

/// A counting semaphore: at most `permits` holders at once, each with a fencing token.
///
/// Built on the store's locks: permit `i` is the lock `<key>/<i>`, and
/// [`acquire`](Semaphore::acquire) waits on all of them at once and keeps the first it gets
/// (the other waits are dropped, which leaves no waiter behind: `lock()` is cancel-safe). So a
/// permit has every property of a lock on that backend: the loss rule (a holder that dies or is
/// cut off loses its permit within the TTL, and knows it before another can take it), a
/// fencing token strictly greater for each later holder of the same permit, and
/// [`Txn::when_held`] accepts `(permit.key(), token)`. No more than `permits` holders believe
/// they hold a permit at once, because no two hold one lock.
///
/// Waiting costs `permits` lock waiters on the server; keep `permits` small (it is bounded by
/// [`MAX_PERMITS`]). The order in which waiters get permits follows each lock's own fairness
/// (first come, first served on etcd and ZooKeeper; not ordered on Redis and Consul).
///
/// # Examples
///
/// ```
/// # async fn run(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
/// use kvstore_core::Semaphore;
///
/// // At most three concurrent crawlers.
/// let crawlers = Semaphore::new(store.clone(), "jobs/crawl", 3, None)?;
/// let permit = crawlers.acquire().await?;
/// let token = permit.fencing_token().expect("held");
/// store
///     .txn(&kvstore_core::Txn::new().when_held(permit.key(), token).put("jobs/crawl-state", "busy"))
///     .await?;
/// permit.release().await?;
/// # Ok(())
/// # }
/// ```
pub struct Semaphore {
    store: Arc<dyn Store>,
    key: String,
    permits: u32,
    opts: Option<LockOptions>,
}

/// The most permits a [`Semaphore`] may have: each waiter waits on every one.
pub const MAX_PERMITS: u32 = 64;

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("key", &self.key)
            .field("permits", &self.permits)
            .finish_non_exhaustive()
    }
}

impl Semaphore {
    /// A semaphore of `permits` permits at `key` (its locks are `<key>/0` …), each held with
    /// `opts` (TTL and the rest, as for [`Store::new_lock`]).
    ///
    /// # Errors
    ///
    /// `InvalidConfig` for 0 permits or more than [`MAX_PERMITS`]; `InvalidKey`.
    pub fn new(
        store: Arc<dyn Store>,
        key: &str,
        permits: u32,
        opts: Option<&LockOptions>,
    ) -> Result<Semaphore> {
        if permits == 0 || permits > MAX_PERMITS {
            return Err(Error::invalid_config(
                store.backend(),
                format!("a semaphore has 1 to {MAX_PERMITS} permits, not {permits}"),
            ));
        }
        let key = normalize_key(key)?.to_owned();
        Ok(Semaphore {
            store,
            key,
            permits,
            opts: opts.cloned(),
        })
    }

    /// Waits for a permit and returns it.
    ///
    /// # Errors
    ///
    /// As [`Locker::lock`] (`CannotLock`, `Closed`, connection errors) once no permit's wait
    /// can go on; `CallNotSupported` on a store without locks.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future leaves no waiter behind and takes no permit later.
    pub async fn acquire(&self) -> Result<Permit> {
        let mut lockers = Vec::with_capacity(self.permits as usize);
        for i in 0..self.permits {
            let key = format!("{}/{i}", self.key);
            lockers.push((
                key.clone(),
                self.store.new_lock(&key, self.opts.as_ref()).await?,
            ));
        }
        let (won, lost) = {
            let waits = lockers.iter_mut().enumerate().map(|(i, (_, locker))| {
                Box::pin(async move { locker.lock().await.map(|lost| (i, lost)) })
            });
            let ((won, lost), _others) = futures::future::select_ok(waits).await?;
            (won, lost)
        };
        let (key, locker) = lockers.swap_remove(won);
        Ok(Permit {
            key,
            locker,
            lost,
            others: Vec::new(),
        })
    }
}

/// A held permit of a [`Semaphore`]: a held lock. Dropping it releases it (as dropping a
/// [`Locker`] does); [`release`](Permit::release) waits for the release.
pub struct Permit {
    key: String,
    locker: Box<dyn Locker>,
    lost: LockLost,
    /// Holds released with this one (a writer's announcement, see [`RwLock`]).
    others: Vec<Box<dyn Locker>>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("key", &self.key)
            .field("fencing_token", &self.locker.fencing_token())
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// The lock key of this permit: what a [`Txn::when_held`] condition names.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fencing token of the hold; `None` once it was lost or released.
    pub fn fencing_token(&self) -> Option<u64> {
        self.locker.fencing_token()
    }

    /// Resolves when the permit is lost (under the loss rule of locks) or released.
    pub fn lost(&self) -> LockLost {
        self.lost.clone()
    }

    /// Gives the permit back at once.
    ///
    /// # Errors
    ///
    /// As [`Locker::unlock`]: connection errors (the permit then frees itself when its TTL
    /// runs out).
    pub async fn release(mut self) -> Result<()> {
        let released = self.locker.unlock().await;
        for other in &mut self.others {
            if let Err(err) = other.unlock().await {
                tracing::debug!(error = %err, "releasing a writer's announcement failed");
            }
        }
        released
    }
}

/// A read-write lock: many readers at once, or one writer. Each hold is a [`Permit`] — a held
/// lock, with its fencing token (which [`Txn::when_held`] accepts with
/// [`Permit::key`]) and the loss rule of locks.
///
/// Built on the store's locks, with keys under `<key>`:
///
/// - `<key>/gate`, a lock that admits one party at a time. A writer holds it for its whole
///   hold (its permit is this lock); a reader holds it only while it registers.
/// - `<key>/readers/<id>`: each reader's own lock, whose value (`delete_on_unlock`) exists
///   exactly while the reader holds — a reader's permit is this lock. A writer that holds the
///   gate waits until no reader's value is left (a reader that died leaves with its lease).
/// - `<key>/writers/<id>`: a writer announces itself (a lock with a value, likewise) before it
///   waits for the gate; a reader waits until no writer is announced before it asks for the
///   gate.
///
/// **Fairness: writers first.** A stream of readers cannot starve a writer: once a writer is
/// announced no new reader passes, so the writer gets in once the readers already admitted
/// (or waiting for the gate) are done. Writers queue on the gate in that lock's order (first
/// come, first served on etcd and ZooKeeper). Readers can be held back by a stream of writers.
/// The readers' and writers' values show in `list(<key>)`.
///
/// # Examples
///
/// ```
/// # async fn run(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
/// use kvstore_core::{RwLock, Txn};
///
/// let config = RwLock::new(store.clone(), "locks/config", None)?;
/// let read = config.read().await?;   // many at once
/// read.release().await?;
/// let write = config.write().await?; // alone
/// let token = write.fencing_token().expect("held");
/// store.txn(&Txn::new().when_held(write.key(), token).put("config/app", "v2")).await?;
/// write.release().await?;
/// # Ok(())
/// # }
/// ```
pub struct RwLock {
    store: Arc<dyn Store>,
    key: String,
    opts: LockOptions,
}

impl std::fmt::Debug for RwLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RwLock")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RwLock {
    /// A read-write lock at `key`, each hold with `opts`' TTL (its `value` and
    /// `delete_on_unlock` are the lock's own).
    ///
    /// # Errors
    ///
    /// `InvalidKey`.
    pub fn new(store: Arc<dyn Store>, key: &str, opts: Option<&LockOptions>) -> Result<RwLock> {
        let key = normalize_key(key)?.to_owned();
        let ttl = opts.map_or(LockOptions::default().ttl, |o| o.ttl);
        Ok(RwLock {
            store,
            key,
            opts: LockOptions::default().with_ttl(ttl),
        })
    }

    /// Waits until no writer is announced, then holds as a reader.
    ///
    /// # Errors
    ///
    /// As [`Locker::lock`] and [`Store::watch_tree`]; `CallNotSupported` on a store without
    /// locks or watches.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a dropped future leaves no hold and no waiter behind.
    pub async fn read(&self) -> Result<Permit> {
        let writers = format!("{}/writers", self.key);
        let mut gate = self.store.new_lock(&self.gate(), Some(&self.opts)).await?;
        loop {
            wait_until_empty(&*self.store, &writers).await?;
            gate.lock().await?;
            // A writer announced while this reader waited for the gate goes first.
            if self.store.list(&writers, None).await.map_or_else(
                |err| match err {
                    Error::KeyNotFound { .. } => Ok(true),
                    err => Err(err),
                },
                |w| Ok(w.is_empty()),
            )? {
                break;
            }
            gate.unlock().await?;
        }
        let key = format!("{}/readers/{:016x}", self.key, rand::random::<u64>());
        let mut reader = self.store.new_lock(&key, Some(&self.announced())).await?;
        let lost = reader.lock().await;
        if let Err(err) = gate.unlock().await {
            // The gate frees itself within its TTL.
            tracing::debug!(error = %err, "releasing the read-write lock's gate failed");
        }
        Ok(Permit {
            key,
            locker: reader,
            lost: lost?,
            others: Vec::new(),
        })
    }

    /// Announces a writer, takes the gate, and waits until every reader is gone.
    ///
    /// # Errors
    ///
    /// As [`read`](RwLock::read).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a dropped future leaves no hold and no waiter behind.
    pub async fn write(&self) -> Result<Permit> {
        let key = format!("{}/writers/{:016x}", self.key, rand::random::<u64>());
        let mut announced = self.store.new_lock(&key, Some(&self.announced())).await?;
        announced.lock().await?;
        let mut gate = self.store.new_lock(&self.gate(), Some(&self.opts)).await?;
        let lost = gate.lock().await?;
        wait_until_empty(&*self.store, &format!("{}/readers", self.key)).await?;
        Ok(Permit {
            key: self.gate(),
            locker: gate,
            lost,
            others: vec![announced],
        })
    }

    fn gate(&self) -> String {
        format!("{}/gate", self.key)
    }

    /// Options of a lock whose value shows while it is held.
    fn announced(&self) -> LockOptions {
        self.opts
            .clone()
            .with_value("held")
            .with_delete_on_unlock(true)
    }
}

/// Waits until `dir` has no key (a missing directory has none).
async fn wait_until_empty(store: &dyn Store, dir: &str) -> Result<()> {
    let mut listings = store.watch_tree(dir, None).await?;
    while let Some(listing) = futures::StreamExt::next(&mut listings).await {
        if listing?.is_empty() {
            return Ok(());
        }
    }
    Err(Error::not_reachable(store.backend(), "the watch ended"))
}
