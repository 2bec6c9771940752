//! redb (and redb's in-memory backend): one table, each call a transaction on the blocking pool
//! like kvstore's, so the comparison is of the work, not of the thread hop.

use crate::Op;
use crate::kv::VALUE;
use crate::measure::OpFn;
use futures::FutureExt;
use std::sync::Arc;

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
        Op::Get | Op::GetStale => {
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
        // One write transaction.
        Op::Txn2 | Op::Txn8 => {
            let (dir, n) = (dir.to_owned(), op.txn_puts());
            Arc::new(move |w, i| {
                let (db, keys): (_, Vec<String>) = (
                    db.clone(),
                    (0..n)
                        .map(|k| format!("{dir}/t{w}/{}/k{k}", i % 10))
                        .collect(),
                );
                async move {
                    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                        let txn = db.begin_write()?;
                        {
                            let mut table = txn.open_table(TABLE)?;
                            for key in &keys {
                                table.insert(key.as_str(), &VALUE[..])?;
                            }
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
        // redb has no watches or locks of its own.
        Op::Watch | Op::Lock => return Ok(None),
    }))
}

/// Deletes the keys under `dir`.
pub(crate) async fn cleanup(db: Arc<redb::Database>, dir: &str) -> anyhow::Result<()> {
    let prefix = format!("{dir}/");
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let txn = db.begin_write()?;
        txn.open_table(TABLE)?
            .retain(|key, _| !key.starts_with(prefix.as_str()))?;
        txn.commit()?;
        Ok(())
    })
    .await?
}
