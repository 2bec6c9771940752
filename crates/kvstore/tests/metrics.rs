//! The metrics layer's figures, read back from the Prometheus exporter's text — the names,
//! labels and values a scraper would see. (Its own test binary: it installs the process-wide
//! recorder.)

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kvstore::layer::{MetricsLayer, StoreExt};
use kvstore::redb::RedbStore;
use kvstore::{LockOptions, Store, WriteOptions};
use metrics_exporter_prometheus::PrometheusBuilder;

/// The value of the sample line whose name and labels contain every part of `parts`.
fn sample(text: &str, parts: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| parts.iter().all(|part| line.contains(part)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn calls_locks_registrations_and_watches_are_exported() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let exporter = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
    let memory: Arc<dyn Store> = Arc::new(
        RedbStore::open(kvstore_redb::RedbConfig::memory())
            .await
            .expect("memory store"),
    );
    let store = memory.layer(MetricsLayer::new());

    for i in 0..3 {
        store.put(&format!("m/{i}"), b"v", None).await.expect("put");
    }
    let _ = store.get("m/missing", None).await;
    let keep = WriteOptions::default()
        .with_ttl(Duration::from_secs(5))
        .with_keep_alive(true);
    store
        .put("m/instance", b"up", Some(&keep))
        .await
        .expect("register");
    let mut lock = store
        .new_lock("m/lock", Some(&LockOptions::default()))
        .await
        .expect("new_lock");
    let lost = lock.lock().await.expect("lock");
    let mut watch = store.watch("m/0", None).await.expect("watch");
    watch
        .next()
        .await
        .expect("first item")
        .expect("current state");

    let text = exporter.render();
    let ok_puts = [
        "kvstore_client_operations",
        "db_operation_name=\"put\"",
        "outcome=\"ok\"",
    ];
    assert_eq!(sample(&text, &ok_puts), Some(4.0), "{text}");
    let missing = [
        "kvstore_client_operations",
        "db_operation_name=\"get\"",
        "error_type=\"KeyNotFound\"",
        "outcome=\"error\"",
    ];
    assert_eq!(sample(&text, &missing), Some(1.0), "{text}");
    let histogram = [
        "db_client_operation_duration_count",
        "db_system_name=\"memory\"",
        "db_operation_name=\"put\"",
    ];
    assert_eq!(sample(&text, &histogram), Some(4.0), "{text}");
    for gauge in [
        "kvstore_client_locks_held",
        "kvstore_client_registrations",
        "kvstore_client_watches_open",
    ] {
        assert_eq!(
            sample(&text, &[gauge, "db_system_name=\"memory\""]),
            Some(1.0),
            "{gauge}: {text}"
        );
    }

    // The gauges come down when the hold, the registration and the watch end.
    lock.unlock().await.expect("unlock");
    tokio::time::timeout(Duration::from_secs(10), lost)
        .await
        .expect("LockLost resolves on unlock");
    store.delete("m/instance").await.expect("delete");
    drop(watch);
    let held = ["kvstore_client_locks_held", "db_system_name=\"memory\""];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // The lock gauge comes down in a task that awaits LockLost: bounded wait for it.
    while sample(&exporter.render(), &held) != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            exporter.render()
        );
        tokio::task::yield_now().await;
    }
    let text = exporter.render();
    for gauge in [
        "kvstore_client_registrations",
        "kvstore_client_watches_open",
    ] {
        assert_eq!(
            sample(&text, &[gauge, "db_system_name=\"memory\""]),
            Some(0.0),
            "{gauge}: {text}"
        );
    }
}
