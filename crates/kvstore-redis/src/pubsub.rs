//! One pub/sub connection per store, shared by every watch and lock waiter.
//!
//! Subscribers register a route for a keyspace channel (one key) or pattern (a directory); the
//! first route of a channel or pattern subscribes it on the shared connection, and the last
//! one dropped unsubscribes it (in a tracked task, since `Drop` cannot wait). A reader task
//! routes each message to the subscribers of its channel or pattern as a wake-up. When the
//! connection is lost, every route is dropped, so each subscriber sees its wake-ups end and
//! subscribes again — on a new connection that the next subscription opens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures::StreamExt;
use kvstore_core::{Error, Result};
use redis::aio::PubSubSink;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use crate::BACKEND;
use crate::error::from_redis;

/// What the shared pub/sub connection needs of the store that owns it (its shared state
/// implements it), so this file never reaches back into the client.
pub(crate) trait Owner: Send + Sync + 'static {
    /// The store's pub/sub state.
    fn pubsub(&self) -> &PubSub;
    /// Where the unsubscribe of a dropped route runs.
    fn tasks(&self) -> &kvstore_core::backend::Tasks;
    /// The bound on subscribing (connecting included).
    fn connect_timeout(&self) -> std::time::Duration;
    /// The client of the current primary, to open the connection with.
    fn client(&self) -> redis::Client;
}

/// What a subscriber listens to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Subscription {
    /// One keyspace channel (one key).
    Channel(String),
    /// A keyspace channel pattern (a directory).
    Pattern(String),
}

type Routes = HashMap<Subscription, Vec<(u64, mpsc::UnboundedSender<()>)>>;

/// The shared connection, while it is up.
struct Conn {
    sink: PubSubSink,
    routes: Arc<Mutex<Routes>>,
    /// Set by the reader when the connection is lost.
    lost: Arc<std::sync::atomic::AtomicBool>,
    _reader: AbortOnDropHandle<()>,
}

/// The pub/sub side of a store.
#[derive(Default)]
pub(crate) struct PubSub {
    conn: tokio::sync::Mutex<Option<Conn>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSub").finish_non_exhaustive()
    }
}

impl PubSub {
    /// Closes the shared connection (`Store::close`).
    pub(crate) async fn shut(&self) {
        self.conn.lock().await.take();
    }
}

/// An active subscription: wake-ups until it is dropped or the connection is lost.
pub(crate) struct Subscribed {
    wakeups: mpsc::UnboundedReceiver<()>,
    _route: Route,
}

impl Subscribed {
    /// The next wake-up; `None` once the connection was lost (subscribe again).
    pub(crate) async fn next(&mut self) -> Option<()> {
        self.wakeups.recv().await
    }

    /// Consumes the wake-ups already queued; `false` if the connection was lost.
    pub(crate) fn drain(&mut self) -> bool {
        loop {
            match self.wakeups.try_recv() {
                Ok(()) => {}
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }
}

/// Removes its route when dropped, unsubscribing the last one.
struct Route {
    inner: Weak<dyn Owner>,
    routes: Weak<Mutex<Routes>>,
    sub: Subscription,
    id: u64,
}

impl Drop for Route {
    fn drop(&mut self) {
        let Some(routes) = self.routes.upgrade() else {
            return;
        };
        let last = {
            let mut routes = routes.lock().unwrap_or_else(|e| e.into_inner());
            match routes.get_mut(&self.sub) {
                Some(list) => {
                    list.retain(|(id, _)| *id != self.id);
                    list.is_empty()
                }
                None => false,
            }
        };
        let Some(inner) = self.inner.upgrade().filter(|_| last) else {
            return;
        };
        let sub = self.sub.clone();
        // `Drop` cannot wait: a tracked task unsubscribes if no route came back meanwhile.
        inner.clone().tasks().spawn(async move {
            let mut conn = inner.pubsub().conn.lock().await;
            let Some(conn) = conn.as_mut() else {
                return;
            };
            let unused = {
                let mut routes = conn.routes.lock().unwrap_or_else(|e| e.into_inner());
                let unused = routes.get(&sub).is_some_and(Vec::is_empty);
                if unused {
                    routes.remove(&sub);
                }
                unused
            };
            if unused {
                let done = match &sub {
                    Subscription::Channel(c) => conn.sink.unsubscribe(c).await,
                    Subscription::Pattern(p) => conn.sink.punsubscribe(p).await,
                };
                if let Err(err) = done {
                    tracing::debug!(backend = BACKEND, error = %err, "unsubscribing failed");
                }
            }
        });
    }
}

/// Subscribes to `sub` on the store's shared pub/sub connection (opening it if needed), within
/// the connect timeout. When this returns, the server has confirmed the subscription.
pub(crate) async fn subscribe<O: Owner>(inner: &Arc<O>, sub: &Subscription) -> Result<Subscribed> {
    let open = async {
        let mut slot = inner.pubsub().conn.lock().await;
        let lost = slot
            .as_ref()
            .is_none_or(|c| c.lost.load(std::sync::atomic::Ordering::Acquire));
        if lost {
            *slot = None;
            *slot = Some(connect(&**inner).await?);
        }
        let conn = slot.as_mut().expect("connected above");
        let (tx, wakeups) = mpsc::unbounded_channel();
        let id = inner
            .pubsub()
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let first = {
            let mut routes = conn.routes.lock().unwrap_or_else(|e| e.into_inner());
            let list = routes.entry(sub.clone()).or_default();
            list.push((id, tx));
            list.len() == 1
        };
        let route = Route {
            inner: Arc::downgrade(inner) as Weak<dyn Owner>,
            routes: Arc::downgrade(&conn.routes),
            sub: sub.clone(),
            id,
        };
        if first {
            match sub {
                Subscription::Channel(c) => conn.sink.subscribe(c).await,
                Subscription::Pattern(p) => conn.sink.psubscribe(p).await,
            }
            .map_err(from_redis)?;
        }
        Ok(Subscribed {
            wakeups,
            _route: route,
        })
    };
    tokio::time::timeout(inner.connect_timeout(), open)
        .await
        .map_err(|_| Error::not_reachable(BACKEND, "subscribing timed out"))?
}

/// Opens the shared connection and its reader.
async fn connect(inner: &impl Owner) -> Result<Conn> {
    let pubsub = inner
        .client()
        .get_async_pubsub()
        .await
        .map_err(from_redis)?;
    let (sink, mut messages) = pubsub.split();
    let routes: Arc<Mutex<Routes>> = Arc::default();
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (reader_routes, reader_lost) = (routes.clone(), lost.clone());
    let reader = tokio::spawn(async move {
        while let Some(msg) = messages.next().await {
            let sub = if msg.from_pattern() {
                match msg.get_pattern::<String>() {
                    Ok(pattern) => Subscription::Pattern(pattern),
                    Err(_) => continue,
                }
            } else {
                Subscription::Channel(msg.get_channel_name().to_owned())
            };
            let routes = reader_routes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(list) = routes.get(&sub) {
                for (_, tx) in list {
                    let _ = tx.send(());
                }
            }
        }
        // Lost: drop every route, so each subscriber subscribes again.
        reader_lost.store(true, std::sync::atomic::Ordering::Release);
        reader_routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        tracing::debug!(backend = BACKEND, "the shared pub/sub connection was lost");
    });
    Ok(Conn {
        sink,
        routes,
        lost,
        _reader: AbortOnDropHandle::new(reader),
    })
}
