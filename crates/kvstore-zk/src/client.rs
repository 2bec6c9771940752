//! The session state every part of the ZooKeeper backend shares: the session (replaced after
//! expiry), lock sessions, the znode layout and reads. Writes are in `write.rs`, the
//! `keep_alive` pin lease in `keep_alive.rs`.

use derive_where::derive_where;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kvstore_core::{Error, KvPair, Result};
use tokio_util::sync::CancellationToken;
use zookeeper_client::{self as zk, Client, Stat};

use crate::BACKEND;
use crate::config::ZkConfig;
use crate::error::from_zk;
use crate::node::{LOCKS, decode, index};
use crate::session::{connect, timed, usable};

/// Connection state shared by the store, its watches and its locks.
#[derive_where(Debug)]
pub(crate) struct Inner {
    pub(crate) config: ZkConfig,
    /// Znode path of the store's root: `""` for `/`, else `/chroot/prefix`.
    pub(crate) root: String,
    /// The current session; `None` once closed.
    #[derive_where(skip)]
    pub(crate) session: RwLock<Option<Arc<Client>>>,
    pub(crate) reconnecting: tokio::sync::Mutex<()>,
    pub(crate) cancel: CancellationToken,
    /// Lock sessions by TTL, shared by every lock of that TTL (see `lock.rs`).
    #[derive_where(skip)]
    pub(crate) lock_sessions: tokio::sync::Mutex<std::collections::HashMap<Duration, Arc<Client>>>,
    /// Whether the server creates TTL nodes (`zookeeper.extendedTypesEnabled=true`), probed at
    /// connect by [`probe_ttl_nodes`].
    pub(crate) ttl_nodes: bool,
    /// The `sync`s consistent reads share.
    pub(crate) syncs: crate::sync::SyncBatcher,
}

impl Inner {
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(Error::Closed { backend: BACKEND });
        }
        Ok(())
    }

    /// The current session, replaced by a new one when it has expired.
    pub(crate) async fn client(&self) -> Result<Arc<Client>> {
        let current = self.current()?;
        if current.state() != zk::SessionState::Expired {
            usable(&current)?;
            return Ok(current);
        }
        let _one = self.reconnecting.lock().await;
        let latest = self.current()?;
        if !Arc::ptr_eq(&latest, &current) {
            return Ok(latest);
        }
        tracing::warn!(backend = BACKEND, "session expired; opening a new one");
        let fresh = Arc::new(connect(&self.config, self.config.session_timeout).await?);
        self.syncs
            .learn(&fresh, self.config.hosts.len(), self.timeout())
            .await;
        {
            let mut session = self.session.write().unwrap_or_else(|e| e.into_inner());
            if session.is_none() {
                return Err(Error::Closed { backend: BACKEND });
            }
            *session = Some(fresh.clone());
        }
        Ok(fresh)
    }

    pub(crate) fn current(&self) -> Result<Arc<Client>> {
        self.check_open()?;
        self.session
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Error::Closed { backend: BACKEND })
    }

    /// Ends the store: watches and locks stop, and the session closes once the requests in
    /// flight have finished, which deletes its ephemeral znodes at once.
    pub(crate) fn shut(&self) {
        self.cancel.cancel();
        self.session
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // Lock sessions close once the releases still holding them are done.
        if let Ok(mut sessions) = self.lock_sessions.try_lock() {
            sessions.clear();
        }
    }

    /// The session for locks of this TTL: opened on first use, replaced once it has ended.
    pub(crate) async fn lock_session(&self, ttl: Duration) -> Result<Arc<Client>> {
        let mut sessions = self.lock_sessions.lock().await;
        if let Some(client) = sessions.get(&ttl)
            && !matches!(
                client.state(),
                zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed
            )
        {
            return Ok(client.clone());
        }
        let client = Arc::new(connect(&self.config, ttl).await?);
        self.check_open()?;
        sessions.insert(ttl, client.clone());
        Ok(client)
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.config.request_timeout
    }

    /// Znode path of a key.
    pub(crate) fn path(&self, key: &str) -> String {
        format!("{}/{key}", self.root)
    }

    /// Znode path of a directory (`""`: the store's root).
    pub(crate) fn dir_path(&self, dir: &str) -> String {
        match (dir.is_empty(), self.root.is_empty()) {
            (true, true) => "/".to_owned(),
            (true, false) => self.root.clone(),
            (false, _) => self.path(dir),
        }
    }

    /// The key of a znode path under the root.
    pub(crate) fn key_of<'a>(&self, path: &'a str) -> Option<&'a str> {
        path.strip_prefix(self.root.as_str())?.strip_prefix('/')
    }

    /// Children of `path` that are not part of the keyspace: ZooKeeper's own `/zookeeper`
    /// at the znode root, and the lock tree at the store's root.
    pub(crate) fn skipped_child(&self, path: &str, child: &str) -> bool {
        let store_root = if self.root.is_empty() {
            "/"
        } else {
            &self.root
        };
        (path == "/" && child == "zookeeper") || (path == store_root && child == LOCKS)
    }

    /// The znode under which the waiters of the lock on `key` are created.
    pub(crate) fn lock_dir(&self, key: &str) -> String {
        format!("{}/{LOCKS}/{key}", self.root)
    }

    pub(crate) fn pair(&self, path: &str, data: &[u8], stat: &Stat) -> Option<KvPair> {
        let value = decode(data)?;
        Some(KvPair::new(self.key_of(path)?, value.to_vec(), index(stat)))
    }

    /// Reads one key; a hidden znode reads as absent. With `consistent`, a `sync` is
    /// pipelined before the read so the server has caught up with the leader (source:
    /// ZooKeeper Programmer's Guide, "Consistency Guarantees").
    pub(crate) async fn read_key(
        &self,
        client: &Client,
        key: &str,
        consistent: bool,
    ) -> Result<Option<KvPair>> {
        let path = self.path(key);
        let result = timed(self.timeout(), async {
            if consistent {
                self.syncs.synced(client, || client.get_data(&path)).await
            } else {
                client.get_data(&path).await
            }
        })
        .await;
        match result {
            Ok((data, stat)) => Ok(self.pair(&path, &data, &stat)),
            Err(zk::Error::NoNode) => Ok(None),
            Err(err) => Err(from_zk(err)),
        }
    }
}
