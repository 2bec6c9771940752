//! The registration set: `keep_alive` keys, renewed under the loss rule and written again after
//! their lease is lost, the way a Consul agent re-registers its services after an outage.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Precondition;
use super::lease::{Ended, Lease, Release, Tasks, release_logged, renew_until_lost};
use super::protocol::LostRegistration;
use crate::{Error, KvPair, LockLost, Result, is_descendant};

/// The step a backend supplies to write a registration again after its lease was lost.
#[async_trait]
pub trait Registrar: Send + Sync + 'static {
    /// Writes the lost registration's `key` = `value` again with a new lease of its `ttl`,
    /// atomically unless the key now holds a different value (another client wrote it): then
    /// `Ok(None)` and nothing is written. An absent key is written. Returns the new lease and the moment its request
    /// was sent.
    ///
    /// # Errors
    ///
    /// Transient errors are retried (the server is still away); others end the registration.
    async fn register_again(
        &self,
        lost: LostRegistration<'_>,
    ) -> Result<Option<(Arc<dyn Lease>, Instant)>>;
}

/// For [`Registrar::register_again`] over a read and a conditional write: the precondition of
/// writing `value` again where the key's current pair is `current` — absent, or unchanged
/// since the read — or `None` when another client wrote a different value (the registration
/// then ends).
pub fn rewrite_precondition(current: Option<&KvPair>, value: &[u8]) -> Option<Precondition> {
    match current {
        None => Some(Precondition::Absent),
        Some(pair) if pair.value == value => Some(Precondition::Index(pair.last_index)),
        Some(_) => None,
    }
}

/// The conditional write of [`rewrite_precondition`]: losing the race to another writer
/// (`KeyExists`, `KeyModified`, `KeyNotFound`) is `Ok(None)`, the end of the registration.
///
/// # Errors
///
/// Every other error of `result`.
pub fn unless_superseded<T>(result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(written) => Ok(Some(written)),
        Err(Error::KeyExists { .. } | Error::KeyModified { .. } | Error::KeyNotFound { .. }) => {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// How many times [`write_again`] reads again after the key vanished under it.
const VANISHED_RETRIES: usize = 3;

/// [`Registrar::register_again`] over a read and a conditional write: reads the key's current
/// pair with `read`, writes `value` with `write` under [`rewrite_precondition`], and returns
/// what `write` returned, or `None` when another client wrote a different value.
///
/// A key that vanished between the read and the write — it expired there, which is how a
/// lost registration usually looks — fails the write with `KeyNotFound`; that is no other
/// client's value, so the key is read again (up to three times) and written as absent. Found by
/// the soak benchmark: under load, every registration of a redb store ended this way within
/// ten minutes.
///
/// # Errors
///
/// Every error of `read`, and of `write` other than a refused precondition.
pub async fn write_again<T, R, RF, W, WF>(
    value: &[u8],
    mut read: R,
    mut write: W,
) -> Result<Option<T>>
where
    R: FnMut() -> RF,
    RF: Future<Output = Result<Option<KvPair>>>,
    W: FnMut(Precondition) -> WF,
    WF: Future<Output = Result<T>>,
{
    for _ in 0..VANISHED_RETRIES {
        let current = read().await?;
        let Some(condition) = rewrite_precondition(current.as_ref(), value) else {
            return Ok(None);
        };
        match write(condition).await {
            Err(Error::KeyNotFound { .. }) if matches!(condition, Precondition::Index(_)) => {}
            written => return unless_superseded(written),
        }
    }
    Ok(None)
}

struct Entry {
    lease: Arc<Mutex<Arc<dyn Lease>>>,
    task: Option<JoinHandle<()>>,
}

/// A store's `keep_alive` keys, keyed by key: while the store is open each is renewed under
/// the loss rule, and written again with a new lease as soon as the server answers after its
/// lease was lost — unless another client has written a different value meanwhile (then the
/// registration ends, with a `warn` event).
///
/// A backend calls [`insert`](Self::insert) after every `keep_alive` write and
/// [`remove`](Self::remove) / [`remove_tree`](Self::remove_tree) after every other write or
/// delete of a key, so no lease is ever left renewing behind a rewritten key. On `close` the
/// renewals stop and the keys expire with their TTL.
pub struct Registrations {
    entries: Mutex<HashMap<String, Entry>>,
    tasks: Tasks,
}

impl fmt::Debug for Registrations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registrations")
            .field("keys", &self.len())
            .finish()
    }
}

impl Registrations {
    /// An empty set whose renewals run on `tasks`.
    pub fn new(tasks: &Tasks) -> Self {
        Registrations {
            entries: Mutex::default(),
            tasks: tasks.clone(),
        }
    }

