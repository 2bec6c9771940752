//! Data written by other clients, against a real ZooKeeper (`KVSTORE_ZK_URL`): znodes written
//! the way valkeyrie and `zkCli create` write them are read exactly by kvstore, and what kvstore
//! writes is what `zkCli get` shows. Pins the claims of docs/go-migration.md.
//!
//! valkeyrie creates every missing parent as a plain persistent znode with empty data. kvstore
//! cannot tell such a parent from a key with an empty value (both are plain znodes), so it
//! reports them as keys with an empty value; `delete_tree` removes them with the rest.

use kvstore_core::Store;
use kvstore_testutils::{
    backend_url, cas_on_foreign_key, foreign_sample, ok, reads_foreign_sample, scratch_dir,
    watches_see_foreign_write,
};
use kvstore_zk::{ZkConfig, ZkStore};
use std::str::FromStr;
use zookeeper_client::{Acls, Client, CreateMode};

/// Creates `path` and its missing parents as valkeyrie does: parents are persistent znodes with
/// empty data; the leaf is ephemeral (valkeyrie's TTL) or persistent.
///
/// A parent that exists already may be a container znode that kvstore created for another
/// test; the server deletes an empty container on its next check (every 100 ms here), so it
/// can vanish between finding it and creating the leaf under it (`NoNode`). Then the chain is
/// created again, at most 10 times.
async fn create_like_valkeyrie(raw: &Client, path: &str, value: &[u8], mode: CreateMode) {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for _attempt in 0..10 {
        for end in 1..segments.len() {
            let parent = format!("/{}", segments[..end].join("/"));
            let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
            match raw.create(&parent, b"", &opts).await {
                Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
                Err(err) => panic!("creating {parent}: {err}"),
            }
        }
        match raw
            .create(path, value, &mode.with_acls(Acls::anyone_all()))
            .await
        {
            Ok(_) => return,
            Err(zookeeper_client::Error::NoNode) => continue,
            Err(err) => panic!("creating {path}: {err}"),
        }
    }
    panic!("creating {path}: a parent vanished under it 10 times in a row");
}

#[tokio::test]
async fn znodes_written_like_valkeyrie_read_exactly() {
    let Some(url) = backend_url("KVSTORE_ZK_URL") else {
        return;
    };
    let config = ZkConfig::from_str(&url).unwrap();
    let raw = Client::connect(&config.hosts.join(","))
        .await
        .expect("raw client");
    let store = ok(ZkStore::open(config).await, "connect");
    let dir = scratch_dir("foreign");
    for (key, value) in foreign_sample() {
        // valkeyrie maps a TTL to an ephemeral znode of its session.
        let mode = if key == "ttl30" {
            CreateMode::Ephemeral
        } else {
            CreateMode::Persistent
        };
        create_like_valkeyrie(&raw, &format!("/{dir}/{key}"), &value, mode).await;
    }
    // valkeyrie's parents `a` and `a/b` are plain empty znodes, so they are listed as keys.
    reads_foreign_sample(&store, &dir, &["a", "a/b"]).await;
    assert!(
        ok(store.get(&format!("{dir}/a/b"), None).await, "get")
            .value
            .is_empty()
    );
    cas_on_foreign_key(&store, &format!("{dir}/a/b/c")).await;

    let key = format!("{dir}/live");
    watches_see_foreign_write(&store, &dir, &key, b"from zkCli", || async {
        create_like_valkeyrie(
            &raw,
            &format!("/{key}"),
            b"from zkCli",
            CreateMode::Persistent,
        )
        .await;
    })
    .await;

    // The reverse: zkCli sees kvstore's bytes in the znode of the same path.
    let value: Vec<u8> = (0..=255u8).rev().collect();
    ok(
        store.put(&format!("{dir}/mine/x"), &value, None).await,
        "put",
    );
    let (data, _) = raw
        .get_data(&format!("/{dir}/mine/x"))
        .await
        .expect("raw get");
    assert_eq!(data, value);

    ok(store.delete_tree(&dir).await, "delete_tree");
    assert!(
        raw.check_stat(&format!("/{dir}")).await.unwrap().is_none(),
        "delete_tree removes valkeyrie's parents too"
    );
}
