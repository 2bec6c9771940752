//! Locks: the ZooKeeper lock recipe on a session of the lock's own.
//!
//! Locks of one TTL share a session of the store's whose timeout is that TTL (clamped by the
//! server to its `minSessionTimeout`..`maxSessionTimeout`), opened on first use and kept until
//! the store closes or it expires. Each `lock()` creates an ephemeral sequential waiter
//! `<root>/.kvstore-locks/<key>/lock-<seq>` whose data is the hidden marker and a nonce of the
//! attempt. The waiter with
//! the lowest sequence holds the lock; every other waiter watches only the waiter just before
//! its own (source: ZooKeeper docs, "ZooKeeper Recipes and Solutions" → "Locks", which avoids
//! the herd effect). The fencing token is a zxid from after the predecessor's release: the
//! zxid of the value's write when there is a value (so it equals the value's `last_index`),
//! else the lock directory's `pzxid` in the read that found this waiter first (the zxid of the
//! directory's last child change, at or after the predecessor's deletion) — strictly greater
//! for every later holder.
//!
//! A dropped `lock()` future deletes its waiter (found by its nonce if the create's answer was
//! never read: the session runs requests in order, so the listing sees the create); a process
//! that dies holding the lock loses it when its session expires, within the (negotiated) TTL.
//!
//! Once held, the hold is kept by the lease engine of `kvstore_core::backend`: a renewal is a
//! `multi` holding one existence check of the waiter, on the lock's session (any request
//! renews a ZooKeeper session; a missing waiter or an ended session is a lost hold), under the
//! loss rule with the shorter of the lock's TTL and the session timeout the server granted. It
//! is a quorum write rather than a read so that a leader cut off from its peers, which answers
//! reads until it notices, cannot keep a hold alive that the other members have expired.
//!
//! Once held, the waiter's data records the token (marker, nonce, token), which
//! `Txn::when_held` reads.
//!
//! The value is written on the lock's session too; with `delete_on_unlock` it is an ephemeral
//! znode of that session, so the server deletes it when the session ends (source: ZooKeeper
//! Programmer's Guide, "Ephemeral Nodes") and it lives exactly as long as the hold. The release
//! deletes it on that session as well, guarded by the waiter: a waiter's path is not unique
//! for good (the lock directory is reaped once empty, and a new one numbers its waiters from 0
//! again), but on a live session the waiter is this holder's own, and on an expired one
//! nothing is sent — so a holder whose session expired never deletes the value of the next
//! holder, whose waiter may have its old path.

use derive_where::derive_where;
use std::sync::Arc;

use async_trait::async_trait;
use kvstore_core::backend::{HeldLease, Lease, LockSpec, Precondition, Release, Renewal, Tasks};
use kvstore_core::{Error, KvPair, LockOptions, Result};
use tokio::time::Instant;
use zookeeper_client::{self as zk, Client, CreateMode, SessionState};

use crate::BACKEND;
use crate::client::Inner;
use crate::error::from_zk;
use crate::node::MARKER;
use crate::session::{create_options, renewal_error, timed};
use crate::write::{Mode, delete_lock_value};

/// Prefix of waiter names; the server appends a 10-digit sequence number.
const WAITER: &str = "lock-";

/// A held lock's session and waiter, for the lease engine. The session closes when the last
/// clone of this lease is dropped (after the release).
#[derive_where(Debug)]
struct WaiterLease {
    inner: Arc<Inner>,
    #[derive_where(skip)]
    client: Arc<Client>,
    node: String,
    key: String,
    delete_on_unlock: bool,
}

#[async_trait]
impl Lease for WaiterLease {
    async fn renew(&self) -> Result<Renewal> {
        if matches!(
            self.client.state(),
            SessionState::Expired | SessionState::Closed | SessionState::AuthFailed
        ) {
            return Ok(Renewal::Gone);
        }
        // A quorum write, not a read: a server answers reads and pings alone, and a leader cut
        // off from its peers goes on answering them until it notices (syncLimit ticks, 5 s on
        // the CI ensemble) while the other members have elected a new leader that expires the
        // session after its timeout — a lock would have two holders. A multi is always a
        // proposal the leader commits with a quorum, even when it holds only a check (source:
        // ZooKeeper Programmer's Guide, "Multi-update"; Administrator's Guide, "syncLimit"),
        // so its answer proves that no newer leader existed when it was committed, after the
        // send; a newer leader gives every session a full timeout when it takes over. Version
        // -1 matches any version: the check is that the waiter still exists.
        let mut multi = self.client.new_multi_writer();
        multi
            .add_check_version(&self.node, -1)
            .map_err(|err| renewal_error(&self.client, err))?;
        match multi.commit().await.map_err(zk::Error::from) {
            Ok(_) => Ok(Renewal::Renewed),
            Err(zk::Error::NoNode | zk::Error::SessionExpired | zk::Error::ClientClosed) => {
                Ok(Renewal::Gone)
            }
            Err(err) => Err(renewal_error(&self.client, err)),
        }
    }

