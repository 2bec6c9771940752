//! `kvstore::open` and `Registry`: URL handling, errors, and the suite through an opened store.

use std::sync::Arc;

use kvstore::{Error, Registry, Store};

#[tokio::test]
async fn opens_redb_files_by_absolute_and_relative_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.redb");
    let store = kvstore::open(&format!("redb://{}", path.display()))
        .await
        .unwrap();
    assert_eq!(store.backend(), "redb");
    store.put("k", b"v", None).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    assert!(path.exists(), "the file must be created at the given path");

    // A relative URL names a file relative to the working directory: a directory made there
    // (removed when the test ends) holds it.
    let here = tempfile::Builder::new()
        .prefix("open-test-")
        .tempdir_in(".")
        .unwrap();
    let name = here
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let rel = format!("redb:{name}/rel.redb");
    let store = kvstore::open(&rel).await.unwrap();
    store.put("k", b"relative", None).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    assert!(
        here.path().join("rel.redb").exists(),
        "{rel} must create the file relative to the working directory"
    );
    let store = kvstore::open(&rel).await.unwrap();
    assert_eq!(&store.get("k", None).await.unwrap().value[..], b"relative");
}

#[tokio::test]
async fn unknown_scheme_names_the_enabled_ones() {
    let err = kvstore::open("nosuch://127.0.0.1:1").await.unwrap_err();
    match &err {
        Error::BackendNotSupported { scheme, enabled } => {
            assert_eq!(scheme, "nosuch");
            assert!(enabled.contains(&"redb".to_owned()) && enabled.contains(&"memory".to_owned()));
        }
        other => panic!("expected BackendNotSupported, got {other:?}"),
    }
    // Sorted, comma-separated; another test in this binary may have registered a scheme of
    // its own process-wide, so only the built-in neighbours are checked.
    let text = err.to_string();
    assert!(text.contains("enabled schemes: "), "{text}");
    let memory = text.find("memory").expect("memory listed");
    let redb = text.find("redb").expect("redb listed");
    assert!(memory < redb, "sorted: {text}");
}

#[tokio::test]
async fn malformed_urls_and_options_are_invalid_config() {
    for url in ["not a url", "redb:x.redb?nonsense=1", "redb:///"] {
        assert!(
            matches!(kvstore::open(url).await, Err(Error::InvalidConfig { .. })),
            "{url} must be InvalidConfig"
        );
    }
}

/// Options that would weaken security are refused before any connection: a URL fragment (the
/// redis client reads `#insecure` as "skip certificate verification"), and `tls=false`
/// together with TLS options, in either order.
#[cfg(all(
    feature = "redis",
    feature = "etcd",
    feature = "zk",
    feature = "consul",
    feature = "postgres"
))]
#[tokio::test]
async fn options_that_would_weaken_tls_are_invalid_config() {
    for url in [
        "rediss://127.0.0.1:1/0#insecure",
        "redis://127.0.0.1:1#insecure",
        "redis+sentinel://127.0.0.1:1/svc#insecure",
        "etcd://127.0.0.1:1#insecure",
        "zk://127.0.0.1:1#x",
        "consul://127.0.0.1:1#insecure",
        "etcd://127.0.0.1:1?tls=false&tls_ca=/ca.pem",
        "etcd://127.0.0.1:1?tls_ca=/ca.pem&tls=false",
        "zk://127.0.0.1:1?tls_cert=/c.pem&tls_key=/k.pem&tls=false",
        "consul://127.0.0.1:1?tls=false&tls_server_name=kv",
        "postgres://127.0.0.1:1#insecure",
        "postgres://127.0.0.1:1?tls=false&tls_ca=/ca.pem",
    ] {
        match kvstore::open(url).await {
            Err(Error::InvalidConfig { source, .. }) => {
                let text = source.to_string();
                assert!(
                    text.contains("fragment") || text.contains("tls=false"),
                    "{url}: {text}"
                );
            }
            other => panic!("{url} must be InvalidConfig, got {:?}", other.map(|_| ())),
        }
    }
}

