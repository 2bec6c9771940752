//! Every layer passes the whole conformance suite wrapped around the in-memory store and
//! around a real Redis server (`KVSTORE_REDIS_URL`, set by ci/test.sh), alone and all stacked.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use kvstore::Store;
use kvstore::layer::{
    ConcurrencyLimitLayer, MetricsLayer, PrefixLayer, RetryLayer, StoreExt, TimeoutLayer,
    TracingLayer,
};
use kvstore::redb::RedbStore;
use kvstore_testutils::{Opener, backend_url};

type Wrap = fn(Arc<dyn Store>) -> Arc<dyn Store>;

/// Independent handles on one in-memory database, each wrapped by `wrap`.
async fn memory(wrap: Wrap) -> Opener {
    let base = Arc::new(
        RedbStore::open(kvstore_redb::RedbConfig::memory())
            .await
            .expect("open memory store"),
    );
    Opener::new(move || {
        let base = base.clone();
        async move { Ok(wrap(Arc::new(base.new_handle()))) }
    })
    .with_ttl(Duration::from_secs(1))
    .with_ttl_slack(Duration::from_millis(500))
}

/// Stores on the Redis server, each wrapped by `wrap` (`None` when the server is missing and
/// not required).
fn redis(wrap: Wrap) -> Option<Opener> {
    let url = backend_url("KVSTORE_REDIS_URL")?;
    Some(
        Opener::new(move || {
            let url = url.clone();
            async move { Ok(wrap(kvstore::open(&url).await?)) }
        })
        .with_ttl(Duration::from_secs(1))
        .with_ttl_slack(Duration::from_secs(1)),
    )
}

fn prefixed(store: Arc<dyn Store>) -> Arc<dyn Store> {
    store.layer(PrefixLayer::new("layers/prefix").expect("valid prefix"))
}

fn timed(store: Arc<dyn Store>) -> Arc<dyn Store> {
    store.layer(TimeoutLayer::new(Duration::from_secs(10)))
}

fn limited(store: Arc<dyn Store>) -> Arc<dyn Store> {
    // Small enough that the suite's concurrent cases queue for slots.
    store.layer(ConcurrencyLimitLayer::new(NonZeroUsize::new(2).expect("2")))
}

fn retried(store: Arc<dyn Store>) -> Arc<dyn Store> {
    store.layer(RetryLayer::new())
}

fn traced(store: Arc<dyn Store>) -> Arc<dyn Store> {
    store.layer(TracingLayer::new())
}

fn measured(store: Arc<dyn Store>) -> Arc<dyn Store> {
    store.layer(MetricsLayer::new())
}

fn stacked(store: Arc<dyn Store>) -> Arc<dyn Store> {
    store
        .layer(PrefixLayer::new("layers/stacked").expect("valid prefix"))
        .layer(TimeoutLayer::new(Duration::from_secs(10)))
        .layer(RetryLayer::new())
        .layer(ConcurrencyLimitLayer::new(NonZeroUsize::new(8).expect("8")))
        .layer(MetricsLayer::new())
        .layer(TracingLayer::new())
}

macro_rules! layer_suites {
    ($($name:ident => $wrap:expr;)*) => {$(
        mod $name {
            mod memory {
                kvstore_testutils::conformance_tests!(crate::memory($wrap).await);
            }
            mod redis {
                kvstore_testutils::conformance_tests!(optional: crate::redis($wrap));
            }
        }
    )*};
}

layer_suites! {
    prefix => crate::prefixed;
    timeout => crate::timed;
    limit => crate::limited;
    retry => crate::retried;
    tracing => crate::traced;
    metrics => crate::measured;
    stacked => crate::stacked;
}

/// A store in front of the in-memory store that records how many calls run at once, can make
/// each `put` and `get` take `delay`, and can fail the next `failures` calls with
/// `NotReachable` — the conditions each layer acts on, made observable.
mod gate {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use kvstore::{
        Capabilities, Error, KvPair, LockOptions, Locker, ReadOptions, Result, Store, Txn,
        WatchStream, WatchTreeStream, WriteOptions,
    };

    #[derive(Debug)]
    pub(crate) struct Gate {
        inner: Arc<dyn Store>,
        delay: Duration,
        pub(crate) failures: AtomicUsize,
        pub(crate) calls: AtomicUsize,
        in_flight: AtomicUsize,
        pub(crate) most_in_flight: AtomicUsize,
    }

