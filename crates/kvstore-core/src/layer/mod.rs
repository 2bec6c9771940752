//! Layers: wrappers that take any [`Store`] and return a [`Store`] with one concern added —
//! a key prefix, a per-call timeout, a concurrency limit, retries of transient errors,
//! tracing spans, metrics.
//!
//! Wrap a store with [`StoreExt::layer`]; layers compose, the last one added is the outermost
//! (it sees each call first):
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
//! use std::num::NonZeroUsize;
//! use std::time::Duration;
//! use kvstore_core::layer::{
//!     ConcurrencyLimitLayer, PrefixLayer, RetryLayer, StoreExt, TimeoutLayer, TracingLayer,
//! };
//!
//! let store = store
//!     .layer(PrefixLayer::new("my-service")?)
//!     .layer(TimeoutLayer::new(Duration::from_secs(2)))
//!     .layer(RetryLayer::new())
//!     .layer(ConcurrencyLimitLayer::new(NonZeroUsize::new(32).unwrap()))
//!     .layer(TracingLayer::new());
//! store.put("config/a", b"1", None).await?; // stored as "my-service/config/a"
//! # Ok(()) }
//! ```
//!
//! Order matters where two layers interact: a [`TimeoutLayer`] inside a [`RetryLayer`] bounds
//! each attempt, outside it bounds all attempts together; a [`ConcurrencyLimitLayer`] outside a
//! [`RetryLayer`] holds its permit across the retries' backoff.
//!
//! Every layer here passes the conformance suite wrapped around the in-memory store and a
//! network server. To write a layer of your own, implement [`Layer`] with a type that itself
//! implements [`Store`] by forwarding to the inner store (see [`Store`]'s docs for what each
//! call must do).

mod intercept;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod prefix;
mod simple;

use std::sync::Arc;

use crate::Store;

pub use intercept::Operation;
#[cfg(feature = "metrics")]
pub use metrics::MetricsLayer;
pub use prefix::PrefixLayer;
pub use simple::{ConcurrencyLimitLayer, RetryLayer, TimeoutLayer, TracingLayer};

/// Something that wraps a store: takes the inner [`Store`] and returns the wrapped one.
///
/// Implemented by every layer in this module; implement it for your own wrappers so that they
/// compose with [`StoreExt::layer`].
pub trait Layer {
    /// Wraps `inner`.
    fn layer(&self, inner: Arc<dyn Store>) -> Arc<dyn Store>;
}

/// Adds [`layer`](StoreExt::layer) to stores: `store.layer(TimeoutLayer::new(…))`.
pub trait StoreExt {
    /// Wraps this store in `layer` and returns the wrapped store, which is a [`Store`] too.
    fn layer(self, layer: impl Layer) -> Arc<dyn Store>;
}

impl StoreExt for Arc<dyn Store> {
    fn layer(self, layer: impl Layer) -> Arc<dyn Store> {
        layer.layer(self)
    }
}

impl<S: Store + 'static> StoreExt for Arc<S> {
    fn layer(self, layer: impl Layer) -> Arc<dyn Store> {
        layer.layer(self)
    }
}
