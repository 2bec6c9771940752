//! The conformance suite against the redb file store and the in-memory store.

use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_redb::{RedbConfig, RedbStore};
use kvstore_testutils::Opener;

/// Independent handles on one database (the redb equivalent of separate clients).
fn opener(base: RedbStore, keep: Option<tempfile::TempDir>) -> Opener {
    let base = Arc::new(base);
    Opener::new(move || {
        let (base, _keep) = (base.clone(), &keep);
        async move { Ok(Arc::new(base.new_handle()) as Arc<dyn Store>) }
    })
    // Expiry runs within milliseconds of the deadline; 500 ms of slack absorbs a loaded CI box.
    .with_ttl(Duration::from_secs(1))
    .with_ttl_slack(Duration::from_millis(500))
}

async fn file_opener() -> Opener {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(RedbConfig::file(dir.path().join("conformance.redb")))
        .await
        .expect("open redb file");
    opener(store, Some(dir))
}

async fn memory_opener() -> Opener {
    opener(
        RedbStore::open(kvstore_redb::RedbConfig::memory())
            .await
            .expect("open memory store"),
        None,
    )
}

/// The suites, in a module so that `ci/test.sh` runs them with the network backends' at once
/// (`-- backend_suite::`).
mod backend_suite {
    mod file {
        kvstore_testutils::conformance_tests!(super::super::file_opener().await);
    }

    mod memory {
        kvstore_testutils::conformance_tests!(super::super::memory_opener().await);
    }
}

/// The coordination recipes (the 100,000-key directory among them), in the main run.
mod recipes {
    mod file {
        kvstore_testutils::recipe_tests!(super::super::file_opener().await);
    }

    mod memory {
        kvstore_testutils::recipe_tests!(super::super::memory_opener().await);
    }
}

#[tokio::test]
async fn run_all_on_memory() {
    kvstore_testutils::run_all(&memory_opener().await).await;
}
