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
//! A failed query (agent restarting, no leader) is retried with backoff, from index 0, which
//! is a plain read that re-syncs the state; only when that keeps failing for
//! `watch_reconnect_timeout` does the stream yield the error and end. An index that goes
//! backwards (a restored snapshot) also restarts from 0, as the Consul docs advise. A stream
//! polled again after more than [`STALE_AFTER`] without an answer first re-reads without
//! blocking: an agent that lost its data (a `-dev` agent restarted) while the stream was not
//! being polled has an index below the stream's, and a blocking query with that index would
//! wait out its whole `watch_wait` before showing the new state.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kvstore_core::{Error, KvPair, Result, WatchStream, WatchTreeStream};

use crate::api::{Consistency, next_index};
use crate::client::Inner;

type Read<T> = Box<
    dyn Fn(Arc<Inner>, Option<(u64, Duration)>) -> BoxFuture<'static, Result<(T, u64)>>
        + Send
        + Sync,
>;

struct State<T> {
    inner: Arc<Inner>,
    read: Read<T>,
    index: u64,
    last: Option<T>,
    ended: bool,
    /// When the last answer arrived.
    answered: tokio::time::Instant,
}

/// How long after its last answer a watch re-reads without blocking before it blocks again.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(1);

fn stream<T>(
    inner: Arc<Inner>,
    first: (T, u64),
    read: Read<T>,
) -> futures::stream::BoxStream<'static, Result<T>>
where
    T: PartialEq + Clone + Send + Sync + 'static,
{
    let (state, index) = first;
    let st = State {
        inner,
        read,
        index,
        last: Some(state.clone()),
        ended: false,
        answered: tokio::time::Instant::now(),
    };
    futures::stream::once(futures::future::ready(Ok(state)))
        .chain(futures::stream::unfold(
            st,
            |mut st| async move {
                let mut backoff: Option<backon::ExponentialBackoff> = None;
                let mut failing_since: Option<tokio::time::Instant> = None;
                loop {
                    if st.ended {
                        return None;
                    }
                    let wait = st.inner.api.config.watch_wait;
                    let fresh = st.answered.elapsed() <= STALE_AFTER;
                    let block = (st.index > 0 && fresh).then_some((st.index, wait));
                    let result = tokio::select! {
                        () = st.inner.cancel.cancelled() => return None,
                        result = (st.read)(st.inner.clone(), block) => result,
                    };
                    match result {
                        Ok((state, index)) => {
                            backoff = None;
                            failing_since = None;
                            st.answered = tokio::time::Instant::now();
                            st.index = next_index(st.index, index);
                            if st.last.as_ref() == Some(&state) {
                                continue;
                            }
                            st.last = Some(state.clone());
                            return Some((Ok(state), st));
                        }
                        Err(Error::Closed { .. }) => return None,
                        Err(err) if err.is_transient() => {
                            let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                            if since.elapsed() >= st.inner.api.config.watch_reconnect_timeout {
                                st.ended = true;
                                return Some((Err(err), st));
                            }
                            let delay = backoff
                                .get_or_insert_with(|| {
                                    ExponentialBuilder::default()
                                        .with_min_delay(Duration::from_millis(50))
                                        .with_max_delay(Duration::from_secs(2))
                                        .without_max_times()
                                        .build()
                                })
                                .next()
                                .unwrap_or(Duration::from_secs(2));
                            tracing::debug!(backend = crate::BACKEND, error = %err, ?delay, "watch query failed; retrying");
                            tokio::select! {
                                () = st.inner.cancel.cancelled() => return None,
                                () = tokio::time::sleep(delay) => {}
                            }
                            // Re-read from scratch.
                            st.index = 0;
                        }
                        Err(err) => {
                            st.ended = true;
                            return Some((Err(err), st));
                        }
                    }
                }
            },
        ))
        .boxed()
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
    let first = read(inner.clone(), None).await?;
    Ok(stream(inner, first, read))
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
    let first = read(inner.clone(), None).await?;
    Ok(stream(inner, first, read))
}
