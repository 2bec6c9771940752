//! Shared blocking queries: every watch of a store is served by a poller — one blocking query
//! loop on a key or on a directory — that all its watchers share.
//!
//! A poller publishes each answer (the entries and `X-Consul-Index`) to its watchers through a
//! `tokio::sync::watch` channel, so a watcher always finds the latest answer, however slowly
//! it reads. Watches of the same key share the key's poller, watches of the same directory the
//! directory's. Distinct keys would each need a connection: once key pollers reach half of
//! `max_watch_queries`, a new key watch is served by a poller on the key's directory, and once
//! directory pollers reach a quarter, by one poller on the whole store prefix — more data per
//! wake-up, a bounded number of connections (at most three quarters of the budget, leaving the
//! rest to lock waits). A poller lives while a watcher holds it: dropping the last one aborts
//! its query, which frees it on the agent at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use backon::{BackoffBuilder, ExponentialBuilder};
use kvstore_core::Error;
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

use kvstore_core::backend::Tasks;

use crate::BACKEND;
use crate::api::{Api, Consistency, Entry, next_index};

/// What the pollers need of the store that owns the hub (its shared state implements it), so
/// this file depends on the wire layer only, never on the client above it.
pub(crate) trait Owner: Send + Sync + 'static {
    /// The HTTP API the queries go through.
    fn api(&self) -> &Api;
    /// The store's Consul prefix (`""` or `"<prefix>/"`).
    fn prefix(&self) -> &str;
    /// Where pollers run; its token, cancelled when the store closes, ends them.
    fn tasks(&self) -> &Tasks;
}

/// What a poller blocks on: a Consul key, or every key under a prefix (`""` or ending in `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Key(String),
    Tree(String),
}

/// A poller's latest answer: the entries, `X-Consul-Index`, and the poller's epoch, which
/// grows whenever it starts over from index 0 (after an error, or an index that went
/// backwards): indexes of different epochs are not comparable. `None` before the first.
pub(crate) type Answer = Option<(Arc<Vec<Entry>>, u64, u64)>;

/// One shared blocking query loop; aborted when the last watcher drops it.
pub(crate) struct Poller {
    answers: watch::Receiver<Answer>,
    _task: Option<AbortOnDropHandle<()>>,
}

impl Poller {
    /// A receiver of this poller's answers that sees the current one as new.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Answer> {
        let mut answers = self.answers.clone();
        answers.mark_changed();
        answers
    }
}

/// The pollers of one store.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    pollers: Mutex<HashMap<Target, Weak<Poller>>>,
}

impl Hub {
    /// The poller that serves a watch of `consul_key`: the key's own, or (past the budget) its
    /// directory's, or the whole prefix's.
    pub(crate) fn for_key<I: Owner>(&self, inner: &Arc<I>, consul_key: &str) -> Arc<Poller> {
        let budget = inner.api().config.max_watch_queries;
        let mut pollers = self.pollers.lock().unwrap_or_else(|e| e.into_inner());
        pollers.retain(|_, p| p.strong_count() > 0);
        let key = Target::Key(consul_key.to_owned());
        if let Some(poller) = pollers.get(&key).and_then(Weak::upgrade) {
            return poller;
        }
        let keys = pollers
            .keys()
            .filter(|t| matches!(t, Target::Key(_)))
            .count();
        if keys < (budget / 2).max(1) {
            return start(inner, &mut pollers, key);
        }
        let dir = match consul_key.rfind('/') {
            Some(cut) => consul_key[..=cut].to_owned(),
            None => String::new(),
        };
        Self::tree_locked(inner, &mut pollers, dir)
    }

    /// The poller that serves a watch of every key under `prefix`: its own, or (past the
    /// budget) the whole store prefix's.
    pub(crate) fn for_tree<I: Owner>(&self, inner: &Arc<I>, prefix: &str) -> Arc<Poller> {
        let mut pollers = self.pollers.lock().unwrap_or_else(|e| e.into_inner());
        pollers.retain(|_, p| p.strong_count() > 0);
        Self::tree_locked(inner, &mut pollers, prefix.to_owned())
    }

    fn tree_locked<I: Owner>(
        inner: &Arc<I>,
        pollers: &mut HashMap<Target, Weak<Poller>>,
        prefix: String,
    ) -> Arc<Poller> {
        let budget = inner.api().config.max_watch_queries;
        let wanted = Target::Tree(prefix);
        if let Some(poller) = pollers.get(&wanted).and_then(Weak::upgrade) {
            return poller;
        }
        let trees = pollers
            .keys()
            .filter(|t| matches!(t, Target::Tree(_)))
            .count();
        let target = if trees < (budget / 4).max(1) {
            wanted
        } else {
            Target::Tree(inner.prefix().to_owned())
        };
        if let Some(poller) = pollers.get(&target).and_then(Weak::upgrade) {
            return poller;
        }
        start(inner, pollers, target)
    }
}

/// Starts a poller on `target` and records it.
fn start<I: Owner>(
    inner: &Arc<I>,
    pollers: &mut HashMap<Target, Weak<Poller>>,
    target: Target,
) -> Arc<Poller> {
    let (tx, answers) = watch::channel(None);
    let task = inner
        .tasks()
        .spawn(poll(Arc::downgrade(inner), target.clone(), tx))
        .map(AbortOnDropHandle::new);
    let poller = Arc::new(Poller {
        answers,
        _task: task,
    });
    pollers.insert(target, Arc::downgrade(&poller));
    poller
}

/// The blocking query loop: a plain read, then blocking queries from each answer's index
/// (source: Consul docs, "Blocking Queries"). A failed query (agent restarting, no leader) is
/// retried with backoff (50 ms doubling to 2 s) from index 0, which re-syncs the state; an
/// index that goes backwards (a restored snapshot, a restarted `-dev` agent) also restarts
/// from 0. It is aborted when its watchers are gone, and ends when the store closes.
async fn poll<I: Owner>(inner: Weak<I>, target: Target, tx: watch::Sender<Answer>) {
    let (path, recurse) = match &target {
        Target::Key(key) => (key.clone(), false),
        Target::Tree(prefix) => (prefix.clone(), true),
    };
    let (mut index, mut epoch) = (0, 0);
    let mut delays = backoff();
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let block = (index > 0).then_some((index, strong.api().config.watch_wait));
        let query = strong
            .api()
            .get(&path, recurse, Consistency::Consistent, block);
        // The watchers' end aborts this task (`Poller` drops it); the store's close ends it.
        let answer = tokio::select! {
            () = strong.tasks().cancel_token().cancelled() => return,
            answer = query => answer,
        };
        match answer {
            Ok((entries, returned)) => {
                delays = backoff();
                if returned < index {
                    epoch += 1;
                }
                index = next_index(index, returned);
                tx.send_replace(Some((Arc::new(entries), returned, epoch)));
            }
            Err(Error::Closed { .. }) => return,
            Err(err) => {
                tracing::debug!(backend = BACKEND, path, error = %err, "shared watch query failed; retrying");
                index = 0;
                epoch += 1;
                drop(strong);
                let delay = delays.next().unwrap_or(std::time::Duration::from_secs(2));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn backoff() -> impl Iterator<Item = std::time::Duration> {
    ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(50))
        .with_max_delay(std::time::Duration::from_secs(2))
        .without_max_times()
        .build()
}
