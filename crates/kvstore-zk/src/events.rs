//! `watch_events` and `list_at`: a persistent recursive watch tells which znodes changed, and
//! the source reads back only those, until a read completes with no further change pending.
//!
//! # Why that read is a consistent point
//!
//! ZooKeeper 3.8 sends a watch event without the zxid of its change (the zxid arrived in 3.9,
//! ZOOKEEPER-4655) and without the new data, so the source must read. It relies on the
//! ordering guarantee: a client sees the watch event of a change before the answer to any
//! request the server processed after that change (source: ZooKeeper Programmer's Guide,
//! "ZooKeeper Watches" — "a client will see a watch event for a znode it is watching before
//! seeing the new data"). The watch is registered before the first read, so every change
//! under the directory either happened before a read of its znode or announces itself before
//! the answer of the next read. The source reads the changed znodes (one `multiRead`, which the
//! server answers as one request), then looks at the events that arrived meanwhile; when none
//! did, no znode under the directory changed between the changes it read and that answer, and
//! what it holds is the directory at that moment.
//!
//! # Revisions
//!
//! The revision of a read is the largest zxid its answers show — every `mzxid` and `pzxid`
//! (the zxid of the last child created or deleted) of the znodes read, and of the parent of each
//! (a delete shows only there). Every change under the directory leaves its zxid on a znode
//! read, and no answer shows a zxid the server had not reached, so the directory is the same at
//! that revision as when it was read. A put's `last_index` is the znode's `mzxid`; ZooKeeper 3.8
//! does not tell the zxid of a delete, so a `Delete` carries the revision of the read that saw
//! it (the delete happened at or before it).
//!
//! ZooKeeper keeps no history a client can read: a resume from a revision this stream did not
//! itself reach (`since` given by the caller) starts with a `Snapshot`. After a lost connection
//! (events during it may be lost: ZOOKEEPER-4698) or a new session, the source registers the
//! watch again and reads the whole directory, and the stream goes on with the differences.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use kvstore_core::backend::{EventSource, Since, WatchRequest, event_stream};
use kvstore_core::{Error, Event, EventKind, EventStream, KvPair, Result};
use zookeeper_client::{self as zk, AddWatchMode, Client, EventType, MultiReadResult, Stat};

use crate::client::Inner;
use crate::error::from_zk;
use crate::node::{LOCKS, PIN};
use crate::session::timed;

/// Znodes per `multiRead` (as the tree walk).
const CHUNK: usize = 200;

/// What a read found at each znode path: its data and stat, or `None` when it is gone.
type Reads = BTreeMap<String, Option<(Vec<u8>, Stat)>>;

/// The view a stream reported last: the directory's pairs at `revision`.
struct View {
    pairs: BTreeMap<String, KvPair>,
    revision: u64,
}

/// The source of one `watch_events` stream (or one `list_at`).
pub(crate) struct DirtySource {
    inner: Arc<Inner>,
    dir_path: String,
    /// `dir_path` followed by `/` (just `/` for the znode root): every znode below starts so.
    below: String,
    /// The store's lock tree, which is not part of the keyspace.
    locks: String,
    watcher: Option<zk::PersistentWatcher>,
    /// Znodes changed since the last read.
    dirty: BTreeSet<String>,
    /// Events may have been lost (a reconnect): the next read walks the whole directory.
    resync: bool,
    view: Option<View>,
}

impl DirtySource {
    /// Registers the persistent recursive watch on `dir`'s znode (before any read).
    pub(crate) async fn new(inner: Arc<Inner>, dir: &str) -> Result<DirtySource> {
        let dir_path = inner.dir_path(dir);
        let watcher = register(&inner, &dir_path).await?;
        let below = if dir_path == "/" {
            "/".to_owned()
        } else {
            format!("{dir_path}/")
        };
        let locks = format!("{}/{LOCKS}", inner.root);
        Ok(DirtySource {
            inner,
            dir_path,
            below,
            locks,
            watcher: Some(watcher),
            dirty: BTreeSet::new(),
            resync: false,
            view: None,
        })
    }

    /// Whether a change at `path` can change the directory or its revision: the directory's
    /// znode and every znode below it, but the lock tree, ZooKeeper's own `/zookeeper` and pins.
    fn relevant(&self, path: &str) -> bool {
        let in_tree = path == self.dir_path || path.starts_with(&self.below);
        let under =
            |top: &str| path == top || path.strip_prefix(top).is_some_and(|r| r.starts_with('/'));
        in_tree
            && !under(&self.locks)
            && !under("/zookeeper")
            && path.rsplit('/').next() != Some(PIN)
    }

