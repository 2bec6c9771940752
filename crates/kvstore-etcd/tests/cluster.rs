//! The conformance suite against a 3-member etcd 3.6 cluster through its multi-endpoint URL
//! (`KVSTORE_ETCD_CLUSTER_URL` = `etcd://h1,h2,h3`; ci/servers.sh starts it as
//! `etcd-cluster`). The failover checks under load are `kvstore-failover` (ci/failover.sh).

mod common;

/// The suite, in a module so that `ci/test.sh` runs the network backends' suites at once
/// (`-- backend_suite::`), each against its own server.
mod backend_suite {
    kvstore_testutils::conformance_tests!(optional: super::common::opener("KVSTORE_ETCD_CLUSTER_URL"));
}
