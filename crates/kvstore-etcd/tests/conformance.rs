//! The conformance suite against a real etcd server (`KVSTORE_ETCD_URL`, set by ci/test.sh).

mod common;

kvstore_testutils::conformance_tests!(optional: common::opener("KVSTORE_ETCD_URL"));