    /// How many keys are registered and still renewing.
    pub fn len(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| e.task.as_ref().is_some_and(|t| !t.is_finished()))
            .count()
    }

    /// Whether no key is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `key` = `value`, just written with `lease` (its request sent at `sent`),
    /// replacing (and releasing) any earlier registration of `key`.
    pub fn insert(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        lease: Arc<dyn Lease>,
        sent: Instant,
        registrar: Arc<dyn Registrar>,
    ) {
        let current = Arc::new(Mutex::new(lease));
        let task = self.tasks.spawn(keep_registered(
            key.to_owned(),
            value,
            ttl,
            sent,
            Arc::clone(&current),
            registrar,
            self.tasks.clone(),
        ));
        let old = self.lock().insert(
            key.to_owned(),
            Entry {
                lease: current,
                task,
            },
        );
        if let Some(old) = old {
            self.end(old);
        }
    }

    /// Ends the registration of `key`, if any (it was rewritten or deleted).
    pub fn remove(&self, key: &str) {
        let old = self.lock().remove(key);
        if let Some(old) = old {
            self.end(old);
        }
    }

    /// Ends the registrations of `dir` and every key below it (`""`: all).
    pub fn remove_tree(&self, dir: &str) {
        let old: Vec<Entry> = {
            let mut entries = self.lock();
            let keys: Vec<String> = entries
                .keys()
                .filter(|k| k.as_str() == dir || is_descendant(k, dir))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| entries.remove(k)).collect()
        };
        for entry in old {
            self.end(entry);
        }
    }

    fn end(&self, entry: Entry) {
        if let Some(task) = entry.task {
            task.abort();
        }
        let lease = Arc::clone(&entry.lease.lock().unwrap_or_else(|e| e.into_inner()));
        self.tasks
            .spawn(async move { release_logged(&*lease, Release::Drop).await });
    }
}

impl Drop for Registrations {
    fn drop(&mut self) {
        for entry in self.lock().values_mut() {
            if let Some(task) = entry.task.take() {
                task.abort();
            }
        }
    }
}

