//! A partition between the members of the 3-member etcd cluster (`KVSTORE_ETCD_CLUSTER_URL`;
//! ci/servers.sh starts it as `etcd-cluster`): a lock holder whose only server is the leader,
//! when that leader is cut off from its peers by a packet filter (`ci/restart.sh MEMBER
//! isolate`, which needs root). In a file of its own: the cut would fail the conformance cases
//! that share the cluster in `cluster.rs`.

mod common;

kvstore_testutils::isolated_leader_tests!(
    cluster: "etcd-cluster",
    url: "KVSTORE_ETCD_CLUSTER_URL",
    opener: common::opener_for_url,
);