/// Every server CI configures for the suite reports the full capability set: a server whose
/// setting silently turned a capability off would otherwise turn the conformance cases of that
/// capability into asserted refusals, and the suite would still pass.
#[cfg(all(
    feature = "redis",
    feature = "etcd",
    feature = "zk",
    feature = "consul",
    feature = "postgres"
))]
#[tokio::test]
async fn ci_servers_report_every_capability() {
    for var in [
        "KVSTORE_REDIS_URL",
        "KVSTORE_ETCD_URL",
        "KVSTORE_ETCD36_URL",
        "KVSTORE_ZK_URL",
        "KVSTORE_CONSUL_URL",
        "KVSTORE_REDIS_TLS_URL",
        "KVSTORE_ETCD_TLS_URL",
        "KVSTORE_ZK_TLS_URL",
        "KVSTORE_CONSUL_TLS_URL",
        "KVSTORE_POSTGRES_URL",
        "KVSTORE_POSTGRES_TLS_URL",
    ] {
        let Some(url) = kvstore_testutils::backend_url(var) else {
            continue;
        };
        let store = kvstore::open(&url)
            .await
            .unwrap_or_else(|e| panic!("{var}: {}", kvstore_testutils::error_chain(&e)));
        // Consul learns its session_ttl_min on the first TTL write; one such write settles it.
        let probe = kvstore_testutils::scratch_dir("capabilities");
        let ttl = kvstore::WriteOptions::default().with_ttl(std::time::Duration::from_secs(1));
        store
            .put(&format!("{probe}/k"), b"v", Some(&ttl))
            .await
            .unwrap();
        let caps = store.capabilities();
        assert!(
            caps.ttl && caps.keep_alive && caps.watch && caps.watch_tree && caps.lock,
            "{var}: {caps:?}"
        );
        assert!(caps.max_txn_ops >= 64, "{var}: {caps:?}");
        assert!(
            caps.min_ttl <= std::time::Duration::from_secs(1),
            "{var}: {caps:?}"
        );
        kvstore_testutils::cleanup(&*store, &probe).await;
        store.close().await.unwrap();
    }
}

#[tokio::test]
async fn registry_adds_third_party_schemes() {
    let mut registry = Registry::empty();
    assert!(matches!(
        registry.open("memory://").await,
        Err(Error::BackendNotSupported { .. })
    ));
    registry.register("Custom", |url: String| async move {
        assert_eq!(url, "custom://x");
        Ok(
            Arc::new(kvstore::redb::RedbStore::open(kvstore::redb::RedbConfig::memory()).await?)
                as Arc<dyn Store>,
        )
    });
    assert_eq!(registry.schemes(), vec!["custom"]);
    let store = registry.open("custom://x").await.unwrap();
    store.put("a", b"b", None).await.unwrap();
}

#[tokio::test]
async fn conformance_through_open() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb://{}", dir.path().join("suite.redb").display());
    let store = kvstore::open(&url).await.unwrap();
    // One handle only: cases needing independent clients run in kvstore-redb's own tests.
    kvstore_testutils::put_get_delete_exists(&*store).await;
    kvstore_testutils::list_directory(&*store).await;
    kvstore_testutils::atomic_put(&*store).await;
    kvstore_testutils::watch_tree(&*store).await;
    kvstore_testutils::lock_basics(&*store).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn opens_redis_by_url() {
    let Some(url) = kvstore_testutils::backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let store = kvstore::open(&format!("{url}/0?prefix=open-test&timeout=2s"))
        .await
        .unwrap();
    assert_eq!(store.backend(), "redis");
    store.put("k", b"v", None).await.unwrap();
    assert_eq!(&store.get("k", None).await.unwrap().value[..], b"v");
    store.delete_tree("").await.unwrap();
    let refused = kvstore::open("redis://127.0.0.1:1?timeout=300ms")
        .await
        .unwrap_err();
    assert!(refused.is_transient(), "{refused:?}");
}

#[cfg(feature = "etcd")]
#[tokio::test]
async fn opens_etcd_by_url_with_several_hosts() {
    let Some(url) = kvstore_testutils::backend_url("KVSTORE_ETCD_URL") else {
        return;
    };
    // The same member twice: the client balances over both, and the URL must parse.
    let host = url.trim_start_matches("etcd://");
    let store = kvstore::open(&format!("etcd://{host},{host}?prefix=open-test&timeout=2s"))
        .await
        .unwrap();
    assert_eq!(store.backend(), "etcd");
    store.put("k", b"v", None).await.unwrap();
    assert_eq!(&store.get("k", None).await.unwrap().value[..], b"v");
    store.delete_tree("").await.unwrap();
}

#[cfg(feature = "zk")]
#[tokio::test]
async fn opens_zookeeper_by_url_with_a_chroot() {
    let Some(url) = kvstore_testutils::backend_url("KVSTORE_ZK_URL") else {
        return;
    };
    let host = url.trim_start_matches("zk://");
    let chroot = kvstore_testutils::scratch_dir("open_zk");
    let store = kvstore::open(&format!("zk://{host},{host}/{chroot}?timeout=2s"))
        .await
        .unwrap();
    assert_eq!(store.backend(), "zk");
    store.put("k", b"v", None).await.unwrap();
    // The key lives under the chroot.
    let root = kvstore::open(&url).await.unwrap();
    assert_eq!(
        &root.get(&format!("{chroot}/k"), None).await.unwrap().value[..],
        b"v"
    );
    assert_eq!(
        kvstore_testutils::keys(&store.list("", None).await.unwrap()),
        ["k"]
    );
    store.delete_tree("").await.unwrap();
    kvstore_testutils::cleanup(&*root, &chroot).await;
}

