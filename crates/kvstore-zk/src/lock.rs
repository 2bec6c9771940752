//! Locks: the ZooKeeper lock recipe on a session of the lock's own.
//!
//! Each `lock()` opens a session whose timeout is the lock's TTL (clamped by the server to its
//! `minSessionTimeout`..`maxSessionTimeout`) and creates an ephemeral sequential waiter
//! `<root>/.kvstore-locks/<key>/lock-<seq>` whose data is the hidden marker. The waiter with
//! the lowest sequence holds the lock; every other waiter watches only the waiter just before
//! its own (source: ZooKeeper docs, "ZooKeeper Recipes and Solutions" → "Locks", which avoids
//! the herd effect). The fencing token is the waiter's creation zxid (`czxid`), which is
//! strictly greater for every later waiter, hence for every later holder.
//!
//! Closing the lock's session deletes its waiter at once, which is how a dropped `lock()`
//! future, a dropped `Locker` and a closed store release; a process that dies holding the lock
//! loses it when its session expires, within the (negotiated) TTL.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::channel::oneshot;
use kvstore_core::{Error, LockLost, LockLostSignal, LockOptions, Locker, Result};
use tokio_util::task::AbortOnDropHandle;
use zookeeper_client::{self as zk, Client, CreateMode, EventType, SessionState};

use crate::BACKEND;
use crate::error::from_zk;
use crate::node::MARKER;
use crate::session::{connect, create_options, timed};
use crate::store::{Condition, Inner, delete_lock_value};

/// Prefix of waiter names; the server appends a 10-digit sequence number.
const WAITER: &str = "lock-";

type Release = oneshot::Sender<Result<()>>;

struct Held {
    token: u64,
    lost: LockLost,
    release: Option<oneshot::Sender<Release>>,
    _monitor: AbortOnDropHandle<()>,
}

/// A lock on a key of a [`ZkStore`](crate::ZkStore).
pub struct ZkLocker {
    inner: Arc<Inner>,
    key: String,
    opts: LockOptions,
    held: Option<Held>,
}

impl fmt::Debug for ZkLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkLocker")
            .field("key", &self.key)
            .field("ttl", &self.opts.ttl)
            .field("fencing_token", &self.fencing_token())
            .finish_non_exhaustive()
    }
}

/// The sequence number of a waiter name, for ordering.
fn sequence(name: &str) -> Option<u64> {
    name.strip_prefix(WAITER)?.parse().ok()
}

impl ZkLocker {
    pub(crate) fn new(inner: Arc<Inner>, key: String, opts: LockOptions) -> Self {
        ZkLocker {
            inner,
            key,
            opts,
            held: None,
        }
    }

    fn cannot_lock(&self, why: impl Into<kvstore_core::BoxError>) -> Error {
        Error::CannotLock {
            key: self.key.clone(),
            source: why.into(),
        }
    }

    /// Creates this contender's waiter; returns its path and creation zxid.
    async fn enqueue(&self, client: &Client, dir: &str) -> Result<(String, u64)> {
        let prefix = format!("{dir}/{WAITER}");
        let opts = create_options(CreateMode::EphemeralSequential, self.inner.config.acl);
        let mut parents_created = false;
        loop {
            match timed(self.inner.timeout(), client.create(&prefix, MARKER, &opts)).await {
                Ok((stat, seq)) => {
                    let path = format!("{prefix}{seq}");
                    let czxid = if stat.is_invalid() {
                        timed(self.inner.timeout(), client.check_stat(&path))
                            .await
                            .map_err(from_zk)?
                            .ok_or_else(|| self.cannot_lock("the waiter vanished"))?
                            .czxid
                    } else {
                        stat.czxid
                    };
                    let token = u64::try_from(czxid)
                        .map_err(|_| Error::backend(BACKEND, "negative zxid"))?;
                    return Ok((path, token));
                }
                Err(zk::Error::NoNode) if !parents_created => {
                    self.inner.create_parents(client, &prefix).await?;
                    parents_created = true;
                }
                Err(err) => return Err(from_zk(err)),
            }
        }
    }

    /// Waits until `me` is the first waiter in `dir`.
    async fn wait_turn(&self, client: &Client, dir: &str, me: &str) -> Result<()> {
        let my_name = me.rsplit('/').next().unwrap_or(me);
        let my_seq = sequence(my_name).ok_or_else(|| self.cannot_lock("bad waiter name"))?;
        let mut states = client.state_watcher();
        loop {
            let children = timed(self.inner.timeout(), client.list_children(dir))
                .await
                .map_err(from_zk)?;
            let mut waiters: Vec<(u64, &String)> = children
                .iter()
                .filter_map(|c| sequence(c).map(|s| (s, c)))
                .collect();
            waiters.sort();
            if !waiters.iter().any(|(s, _)| *s == my_seq) {
                return Err(self.cannot_lock("the waiter was deleted while waiting"));
            }
            let Some((_, pred)) = waiters.iter().rev().find(|(s, _)| *s < my_seq) else {
                return Ok(());
            };
            let pred = format!("{dir}/{pred}");
            let (stat, watcher) = timed(self.inner.timeout(), client.check_and_watch_stat(&pred))
                .await
                .map_err(from_zk)?;
            if stat.is_none() {
                continue;
            }
            let changed = watcher.changed();
            tokio::pin!(changed);
            loop {
                tokio::select! {
                    () = self.inner.cancel.cancelled() => return Err(Error::Closed { backend: BACKEND }),
                    _ = &mut changed => break,
                    state = states.changed() => match state {
                        SessionState::Expired | SessionState::Closed | SessionState::AuthFailed => {
                            return Err(self.cannot_lock(format!("the lock's session ended ({state:?})")));
                        }
                        _ => {}
                    },
                }
            }
        }
    }
}

