//! Leader election on any [`Store`]: [`Candidate`], [`Leadership`] and [`follow`].
//!
//! # How it works
//!
//! A candidate campaigns by taking the store's lock on the election key with its value and
//! `delete_on_unlock` ([`LockOptions`]). That makes the election exactly as safe as the lock,
//! on every backend:
//!
//! - the lock's loss rule gives *at most one leader*: a leader stops believing it leads
//!   ([`Leadership::lost`] resolves, [`Leadership::is_leader`] turns `false`) before its lease
//!   can run out on the server, so before any other candidate can win;
//! - the lock's fencing token is the [`term`](Leadership::term), strictly greater for each
//!   later leader, and the `last_index` of the leader's value, so [`follow`] reports it;
//! - with `delete_on_unlock`, the leader's value lives under the key only as long as the
//!   hold: it is removed on [`resign`](Leadership::resign), on drop, on `close`, and by the
//!   server when the leader's lease runs out (the leader died, paused or lost its server).
//!   [`follow`] is a watch of that key, so it sees `None` exactly while no one leads (within
//!   the backend's TTL slack after a leader's death), and each new leader's value.
//!
//! Each backend maps the lock natively (an etcd lease and the `concurrency` waiter layout, a
//! Consul session with `Behavior=delete`, the ZooKeeper lock recipe with an ephemeral value,
//! a Redis key with `PX`, a redb deadline), so election is not a second protocol with a second
//! renewal loop: the lock's lease engine renews the leadership.
//!
//! # Failover
//!
//! A leader that dies, pauses or loses its server is replaced once its lease runs out on the
//! server: within the election TTL plus the backend's expiry slack (Consul invalidates a
//! session between one and two TTLs after its last renewal). A leader that resigns is replaced
//! at once; no backend adds a lock delay.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use futures::StreamExt;

use crate::{
    DEFAULT_LOCK_TTL, Error, KvPair, LockLost, LockOptions, Locker, Result, Store, WatchStream,
    normalize_key,
};

/// The default election TTL: 20 seconds, like [`DEFAULT_LOCK_TTL`].
pub const DEFAULT_ELECTION_TTL: Duration = DEFAULT_LOCK_TTL;

/// Options of a [`Candidate`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use kvstore_core::ElectionOptions;
///
/// let opts = ElectionOptions::default().with_ttl(Duration::from_secs(5));
/// assert_eq!(opts.ttl, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ElectionOptions {
    /// How long a leader's leadership survives it going silent (dead, paused, cut off): the
    /// TTL of the lock it holds. Default [`DEFAULT_ELECTION_TTL`] (20 s). Backends round it
    /// up to their granularity (Consul: whole seconds, at least the agent's minimum session
    /// TTL; ZooKeeper: clamped to the server's session timeout range).
    pub ttl: Duration,
}

impl Default for ElectionOptions {
    fn default() -> Self {
        ElectionOptions {
            ttl: DEFAULT_ELECTION_TTL,
        }
    }
}

impl ElectionOptions {
    /// Sets the election TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

/// One participant of the election on a key: it [`campaign`](Candidate::campaign)s to lead
/// with its value.
///
/// A `Candidate` holds nothing on the server until `campaign` is called; it can campaign
/// again after its leadership ended.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use kvstore_core::{Candidate, Store};
///
/// async fn lead(store: Arc<dyn Store>) -> kvstore_core::Result<()> {
///     let candidate = Candidate::new(store, "services/scheduler/leader", "node-1:8080", None);
///     let leadership = candidate.campaign().await?;
///     println!("leading in term {}", leadership.term());
///     tokio::select! {
///         () = leadership.lost() => println!("leadership lost: stop leader work now"),
///         () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {
///             leadership.resign().await?;
///         }
///     }
///     Ok(())
/// }
/// ```
pub struct Candidate {
    store: Arc<dyn Store>,
    key: String,
    value: Bytes,
    opts: ElectionOptions,
}

impl fmt::Debug for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidate")
            .field("backend", &self.store.backend())
            .field("key", &self.key)
            .field("value", &self.value)
            .field("ttl", &self.opts.ttl)
            .finish()
    }
}

impl Candidate {
    /// A candidate for leadership of `key`, which would lead with `value` (what [`follow`]
    /// reports while it leads). `opts`: `None` for the defaults.
    ///
    /// Nothing is checked or sent yet: the key is validated by [`campaign`](Self::campaign).
    pub fn new(
        store: Arc<dyn Store>,
        key: &str,
        value: impl Into<Bytes>,
        opts: Option<&ElectionOptions>,
    ) -> Candidate {
        Candidate {
            store,
            key: key.to_owned(),
            value: value.into(),
            opts: opts.cloned().unwrap_or_default(),
        }
    }

