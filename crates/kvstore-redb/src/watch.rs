//! In-process watches on the core watch driver: re-read on every relevant committed change.
//!
//! A key watch waits on a signal of its own, which only changes to its key fire (the commit
//! wakes exactly the watches of the keys it wrote), and reads in place; a directory watch reads
//! the change feed, filters it by its directory, and reads on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use kvstore_core::backend::{
    EventSource, Since, WatchRequest, WatchSource, event_stream, watch_stream,
};
use kvstore_core::{Error, EventStream, KvPair, Result};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::client::{Change, Shared};

/// A watch's wake-up source is the in-process change feed; its read is a transaction on the
/// blocking pool.
struct FeedSource<R, F> {
    shared: Arc<Shared>,
    changes: Receiver<Change>,
    relevant: R,
    read: Arc<F>,
}

#[async_trait]
impl<T, R, F> WatchSource for FeedSource<R, F>
where
    T: PartialEq + Clone + Send + Sync + 'static,
    R: Fn(&Change) -> bool + Send + Sync + 'static,
    F: Fn(&Shared) -> Result<T> + Send + Sync + 'static,
{
    type Item = T;

    async fn read(&mut self) -> Result<T> {
        let read = self.read.clone();
        self.shared.blocking(move |s| read(s)).await
    }

    /// A relevant change, or a lagging subscription (more than the feed's capacity behind),
    /// which re-reads too, so nothing is lost.
    async fn changed(&mut self) -> Result<()> {
        loop {
            match self.changes.recv().await {
                Ok(change) if !(self.relevant)(&change) => {}
                Ok(_) | Err(RecvError::Lagged(_)) => return Ok(()),
                Err(RecvError::Closed) => {
                    return Err(Error::Closed {
                        backend: self.shared.backend,
                    });
                }
            }
        }
    }

    /// The feed is in-process: it is never lost while the database is open.
    async fn reconnect(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Builds a watch stream over `read`.
///
/// The stream subscribes to the change feed *before* its first read, so no commit can fall
/// between the snapshot and the first wait. After that, every change that `relevant` accepts
/// triggers a fresh read, and the result is emitted only if it differs from the last one
/// emitted: a consumer slower than the writers sees states coalesced but always the latest.
/// The stream ends when the handle is closed or dropped (`cancel`), and after yielding an
/// `Err` from a failed read.
///
/// # Errors
///
/// The first read's error.
pub(crate) async fn watch_feed<T, R, F>(
    shared: &Arc<Shared>,
    cancel: CancellationToken,
    relevant: R,
    read: F,
) -> Result<BoxStream<'static, Result<T>>>
where
    T: PartialEq + Clone + Send + Sync + 'static,
    R: Fn(&Change) -> bool + Send + Sync + 'static,
    F: Fn(&Shared) -> Result<T> + Send + Sync + 'static,
{
    let source = FeedSource {
        changes: shared.subscribe(),
        shared: shared.clone(),
        relevant,
        read: Arc::new(read),
    };
    start(source, cancel).await
}

/// The first read, then the watch driver. In-process sources are never lost, so there is
/// nothing to reconnect to (no reconnect timeout).
async fn start<S: WatchSource>(
    mut source: S,
    cancel: CancellationToken,
) -> Result<BoxStream<'static, Result<S::Item>>> {
    let first = source.read().await?;
    Ok(watch_stream(
        source,
        first,
        cancel,
        std::time::Duration::ZERO,
    ))
}

/// A key watch's wake-up source: its own signal, fired by every commit that changes the key.
struct KeySource {
    shared: Arc<Shared>,
    key: Arc<str>,
    signal: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl WatchSource for KeySource {
    type Item = Option<kvstore_core::KvPair>;

    /// In place, as `get`: a point read is faster than the hop to the blocking pool.
    async fn read(&mut self) -> Result<Self::Item> {
        self.shared.read_key(&self.key)
    }

    async fn changed(&mut self) -> Result<()> {
        self.signal.notified().await;
        Ok(())
    }

    /// The signal is in-process: it is never lost while the database is open.
    async fn reconnect(&mut self) -> Result<()> {
        Ok(())
    }
}

impl Drop for KeySource {
    fn drop(&mut self) {
        self.shared.forget_key_signal(&self.key, &self.signal);
    }
}

/// `watch(key)`: registers the key's signal *before* the first read, so no commit can fall
/// between the snapshot and the first wait; then as [`watch_feed`].
///
/// # Errors
///
/// The first read's error.
pub(crate) async fn watch_key_signal(
    shared: &Arc<Shared>,
    cancel: CancellationToken,
    key: Arc<str>,
) -> Result<BoxStream<'static, Result<Option<kvstore_core::KvPair>>>> {
    let source = KeySource {
        signal: shared.watch_key_signal(key.clone()),
        shared: shared.clone(),
        key,
    };
    start(source, cancel).await
}

/// The source of a `watch_events` stream: the change log, read after every relevant change
/// on the feed (or after falling behind it).
struct LogSource {
    shared: Arc<Shared>,
    dir: Arc<str>,
    changes: Receiver<Change>,
}

#[async_trait]
impl EventSource for LogSource {
    async fn snapshot(&mut self) -> Result<(Vec<KvPair>, u64)> {
        let dir = self.dir.clone();
        self.shared.blocking(move |s| s.read_tree_at(&dir)).await
    }

    async fn since(&mut self, after: u64) -> Result<Since> {
        let dir = self.dir.clone();
        self.shared
            .blocking(move |s| s.read_since(&dir, after))
            .await
    }

    async fn changed(&mut self) -> Result<()> {
        loop {
            match self.changes.recv().await {
                Ok(change) if !change.touches_tree(&self.dir) => {}
                Ok(_) | Err(RecvError::Lagged(_)) => return Ok(()),
                Err(RecvError::Closed) => {
                    return Err(Error::Closed {
                        backend: self.shared.backend,
                    });
                }
            }
        }
    }
}

/// `watch_events(dir)` on the change log: subscribed to the feed before the first read.
pub(crate) fn watch_events(
    shared: &Arc<Shared>,
    w: WatchRequest<'_>,
    since: Option<u64>,
) -> EventStream {
    let source = LogSource {
        shared: shared.clone(),
        dir: w.key.into(),
        changes: shared.subscribe(),
    };
    // The log is in the file: there is no connection to lose.
    event_stream(source, since, w.cancel, Duration::ZERO)
}
