//! Per-key watch events ([`Store::watch_events`](crate::Store::watch_events)): the types of the
//! stream and the fold that turns it into a directory's contents.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::stream::BoxStream;

use crate::{KvPair, Result};

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The key was written (created or changed).
    Put,
    /// The key was removed: deleted, expired, or under a `delete_tree`.
    Delete,
}

/// One change to one key.
///
/// # Example
///
/// ```
/// use kvstore_core::{Event, EventKind};
///
/// let e = Event::put("app/a", "on", 7);
/// assert_eq!((e.kind, e.key.as_str(), &e.value[..], e.last_index), (EventKind::Put, "app/a", &b"on"[..], 7));
/// assert!(Event::delete("app/a", 8).value.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// `Put` or `Delete`.
    pub kind: EventKind,
    /// The key, as the store's caller names it.
    pub key: String,
    /// The new value; empty for a `Delete`.
    pub value: Bytes,
    /// The pair's `last_index` after a `Put`; for a `Delete`, the revision of the delete.
    pub last_index: u64,
}

impl Event {
    /// A `Put` of `value` at `key` with `last_index`.
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>, last_index: u64) -> Self {
        Event {
            kind: EventKind::Put,
            key: key.into(),
            value: value.into(),
            last_index,
        }
    }

    /// A `Delete` of `key` at `revision`.
    pub fn delete(key: impl Into<String>, revision: u64) -> Self {
        Event {
            kind: EventKind::Delete,
            key: key.into(),
            value: Bytes::new(),
            last_index: revision,
        }
    }
}

/// One item of a [`Store::watch_events`](crate::Store::watch_events) stream.
///
/// Applied in order to an empty map ([`apply`](Self::apply)), the items received so far give
/// exactly `list(dir)` as of the last item's `revision` (the fold invariant); `revision`
/// strictly increases from item to item.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// The whole directory as of `revision`: replaces everything folded so far.
    Snapshot {
        /// Every pair under the directory, sorted by key.
        pairs: Vec<KvPair>,
        /// The store's revision the pairs were read at.
        revision: u64,
    },
    /// Changes that, applied in order, bring the view to `revision`. A transaction's writes
    /// under the directory are in one item.
    Changes {
        /// The per-key events, oldest first.
        events: Vec<Event>,
        /// The revision the view is at once they are applied.
        revision: u64,
    },
}

impl WatchEvent {
    /// The revision this item brings the view to.
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Snapshot { revision, .. } | WatchEvent::Changes { revision, .. } => {
                *revision
            }
        }
    }

    /// Folds this item into `view` (key → pair): a `Snapshot` replaces it, a `Put` inserts, a
    /// `Delete` removes.
    ///
    /// # Example
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use kvstore_core::{Event, KvPair, WatchEvent};
    ///
    /// let mut view = BTreeMap::new();
    /// WatchEvent::Snapshot { pairs: vec![KvPair::new("d/a", "1", 3)], revision: 3 }.apply(&mut view);
    /// WatchEvent::Changes { events: vec![Event::put("d/b", "2", 4), Event::delete("d/a", 5)], revision: 5 }
    ///     .apply(&mut view);
    /// assert_eq!(view.values().cloned().collect::<Vec<_>>(), vec![KvPair::new("d/b", "2", 4)]);
    /// ```
    pub fn apply(&self, view: &mut BTreeMap<String, KvPair>) {
        match self {
            WatchEvent::Snapshot { pairs, .. } => {
                view.clear();
                view.extend(pairs.iter().map(|p| (p.key.clone(), p.clone())));
            }
            WatchEvent::Changes { events, .. } => {
                for event in events {
                    match event.kind {
                        EventKind::Put => {
                            let pair = KvPair {
                                key: event.key.clone(),
                                value: event.value.clone(),
                                last_index: event.last_index,
                            };
                            view.insert(event.key.clone(), pair);
                        }
                        EventKind::Delete => {
                            view.remove(&event.key);
                        }
                    }
                }
            }
        }
    }
}

/// Options of [`Store::watch_events`](crate::Store::watch_events).
///
/// # Example
///
/// ```
/// use kvstore_core::WatchOptions;
///
/// let resume = WatchOptions::default().with_since(42);
/// assert_eq!(resume.since, Some(42));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatchOptions {
    /// Resume after this revision: the stream starts with every change after it, or with a
    /// `Snapshot` when the store can no longer tell them (each backend documents when).
    /// `None`: start with a `Snapshot`.
    pub since: Option<u64>,
}

impl WatchOptions {
    /// Resumes after `revision` (a `revision` of an item received before, or of `list_at`).
    pub fn with_since(mut self, revision: u64) -> Self {
        self.since = Some(revision);
        self
    }
}

/// The stream of [`Store::watch_events`](crate::Store::watch_events): a `Snapshot` or the
/// changes after `since` first, then `Changes` items. An `Err` item ends it for good; dropping
/// it frees its server-side watch.
pub type EventStream = BoxStream<'static, Result<WatchEvent>>;
