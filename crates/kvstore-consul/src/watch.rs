//! Watches as shared blocking queries.
//!
//! A watch reads its state (and `X-Consul-Index`) once, then follows the answers of a shared
//! poller (see [`crate::hub`]): a loop of blocking queries with `?index=<last index>&wait=
//! <watch_wait>`, each returning as soon as the index passes the given one (source: Consul
//! docs, "Blocking Queries"). Every answer is turned into the watch's state (its key, or its
//! directory's pairs), which is emitted only if it differs from the last one emitted. Dropping
//! the stream drops its hold on the poller; the last one gone aborts the query at once.
//!
//! # Behavior on errors
//!
//! The loop is the core watch driver of `kvstore_core::backend`. The poller retries a failed
//! query (agent restarting, no leader) with backoff from index 0, a plain read that re-syncs
//! the state, for as long as it has watchers; an index that goes backwards (a restored
//! snapshot, a restarted `-dev` agent) also restarts from 0, as the Consul docs advise. The
//! watchers see the state of the first answer after the agent is back.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use kvstore_core::backend::{
    EventSource, Since, WatchRequest, WatchSource, event_stream, watch_stream,
};
use kvstore_core::{
    Error, Event, EventStream, KvPair, Result, WatchStream, WatchTreeStream, is_descendant,
};
use tokio::sync::watch;

use tokio_util::sync::CancellationToken;

use crate::BACKEND;
use crate::api::{Consistency, Entry};
use crate::client::Inner;
use crate::hub::{Answer, Poller};

type Read<T> = Box<dyn Fn(Arc<Inner>) -> BoxFuture<'static, Result<(T, u64)>> + Send + Sync>;
type Extract<T> = Box<dyn Fn(&Inner, &[Entry]) -> Result<T> + Send + Sync>;

/// A watch's wake-up source: the answers of the shared poller that serves it (see
/// [`crate::hub`]). Its first state comes from a read of its own, so it reflects every write
/// that completed before the watch was opened; an answer is used only once its index has
/// reached that read's (unless the poller started over since: then indexes are not
/// comparable), so the stream never goes back to an older state.
struct SharedQuery<T> {
    inner: Arc<Inner>,
    /// Held for as long as the watch lives; dropping the last holder ends the query.
    _poller: Arc<Poller>,
    answers: watch::Receiver<Answer>,
    read: Read<T>,
    extract: Extract<T>,
    /// The index of the watch's own read, and the poller's epoch then: older answers of that
    /// epoch are skipped.
    floor: (u64, u64),
    /// The state taken from the last answer, not yet read.
    pending: Option<T>,
}

#[async_trait]
impl<T: PartialEq + Clone + Send + Sync + 'static> WatchSource for SharedQuery<T> {
    type Item = T;

    async fn read(&mut self) -> Result<T> {
        if let Some(state) = self.pending.take() {
            return Ok(state);
        }
        let epoch = self.answers.borrow().as_ref().map_or(0, |answer| answer.2);
        let (state, index) = (self.read)(self.inner.clone()).await?;
        self.floor = (index, epoch);
        Ok(state)
    }

    async fn changed(&mut self) -> Result<()> {
        loop {
            if self.answers.changed().await.is_err() {
                return Err(Error::not_reachable(
                    BACKEND,
                    "the shared watch query ended",
                ));
            }
            let answer = self.answers.borrow_and_update().clone();
            if let Some((entries, index, epoch)) = answer
                && (index >= self.floor.0 || epoch != self.floor.1)
            {
                self.pending = Some((self.extract)(&self.inner, &entries)?);
                return Ok(());
            }
        }
    }

    /// The poller retries by itself; the next read is a read of the watch's own.
    async fn reconnect(&mut self) -> Result<()> {
        self.pending = None;
        Ok(())
    }
}

async fn stream<T: PartialEq + Clone + Send + Sync + 'static>(
    inner: Arc<Inner>,
    poller: Arc<Poller>,
    read: Read<T>,
    extract: Extract<T>,
    cancel: CancellationToken,
) -> Result<futures::stream::BoxStream<'static, Result<T>>> {
    let mut source = SharedQuery {
        inner: inner.clone(),
        answers: poller.subscribe(),
        _poller: poller,
        read,
        extract,
        floor: (0, 0),
        pending: None,
    };
    let first = source.read().await?;
    Ok(watch_stream(
        source,
        first,
        cancel,
        inner.api.config.watch_reconnect_timeout,
    ))
}

/// `Store::watch`.
pub(crate) async fn watch_key(inner: Arc<Inner>, w: WatchRequest<'_>) -> Result<WatchStream> {
    let (key, consistency, cancel) = (w.key.to_owned(), Consistency::of(w.consistent), w.cancel);
    let consul_key = inner.consul_key(&key);
    let poller = inner.hub.for_key(&inner, &consul_key);
    let read: Read<Option<KvPair>> = Box::new(move |inner| {
        let key = key.clone();
        async move { inner.read_key(&key, consistency, None).await }.boxed()
    });
    let extract: Extract<Option<KvPair>> =
        Box::new(
            move |inner, entries| match entries.iter().find(|e| e.key == consul_key) {
                Some(entry) => inner.pair(entry),
                None => Ok(None),
            },
        );
    stream(inner, poller, read, extract, cancel).await
}

