//! The same workloads done with each backend's own client, the way an application using that
//! client alone would do them (the most direct equivalent of each call).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{FutureExt, StreamExt};
use tokio::sync::Mutex;

use crate::Op;
use crate::kv::{VALUE, delivered};
use crate::measure::OpFn;

type Rx = Arc<Mutex<tokio::sync::mpsc::UnboundedReceiver<(Vec<u8>, Instant)>>>;

fn channel() -> (tokio::sync::mpsc::UnboundedSender<(Vec<u8>, Instant)>, Rx) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (tx, Arc::new(Mutex::new(rx)))
}

// ---------------------------------------------------------------------------------------------
// redb (and redb's in-memory backend): one table, each call a transaction on the blocking pool
// like kvstore's, so the comparison is of the work, not of the thread hop.

const TABLE: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("bench");

/// Prepares `op` on a raw redb database.
pub(crate) async fn redb(
    db: Arc<redb::Database>,
    op: Op,
    workers: usize,
    dir: &str,
) -> anyhow::Result<Option<OpFn>> {
    use redb::{ReadableDatabase, ReadableTable};
    let write = |db: Arc<redb::Database>, key: String| async move {
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let txn = db.begin_write()?;
            txn.open_table(TABLE)?.insert(key.as_str(), &VALUE[..])?;
            txn.commit()?;
            Ok(())
        })
        .await?
    };
    Ok(Some(match op {
        Op::Get => {
            for i in 0..100 {
                write(db.clone(), format!("{dir}/k{i}")).await?;
            }
            let dir = dir.to_owned();
            Arc::new(move |_, i| {
                let (db, key) = (db.clone(), format!("{dir}/k{}", i % 100));
                async move {
                    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                        let txn = db.begin_read()?;
                        let table = txn.open_table(TABLE)?;
                        anyhow::ensure!(table.get(key.as_str())?.is_some(), "missing");
                        Ok(())
                    })
                    .await??;
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Put => {
            let dir = dir.to_owned();
            Arc::new(move |w, i| {
                let fut = write(db.clone(), format!("{dir}/w{w}/k{}", i % 10));
                async move {
                    fut.await?;
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::AtomicPut => {
            let dir = dir.to_owned();
            for w in 0..workers {
                write(db.clone(), format!("{dir}/c{w}")).await?;
            }
            Arc::new(move |w, _| {
                let (db, key) = (db.clone(), format!("{dir}/c{w}"));
                async move {
                    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                        let txn = db.begin_write()?;
                        {
                            let mut table = txn.open_table(TABLE)?;
                            let same = table.get(key.as_str())?.is_some_and(|v| v.value() == VALUE);
                            anyhow::ensure!(same, "compare failed");
                            table.insert(key.as_str(), &VALUE[..])?;
                        }
                        txn.commit()?;
                        Ok(())
                    })
                    .await??;
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::List => {
            for i in 0..100 {
                write(db.clone(), format!("{dir}/list/k{i:03}")).await?;
            }
            let (start, end) = (format!("{dir}/list/"), format!("{dir}/list0"));
            Arc::new(move |_, _| {
                let (db, start, end) = (db.clone(), start.clone(), end.clone());
                async move {
                    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                        let txn = db.begin_read()?;
                        let table = txn.open_table(TABLE)?;
                        let mut n = 0;
                        for entry in table.range(start.as_str()..end.as_str())? {
                            let (k, v) = entry?;
                            std::hint::black_box((k.value().len(), v.value().len()));
                            n += 1;
                        }
                        anyhow::ensure!(n == 100, "listed {n}");
                        Ok(())
                    })
                    .await??;
                    Ok(None)
                }
                .boxed()
            })
        }
        // redb has no watches or locks of its own.
        Op::Watch | Op::Lock => return Ok(None),
    }))
}

// ---------------------------------------------------------------------------------------------
// Redis: plain string keys.

const CAS: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0";
const UNLOCK: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// Prepares `op` with the `redis` crate.
pub(crate) async fn redis(
    url: &str,
    op: Op,
    workers: usize,
    dir: &str,
) -> anyhow::Result<Option<OpFn>> {
    use redis::AsyncCommands;
    let client = redis::Client::open(url)?;
    let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
    let dir = format!("raw/{dir}");
    Ok(Some(match op {
        Op::Get => {
            let mut c = conn.clone();
            for i in 0..100 {
                let _: () = c.set(format!("{dir}/k{i}"), &VALUE[..]).await?;
            }
            Arc::new(move |_, i| {
                let (mut c, key) = (conn.clone(), format!("{dir}/k{}", i % 100));
                async move {
                    let v: Option<Vec<u8>> = c.get(key).await?;
                    anyhow::ensure!(v.is_some(), "missing");
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Put => Arc::new(move |w, i| {
            let (mut c, key) = (conn.clone(), format!("{dir}/w{w}/k{}", i % 10));
            async move {
                let _: () = c.set(key, &VALUE[..]).await?;
                Ok(None)
            }
            .boxed()
        }),
        Op::AtomicPut => {
            let mut c = conn.clone();
            for w in 0..workers {
                let _: () = c.set(format!("{dir}/c{w}"), "0").await?;
            }
            let script = redis::Script::new(CAS);
            let counters: Arc<Vec<Mutex<u64>>> =
                Arc::new((0..workers).map(|_| Mutex::new(0)).collect());
            Arc::new(move |w, _| {
                let (mut c, key, script, counters) = (
                    conn.clone(),
                    format!("{dir}/c{w}"),
                    script.clone(),
                    counters.clone(),
                );
                async move {
                    let mut n = counters[w].lock().await;
                    let ok: i64 = script
                        .key(key)
                        .arg(n.to_string())
                        .arg((*n + 1).to_string())
                        .invoke_async(&mut c)
                        .await?;
                    anyhow::ensure!(ok == 1, "compare failed");
                    *n += 1;
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::List => {
            let mut c = conn.clone();
            for i in 0..100 {
                let _: () = c.set(format!("{dir}/list/k{i:03}"), &VALUE[..]).await?;
            }
            let pattern = format!("{dir}/list/*");
            Arc::new(move |_, _| {
                let (mut c, pattern) = (conn.clone(), pattern.clone());
                async move {
                    let mut keys: Vec<String> = Vec::new();
                    let mut cursor: u64 = 0;
                    loop {
                        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(10_000)
                            .query_async(&mut c)
                            .await?;
                        keys.extend(batch);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                    keys.sort();
                    let values: Vec<Vec<u8>> = c.mget(&keys).await?;
                    anyhow::ensure!(values.len() == 100, "listed {}", values.len());
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Watch => {
            if workers != 1 {
                return Ok(None);
            }
            let key = format!("{dir}/watched");
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(format!("__keyspace@0__:{key}")).await?;
            let (tx, rx) = channel();
            let reader = client.clone();
            let watched = key.clone();
            tokio::spawn(async move {
                let mut conn = match reader.get_multiplexed_async_connection().await {
                    Ok(c) => c,
                    Err(_) => return,
                };
                let mut messages = pubsub.into_on_message();
                while messages.next().await.is_some() {
                    // The notification carries no value: read it, as a raw watcher must.
                    let value: Option<Vec<u8>> = conn.get(&watched).await.ok().flatten();
                    if tx
                        .send((value.unwrap_or_default(), Instant::now()))
                        .is_err()
                    {
                        return;
                    }
                }
            });
            Arc::new(move |_, i| {
                let (mut c, key, rx) = (conn.clone(), key.clone(), rx.clone());
                async move {
                    let value = format!("v{i}").into_bytes();
                    let mut rx = rx.lock().await;
                    let t0 = Instant::now();
                    let _: () = c.set(&key, &value).await?;
                    delivered(&mut rx, &value, t0).await
                }
                .boxed()
            })
        }
        Op::Lock => {
            let unlock = redis::Script::new(UNLOCK);
            Arc::new(move |w, i| {
                let (mut c, key, unlock) = (conn.clone(), format!("{dir}/l{w}"), unlock.clone());
                async move {
                    let token = format!("{w}-{i}");
                    let set: Option<String> = redis::cmd("SET")
                        .arg(&key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(20_000)
                        .query_async(&mut c)
                        .await?;
                    anyhow::ensure!(set.is_some(), "lock taken");
                    let _: i64 = unlock.key(&key).arg(&token).invoke_async(&mut c).await?;
                    Ok(None)
                }
                .boxed()
            })
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// etcd.

/// Prepares `op` with `etcd-client`.
pub(crate) async fn etcd(
    endpoint: &str,
    op: Op,
    workers: usize,
    dir: &str,
) -> anyhow::Result<Option<OpFn>> {
    use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
    let client = Client::connect([endpoint], None).await?;
    let dir = format!("raw/{dir}");
    Ok(Some(match op {
        Op::Get => {
            let mut c = client.clone();
            for i in 0..100 {
                c.put(format!("{dir}/k{i}"), &VALUE[..], None).await?;
            }
            Arc::new(move |_, i| {
                let (mut c, key) = (client.clone(), format!("{dir}/k{}", i % 100));
                async move {
                    anyhow::ensure!(!c.get(key, None).await?.kvs().is_empty(), "missing");
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Put => Arc::new(move |w, i| {
            let (mut c, key) = (client.clone(), format!("{dir}/w{w}/k{}", i % 10));
            async move {
                c.put(key, &VALUE[..], None).await?;
                Ok(None)
            }
            .boxed()
        }),
        Op::AtomicPut => {
            let mut revisions = Vec::with_capacity(workers);
            let mut c = client.clone();
            for w in 0..workers {
                let resp = c.put(format!("{dir}/c{w}"), &VALUE[..], None).await?;
                revisions.push(Mutex::new(resp.header().map_or(0, |h| h.revision())));
            }
            let revisions = Arc::new(revisions);
            Arc::new(move |w, _| {
                let (mut c, key, revisions) =
                    (client.clone(), format!("{dir}/c{w}"), revisions.clone());
                async move {
                    let mut rev = revisions[w].lock().await;
                    let txn = Txn::new()
                        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, *rev)])
                        .and_then([TxnOp::put(key, &VALUE[..], None)]);
                    let resp = c.txn(txn).await?;
                    anyhow::ensure!(resp.succeeded(), "compare failed");
                    *rev = resp.header().map_or(0, |h| h.revision());
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::List => {
            let mut c = client.clone();
            for i in 0..100 {
                c.put(format!("{dir}/list/k{i:03}"), &VALUE[..], None)
                    .await?;
            }
            let prefix = format!("{dir}/list/");
            Arc::new(move |_, _| {
                let (mut c, prefix) = (client.clone(), prefix.clone());
                async move {
                    let resp = c.get(prefix, Some(GetOptions::new().with_prefix())).await?;
                    anyhow::ensure!(resp.kvs().len() == 100, "listed {}", resp.kvs().len());
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Watch => {
            if workers != 1 {
                return Ok(None);
            }
            let key = format!("{dir}/watched");
            let mut c = client.clone();
            let mut stream = c.watch(key.clone(), None).await?;
            let (tx, rx) = channel();
            tokio::spawn(async move {
                while let Ok(Some(resp)) = stream.message().await {
                    for event in resp.events() {
                        if let Some(kv) = event.kv()
                            && tx.send((kv.value().to_vec(), Instant::now())).is_err()
                        {
                            return;
                        }
                    }
                }
            });
            Arc::new(move |_, i| {
                let (mut c, key, rx) = (client.clone(), key.clone(), rx.clone());
                async move {
                    let value = format!("v{i}").into_bytes();
                    let mut rx = rx.lock().await;
                    let t0 = Instant::now();
                    c.put(key, value.clone(), None).await?;
                    delivered(&mut rx, &value, t0).await
                }
                .boxed()
            })
        }
        Op::Lock => Arc::new(move |w, _| {
            let (mut c, name) = (client.clone(), format!("{dir}/l{w}"));
            async move {
                // Source: etcd's v3lock service — a lease is what frees a dead holder's lock.
                let lease = c.lease_grant(20, None).await?.id();
                let held = c
                    .lock(
                        name,
                        Some(etcd_client::LockOptions::new().with_lease(lease)),
                    )
                    .await?;
                c.unlock(held.key().to_vec()).await?;
                c.lease_revoke(lease).await?;
                Ok(None)
            }
            .boxed()
        }),
    }))
}

// ---------------------------------------------------------------------------------------------
// ZooKeeper.

/// Prepares `op` with `zookeeper-client`.
pub(crate) async fn zk(
    hosts: &str,
    op: Op,
    workers: usize,
    dir: &str,
) -> anyhow::Result<Option<OpFn>> {
    use zookeeper_client::{Acls, AddWatchMode, Client, CreateMode};
    let client = Arc::new(Client::connect(hosts).await?);
    let dir = format!("/raw/{dir}");
    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
    client.mkdir(&format!("{dir}/list"), &persistent).await?;
    let create = |c: Arc<Client>, path: String| {
        let persistent = persistent.clone();
        async move {
            match c.create(&path, &VALUE[..], &persistent).await {
                Ok(_) | Err(zookeeper_client::Error::NodeExists) => anyhow::Ok(()),
                Err(err) => Err(err.into()),
            }
        }
    };
    Ok(Some(match op {
        Op::Get => {
            for i in 0..100 {
                create(client.clone(), format!("{dir}/k{i}")).await?;
            }
            Arc::new(move |_, i| {
                let (c, path) = (client.clone(), format!("{dir}/k{}", i % 100));
                async move {
                    c.get_data(&path).await?;
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Put => {
            for w in 0..workers {
                client.mkdir(&format!("{dir}/w{w}"), &persistent).await?;
                for i in 0..10 {
                    create(client.clone(), format!("{dir}/w{w}/k{i}")).await?;
                }
            }
            Arc::new(move |w, i| {
                let (c, path) = (client.clone(), format!("{dir}/w{w}/k{}", i % 10));
                async move {
                    c.set_data(&path, &VALUE[..], None).await?;
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::AtomicPut => {
            let mut versions = Vec::with_capacity(workers);
            for w in 0..workers {
                create(client.clone(), format!("{dir}/c{w}")).await?;
                let (_, stat) = client.get_data(&format!("{dir}/c{w}")).await?;
                versions.push(Mutex::new(stat.version));
            }
            let versions = Arc::new(versions);
            Arc::new(move |w, _| {
                let (c, path, versions) = (client.clone(), format!("{dir}/c{w}"), versions.clone());
                async move {
                    let mut version = versions[w].lock().await;
                    let stat = c.set_data(&path, &VALUE[..], Some(*version)).await?;
                    *version = stat.version;
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::List => {
            for i in 0..100 {
                create(client.clone(), format!("{dir}/list/k{i:03}")).await?;
            }
            let path = format!("{dir}/list");
            Arc::new(move |_, _| {
                let (c, path) = (client.clone(), path.clone());
                async move {
                    let children = c.list_children(&path).await?;
                    let mut reader = c.new_multi_reader();
                    for child in &children {
                        reader.add_get_data(&format!("{path}/{child}"))?;
                    }
                    let results = reader.commit().await?;
                    anyhow::ensure!(results.len() == 100, "listed {}", results.len());
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Watch => {
            if workers != 1 {
                return Ok(None);
            }
            let path = format!("{dir}/watched");
            create(client.clone(), path.clone()).await?;
            let mut watcher = client.watch(&path, AddWatchMode::Persistent).await?;
            let (tx, rx) = channel();
            let reader = client.clone();
            let watched = path.clone();
            tokio::spawn(async move {
                loop {
                    watcher.changed().await;
                    // The event carries no data: read it, as a raw watcher must.
                    let Ok((data, _)) = reader.get_data(&watched).await else {
                        return;
                    };
                    if tx.send((data, Instant::now())).is_err() {
                        return;
                    }
                }
            });
            Arc::new(move |_, i| {
                let (c, path, rx) = (client.clone(), path.clone(), rx.clone());
                async move {
                    let value = format!("v{i}").into_bytes();
                    let mut rx = rx.lock().await;
                    let t0 = Instant::now();
                    c.set_data(&path, &value, None).await?;
                    delivered(&mut rx, &value, t0).await
                }
                .boxed()
            })
        }
        Op::Lock => {
            let ephemeral = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
            for w in 0..workers {
                client.mkdir(&format!("{dir}/l{w}"), &persistent).await?;
            }
            Arc::new(move |w, _| {
                let (c, prefix, ephemeral) = (
                    client.clone(),
                    format!("{dir}/l{w}/lock-"),
                    ephemeral.clone(),
                );
                async move {
                    // The uncontended lock recipe: create the waiter, see it is first, delete it.
                    let (_, seq) = c.create(&prefix, b"", &ephemeral).await?;
                    let parent = prefix.rsplit_once('/').map_or("/", |(p, _)| p).to_owned();
                    let children = c.list_children(&parent).await?;
                    anyhow::ensure!(children.len() == 1, "contended");
                    c.delete(&format!("{prefix}{seq}"), None).await?;
                    Ok(None)
                }
                .boxed()
            })
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Consul over reqwest.

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    #[serde(default)]
    value: Option<String>,
    modify_index: u64,
}

/// Prepares `op` with `reqwest` against Consul's HTTP API.
pub(crate) async fn consul(
    base: &str,
    op: Op,
    workers: usize,
    dir: &str,
) -> anyhow::Result<Option<OpFn>> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let base = base.trim_end_matches('/').to_owned();
    let dir = format!("raw/{dir}");
    let kv = move |key: &str| format!("{base}/v1/kv/{key}");
    let put = |http: reqwest::Client, url: String| async move {
        let ok: bool = http
            .put(url)
            .body(&VALUE[..])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::ensure!(ok, "put refused");
        anyhow::Ok(())
    };
    let kv = Arc::new(kv);
    Ok(Some(match op {
        Op::Get => {
            for i in 0..100 {
                put(http.clone(), kv(&format!("{dir}/k{i}"))).await?;
            }
            Arc::new(move |_, i| {
                let (http, url) = (http.clone(), kv(&format!("{dir}/k{}", i % 100)));
                async move {
                    let entries: Vec<Entry> = http
                        .get(url)
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    let value = entries[0].value.as_deref().unwrap_or_default();
                    std::hint::black_box(base64::engine::general_purpose::STANDARD.decode(value)?);
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Put => Arc::new(move |w, i| {
            let fut = put(http.clone(), kv(&format!("{dir}/w{w}/k{}", i % 10)));
            async move {
                fut.await?;
                Ok(None)
            }
            .boxed()
        }),
        Op::AtomicPut => {
            // A CAS chain needs the new index after each write: `?cas=` answers only
            // true/false, so the raw client uses the transaction endpoint, which returns it.
            let mut indexes = Vec::with_capacity(workers);
            for w in 0..workers {
                put(http.clone(), kv(&format!("{dir}/c{w}"))).await?;
                let entries: Vec<Entry> = http
                    .get(kv(&format!("{dir}/c{w}")))
                    .send()
                    .await?
                    .json()
                    .await?;
                indexes.push(Mutex::new(entries[0].modify_index));
            }
            let indexes = Arc::new(indexes);
            let txn = kv("").replace("/v1/kv/", "/v1/txn");
            Arc::new(move |w, _| {
                let (http, txn, key, indexes) = (
                    http.clone(),
                    txn.clone(),
                    format!("{dir}/c{w}"),
                    indexes.clone(),
                );
                async move {
                    let mut index = indexes[w].lock().await;
                    let body = serde_json::json!([{ "KV": {
                        "Verb": "cas", "Key": key, "Index": *index,
                        "Value": base64::engine::general_purpose::STANDARD.encode(&VALUE[..]) } }]);
                    let resp: serde_json::Value = http
                        .put(&txn)
                        .json(&body)
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    *index = resp["Results"][0]["KV"]["ModifyIndex"]
                        .as_u64()
                        .ok_or_else(|| anyhow::anyhow!("cas failed"))?;
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::List => {
            for i in 0..100 {
                put(http.clone(), kv(&format!("{dir}/list/k{i:03}"))).await?;
            }
            let url = format!("{}?recurse", kv(&format!("{dir}/list/")));
            Arc::new(move |_, _| {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let entries: Vec<Entry> = http
                        .get(url)
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    anyhow::ensure!(entries.len() == 100, "listed {}", entries.len());
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Watch => {
            if workers != 1 {
                return Ok(None);
            }
            let url = kv(&format!("{dir}/watched"));
            put(http.clone(), url.clone()).await?;
            let (tx, rx) = channel();
            let (watcher, watched) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let mut index = 0u64;
                loop {
                    let Ok(resp) = watcher
                        .get(format!("{watched}?index={index}&wait=60s"))
                        .send()
                        .await
                    else {
                        return;
                    };
                    let next: u64 = resp
                        .headers()
                        .get("X-Consul-Index")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(0);
                    let Ok(entries) = resp.json::<Vec<Entry>>().await else {
                        return;
                    };
                    if next != index && index != 0 {
                        let value = entries
                            .first()
                            .and_then(|e| e.value.as_deref())
                            .unwrap_or_default();
                        let value = base64::engine::general_purpose::STANDARD
                            .decode(value)
                            .unwrap_or_default();
                        if tx.send((value, Instant::now())).is_err() {
                            return;
                        }
                    }
                    index = next.max(1);
                }
            });
            // Let the watcher reach its blocking query.
            tokio::time::sleep(Duration::from_millis(200)).await;
            Arc::new(move |_, i| {
                let (http, url, rx) = (http.clone(), url.clone(), rx.clone());
                async move {
                    let value = format!("v{i}").into_bytes();
                    let mut rx = rx.lock().await;
                    let t0 = Instant::now();
                    http.put(&url)
                        .body(value.clone())
                        .send()
                        .await?
                        .error_for_status()?;
                    delivered(&mut rx, &value, t0).await
                }
                .boxed()
            })
        }
        Op::Lock => {
            let session_url = kv("").replace("/v1/kv/", "/v1/session/");
            Arc::new(move |w, _| {
                let (http, sessions, url) = (
                    http.clone(),
                    session_url.clone(),
                    kv(&format!("{dir}/l{w}")),
                );
                async move {
                    let created: serde_json::Value = http
                        .put(format!("{sessions}create"))
                        .json(&serde_json::json!({"TTL": "20s", "LockDelay": "0s"}))
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    let id = created["ID"]
                        .as_str()
                        .ok_or_else(|| anyhow::anyhow!("no session"))?
                        .to_owned();
                    let acquired: bool = http
                        .put(format!("{url}?acquire={id}"))
                        .send()
                        .await?
                        .json()
                        .await?;
                    anyhow::ensure!(acquired, "lock taken");
                    let _: bool = http
                        .put(format!("{url}?release={id}"))
                        .send()
                        .await?
                        .json()
                        .await?;
                    http.put(format!("{sessions}destroy/{id}"))
                        .send()
                        .await?
                        .error_for_status()?;
                    Ok(None)
                }
                .boxed()
            })
        }
    }))
}
