//! The recorded history: every call with its invocation and completion times and outcome.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use kvstore::Error;
use kvstore_testutils::linearizability::Event;
use serde::Serialize;
use tokio::time::Instant;

/// The calls that succeed only when the server answers.
pub(crate) const SERVER_CALLS: [&str; 4] = ["get", "put", "atomic_put", "txn"];

/// What a call returned, as far as the history is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// Acknowledged.
    Ok,
    /// A known failure: the operation did not take effect.
    Refused,
    /// A transient error or a timeout: it may or may not have taken effect.
    Unknown,
}

/// One CAS-register operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RegisterOp {
    pub(crate) register: usize,
    pub(crate) event: Event,
}

/// One guarded write of a lock holder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuardedWrite {
    pub(crate) token: u64,
    pub(crate) invoked: u64,
    pub(crate) returned: u64,
    pub(crate) ok: bool,
}

/// One hold as its holder believed it, on the checker's one monotonic clock: from `lock()`
/// returning to `LockLost` resolving or `unlock()` being called, whichever came first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hold {
    pub(crate) token: u64,
    pub(crate) from: u64,
    pub(crate) to: u64,
}

/// One acquisition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Acquisition {
    pub(crate) token: u64,
    pub(crate) invoked: u64,
    pub(crate) returned: u64,
}

#[derive(Default)]
pub(crate) struct History {
    pub(crate) registers: Vec<RegisterOp>,
    /// `(key, value)` of every acknowledged put.
    pub(crate) acked_puts: Vec<(String, u64)>,
    pub(crate) guarded: Vec<GuardedWrite>,
    pub(crate) acquisitions: Vec<Acquisition>,
    pub(crate) holds: Vec<Hold>,
    /// Completion times (ns) of acknowledged server calls, per client.
    pub(crate) successes: Vec<Vec<u64>>,
    /// Acknowledged compare-and-swaps, per client.
    pub(crate) cas_ok: Vec<usize>,
    /// Completion times (ns) of acknowledged writes, any client.
    pub(crate) write_successes: Vec<u64>,
    /// Error kinds seen, by name.
    pub(crate) errors: BTreeMap<String, usize>,
    /// Calls that exceeded the hang bound.
    pub(crate) hung: Vec<String>,
    /// The first few errors that were neither transient nor a refused condition, in full.
    pub(crate) unexpected: Vec<String>,
    /// The longest each kind of call took, in seconds.
    pub(crate) slowest: BTreeMap<String, f64>,
    pub(crate) ops: usize,
}

pub(crate) struct Shared {
    pub(crate) start: Instant,
    pub(crate) hang_bound: Duration,
    pub(crate) history: Mutex<History>,
}

impl Shared {
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn record<T>(&self, client: usize, what: &str, result: &Option<kvstore::Result<T>>) {
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.ops += 1;
        match result {
            None => h.hung.push(what.to_owned()),
            // Only calls that need the server: `new_lock`, and `unlock` of a lost lock, may
            // succeed without it.
            Some(Ok(_)) if SERVER_CALLS.contains(&what) => {
                let now = self.now();
                h.successes[client].push(now);
                if what != "get" {
                    h.write_successes.push(now);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => {
                *h.errors.entry(error_kind(err)).or_default() += 1;
                // A refused condition, including a guarded write of a holder that lost its lock.
                let semantic = matches!(
                    err,
                    Error::KeyModified { .. }
                        | Error::KeyExists { .. }
                        | Error::KeyNotFound { .. }
                        | Error::LockNotHeld { .. }
                );
                if !err.is_transient() && !semantic && h.unexpected.len() < 5 {
                    h.unexpected
                        .push(format!("{what}: {}", kvstore_testutils::error_chain(err)));
                }
            }
        }
    }

    /// Runs `call` under the hang bound and records its result.
    pub(crate) async fn call<T>(
        &self,
        client: usize,
        what: &str,
        call: impl Future<Output = kvstore::Result<T>>,
    ) -> Option<kvstore::Result<T>> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.hang_bound, call).await.ok();
        let took = started.elapsed().as_secs_f64();
        self.record(client, what, &result);
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let slowest = h.slowest.entry(what.to_owned()).or_default();
        *slowest = slowest.max(took);
        result
    }
}

pub(crate) fn error_kind(err: &Error) -> String {
    if err.is_transient() {
        format!("{} (transient)", err.kind())
    } else {
        err.kind().to_owned()
    }
}

/// A CAS or put outcome from its result: refused only when the store says the condition did not
/// hold (the write certainly did not happen).
pub(crate) fn write_outcome<T>(result: &Option<kvstore::Result<T>>) -> Outcome {
    match result {
        Some(Ok(_)) => Outcome::Ok,
        Some(Err(
            Error::KeyModified { .. } | Error::KeyExists { .. } | Error::KeyNotFound { .. },
        )) => Outcome::Refused,
        _ => Outcome::Unknown,
    }
}
