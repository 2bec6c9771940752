//! Writes: hidden container parents, TTL and pinned znodes, versioned sets and deletes that
//! guard against ABA with `mzxid`.

use std::time::Duration;

use kvstore_core::backend::{Expiry, Precondition, check_ttl, check_value_size};
use kvstore_core::{Error, KvPair, Result, normalize_key};
use zookeeper_client::{self as zk, Client, CreateMode, MultiWriteResult, SessionState, Stat};

use crate::BACKEND;
use crate::error::from_zk;
use crate::node::{
    CONTAINER_ACL_VERSION, Kind, MARKER, PIN, TTL_ACL_VERSION, decode, encode, index, kind,
};
use crate::session::{create_options, timed};

use crate::client::Inner;

/// How many times a write retries when a concurrent writer changes the znode between its
/// steps (a parent reaped, a node created or deleted in between).
pub(crate) const MAX_ATTEMPTS: usize = 16;

/// What `settle` reports when a TTL cannot be applied to a znode that has children.
pub(crate) const TTL_ON_PARENT: &&str = &"a TTL on a key that has children";

/// The node type a write asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A key without TTL.
    Persistent,
    /// A TTL node.
    Ttl(Duration),
    /// A TTL node pinned by an ephemeral child of this store's session.
    KeepAlive(Duration),
    /// An ephemeral znode of the session that writes it (a lock's value that lives as long as
    /// the hold). It cannot have children.
    Ephemeral,
}

impl Mode {
    pub(crate) fn of(expiry: Option<Expiry>) -> Mode {
        match expiry {
            None => Mode::Persistent,
            Some(Expiry {
                ttl,
                keep_alive: false,
            }) => Mode::Ttl(ttl_millis(ttl)),
            Some(Expiry {
                ttl,
                keep_alive: true,
            }) => Mode::KeepAlive(ttl_millis(ttl)),
        }
    }
}

/// TTL nodes have whole-millisecond TTLs: round up so a key never expires early.
pub(crate) fn ttl_millis(ttl: Duration) -> Duration {
    Duration::from_millis(u64::try_from(ttl.as_micros().div_ceil(1000)).unwrap_or(u64::MAX))
        .max(Duration::from_millis(1))
}

impl Inner {
    /// Creates the missing parents of `path` as hidden container znodes, which the server
    /// deletes once their last child is gone (source: ZooKeeper Programmer's Guide,
    /// "Container Nodes").
    pub(crate) async fn create_parents(&self, client: &Client, path: &str) -> Result<()> {
        let mut missing = Vec::new();
        let mut current = path;
        while let Some(cut) = current.rfind('/').filter(|&cut| cut > 0) {
            current = &current[..cut];
            let opts = create_options(CreateMode::Container, self.config.acl);
            match timed(self.timeout(), client.create(current, MARKER, &opts)).await {
                Ok(_) => {
                    self.mark(client, current, CONTAINER_ACL_VERSION)
                        .await
                        .map_err(from_zk)?;
                    break;
                }
                Err(zk::Error::NodeExists) => break,
                Err(zk::Error::NoNode) => missing.push(current),
                Err(err) => return Err(from_zk(err)),
            }
        }
        // Create the rest top-down; each create was refused only because its parent was missing.
        for parent in missing.into_iter().rev() {
            let opts = create_options(CreateMode::Container, self.config.acl);
            match timed(self.timeout(), client.create(parent, MARKER, &opts)).await {
                Ok(_) => self
                    .mark(client, parent, CONTAINER_ACL_VERSION)
                    .await
                    .map_err(from_zk)?,
                Err(zk::Error::NodeExists) => {}
                Err(err) => return Err(from_zk(err)),
            }
        }
        Ok(())
    }

