//! The conformance suite against a 3-node ZooKeeper ensemble through its multi-host URL
//! (`KVSTORE_ZK_CLUSTER_URL` = `zk://h1,h2,h3`; ci/servers.sh starts it as `zk-cluster`). The
//! failover checks under load are `kvstore-failover` (ci/failover.sh).

mod common;

/// The suite, in a module so that `ci/test.sh` runs the network backends' suites at once
/// (`-- backend_suite::`), each against its own server.
mod backend_suite {
    kvstore_testutils::conformance_tests!(optional: super::common::opener("KVSTORE_ZK_CLUSTER_URL"));
}