    impl Gate {
        pub(crate) fn new(inner: Arc<dyn Store>, delay: Duration, failures: usize) -> Arc<Gate> {
            Arc::new(Gate {
                inner,
                delay,
                failures: AtomicUsize::new(failures),
                calls: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                most_in_flight: AtomicUsize::new(0),
            })
        }

        async fn pass<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let failed = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let result = if failed {
                Err(Error::not_reachable("gate", "injected transient failure"))
            } else {
                call.await
            };
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            result
        }
    }

    #[async_trait]
    impl Store for Gate {
        fn backend(&self) -> &'static str {
            self.inner.backend()
        }
        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }
        async fn put(
            &self,
            key: &str,
            value: &[u8],
            opts: Option<&WriteOptions>,
        ) -> Result<KvPair> {
            self.pass(self.inner.put(key, value, opts)).await
        }
        async fn get(&self, key: &str, opts: Option<&ReadOptions>) -> Result<KvPair> {
            self.pass(self.inner.get(key, opts)).await
        }
        async fn delete(&self, key: &str) -> Result<()> {
            self.pass(self.inner.delete(key)).await
        }
        async fn exists(&self, key: &str, opts: Option<&ReadOptions>) -> Result<bool> {
            self.pass(self.inner.exists(key, opts)).await
        }
        async fn list(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<Vec<KvPair>> {
            self.pass(self.inner.list(dir, opts)).await
        }
        async fn delete_tree(&self, dir: &str) -> Result<()> {
            self.pass(self.inner.delete_tree(dir)).await
        }
        async fn atomic_put(
            &self,
            key: &str,
            value: &[u8],
            previous: Option<&KvPair>,
            opts: Option<&WriteOptions>,
        ) -> Result<KvPair> {
            self.pass(self.inner.atomic_put(key, value, previous, opts))
                .await
        }
        async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
            self.pass(self.inner.atomic_delete(key, previous)).await
        }
        async fn watch(&self, key: &str, opts: Option<&ReadOptions>) -> Result<WatchStream> {
            self.pass(self.inner.watch(key, opts)).await
        }
        async fn watch_tree(
            &self,
            dir: &str,
            opts: Option<&ReadOptions>,
        ) -> Result<WatchTreeStream> {
            self.pass(self.inner.watch_tree(dir, opts)).await
        }
        async fn new_lock(&self, key: &str, opts: Option<&LockOptions>) -> Result<Box<dyn Locker>> {
            self.pass(self.inner.new_lock(key, opts)).await
        }
        async fn txn(&self, txn: &Txn) -> Result<Vec<Option<KvPair>>> {
            self.pass(self.inner.txn(txn)).await
        }
        async fn close(&self) -> Result<()> {
            self.inner.close().await
        }
    }
}

async fn gate(delay: Duration, failures: usize) -> Arc<gate::Gate> {
    let memory: Arc<dyn Store> = Arc::new(
        RedbStore::open(kvstore_redb::RedbConfig::memory())
            .await
            .expect("memory store"),
    );
    gate::Gate::new(memory, delay, failures)
}

#[tokio::test]
async fn the_limit_bounds_the_calls_in_flight() {
    let limited_gate = gate(Duration::from_millis(20), 0).await;
    let limited = limited_gate
        .clone()
        .layer(ConcurrencyLimitLayer::new(NonZeroUsize::new(2).expect("2")));
    let puts = (0..20).map(|i| {
        let store = limited.clone();
        tokio::spawn(async move { store.put(&format!("limit/{i}"), b"v", None).await })
    });
    for put in futures::future::join_all(puts).await {
        put.expect("task").expect("put");
    }
    let most = limited_gate
        .most_in_flight
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(most, 2, "20 concurrent puts through a limit of 2");
    // Without the layer the same puts overlap: the gate does observe concurrency.
    let unlimited = gate(Duration::from_millis(20), 0).await;
    let puts = (0..20).map(|i| {
        let store = unlimited.clone();
        tokio::spawn(async move { store.put(&format!("limit/{i}"), b"v", None).await })
    });
    futures::future::join_all(puts).await;
    assert!(
        unlimited
            .most_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            > 2
    );
}

#[tokio::test]
async fn the_timeout_ends_a_slow_call_with_timeout() {
    let gate = gate(Duration::from_secs(30), 0).await;
    let store = gate.layer(TimeoutLayer::new(Duration::from_millis(100)));
    let result = tokio::time::timeout(Duration::from_secs(10), store.get("slow", None))
        .await
        .expect("the timeout layer must end the call");
    assert!(matches!(result, Err(kvstore::Error::Timeout)), "{result:?}");
}

