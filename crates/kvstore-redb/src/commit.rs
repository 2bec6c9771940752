//! Group commit: concurrent writers share one durable commit, as bbolt's `DB.Batch` does.
//!
//! Every `put`, `atomic_put`, `delete`, `atomic_delete`, `increment` and `txn` of a database,
//! and every renewal and release of a lock or a `keep_alive` key, is queued to one committer
//! thread. The thread takes whatever is queued (up to [`MAX_BATCH`] writes), applies
//! them in order in one write transaction, commits it — one fsync for the batch — and only then
//! answers each caller. While a commit is in flight the next writes queue up, so the batch grows
//! with the load and a lone writer pays nothing extra.
//!
//! - **Durability is unchanged**: a caller's write is acknowledged only after the commit that
//!   holds it returned (redb's default `Durability::Immediate`).
//! - **A refused write writes nothing**: the preconditions (`KeyExists`, `KeyModified`,
//!   `KeyNotFound`, and a transaction's `LockNotHeld`) are checked before a write touches a table, so a refusal answers its own
//!   caller and leaves the batch intact.
//! - **A failed commit fails every caller in it**; so does any storage error while applying a
//!   write (the transaction is aborted, so none of the batch is written).
//! - **Order**: writes apply in the order they were queued; each takes the next revision, so
//!   `last_index` stays store-wide monotonic.

use std::sync::mpsc;
use std::sync::{Arc, Weak};

use kvstore_core::{Error, Result};
use tokio::sync::oneshot;

use crate::error::from_redb;

/// What the committer needs of the state it commits for (the database's shared state
/// implements it), so this file never reaches back into the client.
pub(crate) trait Target: Send + Sync + 'static {
    /// The database.
    fn db(&self) -> &redb::Database;
    /// The backend name, for errors.
    fn backend(&self) -> &'static str;
}

/// Most writes one commit carries.
pub(crate) const MAX_BATCH: usize = 256;

/// What a write leaves to do once its batch is committed (or has failed).
type Finish<S> = Box<dyn FnOnce(&S, Option<&str>) + Send>;

/// Applies one write to a batch's transaction.
type Apply<S> = Box<dyn FnOnce(&S, &redb::WriteTransaction) -> Applied<S> + Send>;

/// A queued write: applies itself to the batch's transaction.
struct Job<S> {
    apply: Apply<S>,
    /// Answers the caller when the batch cannot even start.
    fail: Box<dyn FnOnce(Error) + Send>,
}

/// The result of applying one write.
struct Applied<S> {
    /// A storage error happened after the write may have touched a table: the batch aborts.
    poisons: bool,
    finish: Finish<S>,
}

/// The sending side of a database's committer thread.
pub(crate) struct Committer<S> {
    jobs: mpsc::Sender<Job<S>>,
}

/// Whether an error is a precondition's refusal, which the write functions return before
/// touching a table.
fn is_refusal(err: &Error) -> bool {
    matches!(
        err,
        Error::KeyExists { .. }
            | Error::KeyModified { .. }
            | Error::KeyNotFound { .. }
            | Error::LockNotHeld { .. }
    )
}

impl<S> std::fmt::Debug for Committer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl<S: Target> Committer<S> {
    /// The queue of a new database, and the thread that will serve it
    /// ([`CommitterThread::spawn`]); the thread exits when the last handle (and so the
    /// `Committer`) is dropped.
    pub(crate) fn new(backend: &'static str) -> (Committer<S>, CommitterThread<S>) {
        let (jobs, queue) = mpsc::channel();
        (Committer { jobs }, CommitterThread { queue, backend })
    }
}

/// The receiving side, moved onto its thread by [`CommitterThread::spawn`].
pub(crate) struct CommitterThread<S> {
    queue: mpsc::Receiver<Job<S>>,
    backend: &'static str,
}

impl<S: Target> CommitterThread<S> {
    pub(crate) fn spawn(self, shared: Weak<S>) -> Result<()> {
        let backend = self.backend;
        std::thread::Builder::new()
            .name("kvstore-redb-commit".into())
            .spawn(move || self.run(shared))
            .map(drop)
            .map_err(|e| Error::backend(backend, e))
    }

    fn run(self, shared: Weak<S>) {
        while let Ok(first) = self.queue.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH
                && let Ok(job) = self.queue.try_recv()
            {
                batch.push(job);
            }
            let Some(shared) = shared.upgrade() else {
                for job in batch {
                    (job.fail)(Error::Closed {
                        backend: self.backend,
                    });
                }
                return;
            };
            commit_batch(&*shared, batch);
        }
    }
}

/// Applies `batch` in one write transaction and commits it, then answers every caller.
fn commit_batch<S: Target>(shared: &S, batch: Vec<Job<S>>) {
    let txn = match shared.db().begin_write() {
        Ok(txn) => txn,
        Err(err) => {
            let message = from_redb(err).to_string();
            for job in batch {
                (job.fail)(Error::backend(shared.backend(), message.clone()));
            }
            return;
        }
    };
    let mut finishes = Vec::with_capacity(batch.len());
    let mut poisoned = false;
    for job in batch {
        if poisoned {
            (job.fail)(Error::backend(
                shared.backend(),
                "an earlier write of the same commit failed; nothing was written",
            ));
            continue;
        }
        let applied = (job.apply)(shared, &txn);
        poisoned = applied.poisons;
        finishes.push(applied.finish);
    }
    let failure = if poisoned {
        let _ = txn.abort();
        Some("the commit was aborted: a write in it failed".to_owned())
    } else {
        txn.commit()
            .err()
            .map(|e| format!("commit failed: {}", from_redb(e)))
    };
    for finish in finishes {
        finish(shared, failure.as_deref());
    }
}

impl<S: Target> Committer<S> {
    /// Queues `write` for the next group commit and waits until that commit is durable.
    /// `write` returns its result and what to do once committed (publish changes); a refusal
    /// (`KeyExists`, `KeyModified`, `KeyNotFound`) must be returned before it writes anything.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not withdraw the write: it is committed (or not) with its
    /// batch, as a write whose answer was lost.
    pub(crate) async fn commit<T, F, A>(&self, backend: &'static str, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&S, &redb::WriteTransaction) -> Result<(T, A)> + Send + 'static,
        A: FnOnce(&S) + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T>>();
        let reply = Arc::new(std::sync::Mutex::new(Some(reply)));
        let send = {
            let reply = reply.clone();
            move |result: Result<T>| {
                if let Some(reply) = reply.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    // The caller may be gone (cancelled): the write stands all the same.
                    let _ = reply.send(result);
                }
            }
        };
        let send_failure = send.clone();
        let job = Job {
            apply: Box::new(move |shared, txn| match write(shared, txn) {
                Ok((value, after)) => Applied {
                    poisons: false,
                    finish: Box::new(move |shared, failure| match failure {
                        None => {
                            after(shared);
                            send(Ok(value));
                        }
                        Some(failure) => {
                            send(Err(Error::backend(shared.backend(), failure.to_owned())))
                        }
                    }),
                },
                Err(err) if is_refusal(&err) => Applied {
                    poisons: false,
                    finish: Box::new(move |_, _| send(Err(err))),
                },
                Err(err) => Applied {
                    poisons: true,
                    finish: Box::new(move |_, _| send(Err(err))),
                },
            }),
            fail: Box::new(move |err| send_failure(Err(err))),
        };
        self.jobs.send(job).map_err(|_| Error::Closed { backend })?;
        answer.await.unwrap_or(Err(Error::Closed { backend }))
    }
}
