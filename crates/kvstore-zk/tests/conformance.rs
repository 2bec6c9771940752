//! The conformance suite against a real ZooKeeper (`KVSTORE_ZK_URL`, set by ci/test.sh, which
//! runs the server with TTL nodes enabled and a 100 ms container check interval).

mod common;

/// The suite, in a module so that `ci/test.sh` runs the network backends' suites at once
/// (`-- backend_suite::`), each against its own server.
mod backend_suite {
    kvstore_testutils::conformance_tests!(optional: super::common::opener("KVSTORE_ZK_URL"));
}

/// The coordination recipes (`Counter`, `update`, `update_many`, `Group`), once per server.
mod recipes {
    kvstore_testutils::recipe_tests!(optional: super::common::opener("KVSTORE_ZK_URL"));
}
