//! Watches from keyspace notifications: each notification triggers a re-read, and the state
//! is emitted only when it differs from the last one emitted.
//!
//! # Behavior on reconnects
//!
//! Every watch of a store subscribes on the store's one shared pub/sub connection (see
//! [`crate::pubsub`]). When it drops (server restart, network), each watch reconnects with
//! exponential backoff for up to `watch_reconnect_timeout`, re-subscribes (on a new shared
//! connection), re-reads, and emits the current state if it changed while it was away — so no
//! final state is ever missed. If reconnecting fails for that long, the stream yields the error
//! and ends.

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::client::{Inner, Logged};
use crate::pubsub::{Subscribed, Subscription, subscribe};
use async_trait::async_trait;
use futures::stream::BoxStream;
use kvstore_core::backend::{
    EventSource, Since, WatchRequest, WatchSource, event_stream, watch_stream as drive,
};
use kvstore_core::{Error, EventStream, KvPair, Result};

/// Wake-ups from a keyspace-notification subscription on the store's shared pub/sub
/// connection, subscribed again after it was lost.
struct Wakeups {
    inner: Arc<Inner>,
    sub: Subscription,
    subscribed: Option<Subscribed>,
}

impl Wakeups {
    /// Subscribes to `sub`.
    async fn subscribe(inner: &Arc<Inner>, sub: Subscription) -> Result<Wakeups> {
        let subscribed = subscribe(inner, &sub).await?;
        Ok(Wakeups {
            inner: inner.clone(),
            sub,
            subscribed: Some(subscribed),
        })
    }

    /// A notification, with the burst one write emits coalesced into one wake-up.
    async fn changed(&mut self) -> Result<()> {
        let Some(subscribed) = self.subscribed.as_mut() else {
            return Err(Error::not_reachable(crate::BACKEND, "not subscribed"));
        };
        match subscribed.next().await {
            Some(()) if subscribed.drain() => Ok(()),
            _ => {
                self.subscribed = None;
                Err(Error::not_reachable(
                    crate::BACKEND,
                    "the pub/sub connection was lost",
                ))
            }
        }
    }

    async fn reconnect(&mut self) -> Result<()> {
        self.subscribed = Some(subscribe(&self.inner, &self.sub).await?);
        tracing::debug!(backend = crate::BACKEND, "watch re-subscribed; re-reading");
        Ok(())
    }
}

/// A watch's wake-up source: its keyspace-notification subscription; its read: a read of the
/// key or directory through the store's connection.
struct NotificationSource<F> {
    wakeups: Wakeups,
    read: F,
}

#[async_trait]
impl<T, F, Fut> WatchSource for NotificationSource<F>
where
    T: PartialEq + Clone + Send + 'static,
    F: Fn(Arc<Inner>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send,
{
    type Item = T;

    async fn read(&mut self) -> Result<T> {
        (self.read)(self.wakeups.inner.clone()).await
    }

    async fn changed(&mut self) -> Result<()> {
        self.wakeups.changed().await
    }

    async fn reconnect(&mut self) -> Result<()> {
        self.wakeups.reconnect().await
    }
}

/// Builds a watch stream on the core watch driver: subscribe first, then read, so no change
/// between the snapshot and the first wait is lost.
///
/// # Errors
///
/// The subscription's or the first read's error.
pub(crate) async fn watch_stream<T, F, Fut>(
    inner: Arc<Inner>,
    sub: Subscription,
    read: F,
    cancel: CancellationToken,
) -> Result<BoxStream<'static, Result<T>>>
where
    T: PartialEq + Clone + Send + 'static,
    F: Fn(Arc<Inner>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send,
{
    let mut source = NotificationSource {
        wakeups: Wakeups::subscribe(&inner, sub).await?,
        read,
    };
    let first = source.read().await?;
    Ok(drive(
        source,
        first,
        cancel,
        inner.config.watch_reconnect_timeout,
    ))
}

/// The source of a `watch_events` stream: the change log the scripts append to (see
/// [`crate::scripts::EVENTS`]), read after each keyspace notification under the directory
/// (a pair's expiry included, which the read logs).
struct LogSource {
    wakeups: Wakeups,
    dir: String,
    /// The log's epoch at the last read: a read that finds another one means the server lost
    /// its data, and no revision after it is comparable.
    epoch: Option<String>,
}

impl LogSource {
    fn check_epoch(&mut self, at: &Logged) -> Result<()> {
        match &self.epoch {
            Some(epoch) if *epoch != at.epoch => Err(Error::backend(
                crate::BACKEND,
                "the change log started again (the server lost its data, or was flushed): \
                 watch again for a Snapshot",
            )),
            _ => {
                self.epoch = Some(at.epoch.clone());
                Ok(())
            }
        }
    }
}

#[async_trait]
impl EventSource for LogSource {
    async fn snapshot(&mut self) -> Result<(Vec<KvPair>, u64)> {
        let (pairs, at) = self.wakeups.inner.read_tree_at(&self.dir).await?;
        self.check_epoch(&at)?;
        Ok((pairs, at.revision))
    }

    async fn since(&mut self, after: u64) -> Result<Since> {
        let (since, at) = self.wakeups.inner.read_since(&self.dir, after).await?;
        self.check_epoch(&at)?;
        Ok(since)
    }

    async fn changed(&mut self) -> Result<()> {
        self.wakeups.changed().await
    }

    async fn reconnect(&mut self) -> Result<()> {
        self.wakeups.reconnect().await
    }
}

/// `watch_events(dir)`: subscribed to the directory's keyspace notifications before the
/// first read.
///
/// # Errors
///
/// [`Error::InvalidConfig`] when keyspace notifications are off; the subscription's error.
pub(crate) async fn watch_events(
    inner: &Arc<Inner>,
    w: WatchRequest<'_>,
    since: Option<u64>,
) -> Result<EventStream> {
    inner.check_notifications().await?;
    let sub = Subscription::Pattern(inner.keyspace_tree_pattern(w.key));
    let source = LogSource {
        wakeups: Wakeups::subscribe(inner, sub).await?,
        dir: w.key.to_owned(),
        epoch: None,
    };
    let timeout = inner.config.watch_reconnect_timeout;
    Ok(event_stream(source, since, w.cancel, timeout))
}
