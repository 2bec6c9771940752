//! Data written by other clients, against a real Redis (`KVSTORE_REDIS_URL`): plain strings
//! written the way valkeyrie, Traefik and `redis-cli SET` write them are read by kvstore —
//! `get`, `exists`, `watch` and CAS always, `list`, `watch_tree` and `delete_tree` with the
//! `foreign_strings` option — and a kvstore write turns such a key into kvstore's layout (a
//! hash: `HGET key v`), in a transaction too. Pins the claims of docs/go-migration.md.

use kvstore_core::{Error, Store, Txn};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testutils::{
    backend_url, cas_on_foreign_key, foreign_sample, keys, ok, reads_foreign_sample, scratch_dir,
    watches_see_foreign_write,
};
use redis::AsyncCommands;
use std::str::FromStr;

async fn setup(options: &str) -> Option<(RedisStore, redis::aio::MultiplexedConnection)> {
    let url = backend_url("KVSTORE_REDIS_URL")?;
    let raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let config = RedisConfig::from_str(&format!("{url}{options}")).unwrap();
    Some((ok(RedisStore::open(config).await, "connect"), raw))
}

/// Writes the sample as valkeyrie's Redis store does: `SET key value`, with `PX` for a TTL.
async fn write_sample(raw: &mut redis::aio::MultiplexedConnection, dir: &str) {
    for (key, value) in foreign_sample() {
        let name = format!("{dir}/{key}");
        if key == "ttl30" {
            let _: () = raw.pset_ex(&name, &value, 30_000).await.expect("SET PX");
        } else {
            let _: () = raw.set(&name, &value).await.expect("SET");
        }
    }
}

#[tokio::test]
async fn plain_strings_read_exactly_with_foreign_strings() {
    let Some((store, mut raw)) = setup("?foreign_strings=true").await else {
        return;
    };
    let dir = scratch_dir("foreign");
    write_sample(&mut raw, &dir).await;
    // A kvstore pair beside them is listed in order with them.
    ok(
        store.put(&format!("{dir}/a/b/cc"), b"mine", None).await,
        "put",
    );
    reads_foreign_sample(&store, &dir, &["a/b/cc"]).await;
    cas_on_foreign_key(&store, &format!("{dir}/a/b/c")).await;

    let key = format!("{dir}/live");
    watches_see_foreign_write(&store, &dir, &key, b"from redis-cli", || async {
        let _: () = raw.clone().set(&key, "from redis-cli").await.expect("SET");
    })
    .await;

    // A kvstore write converts the key: redis-cli then reads it with HGET.
    ok(
        store.put(&format!("{dir}/e"), b"now kvstore's", None).await,
        "put",
    );
    let v: Vec<u8> = raw.hget(format!("{dir}/e"), "v").await.expect("HGET");
    assert_eq!(v, b"now kvstore's");

    ok(store.delete_tree(&dir).await, "delete_tree");
    let left: Vec<String> = raw.keys(format!("{dir}/*")).await.expect("KEYS");
    assert!(
        left.is_empty(),
        "delete_tree removes plain strings too: {left:?}"
    );
}

#[tokio::test]
async fn single_key_calls_read_plain_strings_without_the_option() {
    let Some((store, mut raw)) = setup("").await else {
        return;
    };
    let dir = scratch_dir("foreign-default");
    write_sample(&mut raw, &dir).await;
    for (key, value) in foreign_sample() {
        let pair = ok(store.get(&format!("{dir}/{key}"), None).await, "get");
        assert_eq!(&pair.value[..], &value[..]);
        assert_ne!(pair.last_index, 0);
    }
    // The fingerprint changes with the value, so a CAS sees another client's SET.
    let key = format!("{dir}/a/b/c");
    let before = ok(store.get(&key, None).await, "get");
    let _: () = raw.set(&key, "changed by redis-cli").await.expect("SET");
    assert!(matches!(
        store.atomic_put(&key, b"x", Some(&before), None).await,
        Err(Error::KeyModified { .. })
    ));
    assert!(matches!(
        store.atomic_put(&key, b"x", None, None).await,
        Err(Error::KeyExists { .. })
    ));
    // Without the option, directory calls see only kvstore's own pairs.
    ok(store.put(&format!("{dir}/mine"), b"x", None).await, "put");
    assert_eq!(
        keys(&ok(store.list(&dir, None).await, "list")),
        [format!("{dir}/mine")]
    );

    // A key overwritten by another client's SET is still listed (as a plain string).
    let _: () = raw
        .set(format!("{dir}/mine"), "overwritten")
        .await
        .expect("SET");
    let listed = ok(store.list(&dir, None).await, "list");
    assert_eq!(&listed[0].value[..], b"overwritten");

    // A Redis type kvstore cannot read is a clear error, not a bare one.
    let _: () = raw.rpush(format!("{dir}/queue"), "x").await.expect("RPUSH");
    match store.get(&format!("{dir}/queue"), None).await {
        Err(err @ Error::Backend { .. }) => {
            let text = kvstore_testutils::error_chain(&err);
            assert!(text.contains("holds a Redis list"), "{text}");
        }
        other => panic!("expected a Backend error naming the type, got {other:?}"),
    }
    let names: Vec<String> = raw.keys(format!("{dir}/*")).await.expect("KEYS");
    let _: () = raw.del(names).await.expect("DEL");
}

#[tokio::test]
async fn a_txn_converts_plain_strings_and_refuses_other_types_before_writing() {
    let Some((store, mut raw)) = setup("").await else {
        return;
    };
    let dir = scratch_dir("foreign-txn");
    let (plain, gone, fresh, queue) = (
        format!("{dir}/plain"),
        format!("{dir}/gone"),
        format!("{dir}/fresh"),
        format!("{dir}/queue"),
    );
    let _: () = raw.set(&plain, "from redis-cli").await.expect("SET");
    let _: () = raw.set(&gone, "from redis-cli").await.expect("SET");
    // A string becomes a hash, a deleted string goes; every written key is listed.
    let txn = Txn::new().put(&plain, "p").delete(&gone).put(&fresh, "f");
    ok(store.txn(&txn).await, "txn");
    for (key, value) in [(&plain, "p"), (&fresh, "f")] {
        let v: Vec<u8> = raw.hget(key, "v").await.expect("HGET");
        assert_eq!(v, value.as_bytes(), "{key}");
    }
    let exists: bool = raw.exists(&gone).await.expect("EXISTS");
    assert!(!exists, "the deleted string is gone");
    assert_eq!(
        keys(&ok(store.list(&dir, None).await, "list")),
        [fresh.clone(), plain.clone()]
    );

    // A Redis list among the written keys: an error naming it, and nothing written.
    let _: () = raw.rpush(&queue, "x").await.expect("RPUSH");
    let txn = Txn::new().put(&fresh, "changed").put(&queue, "q");
    match store.txn(&txn).await {
        Err(err @ Error::Backend { .. }) => {
            let text = kvstore_testutils::error_chain(&err);
            assert!(text.contains("holds a Redis list"), "{text}");
        }
        other => panic!("expected a Backend error naming the type, got {other:?}"),
    }
    assert_eq!(&ok(store.get(&fresh, None).await, "get").value[..], b"f");
    let names: Vec<String> = raw.keys(format!("{dir}/*")).await.expect("KEYS");
    let _: () = raw.del(names).await.expect("DEL");
}