    async fn release(&self, why: Release) -> Result<()> {
        // The value goes first, but a failed delete never keeps the lock held. On `close` the
        // lock's session closes, which deletes an ephemeral value with it.
        let deleted = if why != Release::Close && self.delete_on_unlock {
            delete_lock_value(&self.inner, &self.client, &self.key, &self.node).await
        } else {
            Ok(())
        };
        match self.client.delete(&self.node, None).await {
            Ok(()) | Err(zk::Error::NoNode | zk::Error::SessionExpired) => deleted,
            Err(err) => Err(from_zk(err)),
        }
    }
}

/// One `lock()` call: the recipe's steps for one key and options, on the store's `tasks`.
struct Acquisition {
    inner: Arc<Inner>,
    key: String,
    opts: LockOptions,
    tasks: Tasks,
}

/// Acquires `lock` with the ZooKeeper lock recipe.
///
/// Cancel safety: dropping the future deletes the waiter (through `tasks`), created or not yet
/// answered.
pub(crate) async fn acquire(
    inner: &Arc<Inner>,
    lock: &LockSpec,
    tasks: &Tasks,
) -> Result<HeldLease> {
    Acquisition {
        inner: inner.clone(),
        key: lock.key.clone(),
        opts: lock.opts.clone(),
        tasks: tasks.clone(),
    }
    .run()
    .await
}

/// A holding waiter's data: the marker, the attempt's nonce, and the fencing token.
pub(crate) fn waiter_data(data: &[u8], token: u64) -> Vec<u8> {
    [data, &token.to_be_bytes()].concat()
}

/// The fencing token a holding waiter's data records, if any.
pub(crate) fn waiter_token(data: &[u8]) -> Option<u64> {
    let token = data.get(MARKER.len() + 8..)?;
    Some(u64::from_be_bytes(token.try_into().ok()?))
}

/// The sequence number of a waiter name, for ordering.
pub(crate) fn sequence(name: &str) -> Option<u64> {
    name.strip_prefix(WAITER)?.parse().ok()
}

impl Acquisition {
    /// Writes the lock's value on the lock's session. With `delete_on_unlock` it is an
    /// ephemeral znode of that session, so it lives exactly as long as the hold; a key that has
    /// children cannot be ephemeral, and then gets a persistent value (deleted on release, but
    /// left behind by a holder that dies).
    async fn write_value(&self, client: &Client, value: &[u8]) -> Result<KvPair> {
        if self.opts.delete_on_unlock {
            match self
                .inner
                .write_mode(
                    client,
                    &self.key,
                    value,
                    Precondition::None,
                    Mode::Ephemeral,
                )
                .await
            {
                Err(Error::CallNotSupported { .. }) => {
                    tracing::debug!(backend = BACKEND, key = %self.key, "the lock's key has children: its value is persistent");
                }
                other => return other,
            }
        }
        self.inner
            .write_on(client, &self.key, value, Precondition::None, None)
            .await
    }

    fn cannot_lock(&self, why: impl Into<kvstore_core::BoxError>) -> Error {
        Error::CannotLock {
            key: self.key.clone(),
            source: why.into(),
        }
    }

    /// Creates this contender's waiter with `data` (marker and nonce); returns its path.
    async fn enqueue(&self, client: &Client, dir: &str, data: &[u8]) -> Result<String> {
        let prefix = format!("{dir}/{WAITER}");
        let opts = create_options(CreateMode::EphemeralSequential, self.inner.config.acl);
        let mut parents_created = false;
        loop {
            match timed(self.inner.timeout(), client.create(&prefix, data, &opts)).await {
                Ok((_, seq)) => return Ok(format!("{prefix}{seq}")),
                Err(zk::Error::NoNode) if !parents_created => {
                    self.inner.create_parents(client, &prefix).await?;
                    parents_created = true;
                }
                Err(err) => return Err(from_zk(err)),
            }
        }
    }

