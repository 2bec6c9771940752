//! Watches on persistent (and persistent recursive) ZooKeeper watches.
//!
//! A watch registers a persistent watch on the key's znode (`AddWatchMode::Persistent`) or a
//! persistent recursive one on the directory's znode (`PersistentRecursive`, which fires for
//! creates, deletes and data changes of every descendant), then reads the state. Registering
//! first means no change can fall between the read and the watch (source: ZooKeeper
//! Programmer's Guide, "Persistent, Recursive Watches", ZooKeeper 3.6+). Every event triggers
//! a fresh read, and the state is emitted only if it differs from the last one emitted; events
//! already queued are drained first, so a slow consumer sees coalesced states but always the
//! latest.
//!
//! # Behavior on reconnects
//!
//! The loop is the core watch driver of `kvstore_core::backend`. A server drops a
//! connection's watches when the connection ends, so once the client has reconnected (same
//! session) or opened a new session, the stream registers its persistent watch again, re-reads
//! and emits the state if it changed. A read that fails on a connection that stays up (it
//! timed out behind a slow server) is simply made again. The stream ends with an error only
//! when no new session can be opened.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use kvstore_core::backend::{WatchRequest, WatchSource, watch_stream};
use kvstore_core::{Error, KvPair, Result, WatchStream, WatchTreeStream};
use zookeeper_client::{self as zk, AddWatchMode, Client, EventType, PersistentWatcher};

use tokio_util::sync::CancellationToken;

use crate::client::Inner;
use crate::error::from_zk;
use crate::session::timed;

type Read<T> = Box<dyn Fn(Arc<Inner>, Arc<Client>) -> BoxFuture<'static, Result<T>> + Send + Sync>;

/// What to do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Read,
    Wait,
    Register,
}

fn classify(event: &zk::WatchedEvent, mode: AddWatchMode) -> Next {
    match event.event_type {
        EventType::Session => match event.session_state {
            // Reconnected: the server dropped this connection's watches, and zookeeper-client
            // 0.11.2 re-sends only one-shot ones in `SetWatches` (its `resend_watches` never
            // raises the index past the one-shot kinds), so a persistent watch is registered
            // again here, then read.
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => Next::Register,
            zk::SessionState::Disconnected => Next::Wait,
            _ => Next::Register,
        },
        // A key's children do not change its value.
        EventType::NodeChildrenChanged if mode == AddWatchMode::Persistent => Next::Wait,
        _ => Next::Read,
    }
}

/// Registers the watch on the store's current session. The watch itself does not keep the
/// session open: closing the store closes it.
async fn register(inner: &Inner, path: &str, mode: AddWatchMode) -> Result<PersistentWatcher> {
    let client = inner.client().await?;
    timed(inner.timeout(), client.watch(path, mode))
        .await
        .map_err(from_zk)
}

/// A watch's wake-up source: its persistent watcher, registered again on the store's new
/// session after the old one ended; its read: a read through the store's current session.
struct WatcherSource<T> {
    inner: Arc<Inner>,
    path: String,
    mode: AddWatchMode,
    read: Read<T>,
    watcher: Option<PersistentWatcher>,
}

impl<T> WatcherSource<T> {
    /// The next event that calls for a read (`Next::Read`) or a new registration
    /// (`Next::Register`); events already queued are coalesced into it. After a terminal
    /// session event the watcher must not be asked again: zookeeper-client panics on that (its
    /// `PersistentWatcher::changed` docs, "Panics").
    async fn next_event(watcher: &mut PersistentWatcher, mode: AddWatchMode) -> Next {
        loop {
            let mut next = classify(&watcher.changed().await, mode);
            while next != Next::Register {
                let Some(event) = watcher.changed().now_or_never() else {
                    break;
                };
                next = match (next, classify(&event, mode)) {
                    (Next::Register, _) | (_, Next::Register) => Next::Register,
                    (Next::Read, _) | (_, Next::Read) => Next::Read,
                    _ => Next::Wait,
                };
            }
            if next != Next::Wait {
                return next;
            }
        }
    }
}

