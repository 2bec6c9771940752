//! PostgreSQL: the statements kvstore sends, sent with `tokio-postgres` over a
//! `deadpool-postgres` pool of the same size as kvstore's (16), on the same table. The
//! functions are those of kvstore's schema (one call per write, as kvstore makes), so the
//! ratio is kvstore's own cost around the same round trips; a `LISTEN` connection times watch
//! delivery. The table is created by opening a kvstore store once.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::{FutureExt, StreamExt};
use tokio::sync::Mutex;
use tokio_postgres::NoTls;

use super::channel;
use crate::Op;
use crate::kv::{VALUE, delivered, list_key};
use crate::measure::OpFn;

/// kvstore's default pool size.
const POOL_SIZE: usize = 16;
const READ: &str = "SELECT value, last_index FROM kvstore WHERE key = $1 \
                    AND (expires_at IS NULL OR expires_at > clock_timestamp())";
const WRITE: &str = "SELECT * FROM kvstore_write($1, $2, $3, $4, NULL)";
const LIST: &str = "SELECT key, value, last_index FROM kvstore WHERE key >= $1 AND key < $2 \
                    AND (expires_at IS NULL OR expires_at > clock_timestamp()) ORDER BY key";
const LOCK: &str = "SELECT * FROM kvstore_lock($1, $2, NULL, false)";
const UNLOCK: &str = "SELECT kvstore_unlock($1, $2, false)";
const TXN: &str = "SELECT * FROM kvstore_txn('{}', '{}', '{}', $1, $2)";

fn config(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    let parsed = kvstore::postgres::PostgresConfig::from_str(url)?;
    let mut pg = tokio_postgres::Config::new();
    for (host, port) in &parsed.hosts {
        pg.host(host).port(*port);
    }
    pg.user(&parsed.user).dbname(&parsed.database);
    if let Some(password) = &parsed.password {
        pg.password(password);
    }
    Ok(pg)
}

async fn pool(url: &str) -> anyhow::Result<Pool> {
    // The schema is kvstore's: open a store once so that it exists.
    kvstore::open(url).await?.close().await?;
    let manager = Manager::from_config(
        config(url)?,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager).max_size(POOL_SIZE).build()?)
}

/// One statement on a pooled connection, prepared once per connection.
async fn query(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> anyhow::Result<Vec<tokio_postgres::Row>> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query(&statement, params).await?)
}

