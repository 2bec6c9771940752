//! The conformance suite's store opener, shared by the test files that run the suite against
//! one server or a cluster.

use std::time::Duration;

use kvstore_redis::Redis;
use kvstore_testutils::{Opener, backend_url};

/// An opener for the server at `url`.
pub(crate) fn opener_for_url(url: &str) -> Opener {
    // Redis's active expiry cycle runs at 10 Hz; 1 s of slack covers a loaded machine.
    Opener::backend::<Redis>(url)
        .with_ttl(Duration::from_secs(1))
        .with_ttl_slack(Duration::from_secs(1))
}

/// An opener for the server named by the environment variable `var` (see [`backend_url`]).
#[allow(dead_code)] // Not every test file that shares this module uses it.
pub(crate) fn opener(var: &str) -> Option<Opener> {
    Some(opener_for_url(&backend_url(var)?))
}
