//! The whole conformance suite against the example third-party backend
//! (`examples/map_backend.rs`): a store that implements only `Backend`.

use std::sync::Arc;
use std::time::Duration;

use kvstore::{BackendStore, Store};
use kvstore_testutils::Opener;

#[allow(dead_code)]
#[path = "../examples/map_backend.rs"]
mod map_backend;

use map_backend::MapBackend;

/// Independent stores over one map, as separate clients of one server.
fn opener() -> Opener {
    let base = Arc::new(BackendStore::new(MapBackend::default()));
    Opener::new(move || {
        let base = base.clone();
        async move { Ok(Arc::new(base.new_handle()) as Arc<dyn Store>) }
    })
    .with_ttl(Duration::from_secs(1))
    .with_ttl_slack(Duration::from_millis(500))
}

kvstore_testutils::conformance_tests!(opener());
