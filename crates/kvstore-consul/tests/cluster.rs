//! The conformance suite against a 3-server Consul cluster, through a client agent as on an
//! application host (`KVSTORE_CONSUL_CLUSTER_URL`; ci/servers.sh starts it as
//! `consul-cluster`). The failover checks under load are `kvstore-failover` (ci/failover.sh).

mod common;

/// The suite, in a module so that `ci/test.sh` runs the network backends' suites at once
/// (`-- backend_suite::`), each against its own server.
mod backend_suite {
    kvstore_testutils::conformance_tests!(optional: super::common::opener("KVSTORE_CONSUL_CLUSTER_URL"));
}
