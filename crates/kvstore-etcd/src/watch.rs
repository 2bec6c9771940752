//! Revision-exact watches.
//!
//! A watch reads its state at revision `R`, then watches from `R + 1`, so no event between the
//! read and the watch is lost (source: etcd docs, "Watch API" — `start_revision`). Each watch
//! response's events are applied to the state and the new state is emitted if it changed.
//!
//! # Behavior on reconnects
//!
//! Every watch of a store rides the store's one gRPC watch stream (`mux.rs`). The loop is the
//! core watch driver of `kvstore_core::backend`. When the stream breaks (or drops a watch for
//! falling behind), the watch is re-opened from the revision after the last one seen,
//! with backoff, for up to `watch_reconnect_timeout`. If that revision was compacted away, the
//! state is read afresh and emitted if it changed. Only when reconnecting fails for that long
//! does the stream yield the error and end.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use etcd_client::{Event, EventType, WatchOptions};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use kvstore_core::backend::{
    EventSource, Since, WatchRequest, WatchSource, event_stream, watch_stream,
};
use kvstore_core::{Error, EventStream, KvPair, Result, WatchStream, WatchTreeStream};

use tokio_util::sync::CancellationToken;

use crate::client::Inner;
use crate::mux::Registration;

type Reload<S> = Box<dyn Fn(Arc<Inner>) -> BoxFuture<'static, Result<(S, i64)>> + Send + Sync>;

/// What one watch keeps: how to apply events, how to show the state, how to re-read it.
struct Spec<S, T> {
    start: String,
    end: Option<Vec<u8>>,
    apply: fn(&Inner, &mut S, &Event),
    view: fn(&S) -> T,
    reload: Reload<S>,
}

/// Watches `start` (to `end`) from revision `from` on the store's shared watch stream.
async fn open(inner: &Inner, start: &str, end: Option<&[u8]>, from: i64) -> Result<Registration> {
    let mut opts = WatchOptions::new().with_start_revision(from);
    if let Some(end) = end {
        opts = opts.with_range(end.to_vec());
    }
    inner
        .watch_hub
        .watch(&inner.client, &inner.tasks, start.as_bytes(), opts)
        .await
}

/// `watch(key)`.
pub(crate) async fn watch_key(inner: Arc<Inner>, w: WatchRequest<'_>) -> Result<WatchStream> {
    let (key, consistent, cancel) = (w.key.to_owned(), w.consistent, w.cancel);
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
    Ok(stream_seeded(inner, spec, pair, rev, first, cancel))
}

/// `watch_tree(dir)`.
pub(crate) async fn watch_tree(inner: Arc<Inner>, w: WatchRequest<'_>) -> Result<WatchTreeStream> {
    let (dir, consistent, cancel) = (w.key.to_owned(), w.consistent, w.cancel);
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
    Ok(stream_seeded(inner, spec, data, rev, first, cancel))
}

/// A watch's wake-up source is its etcd watch stream; each response's events are applied to
/// the state the source keeps, so a read is a view of it and costs no request.
struct RevisionSource<S, T> {
    inner: Arc<Inner>,
    spec: Spec<S, T>,
    data: S,
    next_rev: i64,
    stream: Option<Registration>,
}

#[async_trait]
impl<S, T> WatchSource for RevisionSource<S, T>
where
    S: Send + 'static,
    T: PartialEq + Clone + Send + 'static,
{
    type Item = T;

    async fn read(&mut self) -> Result<T> {
        Ok((self.spec.view)(&self.data))
    }

    async fn changed(&mut self) -> Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(Error::not_reachable(crate::BACKEND, "no watch stream"));
        };
        let Some(resp) = stream.message().await else {
            tracing::debug!(
                backend = crate::BACKEND,
                next_rev = self.next_rev,
                "watch stream broke; resuming"
            );
            self.stream = None;
            return Err(Error::not_reachable(
                crate::BACKEND,
                "the watch stream broke",
            ));
        };
        if resp.compact_revision() > 0 || resp.canceled() {
            // Our start revision was compacted: re-read the state, then watch after it (the
            // next wait finds no stream, and the driver reopens it from the new revision).
            let (data, rev) = (self.spec.reload)(self.inner.clone()).await?;
            self.data = data;
            self.next_rev = rev + 1;
            self.stream = None;
            return Ok(());
        }
        for event in resp.events() {
            (self.spec.apply)(&self.inner, &mut self.data, event);
            if let Some(kv) = event.kv() {
                self.next_rev = self.next_rev.max(kv.mod_revision() + 1);
            }
        }
        Ok(())
    }

    /// Reopens the watch from the revision after the last one seen.
    async fn reconnect(&mut self) -> Result<()> {
        let stream = open(
            &self.inner,
            &self.spec.start,
            self.spec.end.as_deref(),
            self.next_rev,
        )
        .await?;
        self.stream = Some(stream);
        Ok(())
    }
}