#[cfg(feature = "consul")]
#[tokio::test]
async fn opens_consul_by_url_with_a_prefix() {
    let Some(url) = kvstore_testutils::backend_url("KVSTORE_CONSUL_URL") else {
        return;
    };
    let prefix = kvstore_testutils::scratch_dir("open_consul");
    let store = kvstore::open(&format!("{url}?prefix={prefix}&timeout=2s"))
        .await
        .unwrap();
    assert_eq!(store.backend(), "consul");
    store.put("k", b"v", None).await.unwrap();
    let root = kvstore::open(&url).await.unwrap();
    assert_eq!(
        &root.get(&format!("{prefix}/k"), None).await.unwrap().value[..],
        b"v"
    );
    assert_eq!(
        kvstore_testutils::keys(&store.list("", None).await.unwrap()),
        ["k"]
    );
    store.delete_tree("").await.unwrap();
    assert!(matches!(
        root.get(&format!("{prefix}/k"), None).await,
        Err(kvstore::Error::KeyNotFound { .. })
    ));
}

/// Two `table`s in one database are two stores: neither sees the other's keys, and
/// `postgresql://` opens the same store as `postgres://`.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn opens_postgres_by_url_with_a_table() {
    let Some(url) = kvstore_testutils::backend_url("KVSTORE_POSTGRES_URL") else {
        return;
    };
    let key = format!("{}/k", kvstore_testutils::scratch_dir("open_postgres"));
    let with = |table: &str| format!("{url}?table={table}&timeout=2s");
    let a = kvstore::open(&with("kv_open_a")).await.unwrap();
    let b = kvstore::open(&with("kv_open_b")).await.unwrap();
    assert_eq!(a.backend(), "postgres");
    a.put(&key, b"a", None).await.unwrap();
    assert!(matches!(
        b.get(&key, None).await,
        Err(kvstore::Error::KeyNotFound { .. })
    ));
    let again = kvstore::open(&with("kv_open_a").replacen("postgres://", "postgresql://", 1))
        .await
        .unwrap();
    assert_eq!(&again.get(&key, None).await.unwrap().value[..], b"a");
    a.delete(&key).await.unwrap();
    for store in [a, b, again] {
        store.close().await.unwrap();
    }
}

#[tokio::test]
async fn open_consults_the_process_wide_registry() {
    let err = kvstore::open("open-test-scheme://x").await.unwrap_err();
    assert!(matches!(err, Error::BackendNotSupported { .. }), "{err:?}");
    kvstore::register("open-test-scheme", |url: String| async move {
        assert_eq!(url, "open-test-scheme://x");
        Ok(
            Arc::new(kvstore::redb::RedbStore::open(kvstore::redb::RedbConfig::memory()).await?)
                as Arc<dyn Store>,
        )
    });
    let store = kvstore::open("open-test-scheme://x").await.unwrap();
    assert_eq!(store.backend(), "memory");
    // Built-in schemes are still there.
    assert_eq!(
        kvstore::open("memory://").await.unwrap().backend(),
        "memory"
    );
}

/// Components (or tests of one binary, each with its own runtime) that open the same redb URL
/// at once all get the same database, and TTLs keep expiring after the runtime that opened it
/// first has gone.
#[test]
fn parallel_opens_of_one_redb_url_share_the_database() {
    use futures::StreamExt;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb://{}", dir.path().join("shared.redb").display());
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let store = tokio::time::timeout(Duration::from_secs(10), kvstore::open(&url))
                        .await
                        .expect("open within the timeout")
                        .unwrap_or_else(|e| panic!("open {i}: {e}"));
                    let key = format!("parallel/{i}");
                    let ttl = kvstore::WriteOptions::default().with_ttl(Duration::from_millis(300));
                    store.put(&key, b"v", Some(&ttl)).await.unwrap();
                    let mut watch = store.watch(&key, None).await.unwrap();
                    assert!(watch.next().await.unwrap().unwrap().is_some());
                    let expired = tokio::time::timeout(Duration::from_secs(5), watch.next())
                        .await
                        .expect("the TTL key expires and the watch says so")
                        .unwrap()
                        .unwrap();
                    assert_eq!(expired, None);
                    store.put(&format!("kept/{i}"), b"v", None).await.unwrap();
                    store.close().await.unwrap();
                });
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("every opener succeeds");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = kvstore::open(&url).await.unwrap();
        assert_eq!(store.list("kept", None).await.unwrap().len(), 6);
    });
}