/// Prepares `op` with `tokio-postgres`.
pub(crate) async fn postgres(
    url: &str,
    op: Op,
    workers: usize,
    dir: &str,
) -> anyhow::Result<Option<OpFn>> {
    let pool = pool(url).await?;
    let dir = format!("raw/{dir}");
    let put = |pool: Pool, key: String| async move {
        let rows = query(&pool, WRITE, &[&key, &&VALUE[..], &0i16, &None::<i64>]).await?;
        anyhow::Ok(rows[0].get::<_, i64>(1))
    };
    Ok(Some(match op {
        Op::Get | Op::GetStale => {
            for i in 0..100 {
                put(pool.clone(), format!("{dir}/k{i}")).await?;
            }
            Arc::new(move |_, i| {
                let (pool, key) = (pool.clone(), format!("{dir}/k{}", i % 100));
                async move {
                    anyhow::ensure!(!query(&pool, READ, &[&key]).await?.is_empty(), "missing");
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Put => Arc::new(move |w, i| {
            let key = format!("{dir}/w{w}/k{}", i % 10);
            put(pool.clone(), key).map(|r| r.map(|_| None)).boxed()
        }),
        Op::AtomicPut => {
            let mut revisions = Vec::with_capacity(workers);
            for w in 0..workers {
                revisions.push(Mutex::new(put(pool.clone(), format!("{dir}/c{w}")).await?));
            }
            let revisions = Arc::new(revisions);
            Arc::new(move |w, _| {
                let (pool, key, revisions) =
                    (pool.clone(), format!("{dir}/c{w}"), revisions.clone());
                async move {
                    let mut rev = revisions[w].lock().await;
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                        [&key, &&VALUE[..], &2i16, &Some(*rev)];
                    let rows = query(&pool, WRITE, &params).await?;
                    anyhow::ensure!(rows[0].get::<_, i16>(0) == 0, "compare failed");
                    *rev = rows[0].get(1);
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::List | Op::List10k | Op::List100k => {
            let n = op.list_keys();
            let list = format!("{dir}/list");
            for start in (0..n).step_by(1000) {
                let keys: Vec<String> = (start..(start + 1000).min(n))
                    .map(|i| list_key(&list, i))
                    .collect();
                let values: Vec<Option<&[u8]>> = keys.iter().map(|_| Some(&VALUE[..])).collect();
                query(&pool, TXN, &[&keys, &values]).await?;
            }
            let (from, to) = (format!("{list}/"), format!("{list}0"));
            Arc::new(move |_, _| {
                let (pool, from, to) = (pool.clone(), from.clone(), to.clone());
                async move {
                    let rows = query(&pool, LIST, &[&from, &to]).await?;
                    let pairs: Vec<(String, Vec<u8>)> =
                        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                    anyhow::ensure!(pairs.len() == n, "listed {} of {n}", pairs.len());
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
            let (client, mut connection) = config(url)?.connect(NoTls).await?;
            let (tx, rx) = channel();
            let reader = pool.clone();
            let (notified_tx, mut notified) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(Ok(message)) = messages.next().await {
                    if let tokio_postgres::AsyncMessage::Notification(_) = message
                        && notified_tx.send(()).is_err()
                    {
                        return;
                    }
                }
            });
            client.batch_execute("LISTEN \"public.kvstore\"").await?;
            let watched = key.clone();
            tokio::spawn(async move {
                let _client = client;
                // A notification says a revision committed; the value is read, as a watcher must.
                while notified.recv().await.is_some() {
                    let Ok(rows) = query(&reader, READ, &[&watched]).await else {
                        return;
                    };
                    if let Some(row) = rows.first()
                        && tx.send((row.get::<_, Vec<u8>>(0), Instant::now())).is_err()
                    {
                        return;
                    }
                }
            });
            Arc::new(move |_, i| {
                let (pool, key, rx) = (pool.clone(), key.clone(), rx.clone());
                async move {
                    let value = format!("v{i}").into_bytes();
                    let mut rx = rx.lock().await;
                    let t0 = Instant::now();
                    query(&pool, WRITE, &[&key, &value, &0i16, &None::<i64>]).await?;
                    delivered(&mut rx, &value, t0).await
                }
                .boxed()
            })
        }
        Op::Lock | Op::LockPerCall => Arc::new(move |w, _| {
            let (pool, key) = (pool.clone(), format!("{dir}/l{w}"));
            async move {
                let ttl = i64::try_from(Duration::from_secs(20).as_millis())?;
                let rows = query(&pool, LOCK, &[&key, &ttl]).await?;
                let token: Option<i64> = rows[0].get(0);
                let token = token.ok_or_else(|| anyhow::anyhow!("held"))?;
                query(&pool, UNLOCK, &[&key, &token]).await?;
                Ok(None)
            }
            .boxed()
        }),
        Op::Txn2 | Op::Txn8 => {
            let n = op.txn_puts();
            Arc::new(move |w, i| {
                let pool = pool.clone();
                let keys: Vec<String> = (0..n)
                    .map(|k| format!("{dir}/t{w}/{}/k{k}", i % 10))
                    .collect();
                async move {
                    let values: Vec<Option<&[u8]>> =
                        keys.iter().map(|_| Some(&VALUE[..])).collect();
                    let rows = query(&pool, TXN, &[&keys, &values]).await?;
                    anyhow::ensure!(rows[0].get::<_, bool>(0), "txn refused");
                    Ok(None)
                }
                .boxed()
            })
        }
    }))
}

/// Deletes the keys under `dir`.
pub(crate) async fn cleanup(url: &str, dir: &str) -> anyhow::Result<()> {
    let pool = pool(url).await?;
    let (from, to) = (format!("{dir}/"), format!("{dir}0"));
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&None::<&str>, &from, &Some(to)];
    query(&pool, "SELECT kvstore_delete_tree($1, $2, $3)", &params).await?;
    Ok(())
}
