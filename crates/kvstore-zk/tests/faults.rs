//! Fault tests against a real ZooKeeper: a server restart under watches, a lock holder whose
//! process is killed, an unreachable server.

use std::process::Stdio;
use std::time::{Duration, Instant};

use kvstore_core::{LockOptions, Store};
use kvstore_testutils::{
    EVENT_TIMEOUT, backend_url, cleanup, keys, next_within, ok, retry_transient, scratch_dir,
    server_control,
};
use kvstore_zk::{ZkConfig, ZkStore};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Set in the child process that holds a lock until it is killed.
const HOLDER_VAR: &str = "KVSTORE_ZK_TEST_HOLD_LOCK";
const LOCK_TTL: Duration = Duration::from_secs(2);

/// The restart test stops the server that the others use: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn connect(url: &str) -> ZkStore {
    ok(
        ZkStore::connect(ZkConfig::from_url(url).expect("valid zk URL")).await,
        "connect",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_survive_a_server_restart() {
    let Some(url) = backend_url("KVSTORE_ZK_URL") else {
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
    cleanup(&store, &dir).await;
}

/// Run as a child process (see `a_killed_holder_frees_its_lock_within_its_ttl`): takes the
/// lock named by `HOLDER_VAR`, prints `locked <token>`, then waits to be killed.
async fn hold_lock_until_killed(url: &str, key: &str) {
    let store = connect(url).await;
    let mut lock = ok(
        store
            .new_lock(key, Some(&LockOptions::default().with_ttl(LOCK_TTL)))
            .await,
        "new_lock",
    );
    ok(lock.lock().await, "lock");
    println!("locked {}", lock.fencing_token().expect("token"));
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_frees_its_lock_within_its_ttl() {
    let Some(url) = backend_url("KVSTORE_ZK_URL") else {
        return;
    };
    if let Ok(key) = std::env::var(HOLDER_VAR) {
        return hold_lock_until_killed(&url, &key).await;
    }
    let _serial = SERIAL.lock().await;
    let dir = scratch_dir("zk_killed_holder");
    let key = format!("{dir}/lock");
    // This same test binary, running only this test, in holder mode.
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_holder_frees_its_lock_within_its_ttl",
            "--nocapture",
        ])
        .env(HOLDER_VAR, &key)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning the holder");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let holder_token: u64 = tokio::time::timeout(EVENT_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(token) = line.strip_prefix("locked ") {
                return token.parse().unwrap();
            }
        }
        panic!("the holder exited without taking the lock");
    })
    .await
    .expect("the holder must take the lock");

    let store = connect(&url).await;
    let mut contender = ok(
        store
            .new_lock(&key, Some(&LockOptions::default().with_ttl(LOCK_TTL)))
            .await,
        "new_lock",
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), contender.lock())
            .await
            .is_err(),
        "the lock is held by the child"
    );
    // SIGKILL: the holder cannot close its session; the server expires it.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let killed = Instant::now();
    let bound = LOCK_TTL + Duration::from_secs(2);
    ok(
        tokio::time::timeout(bound, contender.lock())
            .await
            .unwrap_or_else(|_| panic!("the lock must be free within {bound:?} of the kill")),
        "lock",
    );
    assert!(
        killed.elapsed() >= LOCK_TTL / 2,
        "taken over suspiciously early"
    );
    assert!(contender.fencing_token().expect("token") > holder_token);
    ok(contender.unlock().await, "unlock");
    cleanup(&store, &dir).await;
}

#[tokio::test]
async fn an_unreachable_server_is_not_reachable_within_the_timeout() {
    let config = ZkConfig::new(&["127.0.0.1:1"]).with_connect_timeout(Duration::from_millis(500));
    let started = Instant::now();
    match ZkStore::connect(config).await {
        Err(err) => assert!(
            matches!(err, kvstore_core::Error::NotReachable { .. }),
            "expected NotReachable, got {err:?}"
        ),
        Ok(_) => panic!("connect to a closed port must fail"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}
