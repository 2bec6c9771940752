//! Fault tests against a real ZooKeeper: a server restart under watches, a lock holder whose
//! process is killed, an unreachable server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore_core::Store;
use kvstore_testutils::{
    Opener, backend_url, cleanup, controlled_backend_url, keys, killed_holder_frees_lock,
    next_within, ok, retry_transient, scratch_dir, server_control,
};
use kvstore_zk::{ZkConfig, ZkStore};
const LOCK_TTL: Duration = Duration::from_secs(2);

/// The restart test stops the server that the others use: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn connect(url: &str) -> ZkStore {
    ok(ZkStore::open_url(url).await, "connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_survive_a_server_restart() {
    let Some(url) = controlled_backend_url("KVSTORE_ZK_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let store = connect(&url).await;
    let dir = scratch_dir("zk_restart");
    let key = format!("{dir}/k");
    ok(store.put(&key, b"before", None).await, "put");
    let mut watch = ok(store.watch(&key, None).await, "watch");
    let mut tree = ok(store.watch_tree(&dir, None).await, "watch_tree");
    let first = ok(next_within(&mut watch, "initial").await, "initial");
    assert_eq!(first.map(|p| p.value.to_vec()), Some(b"before".to_vec()));
    assert_eq!(
        keys(&ok(next_within(&mut tree, "initial").await, "initial")),
        [key.as_str()]
    );

    server_control("zk", "restart").await;

    // ZooKeeper keeps data and sessions across a restart; the client reconnects by itself.
    retry_transient(Duration::from_secs(30), "put after restart", || {
        store.put(&key, b"after", None)
    })
    .await;
    let item = ok(
        next_within(&mut watch, "watch after restart").await,
        "watch item",
    );
    assert_eq!(item.map(|p| p.value.to_vec()), Some(b"after".to_vec()));
    let listing = ok(
        next_within(&mut tree, "tree after restart").await,
        "tree item",
    );
    assert_eq!(listing[0].value.as_ref(), b"after");
    // That state may have come from the re-read after the reconnect; this one can only come
    // from the watch registered on the server again.
    ok(store.put(&key, b"again", None).await, "put again");
    let item = ok(
        next_within(&mut watch, "watch after the reconnect").await,
        "watch item",
    );
    assert_eq!(item.map(|p| p.value.to_vec()), Some(b"again".to_vec()));
    let listing = ok(
        next_within(&mut tree, "tree after the reconnect").await,
        "tree item",
    );
    assert_eq!(listing[0].value.as_ref(), b"again");
    cleanup(&store, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_frees_its_lock_within_its_ttl() {
    let Some(url) = backend_url("KVSTORE_ZK_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let opener = Opener::new(move || {
        let url = url.clone();
        async move { Ok(Arc::new(connect(&url).await) as Arc<dyn Store>) }
    });
    // The lock session has the lock's TTL as its timeout.
    killed_holder_frees_lock(
        &opener,
        "a_killed_holder_frees_its_lock_within_its_ttl",
        LOCK_TTL,
        LOCK_TTL + Duration::from_secs(2),
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_server_is_not_reachable_within_the_timeout() {
    let config = ZkConfig::new(&["127.0.0.1:1"]).with_connect_timeout(Duration::from_millis(500));
    let started = Instant::now();
    match ZkStore::open(config).await {
        Err(err) => assert!(
            matches!(err, kvstore_core::Error::NotReachable { .. }),
            "expected NotReachable, got {err:?}"
        ),
        Ok(_) => panic!("connect to a closed port must fail"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}
