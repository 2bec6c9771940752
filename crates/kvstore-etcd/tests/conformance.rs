//! The conformance suite against a real etcd server (`KVSTORE_ETCD_URL`, set by ci/test.sh).

mod common;

/// The suite, in a module so that `ci/test.sh` runs the network backends' suites at once
/// (`-- backend_suite::`), each against its own server.
mod backend_suite {
    kvstore_testutils::conformance_tests!(optional: super::common::opener("KVSTORE_ETCD_URL"));
}

/// The coordination recipes (`Counter`, `update`, `update_many`, `Group`), once per server.
mod recipes {
    kvstore_testutils::recipe_tests!(optional: super::common::opener("KVSTORE_ETCD_URL"));
}
