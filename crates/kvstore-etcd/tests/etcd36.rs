//! The conformance suite against etcd 3.6, the current upstream release (`KVSTORE_ETCD36_URL`;
//! ci/servers.sh builds the version pinned in `ci/etcd/go.mod` and starts it as `etcd36`), beside
//! Debian's 3.4 in `conformance.rs`.

mod common;

kvstore_testutils::conformance_tests!(optional: common::opener("KVSTORE_ETCD36_URL"));
