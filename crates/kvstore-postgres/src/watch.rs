//! Watches: `watch`, `watch_tree` and `watch_events`, woken by the store's listener and read
//! from the pairs table or the change log.

use kvstore_core::backend::prelude::*;
use kvstore_core::backend::{EventSource, Since, event_stream};

use crate::client::Shared;
use crate::hub::{Change, Subscription};

/// How long one reconnect attempt waits for the listener to be back.
const RECONNECT_WAIT: Duration = Duration::from_secs(1);

/// One watch of a key (`dir: false`) or a directory.
struct Source {
    inner: Shared,
    sub: Subscription,
    key: String,
    dir: bool,
}

#[async_trait]
impl WatchSource for KeySource {
    type Item = Option<KvPair>;

    async fn read(&mut self) -> Result<Option<KvPair>> {
        self.0.inner.read_key(&self.0.key).await
    }

    async fn changed(&mut self) -> Result<()> {
        let relevant = self.0.relevant_owned();
        self.0.sub.wait(relevant).await
    }

    async fn reconnect(&mut self) -> Result<()> {
        self.0.sub.reconnected(RECONNECT_WAIT).await
    }
}

#[async_trait]
impl WatchSource for TreeSource {
    type Item = Vec<KvPair>;

    async fn read(&mut self) -> Result<Vec<KvPair>> {
        self.0.inner.read_tree(&self.0.key).await
    }

    async fn changed(&mut self) -> Result<()> {
        let relevant = self.0.relevant_owned();
        self.0.sub.wait(relevant).await
    }

    async fn reconnect(&mut self) -> Result<()> {
        self.0.sub.reconnected(RECONNECT_WAIT).await
    }
}

struct KeySource(Source);
struct TreeSource(Source);

impl Source {
    fn new(inner: &Shared, key: &str, dir: bool) -> Self {
        Source {
            inner: inner.clone(),
            sub: inner.hub.subscribe(),
            key: key.to_owned(),
            dir,
        }
    }

    /// The relevance test, owning what it needs (the subscription is borrowed meanwhile).
    fn relevant_owned(&self) -> impl Fn(&Change) -> bool + Send + 'static {
        let (key, dir) = (self.key.clone(), self.dir);
        move |change: &Change| {
            if dir {
                change.touches_tree(&key)
            } else {
                change.touches_key(&key)
            }
        }
    }
}

/// `watch(key)`: subscribed to the listener before the first read.
pub(crate) async fn watch_key(inner: &Shared, w: WatchRequest<'_>) -> Result<WatchStream> {
    let source = KeySource(Source::new(inner, w.key, false));
    let first = inner.read_key(w.key).await?;
    let timeout = inner.config.watch_reconnect_timeout;
    Ok(watch_stream(source, first, w.cancel, timeout))
}

/// `watch_tree(dir)`: subscribed to the listener before the first read.
pub(crate) async fn watch_tree(inner: &Shared, w: WatchRequest<'_>) -> Result<WatchTreeStream> {
    let source = TreeSource(Source::new(inner, w.key, true));
    let first = inner.read_tree(w.key).await?;
    let timeout = inner.config.watch_reconnect_timeout;
    Ok(watch_stream(source, first, w.cancel, timeout))
}

/// `watch_events(dir)` on the change log.
struct LogSource(Source);

#[async_trait]
impl EventSource for LogSource {
    async fn snapshot(&mut self) -> Result<(Vec<KvPair>, u64)> {
        self.0.inner.read_tree_at(&self.0.key).await
    }

    async fn since(&mut self, after: u64) -> Result<Since> {
        self.0.inner.read_since(&self.0.key, after).await
    }

    async fn changed(&mut self) -> Result<()> {
        let relevant = self.0.relevant_owned();
        self.0.sub.wait(relevant).await
    }

    async fn reconnect(&mut self) -> Result<()> {
        self.0.sub.reconnected(RECONNECT_WAIT).await
    }
}

/// `watch_events(dir)`: subscribed to the listener before the driver's first read.
pub(crate) fn watch_events(inner: &Shared, w: WatchRequest<'_>, since: Option<u64>) -> EventStream {
    let source = LogSource(Source::new(inner, w.key, true));
    let timeout = inner.config.watch_reconnect_timeout;
    event_stream(source, since, w.cancel, timeout)
}
