//! Fault tests against a real Consul agent: an agent restart under watches, a lock holder
//! whose process is killed, an unreachable agent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kvstore_consul::{ConsulConfig, ConsulStore};
use kvstore_core::Store;
use kvstore_testutils::{
    Opener, backend_url, controlled_backend_url, killed_holder_frees_lock, next_within, ok,
    retry_transient, scratch_dir, server_control,
};

/// The restart test stops the agent that the others use: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn connect(url: &str) -> kvstore_core::Result<ConsulStore> {
    ConsulStore::open_url(url).await
}

/// Polls `stream` continuously from a task of its own, handing items over a channel.
fn forward<T: Send + 'static>(
    mut stream: futures::stream::BoxStream<'static, T>,
) -> tokio_stream_like::Receiver<T> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    tokio_stream_like::Receiver(rx)
}

/// A `Stream` over an unbounded receiver, for `next_within`.
mod tokio_stream_like {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub(crate) struct Receiver<T>(pub(crate) tokio::sync::mpsc::UnboundedReceiver<T>);

    impl<T> futures::Stream for Receiver<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_survive_an_agent_restart() {
    let Some(url) = controlled_backend_url("KVSTORE_CONSUL_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let store = ok(connect(&url).await, "connect");
    let dir = scratch_dir("consul_restart");
    let key = format!("{dir}/k");
    ok(store.put(&key, b"before", None).await, "put");
    // Consumed all the time, as an application would: the query in flight breaks with the
    // restart and the stream re-reads.
    let mut watch = forward(ok(store.watch(&key, None).await, "watch"));
    let mut tree = forward(ok(store.watch_tree(&dir, None).await, "watch_tree"));
    assert!(ok(next_within(&mut watch, "initial").await, "initial").is_some());
    assert_eq!(
        ok(next_within(&mut tree, "initial").await, "initial").len(),
        1
    );

    server_control("consul", "restart").await;

    // A dev agent keeps no data across a restart: the watches re-sync to "absent" or go
    // straight to the write made after the restart, which they must deliver.
    retry_transient(Duration::from_secs(60), "put after restart", || {
        store.put(&key, b"after", None)
    })
    .await;
    let item = loop {
        let item = ok(
            next_within(&mut watch, "watch after restart").await,
            "watch item",
        );
        if item.is_some() {
            break item;
        }
    };
    assert_eq!(item.map(|p| p.value.to_vec()), Some(b"after".to_vec()));
    let listing = loop {
        let listing = ok(
            next_within(&mut tree, "tree after restart").await,
            "tree item",
        );
        if !listing.is_empty() {
            break listing;
        }
    };
    assert_eq!(listing[0].value.as_ref(), b"after");
    ok(store.delete_tree(&dir).await, "cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_frees_its_lock_within_twice_its_ttl() {
    let Some(url) = backend_url("KVSTORE_CONSUL_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let opener = Opener::new(move || {
        let url = url.clone();
        async move { Ok(Arc::new(connect(&url).await?) as Arc<dyn Store>) }
    });
    // Consul invalidates an unrenewed session between TTL and 2×TTL.
    let ttl = Duration::from_secs(1);
    killed_holder_frees_lock(
        &opener,
        "a_killed_holder_frees_its_lock_within_twice_its_ttl",
        ttl,
        ttl * 2 + Duration::from_secs(2),
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_agent_is_not_reachable_within_the_timeout() {
    let config = ConsulConfig::new("127.0.0.1:1")
        .unwrap()
        .with_connect_timeout(Duration::from_millis(500));
    let started = Instant::now();
    match ConsulStore::open(config).await {
        Err(err) => assert!(
            matches!(err, kvstore_core::Error::NotReachable { .. }),
            "expected NotReachable, got {err:?}"
        ),
        Ok(_) => panic!("connect to a closed port must fail"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}
