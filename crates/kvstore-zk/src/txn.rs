//! `Store::txn`: reads, then one `multi` (source: ZooKeeper Programmer's Guide, "Multi-update":
//! every operation or none, checked against versions).
//!
//! kvstore's `last_index` is a znode's `mzxid`, but `multi` compares only `version`, so the
//! transaction first reads every znode it compares or writes (a `sync`, shared with concurrent
//! reads, and one `multiRead`, pipelined; a `Held` condition adds a read of the lock's first waiter), evaluates the
//! conditions on what it read, and then sends one `multi` in which every znode it read is
//! checked against the version it had — the same ABA guard as single-key CAS: a znode written
//! (or deleted and re-created) since the read has another version, so the `multi` fails and the
//! transaction starts over from the reads (up to 16 times). An absent key is kept absent by a
//! `create` and `delete` of it inside the `multi`. `Held` is a version check of the lock's
//! first waiter, whose data records the token of its hold. Requests per call: two without
//! `Held` (multiRead, multi), three with it; missing parents of new keys are created (as
//! hidden containers) before the `multi`. The first reads go without a `sync`: the `multi`'s
//! version checks refuse a commit on a stale read, and a condition that fails is read again
//! after a `sync` (shared with concurrent reads) before it is reported, as is every attempt
//! after a `multi` that raced.

use std::collections::HashMap;

use kvstore_core::backend::{Check, CheckedTxn, Found, Write, first_failure};
use kvstore_core::{Error, KvPair, Result};
use zookeeper_client::{self as zk, Client, CreateMode, MultiReadResult, MultiWriteResult, Stat};

use crate::BACKEND;
use crate::client::Inner;
use crate::error::from_zk;
use crate::lock::{sequence, waiter_token};
use crate::node::{Kind, MARKER, PIN, decode, encode, index, kind};
use crate::session::{create_options, timed};
use crate::write::MAX_ATTEMPTS;

/// Conditions plus operations per transaction. A `multi` is one request, so its total size is
/// also bounded by the server's `jute.maxbuffer` (see `ZkConfig::max_value_size`).
pub(crate) const MAX_TXN_OPS: usize = 128;

/// What the reads found at one path.
#[derive(Debug, Clone)]
struct Node {
    data: Vec<u8>,
    stat: Stat,
    children: Vec<String>,
}

impl Node {
    /// The key's `last_index`, or `None` when no key lives here (absent or hidden).
    fn key_index(&self) -> Option<u64> {
        decode(&self.data).map(|_| index(&self.stat))
    }

    /// Children other than the pin.
    fn others(&self) -> usize {
        self.children.iter().filter(|c| *c != PIN).count()
    }

    fn has_pin(&self) -> bool {
        self.children.iter().any(|c| c == PIN)
    }
}

/// The outcome of one attempt.
enum Attempt {
    Done(Vec<Option<KvPair>>),
    /// A znode changed between the reads and the `multi`.
    Raced,
}

impl Inner {
    /// Runs a checked transaction.
    pub(crate) async fn txn(&self, txn: &CheckedTxn) -> Result<Vec<Option<KvPair>>> {
        let size: usize = txn
            .writes
            .iter()
            .map(|w| match w {
                Write::Put { value, .. } => value.len(),
                Write::Delete { .. } => 0,
            })
            .sum();
        if size > self.config.max_value_size {
            return Err(Error::InvalidTxn {
                reason: format!(
                    "its values total {size} bytes, over the {} a ZooKeeper request may carry",
                    self.config.max_value_size
                ),
            });
        }
        let client = self.client().await?;
        for attempt in 0..MAX_ATTEMPTS {
            // The first attempt reads without a `sync`: its `multi` checks the version of every
            // znode it read, so a stale read cannot commit — it fails the `multi`, or fails a
            // condition, and either way the next attempt reads after a `sync`.
            if let Attempt::Done(written) = self.txn_once(&client, txn, attempt > 0).await? {
                return Ok(written);
            }
        }
        Err(Error::backend(
            BACKEND,
            format!("gave up a transaction after {MAX_ATTEMPTS} conflicting attempts"),
        ))
    }

