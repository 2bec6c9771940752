//! ZooKeeper.

use super::channel;
use crate::Op;
use crate::kv::{VALUE, delivered, list_key};
use crate::measure::OpFn;
use futures::{FutureExt, StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;

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
        Op::Get | Op::GetStale => {
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
        Op::List | Op::List10k | Op::List100k => {
            let n = op.list_keys();
            let path = format!("{dir}/list");
            futures::stream::iter((0..n).map(|i| create(client.clone(), list_key(&path, i))))
                .buffer_unordered(256)
                .try_collect::<Vec<()>>()
                .await?;
            Arc::new(move |_, _| {
                let (c, path) = (client.clone(), path.clone());
                async move {
                    let mut children = c.list_children(&path).await?;
                    children.sort();
                    // Reads in runs of 1,000 (one multi read each), as kvstore reads a
                    // large directory: one reply for 100,000 values passes jute.maxbuffer.
                    let mut pairs = Vec::with_capacity(children.len());
                    for run in children.chunks(1000) {
                        let mut reader = c.new_multi_reader();
                        for child in run {
                            reader.add_get_data(&format!("{path}/{child}"))?;
                        }
                        pairs.extend(run.iter().zip(reader.commit().await?));
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
        Op::Lock | Op::LockPerCall => {
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
        // One `multi` of `setData` on existing znodes.
        Op::Txn2 | Op::Txn8 => {
            let n = op.txn_puts();
            for w in 0..workers {
                for i in 0..10 {
                    client
                        .mkdir(&format!("{dir}/t{w}/{i}"), &persistent)
                        .await?;
                    for k in 0..n {
                        create(client.clone(), format!("{dir}/t{w}/{i}/k{k}")).await?;
                    }
                }
            }
            Arc::new(move |w, i| {
                let (c, base) = (client.clone(), format!("{dir}/t{w}/{}", i % 10));
                async move {
                    let mut multi = c.new_multi_writer();
                    for k in 0..n {
                        multi.add_set_data(&format!("{base}/k{k}"), &VALUE[..], None)?;
                    }
                    multi.commit().await?;
                    Ok(None)
                }
                .boxed()
            })
        }
    }))
}

/// Deletes the znode `/<dir>` and every znode under it, children before their parent.
pub(crate) async fn cleanup(hosts: &str, dir: &str) -> anyhow::Result<()> {
    let client = zookeeper_client::Client::connect(hosts).await?;
    let mut stack = vec![(format!("/{dir}"), false)];
    while let Some((path, listed)) = stack.pop() {
        if listed {
            match client.delete(&path, None).await {
                Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                Err(err) => return Err(err.into()),
            }
            continue;
        }
        let children = match client.list_children(&path).await {
            Ok(children) => children,
            Err(zookeeper_client::Error::NoNode) => continue,
            Err(err) => return Err(err.into()),
        };
        stack.push((path.clone(), true));
        stack.extend(children.iter().map(|c| (format!("{path}/{c}"), false)));
    }
    Ok(())
}
