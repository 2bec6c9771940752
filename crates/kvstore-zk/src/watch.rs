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
//! While the client is disconnected, the session (and the watch) live on the server; on
//! reconnecting the client re-registers the watch, and the stream re-reads and emits the state
//! if it changed. If the session expired, the stream registers again on the store's new
//! session and re-reads. The stream ends with an error only when no new session can be opened.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use kvstore_core::{Error, KvPair, Result, WatchStream, WatchTreeStream};
use zookeeper_client::{self as zk, AddWatchMode, Client, EventType, PersistentWatcher};

use crate::client::Inner;
use crate::error::from_zk;
use crate::session::timed;

type Read<T> = Box<dyn Fn(Arc<Inner>, Arc<Client>) -> BoxFuture<'static, Result<T>> + Send + Sync>;

struct State<T> {
    inner: Arc<Inner>,
    path: String,
    mode: AddWatchMode,
    read: Read<T>,
    watcher: Option<PersistentWatcher>,
    last: Option<T>,
    ended: bool,
}

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
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => Next::Read,
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

fn stream<T>(
    inner: Arc<Inner>,
    path: String,
    mode: AddWatchMode,
    first: PersistentWatcher,
    read: Read<T>,
) -> BoxStream<'static, Result<T>>
where
    T: PartialEq + Clone + Send + Sync + 'static,
{
    let state = State {
        inner,
        path,
        mode,
        read,
        watcher: Some(first),
        last: None,
        ended: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.ended || st.inner.cancel.is_cancelled() {
                return None;
            }
            let Some(watcher) = st.watcher.as_mut() else {
                match register(&st.inner, &st.path, st.mode).await {
                    Ok(registered) => {
                        st.watcher = Some(registered);
                    }
                    Err(err) if err.is_transient() => {
                        // No session yet (the ensemble is down): try again shortly.
                        tokio::select! {
                            () = st.inner.cancel.cancelled() => return None,
                            () = tokio::time::sleep(st.inner.config.connect_timeout / 4) => {}
                        }
                        continue;
                    }
                    Err(err) => {
                        st.ended = true;
                        return Some((Err(err), st));
                    }
                }
                // Freshly registered: read below.
                if let Some(item) = read_and_emit(&mut st).await {
                    return Some((item, st));
                }
                continue;
            };
            if st.last.is_some() {
                let event = tokio::select! {
                    () = st.inner.cancel.cancelled() => return None,
                    event = watcher.changed() => event,
                };
                let mut next = classify(&event, st.mode);
                // Coalesce what is already queued. After a terminal session event (`Register`)
                // the watcher must not be asked again: zookeeper-client panics on that (its
                // `PersistentWatcher::changed` docs, "Panics").
                while next != Next::Register {
                    let Some(event) = watcher.changed().now_or_never() else {
                        break;
                    };
                    next = match (next, classify(&event, st.mode)) {
                        (Next::Register, _) | (_, Next::Register) => Next::Register,
                        (Next::Read, _) | (_, Next::Read) => Next::Read,
                        _ => Next::Wait,
                    };
                }
                match next {
                    Next::Wait => continue,
                    Next::Register => {
                        st.watcher = None;
                        continue;
                    }
                    Next::Read => {}
                }
            }
            if let Some(item) = read_and_emit(&mut st).await {
                return Some((item, st));
            }
        }
    })
    .boxed()
}

/// Reads the state; `Some` with the item to emit, `None` when nothing changed or the read
/// failed transiently (the next event — a reconnect — triggers another read).
async fn read_and_emit<T: PartialEq + Clone + Send + Sync>(st: &mut State<T>) -> Option<Result<T>> {
    let read = async {
        let client = st.inner.client().await?;
        (st.read)(st.inner.clone(), client).await
    };
    match read.await {
        Ok(state) if st.last.as_ref() == Some(&state) => None,
        Ok(state) => {
            st.last = Some(state.clone());
            Some(Ok(state))
        }
        Err(err) if err.is_transient() && st.last.is_some() => {
            tracing::debug!(backend = crate::BACKEND, error = %err, "watch read failed; waiting for the reconnect");
            None
        }
        Err(Error::Closed { .. }) => None,
        Err(err) => {
            st.ended = true;
            Some(Err(err))
        }
    }
}

/// `Store::watch`.
pub(crate) async fn watch_key(
    inner: Arc<Inner>,
    key: String,
    consistent: bool,
) -> Result<WatchStream> {
    let path = inner.path(&key);
    let read: Read<Option<KvPair>> = Box::new(move |inner: Arc<Inner>, client: Arc<Client>| {
        let key = key.clone();
        async move { inner.read_key(&client, &key, consistent).await }.boxed()
    });
    let first = register(&inner, &path, AddWatchMode::Persistent).await?;
    Ok(stream(inner, path, AddWatchMode::Persistent, first, read))
}

/// `Store::watch_tree`.
pub(crate) async fn watch_tree(
    inner: Arc<Inner>,
    dir: String,
    consistent: bool,
) -> Result<WatchTreeStream> {
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
    let first = register(&inner, &path, AddWatchMode::PersistentRecursive).await?;
    Ok(stream(
        inner,
        path,
        AddWatchMode::PersistentRecursive,
        first,
        read,
    ))
}
