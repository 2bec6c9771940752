//! Revision-exact watches.
//!
//! A watch reads its state at revision `R`, then watches from `R + 1`, so no event between the
//! read and the watch is lost (source: etcd docs, "Watch API" — `start_revision`). Each watch
//! response's events are applied to the state and the new state is emitted if it changed.
//!
//! # Behavior on reconnects
//!
//! When the watch stream breaks, it is re-opened from the revision after the last one seen,
//! with backoff, for up to `watch_reconnect_timeout`. If that revision was compacted away, the
//! state is read afresh and emitted if it changed. Only when reconnecting fails for that long
//! does the stream yield the error and end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use etcd_client::{Event, EventType, WatchOptions, WatchResponse};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use kvstore_core::{Error, KvPair, Result, WatchStream, WatchTreeStream};

use crate::client::Inner;
use crate::error::from_etcd;

type Reload<S> = Box<dyn Fn(Arc<Inner>) -> BoxFuture<'static, Result<(S, i64)>> + Send + Sync>;

/// What one watch keeps: how to apply events, how to show the state, how to re-read it.
struct Spec<S, T> {
    start: String,
    end: Option<Vec<u8>>,
    apply: fn(&Inner, &mut S, &Event),
    view: fn(&S) -> T,
    reload: Reload<S>,
}

struct State<S, T> {
    inner: Arc<Inner>,
    spec: Spec<S, T>,
    data: S,
    next_rev: i64,
    stream: Option<etcd_client::WatchStream>,
    last: Option<T>,
    ended: bool,
}

async fn open(
    inner: &Inner,
    start: &str,
    end: Option<&[u8]>,
    from: i64,
) -> Result<etcd_client::WatchStream> {
    let mut opts = WatchOptions::new().with_start_revision(from);
    if let Some(end) = end {
        opts = opts.with_range(end.to_vec());
    }
    inner
        .client()
        .watch(start, Some(opts))
        .await
        .map_err(from_etcd)
}

async fn reopen(
    inner: &Inner,
    start: &str,
    end: Option<&[u8]>,
    from: i64,
) -> Option<Result<etcd_client::WatchStream>> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_total_delay(Some(inner.config.watch_reconnect_timeout))
        .without_max_times();
    let attempt = (|| open(inner, start, end, from))
        .retry(backoff)
        .when(Error::is_transient);
    tokio::select! {
        () = inner.cancel.cancelled() => None,
        result = attempt => Some(result),
    }
}

/// `watch(key)`.
pub(crate) async fn watch_key(
    inner: Arc<Inner>,
    key: String,
    consistent: bool,
) -> Result<WatchStream> {
    let (pair, rev) = inner.read_key(&key, consistent).await?;
    let etcd_key = inner.data_key(&key);
    let first = open(&inner, &etcd_key, None, rev + 1).await?;
    let reload: Reload<Option<KvPair>> = Box::new(move |inner| {
        let key = key.clone();
        Box::pin(async move { inner.read_key(&key, true).await })
    });
    let spec = Spec {
        start: etcd_key,
        end: None,
        apply: |inner, state: &mut Option<KvPair>, event| match event.event_type() {
            EventType::Put => *state = event.kv().and_then(|kv| inner.pair(kv)),
            EventType::Delete => *state = None,
        },
        view: Clone::clone,
        reload,
    };
    Ok(stream_seeded(inner, spec, pair, rev, first))
}

