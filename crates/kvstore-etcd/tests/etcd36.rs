//! The conformance suite against etcd 3.6, the current upstream release (`KVSTORE_ETCD36_URL`;
//! ci/servers.sh builds the version pinned in `ci/etcd/go.mod` and starts it as `etcd36`), beside
//! Debian's 3.4 in `conformance.rs`.

mod common;

/// The suite, in a module so that `ci/test.sh` runs the network backends' suites at once
/// (`-- backend_suite::`), each against its own server.
mod backend_suite {
    kvstore_testutils::conformance_tests!(optional: super::common::opener("KVSTORE_ETCD36_URL"));
}
