//! etcd.

use super::channel;
use crate::Op;
use crate::kv::{VALUE, delivered, list_key};
use crate::measure::OpFn;
use futures::FutureExt;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;

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
        Op::Get | Op::GetStale => {
            let mut c = client.clone();
            for i in 0..100 {
                c.put(format!("{dir}/k{i}"), &VALUE[..], None).await?;
            }
            // A stale read is a serializable one, as kvstore's is (source: etcd API
            // reference, RangeRequest.serializable).
            let stale = op == Op::GetStale;
            Arc::new(move |_, i| {
                let (mut c, key) = (client.clone(), format!("{dir}/k{}", i % 100));
                let options = stale.then(|| GetOptions::new().with_serializable());
                async move {
                    anyhow::ensure!(!c.get(key, options).await?.kvs().is_empty(), "missing");
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
        Op::List | Op::List10k | Op::List100k => {
            let n = op.list_keys();
            let list = format!("{dir}/list");
            let mut c = client.clone();
            // etcd's default --max-txn-ops is 128.
            for start in (0..n).step_by(128) {
                let puts: Vec<TxnOp> = (start..(start + 128).min(n))
                    .map(|i| TxnOp::put(list_key(&list, i), &VALUE[..], None))
                    .collect();
                c.txn(Txn::new().and_then(puts)).await?;
            }
            // The keys from `<list>/` up to `<list>0` ('0' follows '/').
            let (prefix, end) = (format!("{list}/"), format!("{list}0"));
            Arc::new(move |_, _| {
                let (mut c, prefix, end) = (client.clone(), prefix.clone(), end.clone());
                async move {
                    // Pages of 1,000 keys at the first page's revision, as kvstore reads: one
                    // range of 100,000 pairs passes the client's 4 MiB reply limit.
                    let (mut from, mut revision) = (prefix.into_bytes(), 0);
                    let mut pairs = Vec::new();
                    loop {
                        let mut opts = GetOptions::new()
                            .with_range(end.as_bytes())
                            .with_limit(1000);
                        if revision > 0 {
                            opts = opts.with_revision(revision);
                        }
                        let mut resp = c.get(from.clone(), Some(opts)).await?;
                        if revision == 0 {
                            revision = resp.header().map_or(0, |h| h.revision());
                        }
                        let more = resp.more();
                        pairs.extend(resp.take_kvs());
                        match pairs.last() {
                            Some(last) if more => {
                                from = last.key().to_vec();
                                from.push(0);
                            }
                            _ => break,
                        }
                    }
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
        Op::Lock | Op::LockPerCall => Arc::new(move |w, _| {
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
        Op::Txn2 | Op::Txn8 => {
            let n = op.txn_puts();
            Arc::new(move |w, i| {
                let mut c = client.clone();
                let puts: Vec<TxnOp> = (0..n)
                    .map(|k| TxnOp::put(format!("{dir}/t{w}/{}/k{k}", i % 10), &VALUE[..], None))
                    .collect();
                async move {
                    c.txn(Txn::new().and_then(puts)).await?;
                    Ok(None)
                }
                .boxed()
            })
        }
    }))
}

/// Deletes the keys under `dir`.
pub(crate) async fn cleanup(endpoint: &str, dir: &str) -> anyhow::Result<()> {
    let mut client = etcd_client::Client::connect([endpoint], None).await?;
    let options = etcd_client::DeleteOptions::new().with_prefix();
    client.delete(format!("{dir}/"), Some(options)).await?;
    Ok(())
}