    /// Reads every path the transaction compares or writes (`synced`: after a `sync`,
    /// pipelined).
    async fn read_nodes(
        &self,
        client: &Client,
        paths: &[String],
        synced: bool,
    ) -> Result<HashMap<String, Option<Node>>> {
        let read = || {
            let mut reader = client.new_multi_reader();
            let added = paths.iter().try_for_each(|path| {
                reader.add_get_data(path)?;
                reader.add_get_children(path)
            });
            async move {
                added?;
                reader.commit().await
            }
        };
        // A consistent read joins the store's shared `sync`s (see `crate::sync`).
        let results = if synced {
            timed(self.timeout(), self.syncs.synced(client, read)).await
        } else {
            timed(self.timeout(), read()).await
        }
        .map_err(from_zk)?;
        let mut results = results.into_iter();
        let mut nodes = HashMap::with_capacity(paths.len());
        for path in paths {
            let node = match (results.next(), results.next()) {
                (
                    Some(MultiReadResult::Data { data, stat }),
                    Some(MultiReadResult::Children { children }),
                ) => Some(Node {
                    data,
                    stat,
                    children,
                }),
                (
                    Some(MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    }),
                    _,
                )
                | (
                    _,
                    Some(MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    }),
                ) => None,
                (Some(MultiReadResult::Error { err }), _)
                | (_, Some(MultiReadResult::Error { err })) => {
                    return Err(from_zk(err));
                }
                _ => return Err(Error::backend(BACKEND, "unexpected multiRead answer")),
            };
            nodes.insert(path.clone(), node);
        }
        Ok(nodes)
    }

    /// The first waiter of a lock (the holder), with its data and stat.
    async fn holder(
        &self,
        client: &Client,
        lock_key: &str,
    ) -> Result<Option<(String, Vec<u8>, Stat)>> {
        let dir = self.lock_dir(lock_key);
        let children = match timed(self.timeout(), client.list_children(&dir)).await {
            Ok(children) => children,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(err) => return Err(from_zk(err)),
        };
        let Some(first) = children
            .iter()
            .filter_map(|c| sequence(c).map(|s| (s, c)))
            .min()
            .map(|(_, c)| format!("{dir}/{c}"))
        else {
            return Ok(None);
        };
        match timed(self.timeout(), client.get_data(&first)).await {
            Ok((data, stat)) => Ok(Some((first, data, stat))),
            Err(zk::Error::NoNode) => Ok(None),
            Err(err) => Err(from_zk(err)),
        }
    }

    async fn txn_once(&self, client: &Client, txn: &CheckedTxn, synced: bool) -> Result<Attempt> {
        let mut paths: Vec<String> = Vec::new();
        for key in txn
            .checks
            .iter()
            .filter(|c| !matches!(c, Check::Held { .. }))
            .map(Check::key)
            .chain(txn.writes.iter().map(Write::key))
        {
            let path = self.path(key);
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        let nodes = self.read_nodes(client, &paths, synced).await?;
        let mut holders = HashMap::new();
        for check in &txn.checks {
            if let Check::Held { lock_key, .. } = check {
                holders.insert(lock_key.clone(), self.holder(client, lock_key).await?);
            }
        }
        let node = |key: &str| nodes.get(&self.path(key)).cloned().flatten();
        if let Some(err) = first_failure(&txn.checks, |check| match check {
            Check::Held {
                lock_key,
                fencing_token,
            } => Found::Held(
                holders
                    .get(lock_key)
                    .and_then(Option::as_ref)
                    .is_some_and(|(_, data, _)| waiter_token(data) == Some(*fencing_token)),
            ),
            other => Found::Key(node(other.key()).and_then(|n| n.key_index())),
        }) {
            // A failed condition is reported only on a current read.
            return if synced { Err(err) } else { Ok(Attempt::Raced) };
        }

        // Parents of the znodes the multi creates, created first as hidden containers.
        for key in txn
            .checks
            .iter()
            .filter(|c| matches!(c, Check::Missing { .. }))
            .map(Check::key)
            .chain(txn.writes.iter().map(Write::key))
        {
            if node(key).is_none() {
                self.create_parents(client, &self.path(key)).await?;
            }
        }

        let persistent = create_options(CreateMode::Persistent, self.config.acl);
        let mut multi = client.new_multi_writer();
        for check in &txn.checks {
            match check {
                Check::Held { lock_key, .. } => {
                    let (waiter, _, stat) = holders[lock_key].as_ref().expect("checked above");
                    multi
                        .add_check_version(waiter, stat.version)
                        .map_err(from_zk)?;
                }
                other => {
                    let path = self.path(other.key());
                    match node(other.key()) {
                        Some(n) => multi
                            .add_check_version(&path, n.stat.version)
                            .map_err(from_zk)?,
                        // Still absent: creating and deleting it fails if someone created it.
                        None => {
                            multi
                                .add_create(&path, MARKER, &persistent)
                                .map_err(from_zk)?;
                            multi.add_delete(&path, None).map_err(from_zk)?;
                        }
                    }
                }
            }
        }
        for write in &txn.writes {
            let path = self.path(write.key());
            let pin = format!("{path}/{PIN}");
            let found = node(write.key());
            match (write, found) {
                (Write::Put { value, .. }, None) => {
                    multi
                        .add_create(&path, &encode(value), &persistent)
                        .map_err(from_zk)?;
                }
                (Write::Put { value, .. }, Some(n)) => match kind(&n.stat) {
                    // A plain znode, or a container that a persistent pin keeps.
                    Kind::Persistent | Kind::Container => {
                        multi
                            .add_set_data(&path, &encode(value), Some(n.stat.version))
                            .map_err(from_zk)?;
                        if kind(&n.stat) == Kind::Container && !n.has_pin() {
                            multi
                                .add_create(&pin, MARKER, &persistent)
                                .map_err(from_zk)?;
                        }
                    }
                    // A TTL or ephemeral znode becomes a plain one: re-created.
                    Kind::Ttl | Kind::Ephemeral if n.others() == 0 => {
                        if n.has_pin() {
                            multi.add_delete(&pin, None).map_err(from_zk)?;
                        }
                        multi
                            .add_delete(&path, Some(n.stat.version))
                            .map_err(from_zk)?;
                        multi
                            .add_create(&path, &encode(value), &persistent)
                            .map_err(from_zk)?;
                    }
                    Kind::Ttl | Kind::Ephemeral => {
                        return Err(Error::CallNotSupported {
                            backend: BACKEND,
                            operation: "txn put on a TTL key that has children",
                        });
                    }
                },
                // Absent or hidden: nothing to delete.
                (Write::Delete { .. }, None) => {}
                (Write::Delete { .. }, Some(n)) if n.key_index().is_none() => {
                    multi
                        .add_check_version(&path, n.stat.version)
                        .map_err(from_zk)?;
                }
                (Write::Delete { .. }, Some(n)) => {
                    if n.has_pin() {
                        multi.add_delete(&pin, None).map_err(from_zk)?;
                    }
                    if n.others() == 0 {
                        multi
                            .add_delete(&path, Some(n.stat.version))
                            .map_err(from_zk)?;
                    } else {
                        // It stays as a hidden parent of its children.
                        multi
                            .add_set_data(&path, MARKER, Some(n.stat.version))
                            .map_err(from_zk)?;
                    }
                }
            }
        }
        let results = match timed(self.timeout(), async { Ok(multi.commit().await?) }).await {
            Ok(results) => results,
            Err(
                zk::Error::BadVersion
                | zk::Error::NodeExists
                | zk::Error::NoNode
                | zk::Error::NotEmpty,
            ) => return Ok(Attempt::Raced),
            Err(err) => return Err(from_zk(err)),
        };
        // Every write of one multi has its zxid.
        let zxid = results.iter().find_map(|r| match r {
            MultiWriteResult::SetData { stat } | MultiWriteResult::Create { stat, .. }
                if !stat.is_invalid() =>
            {
                Some(index(stat))
            }
            _ => None,
        });
        let zxid = match (
            zxid,
            txn.writes.iter().find(|w| matches!(w, Write::Put { .. })),
        ) {
            (Some(zxid), _) => zxid,
            // Creates may come back without a stat (ZOOKEEPER-4026): read one.
            (None, Some(put)) => timed(self.timeout(), client.check_stat(&self.path(put.key())))
                .await
                .map_err(from_zk)?
                .map(|stat| index(&stat))
                .ok_or_else(|| Error::backend(BACKEND, "a key written by the multi vanished"))?,
            (None, None) => 0,
        };
        Ok(Attempt::Done(txn.written(zxid)))
    }
}