    /// Sets the ACL of the znode just created at `path` (unchanged) until its ACL version is
    /// `acl_version`, which marks it as a container or TTL znode (see [`kind`]).
    pub(crate) async fn mark(
        &self,
        client: &Client,
        path: &str,
        acl_version: i32,
    ) -> std::result::Result<(), zk::Error> {
        let acls = crate::session::acls(self.config.acl);
        // Pipelined: each request is conditional on the ACL version the previous one leaves.
        let sets: Vec<_> = (0..acl_version)
            .map(|from| client.set_acl(path, &acls, Some(from)))
            .collect();
        let results = timed(self.timeout(), async {
            Ok(futures::future::join_all(sets).await)
        })
        .await?;
        for result in results {
            match result {
                // Already marked, or deleted again: nothing to mark.
                Ok(_) | Err(zk::Error::BadVersion | zk::Error::NoNode) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    pub(crate) fn options(&self, mode: Mode) -> zk::CreateOptions<'static> {
        match mode {
            Mode::Persistent => create_options(CreateMode::Persistent, self.config.acl),
            Mode::Ephemeral => create_options(CreateMode::Ephemeral, self.config.acl),
            Mode::Ttl(ttl) | Mode::KeepAlive(ttl) => {
                create_options(CreateMode::Persistent, self.config.acl).with_ttl(ttl)
            }
        }
    }

    /// Creates a key's znode in `mode` (and its ephemeral pin for `KeepAlive`, in the same
    /// transaction), creating missing parents. `NodeExists` is returned to the caller.
    pub(crate) async fn create_key(
        &self,
        client: &Client,
        path: &str,
        data: &[u8],
        mode: Mode,
    ) -> std::result::Result<Stat, zk::Error> {
        let mut parents_created = false;
        loop {
            let result = match mode {
                Mode::KeepAlive(_) => {
                    let mut multi = client.new_multi_writer();
                    multi.add_create(path, data, &self.options(mode))?;
                    multi.add_create(
                        &format!("{path}/{PIN}"),
                        MARKER,
                        &create_options(CreateMode::Ephemeral, self.config.acl),
                    )?;
                    timed(self.timeout(), async { Ok(multi.commit().await?) })
                        .await
                        .and_then(|results| created_stat(&results, path))
                }
                _ => timed(
                    self.timeout(),
                    client.create(path, data, &self.options(mode)),
                )
                .await
                .map(|(stat, _)| stat),
            };
            match result {
                Err(zk::Error::NoNode) if !parents_created => {
                    self.create_parents(client, path)
                        .await
                        .map_err(|_| zk::Error::NoNode)?;
                    parents_created = true;
                }
                Ok(stat) => return self.finish_create(client, path, mode, stat).await,
                Err(err) => return Err(err),
            }
        }
    }

    /// Completes the creation of a key's znode: marks a TTL znode (see [`kind`]) and
    /// returns a valid stat (some servers return none for creates inside a transaction,
    /// ZOOKEEPER-4026; then it is read).
    pub(crate) async fn finish_create(
        &self,
        client: &Client,
        path: &str,
        mode: Mode,
        stat: Stat,
    ) -> std::result::Result<Stat, zk::Error> {
        if matches!(mode, Mode::Ttl(_) | Mode::KeepAlive(_)) {
            self.mark(client, path, TTL_ACL_VERSION).await?;
        } else if !stat.is_invalid() && stat.mzxid > 0 {
            return Ok(stat);
        }
        timed(self.timeout(), client.check_stat(path))
            .await?
            .ok_or(zk::Error::NoNode)
    }

    /// Makes the existing znode at `path` hold `data` in `mode`, in one transaction checked
    /// against its version (and `expected`, when given). ZooKeeper cannot change a znode's type,
    /// so a znode without (visible) children is re-created; one with children keeps its type
    /// and gets the right pin: a persistent pin keeps a container or TTL znode from being
    /// reaped, an ephemeral one keeps a TTL znode alive with this session.
    pub(crate) async fn settle(
        &self,
        client: &Client,
        path: &str,
        data: &[u8],
        mode: Mode,
        expected: Option<i32>,
    ) -> std::result::Result<Stat, zk::Error> {
        let (children, stat) = timed(self.timeout(), client.get_children(path)).await?;
        if expected.is_some_and(|v| v != stat.version) {
            return Err(zk::Error::BadVersion);
        }
        let pin_path = format!("{path}/{PIN}");
        let has_pin = children.iter().any(|c| c == PIN);
        let others = children.len() - usize::from(has_pin);
        let mut multi = client.new_multi_writer();
        if has_pin {
            multi.add_delete(&pin_path, None)?;
        }
        let pin = match (others, mode, kind(&stat)) {
            (0, _, _) => {
                multi.add_delete(path, Some(stat.version))?;
                multi.add_create(path, data, &self.options(mode))?;
                (matches!(mode, Mode::KeepAlive(_))).then_some(CreateMode::Ephemeral)
            }
            (_, Mode::Persistent, Kind::Persistent) => {
                multi.add_set_data(path, data, Some(stat.version))?;
                None
            }
            (_, Mode::Persistent, _) => {
                multi.add_set_data(path, data, Some(stat.version))?;
                Some(CreateMode::Persistent)
            }
            (_, Mode::Ttl(_), Kind::Ttl) => {
                multi.add_set_data(path, data, Some(stat.version))?;
                None
            }
            (_, Mode::KeepAlive(_), Kind::Ttl) => {
                multi.add_set_data(path, data, Some(stat.version))?;
                Some(CreateMode::Ephemeral)
            }
            _ => return Err(zk::Error::BadArguments(TTL_ON_PARENT)),
        };
        if let Some(pin) = pin {
            multi.add_create(&pin_path, MARKER, &create_options(pin, self.config.acl))?;
        }
        let results = timed(self.timeout(), async { Ok(multi.commit().await?) }).await?;
        if others == 0 {
            let created = created_stat(&results, path)?;
            return self.finish_create(client, path, mode, created).await;
        }
        match results.iter().find_map(|r| match r {
            MultiWriteResult::SetData { stat } => Some(*stat),
            _ => None,
        }) {
            Some(stat) => Ok(stat),
            None => timed(self.timeout(), client.check_stat(path))
                .await?
                .ok_or(zk::Error::NoNode),
        }
    }

    /// Deletes the key whose znode at `path` was read with `stat`: the znode goes if only its
    /// pin is below it, else it becomes hidden and stays as a parent. Version-checked.
    pub(crate) async fn remove_node(
        &self,
        client: &Client,
        path: &str,
        stat: &Stat,
        guard: Option<&str>,
    ) -> std::result::Result<(), zk::Error> {
        if stat.num_children == 0 && guard.is_none() {
            return timed(self.timeout(), client.delete(path, Some(stat.version))).await;
        }
        let children = if stat.num_children == 0 {
            Vec::new()
        } else {
            timed(self.timeout(), client.list_children(path)).await?
        };
        let has_pin = children.iter().any(|c| c == PIN);
        let mut multi = client.new_multi_writer();
        if let Some(guard) = guard {
            // Version -1 matches any version: the check is that the znode exists.
            multi.add_check_version(guard, -1)?;
        }
        if has_pin {
            multi.add_delete(&format!("{path}/{PIN}"), None)?;
        }
        if children.len() == usize::from(has_pin) {
            multi.add_delete(path, Some(stat.version))?;
        } else {
            multi.add_set_data(path, MARKER, Some(stat.version))?;
        }
        timed(self.timeout(), async { Ok(multi.commit().await?) })
            .await
            .map(drop)
    }

    /// Writes `value` at `key` on a given session (a lock writes its value on its own, so the
    /// value is written only while that session lives).
    pub(crate) async fn write_on(
        &self,
        client: &Client,
        key: &str,
        value: &[u8],
        condition: Precondition,
        expiry: Option<Expiry>,
    ) -> Result<KvPair> {
        self.write_mode(client, key, value, condition, Mode::of(expiry))
            .await
    }

    /// [`write_on`](Self::write_on) in a given node mode.
    pub(crate) async fn write_mode(
        &self,
        client: &Client,
        key: &str,
        value: &[u8],
        condition: Precondition,
        mode: Mode,
    ) -> Result<KvPair> {
        let key = normalize_key(key)?;
        check_value_size(key, value, self.config.max_value_size)?;
        if let Mode::Ttl(ttl) | Mode::KeepAlive(ttl) = mode {
            check_ttl(BACKEND, ttl)?;
        }
        if matches!(mode, Mode::Ttl(_) | Mode::KeepAlive(_)) && !self.ttl_nodes {
            return Err(ttl_nodes_disabled());
        }
        let path = self.path(key);
        let data = encode(value);
        let not_supported = |err: zk::Error| match err {
            zk::Error::BadArguments(_) => Error::CallNotSupported {
                backend: BACKEND,
                operation: "put with a TTL on a key that has children",
            },
            other => from_zk(other),
        };
        for _ in 0..MAX_ATTEMPTS {
            let outcome = match condition {
                Precondition::None => self.put_once(client, &path, &data, mode).await,
                Precondition::Absent => {
                    match self.create_key(client, &path, &data, mode).await {
                        Err(zk::Error::NodeExists) => {
                            // Only a hidden znode (a parent) may be taken over.
                            match timed(self.timeout(), client.get_data(&path)).await {
                                Ok((old, stat)) if decode(&old).is_none() => {
                                    self.settle(client, &path, &data, mode, Some(stat.version))
                                        .await
                                }
                                Ok(_) => return Err(Error::KeyExists { key: key.into() }),
                                Err(err) => Err(err),
                            }
                        }
                        other => other,
                    }
                }
                Precondition::Index(expected) => {
                    let (old, stat) = match timed(self.timeout(), client.get_data(&path)).await {
                        Ok(read) => read,
                        Err(zk::Error::NoNode) => return Err(Error::not_found(key)),
                        Err(err) => return Err(from_zk(err)),
                    };
                    if decode(&old).is_none() {
                        return Err(Error::not_found(key));
                    }
                    if index(&stat) != expected {
                        return Err(Error::KeyModified { key: key.into() });
                    }
                    let result = if mode == Mode::Persistent && kind(&stat) == Kind::Persistent {
                        timed(
                            self.timeout(),
                            client.set_data(&path, &data, Some(stat.version)),
                        )
                        .await
                    } else {
                        self.settle(client, &path, &data, mode, Some(stat.version))
                            .await
                    };
                    match result {
                        Err(zk::Error::BadVersion) => {
                            return Err(Error::KeyModified { key: key.into() });
                        }
                        Err(zk::Error::NoNode) => return Err(Error::not_found(key)),
                        other => other,
                    }
                }
            };
            match outcome {
                Ok(stat) => return Ok(KvPair::new(key, value.to_vec(), index(&stat))),
                // A concurrent writer changed the znode between two steps: start over.
                Err(
                    zk::Error::NodeExists
                    | zk::Error::NoNode
                    | zk::Error::BadVersion
                    | zk::Error::NotEmpty,
                ) => continue,
                Err(err) => return Err(not_supported(err)),
            }
        }
        Err(Error::backend(
            BACKEND,
            format!("gave up writing {key} after {MAX_ATTEMPTS} conflicting attempts"),
        ))
    }

    /// One attempt of an unconditional write. An update of a plain key is one `setData`; a
    /// new key one `create`.
    pub(crate) async fn put_once(
        &self,
        client: &Client,
        path: &str,
        data: &[u8],
        mode: Mode,
    ) -> std::result::Result<Stat, zk::Error> {
        if mode != Mode::Persistent {
            return match self.create_key(client, path, data, mode).await {
                Err(zk::Error::NodeExists) => self.settle(client, path, data, mode, None).await,
                other => other,
            };
        }
        match timed(self.timeout(), client.set_data(path, data, None)).await {
            Ok(stat) if kind(&stat) == Kind::Persistent => Ok(stat),
            // A container (a former parent) or TTL znode: give it the right pin or type.
            Ok(_) => self.settle(client, path, data, mode, None).await,
            Err(zk::Error::NoNode) => self.create_key(client, path, data, mode).await,
            Err(err) => Err(err),
        }
    }

    /// Deletes `key`, checked against `expected` when given.
    pub(crate) async fn delete_key(&self, key: &str, expected: Option<u64>) -> Result<()> {
        self.delete_key_while(key, expected, None).await.map(drop)
    }

    /// [`delete_key`](Self::delete_key), and with a `guard` only while the znode `guard` exists:
    /// the delete and a check of `guard` go in one `multi`, so nothing is deleted once it has
    /// gone (source: ZooKeeper Programmer's Guide, "Multi-update": all operations succeed or
    /// none). A gone guard is `Ok(false)`.
    ///
    /// The guard is an ephemeral znode, and everything runs on the session that created it,
    /// never on the store's own: a path alone does not name one znode for good. A lock's
    /// directory is a container, which the server deletes once its last waiter has gone, and a
    /// directory created again numbers its waiters from 0 (the sequence is the parent's
    /// `cversion`; Programmer's Guide, "Sequence Nodes -- Unique Naming"), so the next holder's
    /// waiter can have a former holder's path. While the session lives, its ephemeral guard is
    /// the one this holder created; once the session has expired, every request on it fails
    /// and nothing is deleted.
    pub(crate) async fn delete_key_while(
        &self,
        key: &str,
        expected: Option<u64>,
        guard: Option<(&Client, &str)>,
    ) -> Result<bool> {
        let key = normalize_key(key)?;
        let own;
        let (client, guard) = match guard {
            Some((client, guard)) => (client, Some(guard)),
            None => {
                own = self.client().await?;
                (&*own, None)
            }
        };
        let path = self.path(key);
        for _ in 0..MAX_ATTEMPTS {
            let (data, stat) = match timed(self.timeout(), client.get_data(&path)).await {
                Ok(read) => read,
                Err(zk::Error::NoNode) => return Err(Error::not_found(key)),
                Err(err) => return Err(from_zk(err)),
            };
            if decode(&data).is_none() {
                return Err(Error::not_found(key));
            }
            if expected.is_some_and(|e| e != index(&stat)) {
                return Err(Error::KeyModified { key: key.into() });
            }
            let removed = self.remove_node(client, &path, &stat, guard).await;
            if removed.is_err()
                && let Some(guard) = guard
                && timed(self.timeout(), client.check_stat(guard))
                    .await
                    .map_err(from_zk)?
                    .is_none()
            {
                return Ok(false);
            }
            match removed {
                Ok(()) => return Ok(true),
                Err(zk::Error::BadVersion) if expected.is_some() => {
                    return Err(Error::KeyModified { key: key.into() });
                }
                // Written, deleted or given children since the read: read again.
                Err(zk::Error::BadVersion | zk::Error::NoNode | zk::Error::NotEmpty) => continue,
                Err(err) => return Err(from_zk(err)),
            }
        }
        Err(Error::backend(
            BACKEND,
            format!("gave up deleting {key} after {MAX_ATTEMPTS} conflicting attempts"),
        ))
    }
}

/// The stat of the create of `path` in a transaction's results.
pub(crate) fn created_stat(
    results: &[MultiWriteResult],
    path: &str,
) -> std::result::Result<Stat, zk::Error> {
    results
        .iter()
        .find_map(|r| match r {
            MultiWriteResult::Create { path: p, stat } if p == path => Some(*stat),
            _ => None,
        })
        .ok_or_else(|| zk::Error::UnexpectedError("transaction returned no create".into()))
}

/// Deletes a lock's value on unlock with `delete_on_unlock`, on the lock's session `client`
/// and only while the hold's `waiter` znode exists: a holder whose session expired (and whose
/// lock another client may hold now, with its own value) deletes nothing. Its value went with
/// the session when it was ephemeral; a persistent one (on a key that has children) stays, as
/// when a holder dies.
pub(crate) async fn delete_lock_value(
    inner: &Inner,
    client: &Client,
    key: &str,
    waiter: &str,
) -> Result<()> {
    match inner
        .delete_key_while(key, None, Some((client, waiter)))
        .await
    {
        Ok(_) | Err(Error::KeyNotFound { .. }) => Ok(()),
        Err(_) if matches!(client.state(), SessionState::Expired | SessionState::Closed) => Ok(()),
        Err(err) => Err(err),
    }
}

/// The error of a TTL write on a server without TTL nodes.
pub(crate) fn ttl_nodes_disabled() -> Error {
    Error::CallNotSupported {
        backend: BACKEND,
        operation: "put with a TTL: this ZooKeeper server has TTL nodes disabled; start it with \
                    -Dzookeeper.extendedTypesEnabled=true (ZooKeeper 3.5.3+)",
    }
}
