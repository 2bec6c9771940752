//! The metrics layer, through the `metrics` facade, and the names of the metrics it records.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use metrics::{counter, gauge, histogram};
use tokio::time::Instant;

use super::Layer;
use super::intercept::{Intercept, Intercepted, Operation, Wrote};
use crate::{LockLost, Result, Store, is_descendant, normalize_dir, normalize_key};

/// The operation-duration histogram, in seconds (OpenTelemetry database-client semantic
/// conventions).
pub const OPERATION_DURATION: &str = "db.client.operation.duration";
/// The calls counter, with an `outcome` label (`ok` or `error`).
pub const OPERATIONS: &str = "kvstore.client.operations";
/// Gauge: locks held through the layer now.
pub const LOCKS_HELD: &str = "kvstore.client.locks.held";
/// Gauge: registrations (`keep_alive` keys) started through the layer and not ended by it.
pub const REGISTRATIONS: &str = "kvstore.client.registrations";
/// Gauge: watch streams open through the layer now.
pub const WATCHES_OPEN: &str = "kvstore.client.watches.open";

/// Records every call through the [`metrics`](https://docs.rs/metrics) facade, with the names
/// and labels of the OpenTelemetry database-client semantic conventions; whatever recorder
/// the application installed (a Prometheus exporter, OpenTelemetry, StatsD) receives them.
///
/// | metric | kind | labels |
/// | --- | --- | --- |
/// | `db.client.operation.duration` | histogram, seconds | `db.system.name`, `db.operation.name`, `error.type` (failed calls only) |
/// | `kvstore.client.operations` | counter | the same, and `outcome` (`ok` or `error`) |
/// | `kvstore.client.locks.held` | gauge | `db.system.name` |
/// | `kvstore.client.registrations` | gauge | `db.system.name` |
/// | `kvstore.client.watches.open` | gauge | `db.system.name` |
///
/// `db.system.name` is the store's [`backend`](Store::backend) (`redis`, `etcd`, `zk`,
/// `consul`, `redb`, `memory`), `db.operation.name` the call's [`Operation::name`], `error.type`
/// the error's [`Error::kind`](crate::Error::kind). A Prometheus exporter writes the names with
/// `_` for `.` (`db_client_operation_duration`). The duration of `lock` includes the
/// wait for the lock. A lock counts as held from `lock()` returning until its
/// [`LockLost`] resolves (lost, unlocked or dropped); a registration from a successful
/// `keep_alive` put until a write, delete or `delete_tree` through the same layer replaces or
/// ends it, or the store closes; a watch while its stream is alive.
///
/// # Example
///
/// ```no_run
/// # async fn demo(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
/// use kvstore_core::layer::{MetricsLayer, StoreExt};
///
/// // With a recorder installed (metrics-exporter-prometheus, say):
/// let store = store.layer(MetricsLayer::new());
/// store.put("config/a", b"1", None).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer {
    _private: (),
}

impl MetricsLayer {
    /// A metrics layer.
    pub fn new() -> Self {
        MetricsLayer::default()
    }
}

impl Layer for MetricsLayer {
    fn layer(&self, inner: Arc<dyn Store>) -> Arc<dyn Store> {
        let backend = inner.backend();
        Intercepted::wrap(
            inner,
            Measured {
                backend,
                registrations: Arc::new(Mutex::new(HashSet::new())),
            },
        )
    }
}

#[derive(Debug)]
struct Measured {
    backend: &'static str,
    /// The keys of the registrations this layer has seen start and not end.
    registrations: Arc<Mutex<HashSet<String>>>,
}

impl Measured {
    /// Applies `change` to the registration set and moves the gauge by the difference.
    fn registrations(&self, change: impl FnOnce(&mut HashSet<String>)) {
        let mut set = self
            .registrations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = set.len();
        change(&mut set);
        let after = set.len();
        let gauge = gauge!(REGISTRATIONS, "db.system.name" => self.backend);
        if after > before {
            gauge.increment((after - before) as f64);
        } else if before > after {
            gauge.decrement((before - after) as f64);
        }
    }
}

/// Decrements a gauge when dropped.
struct Open(metrics::Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Intercept for Measured {
    async fn around_once<'a, T: Send + 'a>(
        &'a self,
        op: Operation,
        call: impl Future<Output = Result<T>> + Send + 'a,
    ) -> Result<T> {
        let started = Instant::now();
        let result = call.await;
        let seconds = started.elapsed().as_secs_f64();
        let (system, name) = (self.backend, op.name());
        match &result {
            Ok(_) => {
                histogram!(OPERATION_DURATION, "db.system.name" => system, "db.operation.name" => name)
                    .record(seconds);
                counter!(OPERATIONS, "db.system.name" => system, "db.operation.name" => name, "outcome" => "ok")
                    .increment(1);
            }
            Err(err) => {
                let kind = err.kind();
                histogram!(OPERATION_DURATION, "db.system.name" => system, "db.operation.name" => name, "error.type" => kind)
                    .record(seconds);
                counter!(OPERATIONS, "db.system.name" => system, "db.operation.name" => name, "error.type" => kind, "outcome" => "error")
                    .increment(1);
            }
        }
        result
    }

    fn wrote(&self, wrote: Wrote<'_>) {
        match wrote {
            Wrote::Put { key, keep_alive } => {
                let key = normalize_key(key).unwrap_or(key).to_owned();
                self.registrations(|set| {
                    if keep_alive {
                        set.insert(key);
                    } else {
                        set.remove(&key);
                    }
                });
            }
            Wrote::Delete { key } => {
                let key = normalize_key(key).unwrap_or(key);
                self.registrations(|set| {
                    set.remove(key);
                });
            }
            Wrote::DeleteTree { dir } => {
                let dir = normalize_dir(dir).unwrap_or(dir);
                self.registrations(|set| {
                    set.retain(|key| key != dir && !is_descendant(key, dir));
                });
            }
            Wrote::Txn { keys } => self.registrations(|set| {
                for key in keys {
                    set.remove(normalize_key(key).unwrap_or(key));
                }
            }),
            Wrote::Close => self.registrations(HashSet::clear),
        }
    }

    fn held(&self, lost: &LockLost) {
        let held = gauge!(LOCKS_HELD, "db.system.name" => self.backend);
        held.increment(1.0);
        let lost = lost.clone();
        // The gauge comes down when the hold ends, however it ends; LockLost resolves then.
        tokio::spawn(async move {
            lost.await;
            held.decrement(1.0);
        });
    }

    fn watch_opened(&self) -> Box<dyn Send + Sync> {
        let open = gauge!(WATCHES_OPEN, "db.system.name" => self.backend);
        open.increment(1.0);
        Box::new(Open(open))
    }
}
