//! The conformance suite's store opener, shared by the test files that run the suite against
//! one server or a cluster.

use std::time::Duration;

use kvstore_consul::Consul;
use kvstore_testutils::{Opener, backend_url};

/// An opener for the server at `url`.
pub(crate) fn opener_for_url(url: &str) -> Opener {
    // Consul invalidates a session between TTL and 2×TTL after its last renewal; 2 s
    // covers that and a loaded machine.
    Opener::backend::<Consul>(url)
        .with_ttl(Duration::from_secs(1))
        .with_ttl_slack(Duration::from_secs(2))
}

/// An opener for the server named by the environment variable `var` (see [`backend_url`]).
#[allow(dead_code)] // Not every test file that shares this module uses it.
pub(crate) fn opener(var: &str) -> Option<Opener> {
    Some(opener_for_url(&backend_url(var)?))
}