    /// The election key, as given.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value this candidate leads with.
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// Waits until this candidate leads, and returns its [`Leadership`].
    ///
    /// Candidates are served in the order they queued, where the backend's lock queues
    /// (etcd, ZooKeeper); on the others the next leader is whichever candidate takes the
    /// free lock first. A campaign whose own lease is lost while it waits (its server was
    /// away for longer than the TTL) queues again on a new one; a transient error (the
    /// server restarting) is retried with backoff (100 ms doubling to 5 s) until it answers.
    /// A `Leadership` is returned only while it is held: never one whose lease was already
    /// lost.
    ///
    /// # Errors
    ///
    /// Only what retrying cannot fix: `InvalidKey` for a malformed key (before any I/O),
    /// `CallNotSupported` when the store has no locks, `InvalidConfig` (for example a TTL
    /// below the server's minimum), `Closed` after the store was closed, and any other
    /// non-transient error of the store.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future (for example under `tokio::time::timeout`) withdraws
    /// the candidate and leaves nothing behind on the server — the lock's own cancel safety.
    pub async fn campaign(&self) -> Result<Leadership> {
        let key = normalize_key(&self.key)?.to_owned();
        if !self.store.capabilities().lock {
            return Err(Error::CallNotSupported {
                backend: self.store.backend(),
                operation: "campaign",
            });
        }
        let opts = LockOptions::default()
            .with_value(self.value.clone())
            .with_ttl(self.opts.ttl)
            .with_delete_on_unlock(true);
        let mut delays = retry_delays();
        loop {
            let attempt = async {
                let mut locker = self.store.new_lock(&key, Some(&opts)).await?;
                let lost = locker.lock().await?;
                Ok::<_, Error>((locker, lost))
            };
            let failure = match attempt.await {
                Ok((locker, lost)) => match locker.fencing_token() {
                    Some(term) if !lost.is_lost() => {
                        tracing::debug!(backend = self.store.backend(), key, term, "elected");
                        return Ok(Leadership {
                            _store: self.store.clone(),
                            key,
                            value: self.value.clone(),
                            term,
                            lost,
                            locker,
                        });
                    }
                    // Lost between taking the lock and here (the process paused): never
                    // hand out a leadership that is not held.
                    _ => Error::CannotLock {
                        key: key.clone(),
                        source: "the leadership was lost as it was won".into(),
                    },
                },
                Err(err) => err,
            };
            match failure {
                err @ Error::CannotLock { .. } => {
                    tracing::debug!(backend = self.store.backend(), key, error = %err, "campaign could not take the lock; queueing again");
                }
                err if err.is_transient() => {
                    tracing::warn!(backend = self.store.backend(), key, error = %err, "campaign failed; retrying");
                }
                err => return Err(err),
            }
            tokio::time::sleep(delays.next().unwrap_or(MAX_RETRY_DELAY)).await;
        }
    }
}

/// The longest wait between two attempts of a campaign or of [`follow`].
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

fn retry_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_RETRY_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

/// A won election: held until [`resign`](Self::resign), drop, the store's `close`, or its
/// loss (see [`lost`](Self::lost)).
///
/// Do leader work only while [`is_leader`](Self::is_leader) is true, and pass
/// [`term`](Self::term) to whatever the leader writes to, so a resource can refuse a deposed
/// leader that has not noticed yet.
pub struct Leadership {
    key: String,
    value: Bytes,
    term: u64,
    lost: LockLost,
    locker: Box<dyn Locker>,
    /// Keeps the store open for as long as the leadership lives, even if its `Candidate` and
    /// every other handle are gone (dropping a store ends its locks). Declared last: it is
    /// dropped after the locker, which releases first.
    _store: Arc<dyn Store>,
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("key", &self.key)
            .field("term", &self.term)
            .field("is_leader", &self.is_leader())
            .finish()
    }
}

impl Leadership {
    /// The term of this leadership: the fencing token of the hold, strictly greater for each
    /// later leader of the same key, on every backend. It does not change while leading.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The election key (normalized).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value this leader leads with.
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// A future that resolves when this leadership ends: lost (the lease ran out under the
    /// loss rule: server paused or cut off, this process paused, the session expired) or
    /// given up ([`resign`](Self::resign), the store closed). Cheap to clone; resolving is
    /// final. It resolves before any other candidate can win.
    pub fn lost(&self) -> LockLost {
        self.lost.clone()
    }