/// `watch_tree(dir)`.
pub(crate) async fn watch_tree(
    inner: Arc<Inner>,
    dir: String,
    consistent: bool,
) -> Result<WatchTreeStream> {
    let (pairs, rev) = inner.read_tree(&dir, consistent).await?;
    let (start, end) = inner.tree_range(&dir);
    let first = open(&inner, &start, Some(&end), rev + 1).await?;
    let to_map = |pairs: Option<Vec<KvPair>>| {
        pairs
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.key.clone(), p))
            .collect()
    };
    let data: BTreeMap<String, KvPair> = to_map(pairs);
    let reload: Reload<BTreeMap<String, KvPair>> = Box::new(move |inner| {
        let dir = dir.clone();
        Box::pin(async move {
            let (pairs, rev) = inner.read_tree(&dir, true).await?;
            Ok((to_map(pairs), rev))
        })
    });
    let spec = Spec {
        start,
        end: Some(end),
        apply: |inner, state: &mut BTreeMap<String, KvPair>, event| {
            let Some(kv) = event.kv() else { return };
            let Some(key) = inner.user_key(kv.key()) else {
                return;
            };
            match event.event_type() {
                EventType::Put => {
                    if let Some(pair) = inner.pair(kv) {
                        state.insert(key.to_owned(), pair);
                    }
                }
                EventType::Delete => {
                    state.remove(key);
                }
            }
        },
        view: |state| state.values().cloned().collect(),
        reload,
    };
    Ok(stream_seeded(inner, spec, data, rev, first))
}

/// The initial state as the first item, then the changes; the initial state is recorded as the
/// last one emitted, so the tail emits only real changes.
fn stream_seeded<S, T>(
    inner: Arc<Inner>,
    spec: Spec<S, T>,
    data: S,
    rev: i64,
    first: etcd_client::WatchStream,
) -> BoxStream<'static, Result<T>>
where
    S: Send + 'static,
    T: PartialEq + Clone + Send + 'static,
{
    let initial = (spec.view)(&data);
    let state = State {
        inner,
        spec,
        data,
        next_rev: rev + 1,
        stream: Some(first),
        last: Some(initial.clone()),
        ended: false,
    };
    futures::stream::once(async move { Ok(initial) })
        .chain(tail(state))
        .boxed()
}

fn tail<S, T>(state: State<S, T>) -> impl futures::Stream<Item = Result<T>> + Send + 'static
where
    S: Send + 'static,
    T: PartialEq + Clone + Send + 'static,
{
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.ended || st.inner.cancel.is_cancelled() {
                return None;
            }
            let Some(stream) = st.stream.as_mut() else {
                match reopen(
                    &st.inner,
                    &st.spec.start,
                    st.spec.end.as_deref(),
                    st.next_rev,
                )
                .await?
                {
                    Ok(s) => st.stream = Some(s),
                    Err(err) => {
                        st.ended = true;
                        return Some((Err(err), st));
                    }
                }
                continue;
            };
            let message: Option<WatchResponse> = tokio::select! {
                biased;
                () = st.inner.cancel.cancelled() => return None,
                message = stream.message() => message.ok().flatten(),
            };
            let Some(resp) = message else {
                tracing::debug!(
                    backend = crate::BACKEND,
                    next_rev = st.next_rev,
                    "watch stream broke; resuming"
                );
                st.stream = None;
                continue;
            };
            if resp.compact_revision() > 0 || resp.canceled() {
                // Our start revision was compacted: re-read the state, then watch after it.
                match (st.spec.reload)(st.inner.clone()).await {
                    Ok((data, rev)) => {
                        st.data = data;
                        st.next_rev = rev + 1;
                        st.stream = None;
                    }
                    Err(err) if err.is_transient() => {
                        st.stream = None;
                        continue;
                    }
                    Err(err) => {
                        st.ended = true;
                        return Some((Err(err), st));
                    }
                }
            } else {
                for event in resp.events() {
                    (st.spec.apply)(&st.inner, &mut st.data, event);
                    if let Some(kv) = event.kv() {
                        st.next_rev = st.next_rev.max(kv.mod_revision() + 1);
                    }
                }
            }
            let view = (st.spec.view)(&st.data);
            if st.last.as_ref() != Some(&view) {
                st.last = Some(view.clone());
                return Some((Ok(view), st));
            }
        }
    })
}
