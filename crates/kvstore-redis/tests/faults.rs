//! Fault tests against a real Redis: a server restart under a watch, keyspace notifications
//! switched off, and an unreachable server. They change server state, so they run one at a time.

use std::str::FromStr;
use std::time::{Duration, Instant};

use kvstore_core::{Error, Store};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testutils::{
    backend_url, controlled_backend_url, next_within, ok, retry_transient, scratch_dir,
    server_control,
};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn connect(url: &str) -> RedisStore {
    ok(RedisStore::open_url(url).await, "connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_a_server_restart() {
    let Some(url) = controlled_backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let store = connect(&url).await;
    let key = format!("{}/k", scratch_dir("restart"));
    ok(store.put(&key, b"before", None).await, "put");
    let mut watch = ok(store.watch(&key, None).await, "watch");
    assert_eq!(
        &ok(next_within(&mut watch, "initial").await, "initial")
            .unwrap()
            .value[..],
        b"before"
    );

    server_control("redis", "restart").await;

    // The server restarted empty (no persistence): the watch must re-sync to "absent" or go
    // straight to the new write, and then deliver a write made after the restart.
    let writer = connect(&url).await;
    retry_transient(Duration::from_secs(30), "put after restart", || {
        writer.put(&key, b"after", None)
    })
    .await;
    loop {
        let item = ok(
            next_within(&mut watch, "item after restart").await,
            "watch item after restart",
        );
        match item {
            Some(pair) if &pair.value[..] == b"after" => break,
            None => continue,
            Some(other) => panic!("unexpected state after restart: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_fails_clearly_when_keyspace_notifications_are_off() {
    let Some(url) = backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let admin = redis::Client::open(url.as_str()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    let before: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("")
        .query_async(&mut conn)
        .await
        .unwrap();
    let store = connect(&url).await;
    let started = Instant::now();
    let result = store.watch("any/key", None).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&before[1])
        .query_async(&mut conn)
        .await
        .unwrap();
    match result {
        Err(err @ Error::InvalidConfig { .. }) => {
            let text = kvstore_testutils::error_chain(&err);
            assert!(
                text.contains("notify-keyspace-events"),
                "the error must say how to enable them: {text}"
            );
        }
        Err(other) => panic!("expected InvalidConfig, got {other:?}"),
        Ok(_) => panic!("watch must fail when keyspace notifications are off"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it must not hang"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_not_reachable_within_the_timeout() {
    // Port 1 on loopback: nothing listens there.
    let config =
        RedisConfig::new("redis://127.0.0.1:1").with_connect_timeout(Duration::from_millis(500));
    let started = Instant::now();
    match RedisStore::open(config).await {
        Err(err) => assert!(
            err.is_transient(),
            "expected NotReachable/Timeout, got {err:?}"
        ),
        Ok(_) => panic!("connect to a closed port must fail"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_raw_bytes_for_redis_cli() {
    let Some(url) = backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let store = connect(&url).await;
    let key = format!("{}/raw", scratch_dir("layout"));
    let value = [0u8, 159, 146, 150, b'x'];
    ok(store.put(&key, &value, None).await, "put");
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let raw: Vec<u8> = redis::cmd("HGET")
        .arg(&key)
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(raw, value, "HGET <key> v returns the value byte for byte");
    ok(store.delete(&key).await, "delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_frees_its_lock_within_its_ttl() {
    let Some(url) = backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let opener = kvstore_testutils::Opener::new(move || {
        let url = url.clone();
        async move {
            let config = RedisConfig::from_str(&url)?;
            Ok(std::sync::Arc::new(RedisStore::open(config).await?)
                as std::sync::Arc<dyn kvstore_core::Store>)
        }
    });
    // The lock key's PX expiry frees it; Redis expires keys within ~100 ms.
    let ttl = Duration::from_secs(1);
    kvstore_testutils::killed_holder_frees_lock(
        &opener,
        "a_killed_holder_frees_its_lock_within_its_ttl",
        ttl,
        ttl + Duration::from_secs(2),
    )
    .await;
}

/// `CLIENT LIST` lines of pub/sub connections (`sub` or `psub` above 0).
async fn pubsub_clients(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    list.lines()
        .filter(|line| {
            line.split(' ').any(|f| {
                f.strip_prefix("sub=")
                    .or_else(|| f.strip_prefix("psub="))
                    .is_some_and(|n| n != "0")
            })
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_and_lock_waiters_share_one_pubsub_connection() {
    let Some(url) = backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let before = pubsub_clients(&mut admin).await;
    let store = connect(&url).await;
    let dir = scratch_dir("shared_pubsub");
    let mut watches = Vec::new();
    for i in 0..50 {
        let mut watch = ok(store.watch(&format!("{dir}/k{i}"), None).await, "watch");
        next_within(&mut watch, "initial").await.unwrap();
        watches.push(watch);
    }
    let mut tree = ok(store.watch_tree(&dir, None).await, "watch_tree");
    next_within(&mut tree, "initial").await.unwrap();
    assert_eq!(
        pubsub_clients(&mut admin).await,
        before + 1,
        "51 watches of one store use one pub/sub connection"
    );
    // Each still gets its own key's events.
    ok(store.put(&format!("{dir}/k7"), b"v", None).await, "put");
    let seen = ok(next_within(&mut watches[7], "k7's write").await, "watch");
    assert_eq!(seen.map(|p| p.value.to_vec()), Some(b"v".to_vec()));
    assert_eq!(ok(next_within(&mut tree, "tree").await, "tree").len(), 1);
    drop((watches, tree));
    ok(store.close().await, "close");
    let closed = kvstore_testutils::eventually(Duration::from_secs(5), || {
        let mut admin = admin.clone();
        async move { pubsub_clients(&mut admin).await == before }
    })
    .await;
    assert!(closed, "closing the store closes its pub/sub connection");
}
