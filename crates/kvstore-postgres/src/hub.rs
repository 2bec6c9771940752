//! The shared server-side watch layer: one connection per store that `LISTEN`s on the store's
//! channel, reads which keys each new revision changed from the change log, and tells every
//! watch and lock waiter of the store.
//!
//! Source: PostgreSQL docs, `NOTIFY` — notifications are delivered when the sending transaction
//! commits, in commit order, and not at all to a session that was not listening then. So the
//! listener reads the log after the last revision it handled rather than trusting payloads,
//! and after a lost connection it tells everyone to read again ([`Change::All`]).

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use kvstore_core::{Error, Result};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::BACKEND;
use crate::config::PostgresConfig;
use crate::wire::{bigint, pg_config, revision, tls_connector, under};

/// How many reaper rounds pass between two trims of the change log (instead of a reap).
const TRIM_EVERY: u32 = 40;

/// How many changes the broadcast keeps for a slow receiver before it lags (a lagging
/// receiver reads again, so nothing is lost).
const CAPACITY: usize = 1024;

/// What changed in the store.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// These keys were written or deleted.
    Keys(Arc<Vec<String>>),
    /// The hold on this lock key was given back.
    Unlocked(Arc<str>),
    /// Anything may have changed: the listener (re)connected, or the log was trimmed past it.
    All,
}

impl Change {
    pub(crate) fn touches_key(&self, key: &str) -> bool {
        match self {
            Change::Keys(keys) => keys.iter().any(|k| k == key),
            Change::Unlocked(_) => false,
            Change::All => true,
        }
    }

    pub(crate) fn touches_tree(&self, dir: &str) -> bool {
        match self {
            Change::Keys(keys) => keys.iter().any(|k| under(k, dir)),
            Change::Unlocked(_) => false,
            Change::All => true,
        }
    }

    pub(crate) fn frees_lock(&self, key: &str) -> bool {
        match self {
            Change::Unlocked(k) => &**k == key,
            Change::Keys(_) => false,
            Change::All => true,
        }
    }
}

/// The listener's outputs: the changes, and whether it is connected now.
#[derive(Debug)]
pub(crate) struct Hub {
    changes: broadcast::Sender<Change>,
    connected: watch::Sender<bool>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            changes: broadcast::channel(CAPACITY).0,
            connected: watch::channel(false).0,
        }
    }
}

/// One receiver of the hub's changes.
pub(crate) struct Subscription {
    changes: broadcast::Receiver<Change>,
    connected: watch::Receiver<bool>,
}

impl Hub {
    /// A receiver of every change from now on.
    pub(crate) fn subscribe(&self) -> Subscription {
        Subscription {
            changes: self.changes.subscribe(),
            connected: self.connected.subscribe(),
        }
    }
}

impl Subscription {
    /// Waits for a change that `relevant` accepts (or a lag, which may hide one).
    ///
    /// # Errors
    ///
    /// `NotReachable` when the listener is (or becomes) disconnected: changes may be missed
    /// until it is back; `Closed` when the store closed.
    pub(crate) async fn wait(&mut self, relevant: impl Fn(&Change) -> bool) -> Result<()> {
        loop {
            if !*self.connected.borrow_and_update() {
                return Err(Error::not_reachable(
                    BACKEND,
                    "the listener lost its connection",
                ));
            }
            tokio::select! {
                change = self.changes.recv() => match change {
                    Ok(change) if relevant(&change) => return Ok(()),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Error::Closed { backend: BACKEND });
                    }
                },
                changed = self.connected.changed() => {
                    if changed.is_err() {
                        return Err(Error::Closed { backend: BACKEND });
                    }
                }
            }
        }
    }

    /// Waits up to `timeout` for the listener to be connected.
    ///
    /// # Errors
    ///
    /// `NotReachable` when it is not within `timeout`; `Closed` when the store closed.
    pub(crate) async fn reconnected(&mut self, timeout: Duration) -> Result<()> {
        match tokio::time::timeout(timeout, self.connected.wait_for(|up| *up)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Closed { backend: BACKEND }),
            Err(_) => Err(Error::not_reachable(
                BACKEND,
                "the listener is not connected",
            )),
        }
    }
}

/// What the listener needs of its store: the hub it feeds, how to connect, and the
/// statements it runs.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) hub: Arc<Hub>,
    pub(crate) config: PostgresConfig,
    /// The `NOTIFY` channel.
    pub(crate) channel: String,
    pub(crate) changed_keys: String,
    pub(crate) revision: String,
    pub(crate) reap: String,
    pub(crate) trim: String,
}