    /// Whether this leadership is still held. Turns `false` as soon as the loss rule's
    /// deadline passes (even before [`lost`](Self::lost) has been polled), and never back.
    pub fn is_leader(&self) -> bool {
        !self.lost.is_lost() && self.locker.fencing_token() == Some(self.term)
    }

    /// Gives up the leadership at once: the value is removed and the next candidate can win
    /// right away (no lock delay on any backend). Dropping a `Leadership` resigns too, as
    /// soon as the backend allows (see `Locker`).
    ///
    /// # Errors
    ///
    /// `NotReachable`/`Timeout` when the release could not reach the server; the leadership
    /// has ended locally anyway ([`lost`](Self::lost) has resolved) and ends on the server
    /// when its TTL runs out.
    pub async fn resign(mut self) -> Result<()> {
        self.locker.unlock().await
    }
}

/// Follows the leader of the election on `key`: yields the current leader's value first
/// (`None`: no one leads), then an item on every change of leader or of its value.
///
/// Each `Some(pair)` is the leader's value as stored under `key`, and its `last_index` is the
/// leader's [`term`](Leadership::term) (the lock writes the value with its fencing token as
/// `last_index`, on every backend), so a follower can fence with it too. Like
/// any watch, a follower slower than the changes may see quick successions coalesced, but never
/// goes back and always ends on the latest state. A connection loss is recovered inside the
/// stream, and a watch that ended with a transient error is opened again (with backoff, 100 ms
/// doubling to 5 s), so a follower outlives a server restart; an item equal to the last one
/// yielded is not repeated.
///
/// # Errors
///
/// An `Err` item ends the stream: `InvalidKey` for a malformed key, `CallNotSupported` when
/// the store has no watch, or another non-transient error. The stream ends without an error
/// when the store is closed.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use futures::StreamExt;
/// use kvstore_core::{Store, follow};
///
/// async fn print_leaders(store: Arc<dyn Store>) -> kvstore_core::Result<()> {
///     let mut leaders = follow(store, "services/scheduler/leader");
///     while let Some(leader) = leaders.next().await {
///         match leader? {
///             Some(pair) => println!("leader: {}", String::from_utf8_lossy(&pair.value)),
///             None => println!("no leader"),
///         }
///     }
///     Ok(())
/// }
/// ```
pub fn follow(store: Arc<dyn Store>, key: &str) -> WatchStream {
    let state = Follower {
        store,
        key: key.to_owned(),
        watch: None,
        last: None,
        delays: Box::new(retry_delays()),
        ended: false,
    };
    futures::stream::unfold(state, |mut follower| async move {
        let item = follower.next().await?;
        Some((item, follower))
    })
    .boxed()
}

struct Follower {
    store: Arc<dyn Store>,
    key: String,
    watch: Option<WatchStream>,
    /// The last state yielded (`None` before the first).
    last: Option<Option<KvPair>>,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
    ended: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<Result<Option<KvPair>>> {
        loop {
            if self.ended {
                return None;
            }
            let Some(watch) = self.watch.as_mut() else {
                match self.store.watch(&self.key, None).await {
                    Ok(watch) => self.watch = Some(watch),
                    Err(err) => {
                        if let Some(end) = self.end_on(err) {
                            return end;
                        }
                        self.wait().await;
                    }
                }
                continue;
            };
            match watch.next().await {
                Some(Ok(state)) => {
                    self.delays = Box::new(retry_delays());
                    if self.last.as_ref() == Some(&state) {
                        continue;
                    }
                    self.last = Some(state.clone());
                    return Some(Ok(state));
                }
                Some(Err(err)) => {
                    self.watch = None;
                    if let Some(end) = self.end_on(err) {
                        return end;
                    }
                    self.wait().await;
                }
                None => {
                    self.ended = true;
                    return None;
                }
            }
        }
    }

    /// `None` to retry after `err` (transient); otherwise how the stream ends.
    fn end_on(&mut self, err: Error) -> Option<Option<Result<Option<KvPair>>>> {
        match err {
            err if err.is_transient() => {
                tracing::debug!(backend = self.store.backend(), key = %self.key, error = %err, "follow: watch ended; opening it again");
                None
            }
            Error::Closed { .. } => {
                self.ended = true;
                Some(None)
            }
            err => {
                self.ended = true;
                Some(Some(Err(err)))
            }
        }
    }

    async fn wait(&mut self) {
        let delay = self.delays.next().unwrap_or(MAX_RETRY_DELAY);
        tokio::time::sleep(delay).await;
    }
}
