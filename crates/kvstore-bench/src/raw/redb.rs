//! redb (and redb's in-memory backend): one table. Reads run in place, in a read transaction
//! on the caller's thread, as kvstore's `get` and small `list`s do. Writes have no raw side:
//! kvstore's writes share durable commits (its group commit), and a raw client doing the same
//! would be that group commit written again; one commit per call, the direct way, measured the
//! harness rather than kvstore (issue #28). valkeyrie's BoltDB is the comparison for writes.

use crate::Op;
use crate::kv::{VALUE, list_key};
use crate::measure::OpFn;
use futures::FutureExt;
use std::sync::Arc;

const TABLE: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("bench");

/// Prepares `op` on a raw redb database.
pub(crate) async fn redb(
    db: Arc<redb::Database>,
    op: Op,
    _workers: usize,
    dir: &str,
) -> anyhow::Result<Option<OpFn>> {
    use redb::ReadableDatabase;
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
                    let txn = db.begin_read()?;
                    let table = txn.open_table(TABLE)?;
                    anyhow::ensure!(table.get(key.as_str())?.is_some(), "missing");
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::List | Op::List10k | Op::List100k => {
            let n = op.list_keys();
            let list = format!("{dir}/list");
            let fill = (db.clone(), list.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let (db, list) = fill;
                let txn = db.begin_write()?;
                {
                    let mut table = txn.open_table(TABLE)?;
                    for i in 0..n {
                        table.insert(list_key(&list, i).as_str(), &VALUE[..])?;
                    }
                }
                txn.commit()?;
                Ok(())
            })
            .await??;
            let (start, end) = (format!("{list}/"), format!("{list}0"));
            Arc::new(move |_, _| {
                let (db, start, end) = (db.clone(), start.clone(), end.clone());
                async move {
                    let txn = db.begin_read()?;
                    let table = txn.open_table(TABLE)?;
                    let mut pairs = Vec::new();
                    for entry in table.range(start.as_str()..end.as_str())? {
                        let (k, v) = entry?;
                        pairs.push((k.value().to_owned(), v.value().to_vec()));
                    }
                    anyhow::ensure!(pairs.len() == n, "listed {} of {n}", pairs.len());
                    Ok(None)
                }
                .boxed()
            })
        }
        // Writes: see the module docs. redb has no watches or locks of its own.
        Op::Put | Op::AtomicPut | Op::Txn2 | Op::Txn8 | Op::Watch | Op::Lock | Op::LockPerCall => {
            return Ok(None);
        }
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
