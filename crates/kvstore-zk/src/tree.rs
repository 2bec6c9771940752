//! Reading and deleting a directory: a breadth-first walk with one multi-read per level.
//!
//! ZooKeeper has no "all descendants" read, so each level of the tree is read with `multiRead`
//! requests (ZooKeeper 3.6+): a `getData` per znode, then a `getChildren` per znode whose stat
//! counts children, chunked so a request stays well under `jute.maxbuffer`.

use std::collections::HashSet;

use futures::StreamExt;
use futures::future::join_all;
use kvstore_core::{KvPair, Result};
use zookeeper_client::{self as zk, Client, MultiReadResult, Stat};

use crate::client::Inner;
use crate::error::from_zk;
use crate::node::{MARKER, decode};
use crate::session::timed;

/// Operations per multi-read request.
const CHUNK: usize = 200;
/// Multi-read requests of one level in flight at once: a level of 100,000 znodes read one
/// request at a time was 500 round trips in a row (0.51x the raw client's flat reads).
const IN_FLIGHT: usize = 8;

/// One znode of a walk.
pub(crate) struct Node {
    pub(crate) path: String,
    pub(crate) data: Vec<u8>,
    pub(crate) stat: Stat,
    pub(crate) depth: usize,
}

/// Walks the znode at `dir_path` and all its descendants: returns the top (`None` when it does
/// not exist, or is the store's root) and hands every descendant to `visit` as it is read, so
/// a caller that keeps less than the whole node (a `list` keeps its pairs) never holds a
/// directory twice. Children that are not part of the keyspace ([`Inner::skipped_child`]) are
/// not entered.
pub(crate) async fn walk(
    inner: &Inner,
    client: &Client,
    dir_path: &str,
    top_is_root: bool,
    consistent: bool,
    mut visit: impl FnMut(Node),
) -> Result<Option<Node>> {
    let read = || {
        let mut first = client.new_multi_reader();
        let added = first
            .add_get_children(dir_path)
            .and_then(|()| match top_is_root {
                true => Ok(()),
                false => first.add_get_data(dir_path),
            });
        async move {
            added?;
            first.commit().await
        }
    };
    let results = timed(inner.timeout(), async {
        if consistent {
            inner.syncs.synced(client, read).await
        } else {
            read().await
        }
    })
    .await
    .map_err(from_zk)?;
    let mut results = results.into_iter();
    let children = match results.next() {
        Some(MultiReadResult::Children { children }) => children,
        Some(MultiReadResult::Error {
            err: zk::Error::NoNode,
        }) => return Ok(None),
        Some(MultiReadResult::Error { err }) => return Err(from_zk(err)),
        _ => Vec::new(),
    };
    let top = match results.next() {
        Some(MultiReadResult::Data { data, stat }) => Some(Node {
            path: dir_path.to_owned(),
            data,
            stat,
            depth: 0,
        }),
        _ => None,
    };
    let mut frontier: Vec<String> = child_paths(inner, dir_path, &children);
    let mut depth = 1;
    while !frontier.is_empty() {
        // The level's data first; the children only of the znodes whose stat counts any (a
        // directory of leaves, the usual case, is one `getData` per key, not two operations).
        let mut parents = Vec::new();
        let level = std::mem::take(&mut frontier);
        read_level(inner, client, level, false, |path, read| {
            // Anything but data: deleted since its parent was read.
            if let MultiReadResult::Data { data, stat } = read {
                if stat.num_children > 0 {
                    parents.push(path.clone());
                }
                visit(Node {
                    path,
                    data,
                    stat,
                    depth,
                });
            }
        })
        .await?;
        read_level(inner, client, parents, true, |path, read| {
            if let MultiReadResult::Children { children } = read {
                frontier.extend(child_paths(inner, &path, &children));
            }
        })
        .await?;
        depth += 1;
    }
    Ok(top)
}

