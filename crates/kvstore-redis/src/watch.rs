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

use crate::client::Inner;
use crate::pubsub::{Subscribed, Subscription, subscribe};
use async_trait::async_trait;
use futures::stream::BoxStream;
use kvstore_core::backend::{WatchSource, watch_stream as drive};
use kvstore_core::{Error, Result};

/// A watch's wake-up source: its keyspace-notification subscription; its read: a read of the
/// key or directory through the store's connection.
struct NotificationSource<F> {
    inner: Arc<Inner>,
    sub: Subscription,
    subscribed: Option<Subscribed>,
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
        (self.read)(self.inner.clone()).await
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
    let subscribed = subscribe(&inner, &sub).await?;
    let mut source = NotificationSource {
        inner: inner.clone(),
        sub,
        subscribed: Some(subscribed),
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
