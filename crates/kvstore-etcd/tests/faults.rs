//! Fault tests against a real etcd: a server restart under a watch, an unreachable endpoint.

use std::time::{Duration, Instant};

use kvstore_core::Store;
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_testutils::{backend_url, next_within, ok, scratch_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_a_server_restart() {
    let Some(url) = backend_url("KVSTORE_ETCD_URL") else {
        return;
    };
    let script = std::env::var("KVSTORE_RESTART_SCRIPT")
        .expect("KVSTORE_RESTART_SCRIPT is set by ci/test.sh");
    let store = ok(
        EtcdStore::connect(EtcdConfig::from_url(&url).unwrap()).await,
        "connect",
    );
    let key = format!("{}/k", scratch_dir("restart"));
    ok(store.put(&key, b"before", None).await, "put");
    let mut watch = ok(store.watch(&key, None).await, "watch");
    assert_eq!(
        &ok(next_within(&mut watch, "initial").await, "initial")
            .unwrap()
            .value[..],
        b"before"
    );

    let status = tokio::process::Command::new("bash")
        .arg(script)
        .arg("etcd")
        .status()
        .await
        .unwrap();
    assert!(status.success(), "restarting etcd failed");

    // etcd keeps its data across the restart; the watch resumes from its last revision.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.put(&key, b"after", None).await {
            Ok(_) => break,
            Err(err) if err.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(err) => panic!("put after restart: {err}"),
        }
    }
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
    match EtcdStore::connect(config).await {
        Err(err) => assert!(
            matches!(err, kvstore_core::Error::NotReachable { .. }),
            "expected NotReachable, got {err:?}"
        ),
        Ok(_) => panic!("connect to a closed port must fail"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}
