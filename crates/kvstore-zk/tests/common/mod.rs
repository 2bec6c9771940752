//! The conformance suite's store opener, shared by the test files that run the suite against
//! one server or a cluster.

use std::time::Duration;

use kvstore_testutils::{Opener, backend_url};
use kvstore_zk::Zk;

/// An opener for the server at `url`.
pub(crate) fn opener_for_url(url: &str) -> Opener {
    // A 2 s session, so a lost session expires within the suite's waits.
    let sep = if url.contains('?') { '&' } else { '?' };
    // The server reaps expired TTL nodes every 100 ms (znode.container.checkIntervalMs);
    // 2 s covers that and a loaded machine.
    Opener::backend::<Zk>(&format!("{url}{sep}session_timeout=2s"))
        .with_ttl(Duration::from_secs(1))
        .with_ttl_slack(Duration::from_secs(2))
}

/// An opener for the server named by the environment variable `var` (see [`backend_url`]).
#[allow(dead_code)] // Not every test file that shares this module uses it.
pub(crate) fn opener(var: &str) -> Option<Opener> {
    Some(opener_for_url(&backend_url(var)?))
}