/// Runs the listener until `cancel` fires: connects, `LISTEN`s, then turns each notification
/// into a [`Change`]; reconnects with backoff (50 ms doubling to 2 s) when the connection is
/// lost. `ready` is told after the first `LISTEN` (or the first error), so `open` fails when
/// the store cannot listen.
pub(crate) async fn run(
    listener: Listener,
    cancel: CancellationToken,
    ready: tokio::sync::oneshot::Sender<Result<()>>,
) {
    let mut ready = Some(ready);
    let mut backoff = backoff();
    while !cancel.is_cancelled() {
        let mut listened = false;
        let outcome = tokio::select! {
            () = cancel.cancelled() => return,
            outcome = listen(&listener, &mut ready, &mut listened) => outcome,
        };
        if listened {
            // A connection that worked starts the backoff over.
            backoff = self::backoff();
        }
        listener.hub.connected.send_replace(false);
        if let Err(err) = outcome {
            if let Some(ready) = ready.take() {
                let _ = ready.send(Err(err));
                return;
            }
            tracing::debug!(error = %err, "postgres listener lost its connection");
        }
        let pause = backoff.next().unwrap_or(Duration::from_secs(2));
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

fn backoff() -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .without_max_times()
        .build()
}

/// One connection's life: returns when it is lost.
async fn listen(
    inner: &Listener,
    ready: &mut Option<tokio::sync::oneshot::Sender<Result<()>>>,
    listened: &mut bool,
) -> Result<()> {
    let config = &inner.config;
    let pg = pg_config(config);
    let connect = pg.connect(tls_connector(config)?);
    let (client, mut connection) = tokio::time::timeout(config.connect_timeout, connect)
        .await
        .map_err(|_| Error::not_reachable(BACKEND, "connect timed out"))?
        .map_err(crate::error::from_pg)?;
    // The connection yields notifications only when polled as a stream of messages.
    let (notify_tx, mut notifications) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = notify_tx.send(n.payload().to_owned());
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(error = %err, "postgres listener connection ended");
                    break;
                }
            }
        }
    });
    let _abort = AbortOnDrop(driver);
    let timeout = config.request_timeout;
    bounded(
        timeout,
        client.batch_execute(&format!("LISTEN \"{}\"", inner.channel)),
    )
    .await?;
    let changed = client
        .prepare(&inner.changed_keys)
        .await
        .map_err(crate::error::from_pg)?;
    let first = bounded(timeout, client.query_one(&inner.revision, &[])).await?;
    let mut last = revision(first.get(0));
    inner.hub.connected.send_replace(true);
    *listened = true;
    let _ = inner.hub.changes.send(Change::All);
    if let Some(ready) = ready.take() {
        let _ = ready.send(Ok(()));
    }
    // The reaper runs on this connection too: it never waits for a pooled connection that a
    // lease renewal needs.
    let reap = client
        .prepare(&inner.reap)
        .await
        .map_err(crate::error::from_pg)?;
    let trim = client
        .prepare(&inner.trim)
        .await
        .map_err(crate::error::from_pg)?;
    let keep = i64::try_from(config.log_retention).unwrap_or(i64::MAX);
    let mut reaper = tokio::time::interval(config.reap_interval);
    reaper.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0u32;
    loop {
        let payload = tokio::select! {
            payload = notifications.recv() => match payload {
                Some(payload) => payload,
                None => break,
            },
            _ = reaper.tick() => {
                round = round.wrapping_add(1);
                let trimming = round.is_multiple_of(TRIM_EVERY);
                let outcome = if trimming {
                    bounded(timeout, client.query(&trim, &[&keep])).await
                } else {
                    bounded(timeout, client.query(&reap, &[])).await
                };
                if let Err(err) = outcome {
                    if client.is_closed() {
                        return Err(err);
                    }
                    // A role that may not delete (a read-only user) leaves reaping to others.
                    tracing::debug!(error = %err, trimming, "postgres reaper");
                }
                continue;
            }
        };
        let mut payloads = vec![payload];
        while let Ok(more) = notifications.try_recv() {
            payloads.push(more);
        }
        let mut new_revision = false;
        for payload in payloads {
            match payload.strip_prefix('l') {
                Some(key) => {
                    let _ = inner.hub.changes.send(Change::Unlocked(key.into()));
                }
                None => new_revision = true,
            }
        }
        if new_revision {
            let rows = bounded(timeout, client.query(&changed, &[&bigint(last)])).await?;
            let Some(first) = rows.first() else { continue };
            let (current, floor) = (revision(first.get(0)), revision(first.get(1)));
            let change = if floor > last {
                Change::All
            } else {
                let keys = rows.iter().filter_map(|r| r.get::<_, Option<String>>(2));
                Change::Keys(Arc::new(keys.collect()))
            };
            last = last.max(current);
            let _ = inner.hub.changes.send(change);
        }
    }
    Err(Error::not_reachable(
        BACKEND,
        "the listener's connection closed",
    ))
}

/// `fut` within `timeout`, its error mapped.
async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::Timeout)?
        .map_err(crate::error::from_pg)
}

/// Aborts the connection's driver task when the listener returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