    /// Takes one watch event: a changed znode becomes dirty; a session event other than
    /// `Disconnected` means the server no longer holds the watch (a reconnect drops it, an
    /// expiry ends it), so the watcher is dropped — asking it again after a terminal event
    /// panics (zookeeper-client's `PersistentWatcher::changed`, "Panics") — and the source
    /// must register again and read everything.
    fn note(&mut self, event: &zk::WatchedEvent) -> Result<()> {
        match event.event_type {
            EventType::Session => {
                self.resync = true;
                if event.session_state != zk::SessionState::Disconnected {
                    self.watcher = None;
                    return Err(Error::not_reachable(
                        crate::BACKEND,
                        "the event watch's connection or session ended",
                    ));
                }
            }
            _ if self.relevant(&event.path) => {
                self.dirty.insert(event.path.clone());
            }
            _ => {}
        }
        Ok(())
    }

    /// Takes every event already delivered, without waiting.
    fn drain(&mut self) -> Result<()> {
        loop {
            let Some(watcher) = self.watcher.as_mut() else {
                return Err(Error::not_reachable(crate::BACKEND, "no watch registered"));
            };
            let Some(event) = watcher.changed().now_or_never() else {
                return Ok(());
            };
            self.note(&event)?;
        }
    }

    /// Reads the dirty znodes (and their parents) into `reads` until a read's answer comes with
    /// no new event; returns the largest zxid the answers showed.
    async fn settle(&mut self, client: &Client, reads: &mut Reads) -> Result<u64> {
        let mut zxid = 0;
        loop {
            self.drain()?;
            if self.dirty.is_empty() {
                return Ok(zxid);
            }
            let batch = std::mem::take(&mut self.dirty);
            zxid = zxid.max(self.read_paths(client, batch, reads).await?);
        }
    }

    /// One `multiRead` per [`CHUNK`] of `paths` plus their parents (a delete shows only in
    /// its parent's `pzxid`); returns the largest zxid seen.
    async fn read_paths(
        &self,
        client: &Client,
        paths: BTreeSet<String>,
        reads: &mut Reads,
    ) -> Result<u64> {
        let parents: BTreeSet<String> = paths.iter().filter_map(|p| parent(p)).collect();
        let all: Vec<(String, bool)> = paths
            .into_iter()
            .map(|p| (p, true))
            .chain(parents.into_iter().map(|p| (p, false)))
            .collect();
        let mut zxid = 0;
        for chunk in all.chunks(CHUNK) {
            let mut reader = client.new_multi_reader();
            for (path, _) in chunk {
                reader.add_get_data(path).map_err(from_zk)?;
            }
            let results = timed(self.inner.timeout(), reader.commit())
                .await
                .map_err(from_zk)?;
            for ((path, keep), result) in chunk.iter().zip(results) {
                let found = match result {
                    MultiReadResult::Data { data, stat } => {
                        zxid = zxid.max(stat_zxid(&stat));
                        Some((data, stat))
                    }
                    MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    } => None,
                    MultiReadResult::Error { err } => return Err(from_zk(err)),
                    _ => {
                        return Err(Error::backend(
                            crate::BACKEND,
                            "multiRead answered children",
                        ));
                    }
                };
                if *keep {
                    reads.insert(path.clone(), found);
                }
            }
        }
        Ok(zxid)
    }

    /// The whole directory, read consistently: a walk, then the znodes changed during it.
    async fn read_all(&mut self, client: &Client) -> Result<(BTreeMap<String, KvPair>, u64)> {
        self.dirty.clear();
        self.resync = false;
        let top_is_root = self.dir_path == self.inner.dir_path("");
        let mut reads = Reads::new();
        let mut zxid = 0;
        let top = crate::tree::walk(
            &self.inner,
            client,
            &self.dir_path,
            top_is_root,
            true,
            |n| {
                zxid = zxid.max(stat_zxid(&n.stat));
                reads.insert(n.path, Some((n.data, n.stat)));
            },
        )
        .await?;
        zxid = zxid.max(top.as_ref().map_or(0, |t| stat_zxid(&t.stat)));
        // The directory's znode and its parent: the revision of a missing or empty directory
        // (neither is below the directory, so neither is a pair of it).
        let top_paths = BTreeSet::from([self.dir_path.clone()]);
        zxid = zxid.max(self.read_paths(client, top_paths, &mut reads).await?);
        zxid = zxid.max(self.settle(client, &mut reads).await?);
        Ok((self.pairs(&reads), zxid))
    }

    /// The pairs among `reads`: keys strictly below the directory.
    fn pairs(&self, reads: &Reads) -> BTreeMap<String, KvPair> {
        reads
            .iter()
            .filter(|(path, _)| path.starts_with(&self.below) && self.relevant(path))
            .filter_map(|(path, found)| {
                let (data, stat) = found.as_ref()?;
                let pair = self.inner.pair(path, data, stat)?;
                Some((pair.key.clone(), pair))
            })
            .collect()
    }

    /// The changes since the view, from a whole read (`full`: keys it lacks are deleted) or a
    /// read of the dirty znodes (only the keys it read changed).
    fn diff(
        &self,
        view: &View,
        reads: &Reads,
        now: &BTreeMap<String, KvPair>,
        full: bool,
        revision: u64,
    ) -> Vec<Event> {
        let mut keys: BTreeSet<&String> = now.keys().collect();
        if full {
            keys.extend(view.pairs.keys());
        } else {
            let read_keys = reads
                .keys()
                .filter(|p| p.starts_with(&self.below) && self.relevant(p))
                .filter_map(|p| {
                    view.pairs
                        .get_key_value(self.inner.key_of(p)?)
                        .map(|(k, _)| k)
                });
            keys.extend(read_keys);
        }
        let mut events: Vec<Event> = keys
            .into_iter()
            .filter_map(|key| match (view.pairs.get(key), now.get(key)) {
                (old, Some(new)) if old != Some(new) => Some(Event::put(
                    new.key.clone(),
                    new.value.clone(),
                    new.last_index,
                )),
                (Some(_), None) => Some(Event::delete(key.clone(), revision)),
                _ => None,
            })
            .collect();
        events.sort_by(|a, b| (a.last_index, &a.key).cmp(&(b.last_index, &b.key)));
        events
    }
}

