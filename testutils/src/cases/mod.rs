//! The conformance cases, one module per area. Each panics with the rule it found broken.

macro_rules! assert_err {
    ($result:expr, $pattern:pat, $what:expr) => {
        match $result {
            Err($pattern) => {}
            other => panic!(
                "{}: expected {}, got {:?}",
                $what,
                stringify!($pattern),
                other.map(|_| ())
            ),
        }
    };
}

mod cas;
mod election;
mod events;
mod kv;
mod lock;
mod recipes;
mod scale;
mod tree;
mod ttl;
mod txn;
mod watch;

pub use cas::*;
pub use election::*;
pub(crate) use election::{follow_to, next_state};
pub use events::*;
pub(crate) use events::{Folded, can_watch_events, catch_up_within, fold_next, write_burst};
pub use kv::*;
pub use lock::*;
pub use recipes::*;
pub use scale::*;
pub use tree::*;
pub use ttl::*;
pub use txn::*;
pub use watch::{watch_drop_stops, watch_key, watch_sees_other_clients, watch_tree};

/// Where a capability is off, the call it covers is refused — `CallNotSupported`, or
/// `InvalidConfig` naming the server setting that turns it off (Redis keyspace notifications)
/// — never accepted and never left waiting. Cases that skip for a missing capability check
/// this first, so a skip is an asserted refusal.
pub(crate) mod refused {
    use kvstore_core::{Error, Store};

    use crate::EVENT_TIMEOUT;

    /// `call` must fail at once with the refusal.
    async fn check<T>(what: &str, call: impl Future<Output = kvstore_core::Result<T>>) {
        match tokio::time::timeout(EVENT_TIMEOUT, call).await {
            Ok(Err(Error::CallNotSupported { .. } | Error::InvalidConfig { .. })) => {}
            Ok(Err(other)) => panic!("{what} without the capability: {other:?}"),
            Ok(Ok(_)) => panic!("{what} without the capability must be refused, it was accepted"),
            Err(_) => panic!("{what} without the capability must be refused at once, it waited"),
        }
    }

    /// `new_lock` (or, where it prepares nothing, the first `lock()`) is refused.
    pub(crate) async fn lock(store: &dyn Store, key: &str) {
        let attempt = async {
            let mut locker = store.new_lock(key, None).await?;
            locker.lock().await.map(|_| ())
        };
        check("new_lock", attempt).await;
    }

    /// `watch_tree` is refused.
    pub(crate) async fn watch_tree(store: &dyn Store, dir: &str) {
        check("watch_tree", store.watch_tree(dir, None)).await;
    }

    /// `watch` is refused.
    pub(crate) async fn watch(store: &dyn Store, key: &str) {
        check("watch", store.watch(key, None)).await;
    }
}
