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
mod kv;
mod lock;
mod scale;
mod tree;
mod ttl;
mod txn;
mod watch;

pub use cas::*;
pub use election::*;
pub(crate) use election::{follow_to, next_state};
pub use kv::*;
pub use lock::*;
pub use scale::*;
pub use tree::*;
pub use ttl::*;
pub use txn::*;
pub use watch::{watch_drop_stops, watch_key, watch_sees_other_clients, watch_tree};
