//! Data written by other clients, against a real etcd (`KVSTORE_ETCD_URL`): keys written the
//! way valkeyrie and `etcdctl put` write them are read exactly by kvstore, and what kvstore
//! writes is what `etcdctl get` shows. Pins the claims of docs/go-migration.md.

use etcd_client::{Client, PutOptions};
use kvstore_core::{Error, Store};
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_testutils::{
    backend_url, cas_on_foreign_key, foreign_sample, ok, reads_foreign_sample, scratch_dir,
    watches_see_foreign_write,
};
use std::str::FromStr;

async fn raw(url: &str) -> Client {
    let config = EtcdConfig::from_str(url).unwrap();
    Client::connect(&config.endpoints, None)
        .await
        .expect("raw etcd client")
}

/// Writes the sample as valkeyrie's etcd v3 store and `etcdctl put` do: the raw value under
/// the key as given, a lease for the TTL.
async fn write_sample(raw: &mut Client, base: &str) {
    let lease = raw.lease_grant(30, None).await.expect("lease").id();
    for (key, value) in foreign_sample() {
        let opts = (key == "ttl30").then(|| PutOptions::new().with_lease(lease));
        raw.put(format!("{base}/{key}"), value, opts)
            .await
            .expect("raw put");
    }
}

async fn connect(config: EtcdConfig) -> EtcdStore {
    ok(EtcdStore::open(config).await, "connect")
}

#[tokio::test]
async fn keys_written_without_a_leading_slash_read_exactly() {
    let Some(url) = backend_url("KVSTORE_ETCD_URL") else {
        return;
    };
    let mut raw = raw(&url).await;
    let store = connect(EtcdConfig::from_str(&url).unwrap()).await;
    let dir = scratch_dir("foreign");
    write_sample(&mut raw, &dir).await;
    reads_foreign_sample(&store, &dir, &[]).await;
    cas_on_foreign_key(&store, &format!("{dir}/a/b/c")).await;

    let key = format!("{dir}/live");
    watches_see_foreign_write(&store, &dir, &key, b"from etcdctl", || async {
        raw.clone()
            .put(key.clone(), "from etcdctl", None)
            .await
            .expect("raw put");
    })
    .await;

    // The reverse: etcdctl sees kvstore's bytes under the same key.
    let value: Vec<u8> = (0..=255u8).rev().collect();
    ok(store.put(&format!("{dir}/mine"), &value, None).await, "put");
    let got = raw.get(format!("{dir}/mine"), None).await.expect("raw get");
    assert_eq!(got.kvs()[0].value(), &value[..]);
    ok(store.delete_tree(&dir).await, "delete_tree");
}

#[tokio::test]
async fn keys_with_a_leading_slash_need_the_leading_slash_option() {
    let Some(url) = backend_url("KVSTORE_ETCD_URL") else {
        return;
    };
    let mut raw = raw(&url).await;
    let dir = scratch_dir("foreign-slash");
    // `etcdctl put /app/...` writes the key with its leading slash.
    write_sample(&mut raw, &format!("/{dir}")).await;

    let plain = connect(EtcdConfig::from_str(&url).unwrap()).await;
    assert!(matches!(
        plain.get(&format!("{dir}/a/b/c"), None).await,
        Err(Error::KeyNotFound { .. })
    ));

    let sep = if url.contains('?') { '&' } else { '?' };
    let slash =
        connect(EtcdConfig::from_str(&format!("{url}{sep}leading_slash=true")).unwrap()).await;
    reads_foreign_sample(&slash, &dir, &[]).await;
    // kvstore writes path-style keys too with the option on.
    ok(slash.put(&format!("{dir}/mine"), b"x", None).await, "put");
    let got = raw
        .get(format!("/{dir}/mine"), None)
        .await
        .expect("raw get");
    assert_eq!(got.kvs()[0].value(), b"x");
    ok(slash.delete_tree(&dir).await, "delete_tree");
    let left = raw
        .get(
            format!("/{dir}/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("raw get");
    assert!(
        left.kvs().is_empty(),
        "delete_tree removes the slash-style keys"
    );
}
