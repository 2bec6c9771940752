//! Redis: plain string keys.

use super::channel;
use crate::Op;
use crate::kv::{VALUE, delivered, list_key};
use crate::measure::OpFn;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;

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
        Op::Get | Op::GetStale => {
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
        Op::List | Op::List10k | Op::List100k => {
            let n = op.list_keys();
            let list = format!("{dir}/list");
            let mut c = conn.clone();
            for start in (0..n).step_by(1000) {
                let pairs: Vec<(String, &[u8])> = (start..(start + 1000).min(n))
                    .map(|i| (list_key(&list, i), &VALUE[..]))
                    .collect();
                let _: () = c.mset(&pairs).await?;
            }
            let pattern = format!("{list}/*");
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
                    // Values in runs of 1,000 keys, as kvstore reads pages, so neither side
                    // holds the server for the whole directory.
                    let mut values: Vec<Vec<u8>> = Vec::with_capacity(keys.len());
                    for run in keys.chunks(1000) {
                        let got: Vec<Vec<u8>> = c.mget(run).await?;
                        values.extend(got);
                    }
                    anyhow::ensure!(values.len() == n, "listed {} of {n}", values.len());
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
        Op::Lock | Op::LockPerCall => {
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
        // MULTI/EXEC of plain SETs: Redis's own transaction.
        Op::Txn2 | Op::Txn8 => {
            let n = op.txn_puts();
            Arc::new(move |w, i| {
                let mut c = conn.clone();
                let mut pipe = redis::pipe();
                pipe.atomic();
                for k in 0..n {
                    pipe.set(format!("{dir}/t{w}/{}/k{k}", i % 10), &VALUE[..])
                        .ignore();
                }
                async move {
                    let _: () = pipe.query_async(&mut c).await?;
                    Ok(None)
                }
                .boxed()
            })
        }
    }))
}

/// Deletes the keys under `dir` (`SCAN` for the pattern, then `UNLINK` in batches).
pub(crate) async fn cleanup(url: &str, dir: &str) -> anyhow::Result<()> {
    use redis::AsyncCommands;
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let pattern = format!("{}/*", glob_escape(dir));
    let keys: Vec<redis::RedisResult<String>> =
        conn.scan_match::<_, String>(pattern).await?.collect().await;
    let keys = keys
        .into_iter()
        .collect::<redis::RedisResult<Vec<String>>>()?;
    for batch in keys.chunks(1000) {
        let _: () = redis::cmd("UNLINK")
            .arg(batch)
            .query_async(&mut conn)
            .await?;
    }
    Ok(())
}

/// `text` with Redis's glob characters escaped.
fn glob_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c {
            '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}
