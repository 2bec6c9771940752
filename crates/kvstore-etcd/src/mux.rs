//! One gRPC watch stream per store, shared by all of its watches.
//!
//! etcd serves any number of watches on one `Watch` stream, each with its own `watch_id`
//! (source: etcd docs, "Watch API": "a single watch stream can have multiple watchers";
//! client-chosen IDs since 3.4, `WatchCreateRequest.watch_id`). The hub's task owns the stream:
//! it sends each watch's create request with an ID it picked, routes every response to its
//! watch by ID, and sends a cancel when a watch is dropped — so 10,000 watches cost one stream,
//! not 10,000.
//!
//! - **A broken stream** drops every route: each watch's `changed()` then sees its channel
//!   closed and the watch driver reconnects it, from its own next revision, on a new stream.
//! - **A slow watch never stalls the others**: responses queue per watch (up to
//!   [`ROUTE_CAPACITY`]); a watch whose queue is full is cancelled on the server and closed,
//!   and the driver resumes it from its next revision, so nothing is lost.
//! - **A revision too large for one reply** (a `delete_tree` of 100,000 keys is one revision
//!   of 100,000 events, past the client's 4 MiB decode limit) arrives in fragments: every watch
//!   asks for them (`WatchCreateRequest.fragment`, source: etcd API reference, "fragment
//!   enables splitting large revisions into multiple watch responses"), and the hub joins a
//!   watch's fragments into one response before routing it, so a watch never sees half a
//!   revision. Without fragments the server sends the revision whole, the client refuses it,
//!   the stream breaks, and every watch resumes into the same refusal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use etcd_client::{Client, WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream};
use kvstore_core::backend::Tasks;
use kvstore_core::{Error, Result};
use tokio::sync::{mpsc, oneshot};

use crate::BACKEND;
use crate::error::from_etcd;

/// Responses queued for one watch before it is resumed instead.
pub(crate) const ROUTE_CAPACITY: usize = 64;

enum Command {
    Watch {
        id: i64,
        key: Vec<u8>,
        options: WatchOptions,
        route: mpsc::Sender<WatchResponse>,
        reply: oneshot::Sender<Result<()>>,
    },
    Cancel {
        id: i64,
    },
}

/// The store's watch stream: started on the first watch, restarted after it breaks.
#[derive(Default)]
pub(crate) struct WatchHub {
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    next_id: AtomicI64,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHub").finish_non_exhaustive()
    }
}

