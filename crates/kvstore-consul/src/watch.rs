//! Watches as blocking queries.
//!
//! A watch reads the state (and `X-Consul-Index`), then repeats the read as a blocking query
//! with `?index=<last index>&wait=<watch_wait>`, which returns as soon as the index passes the
//! given one (source: Consul docs, "Blocking Queries"). The state is emitted only if it
//! differs from the last one emitted. The query runs inside the stream's own future, so
//! dropping the stream drops the HTTP request at once — it never waits out the blocking
//! window.
//!
//! # Behavior on errors
//!
//! The loop is the core watch driver of `kvstore_core::backend`. A failed query (agent
//! restarting, no leader) is retried with backoff, from index 0, which is a plain read that
//! re-syncs the state; only when that keeps failing for
//! `watch_reconnect_timeout` does the stream yield the error and end. An index that goes
//! backwards (a restored snapshot) also restarts from 0, as the Consul docs advise. A stream
//! polled again after more than [`STALE_AFTER`] without an answer first re-reads without
//! blocking: an agent that lost its data (a `-dev` agent restarted) while the stream was not
//! being polled has an index below the stream's, and a blocking query with that index would
//! wait out its whole `watch_wait` before showing the new state.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use kvstore_core::backend::{WatchSource, watch_stream};
use kvstore_core::{KvPair, Result, WatchStream, WatchTreeStream};

use crate::api::{Consistency, next_index};
use crate::client::Inner;

type Read<T> = Box<
    dyn Fn(Arc<Inner>, Option<(u64, Duration)>) -> BoxFuture<'static, Result<(T, u64)>>
        + Send
        + Sync,
>;

/// How long after its last answer a watch re-reads without blocking before it blocks again.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(1);

/// A watch's wake-up source is its blocking query, which also returns the new state: the next
/// `read` hands that state over instead of asking again.
struct BlockingQuery<T> {
    inner: Arc<Inner>,
    read: Read<T>,
    /// The `X-Consul-Index` to block on; 0 re-reads without blocking.
    index: u64,
    /// What the last blocking query returned, not yet read.
    answer: Option<T>,
    /// When the last answer arrived.
    answered: tokio::time::Instant,
}

impl<T> BlockingQuery<T> {
    async fn query(&mut self, block: Option<(u64, Duration)>) -> Result<T> {
        let (state, index) = (self.read)(self.inner.clone(), block).await?;
        self.index = next_index(self.index, index);
        self.answered = tokio::time::Instant::now();
        Ok(state)
    }
}

#[async_trait]
impl<T: PartialEq + Clone + Send + Sync + 'static> WatchSource for BlockingQuery<T> {
    type Item = T;

    async fn read(&mut self) -> Result<T> {
        match self.answer.take() {
            Some(state) => Ok(state),
            None => self.query(None).await,
        }
    }

    async fn changed(&mut self) -> Result<()> {
        let fresh = self.answered.elapsed() <= STALE_AFTER;
        let block =
            (self.index > 0 && fresh).then_some((self.index, self.inner.api.config.watch_wait));
        self.answer = Some(self.query(block).await?);
        Ok(())
    }

    /// Starts over from index 0: a plain read that re-syncs the state.
    async fn reconnect(&mut self) -> Result<()> {
        self.index = 0;
        self.answer = None;
        Ok(())
    }
}

async fn stream<T: PartialEq + Clone + Send + Sync + 'static>(
    inner: Arc<Inner>,
    read: Read<T>,
) -> Result<futures::stream::BoxStream<'static, Result<T>>> {
    let mut source = BlockingQuery {
        inner: inner.clone(),
        read,
        index: 0,
        answer: None,
        answered: tokio::time::Instant::now(),
    };
    let first = source.read().await?;
    Ok(watch_stream(
        source,
        first,
        inner.cancel.clone(),
        inner.api.config.watch_reconnect_timeout,
    ))
}

/// `Store::watch`.
pub(crate) async fn watch_key(
    inner: Arc<Inner>,
    key: String,
    consistency: Consistency,
) -> Result<WatchStream> {
    let read: Read<Option<KvPair>> = Box::new(move |inner, block| {
        let key = key.clone();
        async move { inner.read_key(&key, consistency, block).await }.boxed()
    });
    stream(inner, read).await
}

/// `Store::watch_tree`.
pub(crate) async fn watch_tree(
    inner: Arc<Inner>,
    dir: String,
    consistency: Consistency,
) -> Result<WatchTreeStream> {
    let read: Read<Vec<KvPair>> = Box::new(move |inner, block| {
        let dir = dir.clone();
        async move { inner.read_tree(&dir, consistency, block).await }.boxed()
    });
    stream(inner, read).await
}