/// `Store::watch_tree`.
pub(crate) async fn watch_tree(inner: Arc<Inner>, w: WatchRequest<'_>) -> Result<WatchTreeStream> {
    let (dir, consistency, cancel) = (w.key.to_owned(), Consistency::of(w.consistent), w.cancel);
    let prefix = inner.tree_prefix(&dir);
    let poller = inner.hub.for_tree(&inner, &prefix);
    let read: Read<Vec<KvPair>> = Box::new(move |inner| {
        let dir = dir.clone();
        async move { inner.read_tree(&dir, consistency, None).await }.boxed()
    });
    let extract: Extract<Vec<KvPair>> = Box::new(move |inner, entries| {
        inner.tree_pairs(
            entries
                .iter()
                .filter(|e| e.key.starts_with(prefix.as_str())),
        )
    });
    stream(inner, poller, read, extract, cancel).await
}

/// The source of a `watch_events` stream: the answers of the shared blocking query of the
/// directory's prefix (see [`crate::hub`]), each diffed against the listing held for the last
/// revision yielded (`ModifyIndex` tells a changed key; a key gone is a delete at the answer's
/// index). Consul keeps no history a client can read, so a resume from a revision this source
/// does not hold the listing of starts with a `Snapshot`. A transaction is one Raft entry, so
/// an answer shows all of it or none. An index that went backwards (the agent lost or restored
/// its data) ends the stream with an error: no revision after it would be comparable.
struct DiffSource {
    inner: Arc<Inner>,
    dir: String,
    _poller: Arc<Poller>,
    answers: watch::Receiver<Answer>,
    /// The listing at the last revision yielded (`X-Consul-Index`).
    held: Option<(u64, BTreeMap<String, KvPair>)>,
    /// An answer not yet diffed: the directory's pairs and the index.
    answer: Option<(Vec<KvPair>, u64)>,
    /// The poller's epoch at the last read of this source's own: an answer of that epoch
    /// older than the listing held is stale, not a reset.
    epoch: u64,
}

impl DiffSource {
    fn went_back(index: u64, held: u64) -> Error {
        Error::backend(
            BACKEND,
            format!(
                "the agent's index went back from {held} to {index} (data lost or restored): \
                 watch again for a Snapshot"
            ),
        )
    }
}

#[async_trait]
impl EventSource for DiffSource {
    async fn snapshot(&mut self) -> Result<(Vec<KvPair>, u64)> {
        self.epoch = self.answers.borrow().as_ref().map_or(0, |answer| answer.2);
        let (pairs, index) = (self.inner)
            .read_tree(&self.dir, Consistency::Consistent, None)
            .await?;
        if let Some((held, _)) = &self.held
            && index < *held
        {
            return Err(Self::went_back(index, *held));
        }
        self.held = Some((
            index,
            pairs.iter().map(|p| (p.key.clone(), p.clone())).collect(),
        ));
        self.answer = None;
        Ok((pairs, index))
    }

    async fn since(&mut self, after: u64) -> Result<Since> {
        let Some((held_index, held)) = self.held.as_mut().filter(|(i, _)| *i == after) else {
            return Ok(Since::Unknown);
        };
        let Some((pairs, index)) = self.answer.take() else {
            return Ok(Since::Events(Vec::new(), after));
        };
        if index < *held_index {
            return Err(Self::went_back(index, *held_index));
        }
        let mut now: BTreeMap<String, KvPair> =
            pairs.into_iter().map(|p| (p.key.clone(), p)).collect();
        let mut events: Vec<Event> = now
            .values()
            .filter(|p| {
                held.get(&p.key)
                    .is_none_or(|old| old.last_index != p.last_index)
            })
            .map(|p| Event::put(p.key.clone(), p.value.clone(), p.last_index))
            .collect();
        events.sort_by_key(|e| e.last_index);
        events.extend(
            held.keys()
                .filter(|k| !now.contains_key(*k))
                .map(|k| Event::delete(k.clone(), index)),
        );
        if events.is_empty() {
            return Ok(Since::Events(events, after));
        }
        std::mem::swap(held, &mut now);
        *held_index = index;
        Ok(Since::Events(events, index))
    }

    async fn changed(&mut self) -> Result<()> {
        if self.answers.changed().await.is_err() {
            return Err(Error::not_reachable(
                BACKEND,
                "the shared watch query ended",
            ));
        }
        let Some((entries, index, epoch)) = self.answers.borrow_and_update().clone() else {
            return Ok(());
        };
        let held = self.held.as_ref().map_or(0, |(i, _)| *i);
        if epoch == self.epoch && index < held {
            // An answer from before this source's own read.
            return Ok(());
        }
        // The poller may serve a wider prefix (past the query budget): keep the directory's.
        let dir = self.dir.as_str();
        let pairs = self.inner.tree_pairs(entries.iter())?;
        let pairs = pairs
            .into_iter()
            .filter(|p| dir.is_empty() || is_descendant(&p.key, dir))
            .collect();
        self.answer = Some((pairs, index));
        Ok(())
    }
}

/// `watch_events(dir)`: on the core event driver, over the shared blocking query of the prefix.
pub(crate) fn watch_events(
    inner: Arc<Inner>,
    w: WatchRequest<'_>,
    since: Option<u64>,
) -> EventStream {
    let poller = inner.hub.for_tree(&inner, &inner.tree_prefix(w.key));
    let timeout = inner.api.config.watch_reconnect_timeout;
    let source = DiffSource {
        dir: w.key.to_owned(),
        answers: poller.subscribe(),
        _poller: poller,
        inner,
        held: None,
        answer: None,
        epoch: 0,
    };
    event_stream(source, since, w.cancel, timeout)
}