/// One watch on the shared stream; dropping it cancels the watch on the server.
pub(crate) struct Registration {
    id: i64,
    responses: mpsc::Receiver<WatchResponse>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Registration {
    /// The next response of this watch; `None` once the shared stream broke or this watch was
    /// resumed for being slow (either way: reconnect from the next revision).
    pub(crate) async fn message(&mut self) -> Option<WatchResponse> {
        self.responses.recv().await
    }

    /// A response already received, without waiting: `Ok(None)` when there is none yet,
    /// `Err(())` once the stream broke (as [`message`](Self::message)'s `None`).
    pub(crate) fn try_message(&mut self) -> std::result::Result<Option<WatchResponse>, ()> {
        match self.responses.try_recv() {
            Ok(response) => Ok(Some(response)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(()),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The hub may be gone (the store closed): then there is nothing to cancel.
        let _ = self.commands.send(Command::Cancel { id: self.id });
    }
}

impl WatchHub {
    /// Watches `key` (to `options`' range end, from its start revision) on the shared stream.
    ///
    /// # Errors
    ///
    /// `NotReachable` when the stream cannot be opened or the request not sent; `Closed` after
    /// the store was closed.
    pub(crate) async fn watch(
        &self,
        client: &Client,
        tasks: &Tasks,
        key: &[u8],
        options: WatchOptions,
    ) -> Result<Registration> {
        let commands = self.commands(client, tasks)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (route, responses) = mpsc::channel(ROUTE_CAPACITY);
        let (reply, answer) = oneshot::channel();
        let closed = || Error::Closed { backend: BACKEND };
        commands
            .send(Command::Watch {
                id,
                key: key.to_vec(),
                options,
                route,
                reply,
            })
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())??;
        Ok(Registration {
            id,
            responses,
            commands,
        })
    }

    /// The command queue of the hub's task, starting the task if it is not running.
    fn commands(&self, client: &Client, tasks: &Tasks) -> Result<mpsc::UnboundedSender<Command>> {
        let mut commands = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = commands.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let (sender, queue) = mpsc::unbounded_channel();
        tasks
            .spawn(run(client.clone(), queue))
            .ok_or(Error::Closed { backend: BACKEND })?;
        *commands = Some(sender.clone());
        Ok(sender)
    }
}

/// The hub's task: owns the stream, sends creates and cancels, routes responses.
async fn run(client: Client, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut routes: HashMap<i64, mpsc::Sender<WatchResponse>> = HashMap::new();
    // Per watch, the fragments of a revision received so far, joined into the first one.
    let mut fragments: HashMap<i64, WatchResponse> = HashMap::new();
    let mut stream: Option<(WatchRequestSender, WatchResponseStream)> = None;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Watch { id, key, options, route, reply }) => {
                    let options = options.with_watch_id(id).with_fragment();
                    let sent = match stream.as_mut() {
                        Some((sender, _)) => sender.watch(key, Some(options)).await,
                        None => {
                            let mut client = client.clone();
                            client.watch(key, Some(options)).await.map(|opened| {
                                stream = Some(opened.split());
                            })
                        }
                    };
                    let sent = sent.map_err(|e| match from_etcd(e) {
                        Error::Backend { source, .. } => Error::not_reachable(BACKEND, source),
                        other => other,
                    });
                    if sent.is_ok() {
                        routes.insert(id, route);
                    }
                    let _ = reply.send(sent);
                }
                Some(Command::Cancel { id }) => {
                    fragments.remove(&id);
                    if routes.remove(&id).is_some()
                        && let Some((sender, _)) = stream.as_mut()
                    {
                        let _ = sender.cancel(id).await;
                    }
                }
            },
            response = next_response(&mut stream) => match response {
                Some(mut response) => {
                    let id = response.watch_id();
                    // `.0`: etcd-client's protobuf message (`pub-response-field`), whose
                    // `fragment` flag it has no accessor for.
                    if response.0.fragment {
                        if !routes.contains_key(&id) {
                            continue;
                        }
                        match fragments.entry(id) {
                            std::collections::hash_map::Entry::Occupied(mut first) => {
                                first.get_mut().0.events.append(&mut response.0.events);
                            }
                            std::collections::hash_map::Entry::Vacant(none) => {
                                none.insert(response);
                            }
                        }
                        continue;
                    }
                    if let Some(mut first) = fragments.remove(&id) {
                        first.0.events.append(&mut response.0.events);
                        first.0.fragment = false;
                        response = first;
                    }
                    if response.created() && response.events().is_empty() && !response.canceled() {
                        continue;
                    }
                    let Some(route) = routes.get(&id) else { continue };
                    if route.try_send(response).is_err() {
                        // Slow (queue full) or dropped: stop it on the server; a slow watch
                        // sees its channel closed and resumes from its next revision.
                        routes.remove(&id);
                        if let Some((sender, _)) = stream.as_mut() {
                            let _ = sender.cancel(id).await;
                        }
                    }
                }
                None => {
                    tracing::debug!(backend = BACKEND, watches = routes.len(), "the shared watch stream broke");
                    stream = None;
                    routes.clear();
                    fragments.clear();
                }
            },
        }
    }
}

/// The next response of the stream; `None` when it broke; never resolves without a stream.
async fn next_response(
    stream: &mut Option<(WatchRequestSender, WatchResponseStream)>,
) -> Option<WatchResponse> {
    match stream.as_mut() {
        Some((_, responses)) => responses.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}