/// How a held lock's watch ends.
enum End {
    /// Release the lock (unlock, with a reply channel, or the store closed).
    Release(Option<Release>),
    /// The lock is lost.
    Lost,
}

/// Watches a held lock: fires `signal` when the waiter is deleted, the session ends, or the
/// connection stays lost for the session timeout; releases on request or when the store
/// closes. The lock's session closes when this task ends (it owns the only client).
async fn monitor(
    inner: Arc<Inner>,
    client: Client,
    node: String,
    signal: LockLostSignal,
    mut release: oneshot::Receiver<Release>,
) {
    let mut states = client.state_watcher();
    let session_timeout = client.session_timeout();
    let mut disconnected_at: Option<tokio::time::Instant> = None;
    let end = 'arm: loop {
        let watch = match timed(inner.timeout(), client.check_and_watch_stat(&node)).await {
            Ok((Some(_), watcher)) => Some(watcher),
            Ok((None, _)) => break End::Lost,
            // Disconnected: the state watcher says when the connection is back.
            Err(_) => None,
        };
        let event = async {
            match watch {
                Some(watcher) => watcher.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(event);
        loop {
            let deadline = async {
                match disconnected_at {
                    Some(at) => tokio::time::sleep_until(at + session_timeout).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = inner.cancel.cancelled() => break 'arm End::Release(None),
                reply = &mut release => break 'arm End::Release(reply.ok()),
                event = &mut event => {
                    if event.event_type == EventType::NodeDeleted {
                        break 'arm End::Lost;
                    }
                    continue 'arm;
                }
                () = deadline => {
                    tracing::warn!(backend = BACKEND, node = %node, "connection lost for the session timeout; the lock counts as lost");
                    break 'arm End::Lost;
                }
                state = states.changed() => match state {
                    SessionState::Disconnected => {
                        disconnected_at.get_or_insert_with(tokio::time::Instant::now);
                    }
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        disconnected_at = None;
                        continue 'arm;
                    }
                    _ => break 'arm End::Lost,
                },
            }
        }
    };
    if let End::Release(reply) = end {
        let result = match timed(inner.timeout(), client.delete(&node, None)).await {
            Ok(()) | Err(zk::Error::NoNode) => Ok(()),
            Err(err) => Err(from_zk(err)),
        };
        signal.fire();
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    } else {
        signal.fire();
    }
}

#[async_trait]
impl Locker for ZkLocker {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "lock", key = %self.key))]
    async fn lock(&mut self) -> Result<LockLost> {
        if let Some(held) = &self.held
            && !held.lost.is_lost()
        {
            return Ok(held.lost.clone());
        }
        self.held = None;
        self.inner.check_open()?;
        let dir = self.inner.lock_dir(&self.key);
        let (client, node, token) = loop {
            // Dropping this future drops the session, and with it the waiter.
            let client = connect(&self.inner.config, self.opts.ttl).await?;
            let (node, token) = self.enqueue(&client, &dir).await?;
            match self.wait_turn(&client, &dir, &node).await {
                Ok(()) => break (client, node, token),
                // The session expired while waiting (the server was away for longer than
                // the TTL): queue again on a new one.
                Err(Error::CannotLock { .. })
                    if client.state() == SessionState::Expired
                        && !self.inner.cancel.is_cancelled() =>
                {
                    tracing::debug!(backend = BACKEND, key = %self.key, "lock session expired while waiting; queueing again");
                }
                Err(err) => return Err(err),
            }
        };
        if let Some(value) = &self.opts.value {
            self.inner
                .write_on(&client, &self.key, value, Condition::None, None)
                .await?;
        }
        let (signal, lost) = LockLost::new();
        let (release, requests) = oneshot::channel();
        let task = tokio::spawn(monitor(self.inner.clone(), client, node, signal, requests));
        self.held = Some(Held {
            token,
            lost: lost.clone(),
            release: Some(release),
            _monitor: AbortOnDropHandle::new(task),
        });
        Ok(lost)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "unlock", key = %self.key))]
    async fn unlock(&mut self) -> Result<()> {
        let Some(mut held) = self.held.take() else {
            return Ok(());
        };
        if held.lost.is_lost() {
            return Ok(());
        }
        if self.opts.delete_on_unlock {
            delete_lock_value(&self.inner, &self.key).await?;
        }
        let (reply, result) = oneshot::channel();
        if let Some(release) = held.release.take()
            && release.send(reply).is_ok()
        {
            return result.await.unwrap_or(Ok(()));
        }
        Ok(())
    }

    fn fencing_token(&self) -> Option<u64> {
        self.held
            .as_ref()
            .filter(|h| !h.lost.is_lost())
            .map(|h| h.token)
    }
}
