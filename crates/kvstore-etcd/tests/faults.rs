//! Fault tests against a real etcd: a server restart under a watch, an unreachable endpoint.

use std::time::{Duration, Instant};

use kvstore_core::Store;
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_testutils::{
    backend_url, controlled_backend_url, next_within, ok, retry_transient, scratch_dir,
    server_control,
};

/// The restart test stops the server that the others use: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_a_server_restart() {
    let Some(url) = controlled_backend_url("KVSTORE_ETCD_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let store = ok(EtcdStore::open_url(&url).await, "connect");
    let key = format!("{}/k", scratch_dir("restart"));
    ok(store.put(&key, b"before", None).await, "put");
    let mut watch = ok(store.watch(&key, None).await, "watch");
    assert_eq!(
        &ok(next_within(&mut watch, "initial").await, "initial")
            .unwrap()
            .value[..],
        b"before"
    );

    server_control("etcd", "restart").await;

    // etcd keeps its data across the restart; the watch resumes from its last revision.
    retry_transient(Duration::from_secs(30), "put after restart", || {
        store.put(&key, b"after", None)
    })
    .await;
    let item = ok(
        next_within(&mut watch, "item after restart").await,
        "watch item after restart",
    );
    assert_eq!(
        item.map(|p| p.value.to_vec()),
        Some(b"after".to_vec()),
        "the write after the restart is delivered"
    );
    ok(store.delete(&key).await, "delete");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_not_reachable_within_the_timeout() {
    let config = EtcdConfig::new(&["127.0.0.1:1"]).with_connect_timeout(Duration::from_millis(500));
    let started = Instant::now();
    match EtcdStore::open(config).await {
        Err(err) => assert!(
            matches!(err, kvstore_core::Error::NotReachable { .. }),
            "expected NotReachable, got {err:?}"
        ),
        Ok(_) => panic!("connect to a closed port must fail"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_frees_its_lock_within_its_ttl() {
    let Some(url) = backend_url("KVSTORE_ETCD_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let opener = kvstore_testutils::Opener::new(move || {
        let url = url.clone();
        async move {
            let store = EtcdStore::open_url(&url).await?;
            Ok(std::sync::Arc::new(store) as std::sync::Arc<dyn Store>)
        }
    });
    // The lease expires a TTL after its last renewal; etcd checks leases about every 500 ms.
    let ttl = Duration::from_secs(1);
    kvstore_testutils::killed_holder_frees_lock(
        &opener,
        "a_killed_holder_frees_its_lock_within_its_ttl",
        ttl,
        ttl + Duration::from_secs(2),
    )
    .await;
}