/// Reads `paths` with one operation each (`getChildren` when `children`, else `getData`), in
/// multi-reads of [`CHUNK`] paths, up to [`IN_FLIGHT`] of them pipelined on the session, and
/// hands each path with its result to `each`, in order. The paths move into their chunks (no
/// copy).
async fn read_level(
    inner: &Inner,
    client: &Client,
    paths: Vec<String>,
    children: bool,
    mut each: impl FnMut(String, MultiReadResult),
) -> Result<()> {
    let mut paths = paths.into_iter();
    let chunks = std::iter::from_fn(|| {
        let chunk: Vec<String> = paths.by_ref().take(CHUNK).collect();
        (!chunk.is_empty()).then_some(chunk)
    });
    let mut reads = futures::stream::iter(chunks.map(|chunk| async move {
        let mut reader = client.new_multi_reader();
        for path in &chunk {
            let added = if children {
                reader.add_get_children(path)
            } else {
                reader.add_get_data(path)
            };
            added.map_err(from_zk)?;
        }
        let results = timed(inner.timeout(), reader.commit())
            .await
            .map_err(from_zk)?;
        Ok::<_, kvstore_core::Error>((chunk, results))
    }))
    .buffered(IN_FLIGHT);
    while let Some(read) = reads.next().await {
        let (chunk, results) = read?;
        for (path, result) in chunk.into_iter().zip(results) {
            each(path, result);
        }
    }
    Ok(())
}

fn child_paths(inner: &Inner, path: &str, children: &[String]) -> Vec<String> {
    let base = if path == "/" { "" } else { path };
    children
        .iter()
        .filter(|c| !inner.skipped_child(path, c))
        .map(|c| format!("{base}/{c}"))
        .collect()
}

/// The visible descendants of `dir`, sorted by key; `None` when `dir` is neither a key nor
/// has any visible descendant (and is not the whole keyspace).
pub(crate) async fn list(
    inner: &Inner,
    client: &Client,
    dir: &str,
    consistent: bool,
) -> Result<Option<Vec<KvPair>>> {
    let dir_path = inner.dir_path(dir);
    let mut pairs: Vec<KvPair> = Vec::new();
    let top = walk(inner, client, &dir_path, dir.is_empty(), consistent, |n| {
        pairs.extend(inner.pair(&n.path, &n.data, &n.stat));
    })
    .await?;
    pairs.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let top_visible = top.is_some_and(|t| decode(&t.data).is_some());
    Ok((dir.is_empty() || top_visible || !pairs.is_empty()).then_some(pairs))
}

/// How many deletes `delete_tree` pipelines under one request timeout.
const DELETE_RUN: usize = 1_000;

/// Deletes `dir` and every descendant, deepest first, each level's deletes pipelined in runs
/// of [`DELETE_RUN`]. Returns the paths of the keys (visible znodes) that were deleted; empty
/// when there were none. A znode that gained a child meanwhile is hidden instead of deleted.
pub(crate) async fn delete_tree(
    inner: &Inner,
    client: &Client,
    dir: &str,
) -> Result<HashSet<String>> {
    let dir_path = inner.dir_path(dir);
    let mut nodes = Vec::new();
    let top = walk(inner, client, &dir_path, dir.is_empty(), true, |n| {
        nodes.push(n)
    })
    .await?;
    if let Some(top) = top {
        nodes.push(top);
    }
    let deleted: HashSet<String> = nodes
        .iter()
        .filter(|n| decode(&n.data).is_some())
        .map(|n| n.path.clone())
        .collect();
    nodes.sort_by_key(|n| std::cmp::Reverse(n.depth));
    // Deepest first; each level in runs of DELETE_RUN pipelined deletes, each run within the
    // request timeout (a timeout over a whole level of 100,000 znodes measured the server's
    // throughput, not one request, and failed a healthy server under load).
    let runs = nodes
        .chunk_by(|a, b| a.depth == b.depth)
        .flat_map(|level| level.chunks(DELETE_RUN));
    for run in runs {
        // Requests are sent in call order, so creating the futures pipelines them.
        let deletes: Vec<_> = run.iter().map(|n| client.delete(&n.path, None)).collect();
        let results = timed(inner.timeout(), async { Ok(join_all(deletes).await) })
            .await
            .map_err(from_zk)?;
        for (node, result) in run.iter().zip(results) {
            match result {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(zk::Error::NotEmpty) if decode(&node.data).is_some() => {
                    match timed(inner.timeout(), client.set_data(&node.path, MARKER, None)).await {
                        Ok(_) | Err(zk::Error::NoNode) => {}
                        Err(err) => return Err(from_zk(err)),
                    }
                }
                Err(zk::Error::NotEmpty) => {}
                Err(err) => return Err(from_zk(err)),
            }
        }
    }
    Ok(deleted)
}
