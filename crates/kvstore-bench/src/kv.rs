//! The workloads through kvstore's `Store` API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, TryStreamExt};
use kvstore::{KvPair, Locker, ReadOptions, Store, Txn};
use tokio::sync::Mutex;

use crate::Op;
use crate::measure::OpFn;

/// The value every write stores: 64 bytes.
pub(crate) const VALUE: &[u8; 64] =
    b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The `i`-th key of a listed directory, on every side.
pub(crate) fn list_key(dir: &str, i: usize) -> String {
    format!("{dir}/k{i:06}")
}

/// Writes `n` keys into `dir` in transactions, eight at a time.
async fn fill(store: &Arc<dyn Store>, dir: &str, n: usize) -> anyhow::Result<()> {
    let per = store.capabilities().max_txn_ops.clamp(1, 512);
    let txns = (0..n).step_by(per).map(|start| {
        let txn = (start..(start + per).min(n))
            .fold(Txn::new(), |txn, i| txn.put(&list_key(dir, i), &VALUE[..]));
        let store = store.clone();
        async move { store.txn(&txn).await.map(drop) }
    });
    futures::stream::iter(txns)
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Prepares `op` for `workers` workers under `dir`; `None` when the store cannot do it.
pub(crate) async fn prepare(
    store: Arc<dyn Store>,
    op: Op,
    workers: usize,
    dir: &str,
) -> anyhow::Result<Option<OpFn>> {
    Ok(Some(match op {
        Op::Get | Op::GetStale => {
            for i in 0..100 {
                store.put(&format!("{dir}/k{i}"), VALUE, None).await?;
            }
            let dir = dir.to_owned();
            let opts = (op == Op::GetStale).then(|| ReadOptions::default().with_consistent(false));
            Arc::new(move |_, i| {
                let (store, key) = (store.clone(), format!("{dir}/k{}", i % 100));
                let opts = opts.clone();
                async move {
                    store.get(&key, opts.as_ref()).await?;
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Put => {
            let dir = dir.to_owned();
            Arc::new(move |w, i| {
                let (store, key) = (store.clone(), format!("{dir}/w{w}/k{}", i % 10));
                async move {
                    store.put(&key, VALUE, None).await?;
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::AtomicPut => {
            let mut chains = Vec::with_capacity(workers);
            for w in 0..workers {
                let key = format!("{dir}/c{w}");
                let pair = store.put(&key, VALUE, None).await?;
                chains.push(Arc::new(Mutex::new(pair)));
            }
            Arc::new(move |w, _| {
                let (store, chain) = (store.clone(), chains[w].clone());
                async move {
                    let mut prev = chain.lock().await;
                    let next: KvPair = store
                        .atomic_put(&prev.key.clone(), VALUE, Some(&prev), None)
                        .await?;
                    *prev = next;
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::List | Op::List10k | Op::List100k => {
            let n = op.list_keys();
            let dir = format!("{dir}/list");
            fill(&store, &dir, n).await?;
            Arc::new(move |_, _| {
                let (store, dir) = (store.clone(), dir.clone());
                async move {
                    let listed = store.list(&dir, None).await?;
                    anyhow::ensure!(listed.len() == n, "listed {} of {n} keys", listed.len());
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Watch => {
            if !store.capabilities().watch || workers != 1 {
                return Ok(None);
            }
            let key = format!("{dir}/watched");
            store.put(&key, b"start", None).await?;
            let mut stream = store.watch(&key, None).await?;
            stream.next().await.transpose()?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, Instant)>();
            tokio::spawn(async move {
                while let Some(Ok(Some(pair))) = stream.next().await {
                    if tx.send((pair.value.to_vec(), Instant::now())).is_err() {
                        return;
                    }
                }
            });
            let rx = Arc::new(Mutex::new(rx));
            Arc::new(move |_, i| {
                let (store, key, rx) = (store.clone(), key.clone(), rx.clone());
                async move {
                    let value = format!("v{i}").into_bytes();
                    let mut rx = rx.lock().await;
                    let t0 = Instant::now();
                    store.put(&key, &value, None).await?;
                    delivered(&mut rx, &value, t0).await
                }
                .boxed()
            })
        }
        Op::Lock => {
            if !store.capabilities().lock {
                return Ok(None);
            }
            let mut locks: Vec<Arc<Mutex<Box<dyn Locker>>>> = Vec::with_capacity(workers);
            for w in 0..workers {
                let lock = store.new_lock(&format!("{dir}/l{w}"), None).await?;
                locks.push(Arc::new(Mutex::new(lock)));
            }
            Arc::new(move |w, _| {
                let lock = locks[w].clone();
                async move {
                    let mut lock = lock.lock().await;
                    lock.lock().await?;
                    lock.unlock().await?;
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::LockPerCall => {
            if !store.capabilities().lock {
                return Ok(None);
            }
            let dir = dir.to_owned();
            Arc::new(move |w, _| {
                let (store, key) = (store.clone(), format!("{dir}/n{w}"));
                async move {
                    let mut lock = store.new_lock(&key, None).await?;
                    lock.lock().await?;
                    lock.unlock().await?;
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Txn2 | Op::Txn8 => {
            let (dir, n) = (dir.to_owned(), op.txn_puts());
            Arc::new(move |w, i| {
                let store = store.clone();
                let txn = (0..n).fold(Txn::new(), |t, k| {
                    t.put(&format!("{dir}/t{w}/{}/k{k}", i % 10), &VALUE[..])
                });
                async move {
                    store.txn(&txn).await?;
                    Ok(None)
                }
                .boxed()
            })
        }
    }))
}

/// Waits (at most 10 s) for the watch item carrying `value`; its latency since `t0`.
pub(crate) async fn delivered(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Vec<u8>, Instant)>,
    value: &[u8],
    t0: Instant,
) -> anyhow::Result<Option<Duration>> {
    let wait = async {
        while let Some((got, at)) = rx.recv().await {
            if got == value {
                return Ok(Some(at.duration_since(t0)));
            }
        }
        anyhow::bail!("the watch ended")
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| anyhow::anyhow!("no watch event within 10 s"))?
}