#[tokio::test]
async fn retries_repeat_safe_calls_only() {
    use std::sync::atomic::Ordering::SeqCst;
    let gate = gate(Duration::ZERO, 2).await;
    let store = gate.clone().layer(RetryLayer::new());
    // A put is safe to repeat: two transient failures, then success on the third attempt.
    let pair = store
        .put("retry/a", b"1", None)
        .await
        .expect("put after retries");
    assert_eq!(gate.calls.load(SeqCst), 3);
    // An atomic_put is not: its transient failure comes back at once, after one attempt.
    gate.failures.store(1, SeqCst);
    gate.calls.store(0, SeqCst);
    let cas = store.atomic_put("retry/a", b"2", Some(&pair), None).await;
    assert!(matches!(cas, Err(ref e) if e.is_transient()), "{cas:?}");
    assert_eq!(gate.calls.load(SeqCst), 1);
    // A non-transient error is never retried.
    gate.calls.store(0, SeqCst);
    let missing = store.get("retry/missing", None).await;
    assert!(matches!(missing, Err(kvstore::Error::KeyNotFound { .. })));
    assert_eq!(gate.calls.load(SeqCst), 1);
    // Past the retry budget (4 retries) the last transient error is returned.
    gate.failures.store(10, SeqCst);
    gate.calls.store(0, SeqCst);
    let gave_up = store.get("retry/a", None).await;
    assert!(
        matches!(gave_up, Err(ref e) if e.is_transient()),
        "{gave_up:?}"
    );
    assert_eq!(gate.calls.load(SeqCst), 5);
}

#[tokio::test]
async fn prefixes_isolate_and_errors_name_the_callers_key() {
    let memory: Arc<dyn Store> = Arc::new(
        RedbStore::open(kvstore_redb::RedbConfig::memory())
            .await
            .expect("memory store"),
    );
    let one = memory
        .clone()
        .layer(PrefixLayer::new("tenants/one").expect("prefix"));
    let two = memory
        .clone()
        .layer(PrefixLayer::new("/tenants/two/").expect("prefix"));
    assert_eq!(one.list("", None).await.expect("empty root"), vec![]);
    one.put("a/x", b"1", None).await.expect("put");
    two.put("a/y", b"2", None).await.expect("put");
    let listed: Vec<String> = one
        .list("", None)
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(listed, ["a/x"]);
    assert!(
        memory
            .exists("tenants/one/a/x", None)
            .await
            .expect("exists")
    );
    assert!(
        memory
            .exists("tenants/two/a/y", None)
            .await
            .expect("exists")
    );
    match two.get("a/x", None).await {
        Err(kvstore::Error::KeyNotFound { key }) => assert_eq!(key, "a/x"),
        other => panic!("expected KeyNotFound naming a/x, got {other:?}"),
    }
    // A bad key is refused before the prefix is added, naming the caller's key.
    match one.put("", b"v", None).await {
        Err(kvstore::Error::InvalidKey { key, .. }) => assert_eq!(key, ""),
        other => panic!("expected InvalidKey, got {other:?}"),
    }
    one.delete_tree("").await.expect("delete the prefix's tree");
    assert!(
        memory
            .exists("tenants/two/a/y", None)
            .await
            .expect("exists")
    );
    assert!(
        !memory
            .exists("tenants/one/a/x", None)
            .await
            .expect("exists")
    );
}

#[tokio::test]
async fn tracing_spans_carry_the_operation_and_the_error_type() {
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(::tracing::Level::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = ::tracing::subscriber::set_default(subscriber);
    let memory: Arc<dyn Store> = Arc::new(
        RedbStore::open(kvstore_redb::RedbConfig::memory())
            .await
            .expect("memory store"),
    );
    let store = memory.layer(TracingLayer::new());
    let _ = store.get("traced/missing", None).await;
    let output = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
    assert!(
        output.contains(r#"db.system.name="memory""#) || output.contains("db.system.name=memory"),
        "{output}"
    );
    assert!(
        output.contains("db.operation.name=\"get\"") || output.contains("db.operation.name=get"),
        "{output}"
    );
    assert!(
        output.contains("error.type=\"KeyNotFound\"") || output.contains("error.type=KeyNotFound"),
        "{output}"
    );
}
