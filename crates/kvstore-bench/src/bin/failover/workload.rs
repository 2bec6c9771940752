//! The three workloads each client runs: CAS registers, puts of fresh keys, lock rounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use kvstore::{Error, KvPair, LockOptions, Store, Txn};
use kvstore_testutils::linearizability::{Event, Op, Versioned};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::history::*;

pub(crate) fn value_of(pair: &KvPair) -> anyhow::Result<u64> {
    std::str::from_utf8(&pair.value)
        .ok()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{} holds {:?}, not a number", pair.key, pair.value))
}

pub(crate) struct Keys {
    pub(crate) dir: String,
}

impl Keys {
    pub(crate) fn register(&self, r: usize) -> String {
        format!("{}/reg/{r}", self.dir)
    }
    pub(crate) fn put(&self, client: usize, seq: u64) -> String {
        format!("{}/puts/{client}/{seq}", self.dir)
    }
    pub(crate) fn lock(&self) -> String {
        format!("{}/lock", self.dir)
    }
    pub(crate) fn protected(&self) -> String {
        format!("{}/protected", self.dir)
    }
}

pub(crate) async fn cas_client(
    client: usize,
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    keys: Arc<Keys>,
    registers: usize,
    stop: CancellationToken,
) {
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        let r = rand::rng().random_range(0..registers);
        let key = keys.register(r);
        let invoked = shared.now();
        let read = shared.call(client, "get", store.get(&key, None)).await;
        let returned = shared.now();
        let previous = match read {
            Some(Ok(pair)) => match value_of(&pair) {
                Ok(v) => {
                    let state = Versioned::at(v, pair.last_index);
                    push_register(&shared, r, Op::Read(Some(state)), invoked, Some(returned));
                    Some((pair, v))
                }
                Err(_) => continue,
            },
            Some(Err(Error::KeyNotFound { .. })) => {
                push_register(&shared, r, Op::Read(None), invoked, Some(returned));
                None
            }
            // A failed read had no effect: left out of the history.
            _ => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        seq += 1;
        // A fresh value: (count + 1) in the high digits, then client and attempt, so no value
        // is ever written twice.
        let count = previous.as_ref().map_or(0, |(_, v)| v / 1_000_000_000);
        let new = (count + 1) * 1_000_000_000 + client as u64 * 10_000_000 + seq % 10_000_000;
        let invoked = shared.now();
        let result = shared
            .call(
                client,
                "atomic_put",
                store.atomic_put(
                    &key,
                    new.to_string().as_bytes(),
                    previous.as_ref().map(|(p, _)| p),
                    None,
                ),
            )
            .await;
        let returned = shared.now();
        // The model compares the index as `atomic_put` does; an acknowledged write's is the one
        // it returned, an unknown one's is learnt from the reads that see it.
        let expect = previous.map(|(p, v)| Versioned::at(v, p.last_index));
        let new = match &result {
            Some(Ok(pair)) => Versioned::at(new, pair.last_index),
            _ => Versioned::unindexed(new),
        };
        let (succeeded, returned) = match write_outcome(&result) {
            Outcome::Ok => {
                shared
                    .history
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .cas_ok[client] += 1;
                (Some(true), Some(returned))
            }
            Outcome::Refused => (Some(false), Some(returned)),
            Outcome::Unknown => (None, None),
        };
        push_register(
            &shared,
            r,
            Op::Cas {
                expect,
                new,
                succeeded,
            },
            invoked,
            returned,
        );
        if succeeded.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub(crate) fn push_register(
    shared: &Shared,
    register: usize,
    op: Op,
    invoked: u64,
    returned: Option<u64>,
) {
    shared
        .history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .registers
        .push(RegisterOp {
            register,
            event: Event {
                op,
                invoked,
                returned,
            },
        });
}

pub(crate) async fn put_client(
    client: usize,
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    keys: Arc<Keys>,
    stop: CancellationToken,
) {
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        seq += 1;
        let key = keys.put(client, seq);
        let result = shared
            .call(
                client,
                "put",
                store.put(&key, seq.to_string().as_bytes(), None),
            )
            .await;
        if write_outcome(&result) == Outcome::Ok {
            shared
                .history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .acked_puts
                .push((key, seq));
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub(crate) async fn lock_client(
    client: usize,
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    keys: Arc<Keys>,
    ttl: Duration,
    stop: CancellationToken,
) {
    let opts = LockOptions::default().with_ttl(ttl);
    let lock_key = keys.lock();
    while !stop.is_cancelled() {
        let Some(Ok(mut locker)) = shared
            .call(client, "new_lock", store.new_lock(&lock_key, Some(&opts)))
            .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let invoked = shared.now();
        // Bounded: a waiter gives up and tries again, so stopping never waits for a lock.
        let acquired = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(3), locker.lock()) => r.ok(),
            () = stop.cancelled() => None,
        };
        let returned = shared.now();
        let Some(Ok(lost)) = acquired else {
            drop(locker);
            continue;
        };
        let Some(token) = locker.fencing_token() else {
            continue;
        };
        shared
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .acquisitions
            .push(Acquisition {
                token,
                invoked,
                returned,
            });
        // When the holder learns of a loss, on the same clock (a task per hold, aborted below).
        let lost_at = Arc::new(AtomicU64::new(u64::MAX));
        let watcher = tokio::spawn({
            let (lost, lost_at, shared) = (lost.clone(), lost_at.clone(), shared.clone());
            async move {
                lost.await;
                lost_at.store(shared.now(), Ordering::SeqCst);
            }
        });
        for _ in 0..3 {
            if lost.is_lost() {
                break;
            }
            let txn = Txn::new()
                .when_held(&lock_key, token)
                .put(&keys.protected(), token.to_string());
            let invoked = shared.now();
            let result = shared.call(client, "txn", store.txn(&txn)).await;
            let returned = shared.now();
            shared
                .history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .guarded
                .push(GuardedWrite {
                    token,
                    invoked,
                    returned,
                    ok: matches!(result, Some(Ok(_))),
                });
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let unlocking = shared.now();
        let _ = shared.call(client, "unlock", locker.unlock()).await;
        watcher.abort();
        let to = unlocking.min(lost_at.load(Ordering::SeqCst));
        shared
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .holds
            .push(Hold {
                token,
                from: returned,
                to,
            });
    }
}
