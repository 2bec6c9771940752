//! Consistent reads share `sync`s: a read joins the next `sync` to be *sent* — never one
//! already in flight, since a `sync` sent before the read began proves nothing about writes
//! that completed in between — and its own request goes out right after that `sync` on the
//! same session, which the server answers in order (source: ZooKeeper Programmer's Guide,
//! "Consistency Guarantees": `sync` makes the server catch up with the leader before it
//! answers the requests after it). At most one batch's `sync` is in flight per session: reads
//! that arrive meanwhile form the next batch, whose first read sends its `sync` once the one
//! in flight has been answered (group commit). An idle store sends at once, so a lone read
//! waits for nothing; under load, one `sync` serves every read that arrived during the last
//! one's round trip.
//!
//! A session on a standalone server sends no `sync` at all (see [`standalone`]): with one
//! server there is no leader to catch up with, and the server answers a session's requests in
//! the order they were sent, after every write it acknowledged before (source: ZooKeeper
//! Programmer's Guide, "Consistency Guarantees" — the lag `sync` closes is a follower's).

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::Shared;
use zookeeper_client::{self as zk, Client};

/// A batch not sent yet: its waiters learn when its `sync` was sent, and how it ended.
#[derive(Clone)]
struct Batch {
    id: u64,
    session: usize,
    sent: Shared<oneshot::Receiver<()>>,
    done: Shared<oneshot::Receiver<Result<(), zk::Error>>>,
}

/// Whether the server `client`'s session is on runs standalone: the connect string names one
/// server, and its `/zookeeper/config` (the ensemble's dynamic configuration, source:
/// ZooKeeper Dynamic Reconfiguration, "Retrieving the current dynamic configuration") names no
/// `server.N`. An ensemble member lists every member there; a standalone server leaves it
/// empty. A failed read counts as an ensemble, so the reads keep their `sync`.
async fn standalone(hosts: usize, client: &Client, timeout: std::time::Duration) -> bool {
    if hosts != 1 {
        return false;
    }
    match tokio::time::timeout(timeout, client.get_config()).await {
        Ok(Ok((config, _))) => !String::from_utf8_lossy(&config)
            .lines()
            .any(|line| line.trim_start().starts_with("server.")),
        _ => false,
    }
}

/// The `sync` batches of one store.
#[derive(Default)]
pub(crate) struct SyncBatcher {
    /// The session (its address, as in [`Batch::session`]) on a standalone server whose reads
    /// need no `sync`; 0 for none.
    standalone: AtomicUsize,
    next: Mutex<Option<Batch>>,
    /// The batch whose `sync` was sent last, until it is answered.
    in_flight: Mutex<Option<Batch>>,
    ids: AtomicU64,
}

impl std::fmt::Debug for SyncBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncBatcher").finish_non_exhaustive()
    }
}

impl SyncBatcher {
    /// Learns whether `client`, a new session of a store whose connect string names `hosts`
    /// servers, is on a standalone server (see [`standalone`]: one request, within
    /// `timeout`); called before the session serves any read.
    pub(crate) async fn learn(&self, client: &Client, hosts: usize, timeout: std::time::Duration) {
        let session = if standalone(hosts, client, timeout).await {
            std::ptr::from_ref(client) as usize
        } else {
            0
        };
        self.standalone.store(session, Ordering::Release);
    }

    /// Runs the read that `request` issues after a `sync` that was sent after this call began,
    /// on `client`'s session. `request` may be called twice (when the batch's sender went
    /// away, the read falls back to a `sync` of its own).
    pub(crate) async fn synced<T, F, Fut>(
        &self,
        client: &Client,
        request: F,
    ) -> Result<T, zk::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, zk::Error>>,
    {
        let session = std::ptr::from_ref(client) as usize;
        if self.standalone.load(Ordering::Acquire) == session {
            return request().await;
        }
        let role = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            match next.as_ref() {
                Some(batch) if batch.session == session => Err(batch.clone()),
                _ => {
                    let (sent_tx, sent) = oneshot::channel();
                    let (done_tx, done) = oneshot::channel();
                    let id = self.ids.fetch_add(1, Ordering::Relaxed);
                    *next = Some(Batch {
                        id,
                        session,
                        sent: sent.shared(),
                        done: done.shared(),
                    });
                    Ok((id, sent_tx, done_tx))
                }
            }
        };
        match role {
            Ok((id, sent_tx, done_tx)) => {
                // Reads join while the previous batch's sync is answered; then this batch
                // closes and sends its own.
                let previous = self
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .filter(|b| b.session == session);
                if let Some(previous) = previous {
                    let _ = previous.done.await;
                }
                let this = {
                    let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
                    match next.take() {
                        Some(b) if b.id == id => Some(b),
                        other => {
                            *next = other;
                            None
                        }
                    }
                };
                *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()) = this;
                let sync = client.sync("/");
                let _ = sent_tx.send(());
                let read = request();
                let synced = sync.await;
                let _ = done_tx.send(synced.clone());
                synced?;
                read.await
            }
            Err(batch) => {
                if batch.sent.await.is_ok() {
                    let read = request();
                    if let Ok(synced) = batch.done.await {
                        synced?;
                        return read.await;
                    }
                }
                // The batch's sender went away: a sync of this read's own.
                let sync = client.sync("/");
                let read = request();
                sync.await?;
                read.await
            }
        }
    }
}