    /// Waits until `me` is the first waiter in `dir`; returns when the read that found it
    /// first was sent (the start of the loss rule's clock) and the directory's `pzxid` in that
    /// read (the zxid of its last child change: at or after the predecessor's deletion).
    async fn wait_turn(&self, client: &Client, dir: &str, me: &str) -> Result<(Instant, u64)> {
        let my_name = me.rsplit('/').next().unwrap_or(me);
        let my_seq = sequence(my_name).ok_or_else(|| self.cannot_lock("bad waiter name"))?;
        let mut states = client.state_watcher();
        loop {
            let sent = Instant::now();
            let (children, stat) = timed(self.inner.timeout(), client.get_children(dir))
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
                let pzxid = u64::try_from(stat.pzxid)
                    .map_err(|_| Error::backend(BACKEND, "negative zxid"))?;
                return Ok((sent, pzxid));
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

/// Deletes the waiter of a `lock()` that did not finish (dropped, or failed while waiting).
struct WaiterGuard {
    inner: Arc<Inner>,
    tasks: Tasks,
    client: Arc<Client>,
    dir: String,
    data: Vec<u8>,
    node: Option<String>,
    armed: bool,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (inner, client, dir, data, node) = (
            self.inner.clone(),
            self.client.clone(),
            std::mem::take(&mut self.dir),
            std::mem::take(&mut self.data),
            self.node.take(),
        );
        // Drop cannot wait: a tracked task (which `close` waits for) deletes the waiter.
        self.tasks.spawn(async move {
            let deleted = timed(inner.timeout(), async {
                let node = match node {
                    Some(node) => Some(node),
                    None => own_waiter(&client, &dir, &data).await?,
                };
                match node {
                    Some(node) => match client.delete(&node, None).await {
                        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
                        Err(err) => Err(err),
                    },
                    None => Ok(()),
                }
            })
            .await;
            if let Err(err) = deleted {
                tracing::warn!(backend = BACKEND, dir, error = %err, "deleting an abandoned lock waiter failed; it goes with its session");
            }
        });
    }
}

/// The waiter in `dir` whose data is `data` (this attempt's nonce), if any.
async fn own_waiter(
    client: &Client,
    dir: &str,
    data: &[u8],
) -> std::result::Result<Option<String>, zk::Error> {
    let children = match client.list_children(dir).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => return Ok(None),
        Err(err) => return Err(err),
    };
    for child in children.iter().filter(|c| sequence(c).is_some()) {
        let path = format!("{dir}/{child}");
        match client.get_data(&path).await {
            Ok((found, _)) if found == data => return Ok(Some(path)),
            Ok(_) | Err(zk::Error::NoNode) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(None)
}

impl Acquisition {
    async fn run(&self) -> Result<HeldLease> {
        let dir = self.inner.lock_dir(&self.key);
        let (client, node, data, token, sent) = loop {
            let client = self.inner.lock_session(self.opts.ttl).await?;
            let mut data = MARKER.to_vec();
            data.extend_from_slice(&rand::random::<u64>().to_be_bytes());
            // Dropping this future deletes the waiter, created or not yet answered.
            let mut guard = WaiterGuard {
                inner: self.inner.clone(),
                tasks: self.tasks.clone(),
                client: client.clone(),
                dir: dir.clone(),
                data: data.clone(),
                node: None,
                armed: true,
            };
            let node = self.enqueue(&client, &dir, &data).await?;
            guard.node = Some(node.clone());
            match self.wait_turn(&client, &dir, &node).await {
                Ok((sent, token)) => {
                    guard.armed = false;
                    break (client, node, data, token, sent);
                }
                // The session expired while waiting (the server was away for longer than
                // the TTL): queue again on a new one.
                Err(Error::CannotLock { .. })
                    if client.state() == SessionState::Expired
                        && !self.inner.cancel.is_cancelled() =>
                {
                    guard.armed = false;
                    tracing::debug!(backend = BACKEND, key = %self.key, "lock session expired while waiting; queueing again");
                }
                Err(err) => return Err(err),
            }
        };
        let mut token = token;
        if let Some(value) = &self.opts.value {
            // The value's zxid is its last_index, and the token.
            token = self.write_value(&client, value).await?.last_index;
        }
        // The waiter records its token, which is what `Txn::when_held` reads (and then checks
        // the waiter's version in the same `multi` as the writes).
        timed(
            self.inner.timeout(),
            client.set_data(&node, &waiter_data(&data, token), None),
        )
        .await
        .map_err(from_zk)?;
        // The server may have granted a shorter session than asked for: the hold lasts only
        // as long as the shorter of the two.
        let ttl = self.opts.ttl.min(client.session_timeout());
        let lease = Arc::new(WaiterLease {
            inner: self.inner.clone(),
            client,
            node,
            key: self.key.clone(),
            delete_on_unlock: self.opts.delete_on_unlock,
        });
        Ok(HeldLease::start(lease, ttl, sent, token, &self.tasks))
    }
}
