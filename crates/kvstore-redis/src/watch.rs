//! Watches from keyspace notifications: each notification triggers a re-read, and the state
//! is emitted only when it differs from the last one emitted.
//!
//! # Behavior on reconnects
//!
//! Each watch owns one pub/sub connection. When it drops (server restart, network), the watch
//! reconnects with exponential backoff for up to `watch_reconnect_timeout`, re-subscribes,
//! re-reads, and emits the current state if it changed while it was away — so no final state is
//! ever missed. If reconnecting fails for that long, the stream yields the error and ends.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use kvstore_core::{Error, Result};
use redis::aio::{PubSubSink, PubSubStream};

use crate::client::Inner;
use crate::error::from_redis;

/// What a watch listens to.
#[derive(Debug, Clone)]
pub(crate) enum Subscription {
    /// One keyspace channel (one key).
    Channel(String),
    /// A keyspace channel pattern (a directory).
    Pattern(String),
}

/// An open subscription: the sink keeps the connection's command side alive.
pub(crate) struct Subscribed {
    _sink: PubSubSink,
    pub(crate) messages: PubSubStream,
}

/// Opens a pub/sub connection and subscribes, within the connect timeout.
pub(crate) async fn subscribe(inner: &Inner, sub: &Subscription) -> Result<Subscribed> {
    let open = async {
        let pubsub = inner.client.get_async_pubsub().await.map_err(from_redis)?;
        let (mut sink, messages) = pubsub.split();
        match sub {
            Subscription::Channel(c) => sink.subscribe(c).await,
            Subscription::Pattern(p) => sink.psubscribe(p).await,
        }
        .map_err(from_redis)?;
        Ok(Subscribed {
            _sink: sink,
            messages,
        })
    };
    tokio::time::timeout(inner.config.connect_timeout, open)
        .await
        .map_err(|_| Error::not_reachable(crate::BACKEND, "subscribing timed out"))?
}

/// Reconnects with backoff until it succeeds, the store closes (`None`), or the reconnect
/// timeout passes (the last error).
async fn resubscribe(inner: &Inner, sub: &Subscription) -> Option<Result<Subscribed>> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_total_delay(Some(inner.config.watch_reconnect_timeout))
        .without_max_times();
    let attempt = (|| subscribe(inner, sub))
        .retry(backoff)
        .when(Error::is_transient);
    tokio::select! {
        () = inner.cancel.cancelled() => None,
        result = attempt => Some(result),
    }
}

/// Builds a watch stream: subscribe first, then read, so no change between the snapshot and
/// the first wait is lost.
pub(crate) async fn watch_stream<T, F, Fut>(
    inner: Arc<Inner>,
    sub: Subscription,
    read: F,
) -> Result<BoxStream<'static, Result<T>>>
where
    T: PartialEq + Clone + Send + 'static,
    F: Fn(Arc<Inner>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send,
{
    struct State<T, F> {
        inner: Arc<Inner>,
        sub: Subscription,
        subscribed: Option<Subscribed>,
        read: F,
        last: Option<T>,
        must_read: bool,
        ended: bool,
    }

    let subscribed = subscribe(&inner, &sub).await?;
    let state = State {
        inner,
        sub,
        subscribed: Some(subscribed),
        read,
        last: None,
        must_read: true,
        ended: false,
    };
    Ok(futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.ended || st.inner.cancel.is_cancelled() {
                return None;
            }
            let Some(subscribed) = st.subscribed.as_mut() else {
                match resubscribe(&st.inner, &st.sub).await? {
                    Ok(s) => {
                        tracing::debug!(
                            backend = crate::BACKEND,
                            "watch re-subscribed; re-reading"
                        );
                        st.subscribed = Some(s);
                        st.must_read = true;
                    }
                    Err(err) => {
                        st.ended = true;
                        return Some((Err(err), st));
                    }
                }
                continue;
            };
            if !st.must_read {
                tokio::select! {
                    biased;
                    () = st.inner.cancel.cancelled() => return None,
                    message = subscribed.messages.next() => match message {
                        Some(_) => {
                            // Coalesce a burst (one write emits several events) into one read.
                            while let Some(Some(_)) = subscribed.messages.next().now_or_never() {}
                        }
                        None => {
                            st.subscribed = None;
                            continue;
                        }
                    },
                }
            }
            st.must_read = false;
            match (st.read)(st.inner.clone()).await {
                Ok(state) if st.last.as_ref() == Some(&state) => {}
                Ok(state) => {
                    st.last = Some(state.clone());
                    return Some((Ok(state), st));
                }
                Err(err) if err.is_transient() => {
                    // The data connection is down too: reconnect the subscription, then re-read.
                    st.subscribed = None;
                }
                Err(err) => {
                    st.ended = true;
                    return Some((Err(err), st));
                }
            }
        }
    })
    .boxed())
}