#[async_trait]
impl EventSource for DirtySource {
    async fn snapshot(&mut self) -> Result<(Vec<KvPair>, u64)> {
        let client = self.inner.client().await?;
        let (pairs, revision) = self.read_all(&client).await?;
        let listed = pairs.values().cloned().collect();
        self.view = Some(View { pairs, revision });
        Ok((listed, revision))
    }

    async fn since(&mut self, after: u64) -> Result<Since> {
        if self.view.as_ref().is_none_or(|v| v.revision != after) {
            // No history to read: only the view this stream reached can be continued.
            return Ok(Since::Unknown);
        }
        let client = self.inner.client().await?;
        let full = self.resync;
        let (now, reads, zxid) = if full {
            let (now, zxid) = self.read_all(&client).await?;
            (now, Reads::new(), zxid)
        } else {
            let mut reads = Reads::new();
            let zxid = self.settle(&client, &mut reads).await?;
            (self.pairs(&reads), reads, zxid)
        };
        let revision = zxid.max(after);
        let view = self.view.as_ref().expect("checked above");
        let events = self.diff(view, &reads, &now, full, revision);
        let view = self.view.as_mut().expect("checked above");
        for event in &events {
            match event.kind {
                EventKind::Put => {
                    let pair =
                        KvPair::new(event.key.clone(), event.value.clone(), event.last_index);
                    view.pairs.insert(event.key.clone(), pair);
                }
                _ => {
                    view.pairs.remove(&event.key);
                }
            }
        }
        view.revision = revision;
        Ok(Since::Events(events, revision))
    }

    async fn changed(&mut self) -> Result<()> {
        loop {
            self.drain()?;
            if !self.dirty.is_empty() || self.resync {
                return Ok(());
            }
            let Some(watcher) = self.watcher.as_mut() else {
                return Err(Error::not_reachable(crate::BACKEND, "no watch registered"));
            };
            let event = watcher.changed().await;
            self.note(&event)?;
        }
    }

    /// Registers the watch again on the store's current session; the next read walks the
    /// whole directory.
    async fn reconnect(&mut self) -> Result<()> {
        self.watcher = None;
        self.watcher = Some(register(&self.inner, &self.dir_path).await?);
        self.resync = true;
        Ok(())
    }
}

/// The largest zxid a stat shows: its last write, or its last child created or deleted.
fn stat_zxid(stat: &Stat) -> u64 {
    u64::try_from(stat.mzxid.max(stat.pzxid)).unwrap_or(0)
}

/// The parent of a znode path (`None` for `/`).
fn parent(path: &str) -> Option<String> {
    let (parent, _) = path.rsplit_once('/')?;
    match parent {
        "" if path == "/" => None,
        "" => Some("/".to_owned()),
        parent => Some(parent.to_owned()),
    }
}

/// Registers the persistent recursive watch on `path` on the store's current session.
async fn register(inner: &Inner, path: &str) -> Result<zk::PersistentWatcher> {
    let client = inner.client().await?;
    timed(
        inner.timeout(),
        client.watch(path, AddWatchMode::PersistentRecursive),
    )
    .await
    .map_err(from_zk)
}

/// `Store::watch_events`: the watch is registered before the stream's first read. Like the
/// other watches, it keeps trying to come back for as long as the store is open.
pub(crate) async fn watch_events(
    inner: Arc<Inner>,
    w: WatchRequest<'_>,
    since: Option<u64>,
) -> Result<EventStream> {
    let source = DirtySource::new(inner, w.key).await?;
    Ok(event_stream(source, since, w.cancel, Duration::MAX))
}

/// `Store::list_at`: a watch for the length of one consistent read.
pub(crate) async fn list_at(inner: Arc<Inner>, dir: &str) -> Result<(Vec<KvPair>, u64)> {
    let mut source = DirtySource::new(inner, dir).await?;
    source.snapshot().await
}

#[cfg(test)]
mod tests {
    use super::parent;

    #[test]
    fn parents_of_znode_paths() {
        assert_eq!(parent("/a/b").as_deref(), Some("/a"));
        assert_eq!(parent("/a").as_deref(), Some("/"));
        assert_eq!(parent("/"), None);
    }
}