#[async_trait]
impl<T: PartialEq + Clone + Send + Sync + 'static> WatchSource for WatcherSource<T> {
    type Item = T;

    async fn read(&mut self) -> Result<T> {
        let client = self.inner.client().await?;
        (self.read)(self.inner.clone(), client).await
    }

    async fn changed(&mut self) -> Result<()> {
        let Some(watcher) = self.watcher.as_mut() else {
            return Err(Error::not_reachable(crate::BACKEND, "no watch registered"));
        };
        match Self::next_event(watcher, self.mode).await {
            Next::Register => {
                // Reconnected or session ended: the watcher is done (asking it again after a
                // terminal event panics; after a reconnect the server no longer has it).
                self.watcher = None;
                Err(Error::not_reachable(
                    crate::BACKEND,
                    "the watch's connection or session ended",
                ))
            }
            _ => Ok(()),
        }
    }

    /// After a failed read on a connection that is still up (the read timed out), reads again
    /// at once: the watch is still registered, and waiting for the next notification would
    /// leave the change that woke the read unshown until the key changes again, perhaps never.
    /// Otherwise waits for the client to reconnect or for the session to end, then registers
    /// the watch again on the store's current session (the reconnected one or a new one).
    async fn reconnect(&mut self) -> Result<()> {
        if let Some(watcher) = self.watcher.as_mut() {
            let connected = matches!(
                self.inner.current()?.state(),
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly
            );
            // Events already queued: a session event among them means the server dropped the
            // watch (it is not asked again after one: zookeeper-client panics after a terminal
            // event); the others call for the read that follows anyway.
            let mut lost = false;
            while let Some(event) = watcher.changed().now_or_never() {
                if classify(&event, self.mode) == Next::Register {
                    lost = true;
                    break;
                }
            }
            if connected && !lost {
                return Ok(());
            }
            if !lost {
                // Every session event but `Disconnected` is `Register`.
                Self::next_event(watcher, self.mode).await;
            }
        }
        // Registered before the old watcher is dropped, so the client keeps the path watched.
        let watcher = register(&self.inner, &self.path, self.mode).await?;
        self.watcher = Some(watcher);
        Ok(())
    }
}

/// Registers first, then reads, on the core watch driver. A ZooKeeper watch keeps trying to
/// come back for as long as the store is open: the client bounds each reconnect by the session
/// timeout, and the store opens a new session after an expiry.
async fn stream<T: PartialEq + Clone + Send + Sync + 'static>(
    inner: Arc<Inner>,
    path: String,
    mode: AddWatchMode,
    read: Read<T>,
    cancel: CancellationToken,
) -> Result<BoxStream<'static, Result<T>>> {
    let watcher = register(&inner, &path, mode).await?;
    let mut source = WatcherSource {
        inner: inner.clone(),
        path,
        mode,
        read,
        watcher: Some(watcher),
    };
    let first = source.read().await?;
    Ok(watch_stream(source, first, cancel, Duration::MAX))
}

/// `Store::watch`.
pub(crate) async fn watch_key(inner: Arc<Inner>, w: WatchRequest<'_>) -> Result<WatchStream> {
    let (key, consistent, cancel) = (w.key.to_owned(), w.consistent, w.cancel);
    let path = inner.path(&key);
    let read: Read<Option<KvPair>> = Box::new(move |inner: Arc<Inner>, client: Arc<Client>| {
        let key = key.clone();
        async move { inner.read_key(&client, &key, consistent).await }.boxed()
    });
    stream(inner, path, AddWatchMode::Persistent, read, cancel).await
}

/// `Store::watch_tree`.
pub(crate) async fn watch_tree(inner: Arc<Inner>, w: WatchRequest<'_>) -> Result<WatchTreeStream> {
    let (dir, consistent, cancel) = (w.key.to_owned(), w.consistent, w.cancel);
    let path = inner.dir_path(&dir);
    let read: Read<Vec<KvPair>> = Box::new(move |inner: Arc<Inner>, client: Arc<Client>| {
        let dir = dir.clone();
        async move {
            Ok(crate::tree::list(&inner, &client, &dir, consistent)
                .await?
                .unwrap_or_default())
        }
        .boxed()
    });
    stream(inner, path, AddWatchMode::PersistentRecursive, read, cancel).await
}
