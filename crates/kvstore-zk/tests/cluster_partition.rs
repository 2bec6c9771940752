//! A partition between the members of the 3-node ZooKeeper ensemble
//! (`KVSTORE_ZK_CLUSTER_URL`; ci/servers.sh starts it as `zk-cluster`): a lock holder
//! whose only server is the leader, when that leader is cut off from its peers by a packet
//! filter (`ci/restart.sh MEMBER isolate`, which needs root). In a file of its own: the cut
//! would fail the conformance cases that share the cluster in `cluster.rs`.

use std::time::Duration;

mod common;

/// The lock's TTL; the successor waits for the new leader to expire the holder's session.
const TTL: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_holder_on_an_isolated_leader_loses_the_lock_before_a_successor_takes_it() {
    let Some(url) = kvstore_testutils::controlled_backend_url("KVSTORE_ZK_CLUSTER_URL") else {
        return;
    };
    // An election (at most a few seconds), then the TTL, on a loaded machine.
    let takeover = TTL + Duration::from_secs(15);
    kvstore_testutils::isolated_leader_holder_loses_first(
        "zk-cluster",
        &url,
        common::opener_for_url,
        TTL,
        takeover,
    )
    .await;
}