async fn keep_registered(
    key: String,
    value: Bytes,
    ttl: Duration,
    mut sent: Instant,
    current: Arc<Mutex<Arc<dyn Lease>>>,
    registrar: Arc<dyn Registrar>,
    tasks: Tasks,
) {
    let cancel = tasks.cancel_token().clone();
    loop {
        let lease = Arc::clone(&current.lock().unwrap_or_else(|e| e.into_inner()));
        // A registration has no holder to tell; the signal only carries the deadline.
        let (signal, _lost): (_, LockLost) = LockLost::new();
        if renew_until_lost(&*lease, ttl, sent, &signal, &cancel).await == Ended::Closed {
            return;
        }
        tracing::warn!(key, "registration lost its lease; writing it again");
        let mut wait = super::lease::retry_period(ttl).max(Duration::from_millis(50));
        loop {
            let attempt = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                attempt = registrar.register_again(LostRegistration { key: &key, value: &value, ttl }) => attempt,
            };
            match attempt {
                Ok(Some((new_lease, new_sent))) => {
                    tracing::info!(key, "registration written again");
                    let old = std::mem::replace(
                        &mut *current.lock().unwrap_or_else(|e| e.into_inner()),
                        new_lease,
                    );
                    tasks.spawn(async move { release_logged(&*old, Release::Drop).await });
                    sent = new_sent;
                    break;
                }
                Ok(None) => {
                    tracing::warn!(
                        key,
                        "registration ended: another client wrote a different value to the key"
                    );
                    return;
                }
                Err(err) if err.is_transient() => {
                    tracing::debug!(key, error = %err, "writing the registration again failed; retrying");
                }
                Err(err) => {
                    tracing::warn!(key, error = %err, "registration ended: writing it again was refused");
                    return;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(ttl.max(Duration::from_millis(50)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::backend::Renewal;

    #[derive(Debug)]
    struct Once {
        gone: bool,
        released: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Lease for Once {
        async fn renew(&self) -> Result<Renewal> {
            Ok(if self.gone {
                Renewal::Gone
            } else {
                Renewal::Renewed
            })
        }
        async fn release(&self, _: Release) -> Result<()> {
            self.released.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    struct Again {
        writes: AtomicUsize,
        superseded: bool,
        released: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Registrar for Again {
        async fn register_again(
            &self,
            _: LostRegistration<'_>,
        ) -> Result<Option<(Arc<dyn Lease>, Instant)>> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            if self.superseded {
                return Ok(None);
            }
            Ok(Some((
                Arc::new(Once {
                    gone: false,
                    released: self.released.clone(),
                }),
                Instant::now(),
            )))
        }
    }

    const TTL: Duration = Duration::from_secs(4);

    fn registrar(superseded: bool) -> (Arc<Again>, Arc<AtomicUsize>) {
        let released = Arc::new(AtomicUsize::new(0));
        let again = Arc::new(Again {
            writes: AtomicUsize::new(0),
            superseded,
            released: released.clone(),
        });
        (again, released)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_is_written_again_once_and_the_old_one_released() {
        let tasks = Tasks::new();
        let set = Registrations::new(&tasks);
        let (again, released) = registrar(false);
        let lost = Arc::new(Once {
            gone: true,
            released: released.clone(),
        });
        set.insert(
            "svc/1",
            Bytes::from_static(b"v"),
            TTL,
            lost,
            Instant::now(),
            again.clone(),
        );
        tokio::time::sleep(TTL * 3).await;
        assert_eq!(again.writes.load(Ordering::SeqCst), 1);
        assert_eq!(
            released.load(Ordering::SeqCst),
            1,
            "the lost lease is released"
        );
        assert_eq!(set.len(), 1);
        set.remove("svc/1");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            released.load(Ordering::SeqCst),
            2,
            "removing releases the new lease"
        );
        assert_eq!(set.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_another_client_rewrote_ends_the_registration() {
        let tasks = Tasks::new();
        let set = Registrations::new(&tasks);
        let (again, released) = registrar(true);
        let lost = Arc::new(Once {
            gone: true,
            released,
        });
        set.insert(
            "svc/1",
            Bytes::from_static(b"v"),
            TTL,
            lost,
            Instant::now(),
            again.clone(),
        );
        tokio::time::sleep(TTL * 3).await;
        assert_eq!(again.writes.load(Ordering::SeqCst), 1);
        assert_eq!(set.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn rewriting_replaces_and_remove_tree_ends_below_a_directory() {
        let tasks = Tasks::new();
        let set = Registrations::new(&tasks);
        let (again, released) = registrar(false);
        for key in ["a/1", "a/1", "a/2", "b/1"] {
            let lease = Arc::new(Once {
                gone: false,
                released: released.clone(),
            });
            set.insert(key, Bytes::new(), TTL, lease, Instant::now(), again.clone());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(set.len(), 3);
        assert_eq!(
            released.load(Ordering::SeqCst),
            1,
            "the replaced lease is released"
        );
        set.remove_tree("a");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(set.len(), 1);
        assert_eq!(released.load(Ordering::SeqCst), 3);
    }

    /// `write_again` over a scripted key: each read returns the next of `reads`, each write
    /// the next of `writes`; returns what it returned and the preconditions written with.
    async fn scripted(
        reads: Vec<Option<KvPair>>,
        writes: Vec<Result<u64>>,
    ) -> (Result<Option<u64>>, Vec<Precondition>) {
        let reads = Mutex::new(reads.into_iter());
        let writes = Mutex::new(writes.into_iter());
        let conditions = Mutex::new(Vec::new());
        let result = write_again(
            b"v",
            || {
                let next = reads.lock().unwrap().next().expect("a scripted read");
                async move { Ok(next) }
            },
            |condition| {
                conditions.lock().unwrap().push(condition);
                let next = writes.lock().unwrap().next().expect("a scripted write");
                async move { next }
            },
        )
        .await;
        (result, conditions.into_inner().unwrap())
    }

    #[tokio::test]
    async fn write_again_rewrites_a_key_that_expired_under_it() {
        let ours = KvPair::new("k", b"v".to_vec(), 7);
        let (result, conditions) = scripted(
            vec![Some(ours), None],
            vec![Err(Error::not_found("k")), Ok(8)],
        )
        .await;
        assert_eq!(result.unwrap(), Some(8));
        assert_eq!(conditions, [Precondition::Index(7), Precondition::Absent]);
    }

    #[tokio::test]
    async fn write_again_ends_when_another_client_wrote() {
        let theirs = KvPair::new("k", b"other".to_vec(), 9);
        let (result, conditions) = scripted(vec![Some(theirs)], vec![]).await;
        assert_eq!(result.unwrap(), None);
        assert!(
            conditions.is_empty(),
            "nothing is written over another value"
        );
        let ours = KvPair::new("k", b"v".to_vec(), 7);
        let (result, _) = scripted(
            vec![Some(ours)],
            vec![Err(Error::KeyModified { key: "k".into() })],
        )
        .await;
        assert_eq!(result.unwrap(), None, "a newer write won the race");
    }
}
