//! Requests per call against a real standalone ZooKeeper (`KVSTORE_ZK_URL`), counted by the
//! server (`mntr`'s `zk_packets_received`): a consistent read on a standalone server is one
//! request, with no `sync` before it. One test in this file, so no other test's requests
//! are counted.

use kvstore_core::{ReadOptions, Store};
use kvstore_testutils::{backend_url, ok, scratch_dir};
use kvstore_zk::ZkStore;

mod common;

/// Consistent gets of this many keys.
const READS: u64 = 100;

#[tokio::test]
async fn a_consistent_read_on_a_standalone_server_is_one_request() {
    let Some(url) = backend_url("KVSTORE_ZK_URL") else {
        return;
    };
    let writer = ok(ZkStore::open_url(&url).await, "open");
    let reader = ok(ZkStore::open_url(&url).await, "open");
    let dir = scratch_dir("requests");
    let key = format!("{dir}/k");
    let consistent = ReadOptions::default().with_consistent(true);
    ok(reader.exists(&key, Some(&consistent)).await, "a first read");
    let before = common::mntr(&url, "zk_packets_received").await;
    for i in 0..READS {
        // Each read sees the write another session made just before it.
        let value = format!("v{i}");
        ok(writer.put(&key, value.as_bytes(), None).await, "put");
        let read = ok(reader.get(&key, Some(&consistent)).await, "consistent get");
        assert_eq!(
            read.value,
            value.as_bytes(),
            "a consistent read sees the write before it"
        );
    }
    let after = common::mntr(&url, "zk_packets_received").await;
    let requests = after - before;
    // One put and one get per round; a sync before each get would make it 3 * READS. Pings of
    // the two sessions add a few.
    assert!(
        (2 * READS..2 * READS + 20).contains(&requests),
        "{requests} requests for {READS} puts and {READS} consistent gets (a sync per get would be {})",
        3 * READS
    );
    ok(writer.delete_tree(&dir).await, "cleanup");
    let _ = writer.close().await;
    let _ = reader.close().await;
}
