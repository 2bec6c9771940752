//! ZooKeeper-specific behavior of the znode layout, checked with the raw client beside the
//! store: hidden parents that the server reaps, values that survive their children, bytes
//! as-is, and digest authentication with creator ACLs.

use std::str::FromStr;
use std::time::Duration;

use kvstore_core::{Error, Store};
use kvstore_testutils::{backend_url, cleanup, eventually, keys, ok, scratch_dir};
use kvstore_zk::{ZkConfig, ZkStore};
use zookeeper_client::Client;

async fn setup() -> Option<(ZkStore, Client)> {
    let url = backend_url("KVSTORE_ZK_URL")?;
    let config = ZkConfig::from_str(&url).expect("valid zk URL");
    let raw = Client::connect(&config.hosts.join(","))
        .await
        .expect("raw client");
    Some((ok(ZkStore::open(config).await, "connect"), raw))
}

/// The interval after which the CI server has surely reaped empty containers (it checks
/// every 100 ms).
const REAPED: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_are_hidden_and_reaped_after_their_last_child() {
    let Some((store, raw)) = setup().await else {
        return;
    };
    let dir = scratch_dir("zk_parents");
    ok(store.put(&format!("{dir}/a/b/c"), b"v", None).await, "put");
    // The parents exist as znodes but are no keys.
    assert!(
        raw.check_stat(&format!("/{dir}/a/b"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(!ok(
        store.exists(&format!("{dir}/a/b"), None).await,
        "exists"
    ));
    assert_eq!(
        keys(&ok(store.list(&dir, None).await, "list")),
        [format!("{dir}/a/b/c")]
    );
    // They never block deletes, and go once their last child is gone.
    ok(store.delete(&format!("{dir}/a/b/c")).await, "delete");
    let reaped = eventually(REAPED, || async {
        raw.check_stat(&format!("/{dir}/a"))
            .await
            .unwrap()
            .is_none()
    })
    .await;
    assert!(reaped, "empty parents must not pile up");
    assert!(matches!(
        store.list(&dir, None).await,
        Err(Error::KeyNotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_on_a_parent_survives_its_children() {
    let Some((store, raw)) = setup().await else {
        return;
    };
    let dir = scratch_dir("zk_parent_value");
    // Children first: `p` is created as a hidden container, then given a value.
    ok(
        store.put(&format!("{dir}/p/child"), b"c", None).await,
        "put child",
    );
    let parent = ok(
        store.put(&format!("{dir}/p"), b"parent", None).await,
        "put parent",
    );
    ok(
        store.delete(&format!("{dir}/p/child")).await,
        "delete child",
    );
    // A sibling emptied after the child's delete is reaped: the server's container reaper
    // has run since `p` lost its child, and must have left `p` (with its value) in place.
    ok(
        store.put(&format!("{dir}/q/x"), b"x", None).await,
        "put sibling",
    );
    ok(store.delete(&format!("{dir}/q/x")).await, "delete sibling");
    let reaped = eventually(REAPED, || async {
        raw.check_stat(&format!("/{dir}/q"))
            .await
            .unwrap()
            .is_none()
    })
    .await;
    assert!(reaped, "the emptied sibling is reaped within {REAPED:?}");
    let got = ok(store.get(&format!("{dir}/p"), None).await, "get parent");
    assert_eq!(
        (&got.value[..], got.last_index),
        (&b"parent"[..], parent.last_index)
    );
    assert_eq!(
        keys(&ok(store.list(&dir, None).await, "list")),
        [format!("{dir}/p")]
    );

    // Value first, then a child; deleting the key keeps the child, and hides the key.
    ok(
        store.put(&format!("{dir}/p/child"), b"c", None).await,
        "put child",
    );
    ok(store.delete(&format!("{dir}/p")).await, "delete parent");
    assert!(matches!(
        store.get(&format!("{dir}/p"), None).await,
        Err(Error::KeyNotFound { .. })
    ));
    assert_eq!(
        keys(&ok(store.list(&dir, None).await, "list")),
        [format!("{dir}/p/child")],
        "the child stays, the deleted parent is hidden"
    );
    assert_eq!(
        keys(&ok(store.list(&format!("{dir}/p"), None).await, "list p")),
        [format!("{dir}/p/child")]
    );
    // Re-creating it with atomic_put takes over the hidden parent.
    ok(
        store
            .atomic_put(&format!("{dir}/p"), b"again", None, None)
            .await,
        "re-create parent",
    );
    assert_eq!(
        &ok(store.get(&format!("{dir}/p"), None).await, "get").value[..],
        b"again"
    );
    // Raw bytes as-is for the server's own tools.
    let (data, _) = raw.get_data(&format!("/{dir}/p")).await.unwrap();
    assert_eq!(data, b"again");
    cleanup(&store, &dir).await;
    let gone = eventually(REAPED, || async {
        raw.check_stat(&format!("/{dir}")).await.unwrap().is_none()
    })
    .await;
    assert!(gone, "delete_tree leaves nothing behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_starts_with_the_marker_round_trips() {
    let Some((store, _raw)) = setup().await else {
        return;
    };
    let dir = scratch_dir("zk_marker");
    let value = b"\0\0kvstore\0hidden";
    ok(store.put(&format!("{dir}/k"), value, None).await, "put");
    assert_eq!(
        &ok(store.get(&format!("{dir}/k"), None).await, "get").value[..],
        value
    );
    assert_eq!(ok(store.list(&dir, None).await, "list").len(), 1);
    cleanup(&store, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_credentials_and_creator_acl_protect_the_nodes() {
    let Some(url) = backend_url("KVSTORE_ZK_URL") else {
        return;
    };
    let base = ZkConfig::from_str(&url).expect("valid zk URL");
    // A top-level directory of its own: the creator ACL also covers the parents it creates,
    // which must not be shared with other tests.
    let dir = scratch_dir("zk_acl").replace('/', "-");
    let owner_url = url.replacen("zk://", "zk://app:secret@", 1);
    let owner = ok(
        ZkStore::open_url(&owner_url).await,
        "connect with digest credentials",
    );
    ok(
        owner.put(&format!("{dir}/secret"), b"s3cret", None).await,
        "put",
    );
    assert_eq!(
        &ok(owner.get(&format!("{dir}/secret"), None).await, "get").value[..],
        b"s3cret"
    );

    // Anyone else is refused by the server, and nothing is changed.
    let stranger = ok(ZkStore::open(base).await, "connect without credentials");
    assert!(
        matches!(
            stranger.get(&format!("{dir}/secret"), None).await,
            Err(Error::PermissionDenied { .. })
        ),
        "reading a creator-only node without credentials must be PermissionDenied"
    );
    assert!(matches!(
        stranger.put(&format!("{dir}/secret"), b"x", None).await,
        Err(Error::PermissionDenied { .. })
    ));
    let other = ZkConfig::from_str(&url.replacen("zk://", "zk://app:wrong@", 1)).unwrap();
    let other = ok(ZkStore::open(other).await, "connect with other credentials");
    assert!(matches!(
        other.get(&format!("{dir}/secret"), None).await,
        Err(Error::PermissionDenied { .. })
    ));
    assert_eq!(
        &ok(owner.get(&format!("{dir}/secret"), None).await, "get").value[..],
        b"s3cret"
    );
    // The parents are the owner's too; the owner can remove everything.
    cleanup(&owner, &dir).await;
}

/// A holder cut off (through the fault proxy) until the server expires its lock session: its
/// ephemeral waiter and value go, and the server reaps the empty lock directory. The next
/// holder's waiter, in a directory created again, gets the stale holder's path (sequences
/// start from 0 again). After the heal the stale holder's store still has its own session
/// (10 s) but not the lock's; its release must not delete the next holder's value — with the
/// waiter's path as the only guard, checked on the store's session, it did (CI stop 41: a new
/// leader whose key vanished).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holder_never_deletes_the_next_holders_value() {
    use kvstore_core::LockOptions;
    use kvstore_testutils::proxy::FaultProxy;
    let Some((second, raw)) = setup().await else {
        return;
    };
    let url = backend_url("KVSTORE_ZK_URL").expect("set");
    let upstream = kvstore_testutils::upstream_of(&url);
    let Some(proxy) = FaultProxy::start(&upstream).await else {
        return;
    };
    let first = ok(
        ZkStore::open_url(&proxy.url_through(&url, &upstream)).await,
        "connect through the proxy",
    );
    let dir = scratch_dir("zk_stale_holder");
    let key = format!("{dir}/leader");
    let lock_dir = format!("/.kvstore-locks/{key}");
    let opts = |value: &'static str| {
        LockOptions::default()
            .with_value(value)
            .with_delete_on_unlock(true)
            .with_ttl(Duration::from_secs(2))
    };
    let mut stale = ok(first.new_lock(&key, Some(&opts("first"))).await, "new_lock");
    let stale_lost = ok(stale.lock().await, "lock");
    let waiters = raw.list_children(&lock_dir).await.expect("list waiters");
    let [stale_waiter] = &waiters[..] else {
        panic!("one waiter expected, found {waiters:?}")
    };

    proxy.cut().await;
    // The server expires the lock's session (2 s): its waiter and value go, then the empty
    // directory is reaped.
    let expired = eventually(Duration::from_secs(10), || async {
        matches!(second.exists(&key, None).await, Ok(false))
    })
    .await;
    assert!(
        expired,
        "the cut-off holder's value must go with its session"
    );
    let reaped = eventually(REAPED, || async {
        raw.check_stat(&lock_dir).await.unwrap().is_none()
    })
    .await;
    assert!(reaped, "the empty lock directory must be reaped");
    let mut holder = ok(
        second.new_lock(&key, Some(&opts("second"))).await,
        "new_lock",
    );
    let lost = ok(holder.lock().await, "lock");
    let waiters = raw.list_children(&lock_dir).await.expect("list waiters");
    assert_eq!(
        &waiters[..],
        std::slice::from_ref(stale_waiter),
        "the new directory's first waiter has the stale one's path: the case under test"
    );

    proxy.heal().await;
    assert!(
        tokio::time::timeout(Duration::from_secs(10), stale_lost)
            .await
            .is_ok(),
        "the stale holder knows it lost the lock"
    );
    let _ = stale.unlock().await;
    let value = ok(second.get(&key, None).await, "the holder's value stays");
    assert_eq!(&value.value[..], b"second");
    assert!(!lost.is_lost(), "the holder still holds the lock");
    ok(holder.unlock().await, "unlock");
    cleanup(&second, &dir).await;
    let _ = first.close().await;
}