/// The initial state as the first item, then the changes, on the core watch driver.
fn stream_seeded<S, T>(
    inner: Arc<Inner>,
    spec: Spec<S, T>,
    data: S,
    rev: i64,
    first: Registration,
    cancel: CancellationToken,
) -> BoxStream<'static, Result<T>>
where
    S: Send + 'static,
    T: PartialEq + Clone + Send + 'static,
{
    let initial = (spec.view)(&data);
    let timeout = inner.config.watch_reconnect_timeout;
    let source = RevisionSource {
        inner,
        spec,
        data,
        next_rev: rev + 1,
        stream: Some(first),
    };
    watch_stream(source, initial, cancel, timeout)
}

/// The source of a `watch_events` stream: an etcd watch of the directory's range from the
/// revision after the consumer's, whose responses hold complete revisions (source: etcd docs,
/// "Watch API" — events of one revision are never split across responses), so each read ends
/// on a revision the fold is exact at. A compacted start revision makes the driver send a
/// `Snapshot` and watch again after it.
struct EventsSource {
    inner: Arc<Inner>,
    dir: String,
    stream: Option<Registration>,
    /// The revision the stream has delivered everything up to.
    seen: u64,
    /// Responses `changed` received, not yet read.
    pending: Vec<etcd_client::WatchResponse>,
}

impl EventsSource {
    fn broke(&mut self) -> Error {
        self.stream = None;
        Error::not_reachable(crate::BACKEND, "the watch stream broke")
    }
}

#[async_trait]
impl EventSource for EventsSource {
    async fn snapshot(&mut self) -> Result<(Vec<KvPair>, u64)> {
        let (pairs, rev) = self.inner.read_tree(&self.dir, true).await?;
        // The next `since` watches from after this read.
        self.stream = None;
        Ok((pairs.unwrap_or_default(), u64::try_from(rev).unwrap_or(0)))
    }

    async fn since(&mut self, after: u64) -> Result<Since> {
        if self.stream.is_none() || self.seen != after {
            let (start, end) = self.inner.tree_range(&self.dir);
            let from = i64::try_from(after).unwrap_or(i64::MAX).saturating_add(1);
            self.stream = Some(open(&self.inner, &start, Some(&end), from).await?);
            self.seen = after;
            self.pending.clear();
        }
        loop {
            match self.stream.as_mut().map(Registration::try_message) {
                Some(Ok(Some(response))) => self.pending.push(response),
                Some(Ok(None)) => break,
                _ => return Err(self.broke()),
            }
        }
        let mut events = Vec::new();
        for response in std::mem::take(&mut self.pending) {
            if response.compact_revision() > 0 {
                self.stream = None;
                return Ok(Since::Unknown);
            }
            if response.canceled() {
                return Err(Error::backend(
                    crate::BACKEND,
                    format!(
                        "the server cancelled the watch: {}",
                        response.cancel_reason()
                    ),
                ));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = u64::try_from(kv.mod_revision()).unwrap_or(0);
                self.seen = self.seen.max(revision);
                // Bookkeeping keys (locks) are in the range of the whole keyspace: no events.
                let Some(key) = self.inner.user_key(kv.key()) else {
                    continue;
                };
                events.push(match event.event_type() {
                    EventType::Put => kvstore_core::Event::put(key, kv.value().to_vec(), revision),
                    EventType::Delete => kvstore_core::Event::delete(key, revision),
                });
            }
        }
        Ok(Since::Events(events, self.seen))
    }

    async fn changed(&mut self) -> Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        match stream.message().await {
            Some(response) => {
                self.pending.push(response);
                Ok(())
            }
            None => Err(self.broke()),
        }
    }
}

/// `watch_events(dir)`: on the core event driver, over a watch of the directory's range.
pub(crate) fn watch_events(
    inner: Arc<Inner>,
    w: WatchRequest<'_>,
    since: Option<u64>,
) -> EventStream {
    let timeout = inner.config.watch_reconnect_timeout;
    let source = EventsSource {
        inner,
        dir: w.key.to_owned(),
        stream: None,
        seen: 0,
        pending: Vec::new(),
    };
    event_stream(source, since, w.cancel, timeout)
}
