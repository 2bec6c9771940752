//! The watch driver: one loop for every backend's watches — the current state first, then a
//! new item only when the state changed, reconnection with backoff and a re-read after a lost
//! connection, and an `Err` item only when the watch has ended for good.

use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// What a backend supplies for one watch: a read of the state and a source of wake-ups.
///
/// The backend opens the wake-up source *before* it reads the first state it hands to
/// [`watch_stream`], so no change can fall between the two.
#[async_trait]
pub trait WatchSource: Send + 'static {
    /// What the watch yields: `Option<KvPair>` for a key, `Vec<KvPair>` for a directory.
    type Item: PartialEq + Clone + Send + 'static;

    /// The state now. A backend that keeps the state from its events returns it without I/O.
    ///
    /// # Errors
    ///
    /// Transient errors make the driver reconnect and read again; `Closed` ends the stream;
    /// any other error is yielded and ends it.
    async fn read(&mut self) -> Result<Self::Item>;

    /// Waits until the state may have changed (a notification, an event, a blocking query's
    /// answer). Spurious wake-ups are fine: the driver emits only real changes.
    ///
    /// # Errors
    ///
    /// A transient error means the wake-up source was lost: the driver calls
    /// [`reconnect`](Self::reconnect) with backoff, then reads. `Closed` ends the stream; any
    /// other error is yielded and ends it.
    async fn changed(&mut self) -> Result<()>;

    /// Opens the wake-up source again after it was lost (a new subscription, a re-registered
    /// watch, a stream resumed from the last revision seen). One attempt; the driver retries.
    ///
    /// # Errors
    ///
    /// As for [`changed`](Self::changed).
    async fn reconnect(&mut self) -> Result<()>;
}

/// How long the driver keeps reconnecting by default before the stream yields the error and
/// ends: 60 seconds.
pub const DEFAULT_WATCH_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The stream of a watch: `first` (the state the backend read after opening `source`), then
/// every state that differs from the last one yielded, until `cancel` fires (the store was
/// closed), the stream is dropped (which drops `source` and so its server resources), or the
/// watch ends for good with an `Err` item — a non-transient error, or reconnecting failing for
/// `reconnect_timeout`.
pub fn watch_stream<S: WatchSource>(
    source: S,
    first: S::Item,
    cancel: CancellationToken,
    reconnect_timeout: Duration,
) -> BoxStream<'static, Result<S::Item>> {
    let state = Driver {
        source,
        last: first.clone(),
        cancel,
        reconnect_timeout,
        reconnect: false,
        ended: false,
    };
    futures::stream::once(async move { Ok(first) })
        .chain(futures::stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        }))
        .boxed()
}

struct Driver<S: WatchSource> {
    source: S,
    last: S::Item,
    cancel: CancellationToken,
    reconnect_timeout: Duration,
    /// The wake-up source was lost: reconnect, then read.
    reconnect: bool,
    ended: bool,
}

/// What to do with an error from the source.
enum Failure {
    /// End quietly (the store was closed).
    End,
    /// Reconnect, then read.
    Reconnect,
    /// Yield this error and end.
    Fatal(Error),
}

fn classify(err: Error) -> Failure {
    match err {
        Error::Closed { .. } => Failure::End,
        err if err.is_transient() => Failure::Reconnect,
        err => Failure::Fatal(err),
    }
}

impl<S: WatchSource> Driver<S> {
    /// The next item, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Result<S::Item>> {
        loop {
            if self.ended || self.cancel.is_cancelled() {
                return None;
            }
            if self.reconnect {
                if let Err(err) = self.reconnect().await? {
                    self.ended = true;
                    return Some(Err(err));
                }
                self.reconnect = false;
            } else {
                let woke = tokio::select! {
                    biased;
                    () = self.cancel.cancelled() => return None,
                    woke = self.source.changed() => woke,
                };
                if let Err(err) = woke {
                    match classify(err) {
                        Failure::End => return None,
                        Failure::Reconnect => {
                            tracing::debug!("watch lost its wake-up source; reconnecting");
                            self.reconnect = true;
                            continue;
                        }
                        Failure::Fatal(err) => {
                            self.ended = true;
                            return Some(Err(err));
                        }
                    }
                }
            }
            let read = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return None,
                read = self.source.read() => read,
            };
            match read {
                Ok(state) if state == self.last => {}
                Ok(state) => {
                    self.last = state.clone();
                    return Some(Ok(state));
                }
                Err(err) => match classify(err) {
                    Failure::End => return None,
                    Failure::Reconnect => self.reconnect = true,
                    Failure::Fatal(err) => {
                        self.ended = true;
                        return Some(Err(err));
                    }
                },
            }
        }
    }

    /// Reconnects with backoff for up to `reconnect_timeout` ([`reconnect_with_backoff`]).
    async fn reconnect(&mut self) -> Option<Result<()>> {
        let (cancel, timeout) = (self.cancel.clone(), self.reconnect_timeout);
        reconnect_with_backoff(
            &mut self.source,
            |s| s.reconnect(),
            &cancel,
            timeout,
            "watch",
        )
        .await
    }
}

/// Calls `attempt` on `source` until it succeeds, with backoff (50 ms doubling to 2 s), for up
/// to `timeout`: `None` when `cancel` fires or an attempt says `Closed`, `Some(Err)` for an
/// error that is not transient or, past the timeout, `NotReachable` naming `what`.
pub(super) async fn reconnect_with_backoff<S, F>(
    source: &mut S,
    mut attempt: F,
    cancel: &CancellationToken,
    timeout: Duration,
    what: &'static str,
) -> Option<Result<()>>
where
    F: for<'a> FnMut(&'a mut S) -> BoxFuture<'a, Result<()>>,
{
    let started = Instant::now();
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .without_max_times()
        .build();
    loop {
        let err = tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            result = attempt(source) => match result {
                Ok(()) => return Some(Ok(())),
                Err(err) => err,
            },
        };
        match classify(err) {
            Failure::End => return None,
            Failure::Fatal(err) => return Some(Err(err)),
            Failure::Reconnect if started.elapsed() >= timeout => {
                return Some(Err(Error::not_reachable(
                    what,
                    format!("{what} could not reconnect within {timeout:?}"),
                )));
            }
            Failure::Reconnect => {}
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(2));
        tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A source whose wake-ups, reads and reconnects follow a script; tests the driver's
    /// rules alone (the backends' watch tests run it against real servers).
    struct Scripted {
        wakeups: VecDeque<Result<()>>,
        reads: VecDeque<Result<u32>>,
        reconnects: VecDeque<Result<()>>,
    }

    #[async_trait]
    impl WatchSource for Scripted {
        type Item = u32;
        async fn read(&mut self) -> Result<u32> {
            self.reads.pop_front().expect("a scripted read")
        }
        async fn changed(&mut self) -> Result<()> {
            match self.wakeups.pop_front() {
                Some(w) => w,
                None => futures::future::pending().await,
            }
        }
        async fn reconnect(&mut self) -> Result<()> {
            self.reconnects.pop_front().expect("a scripted reconnect")
        }
    }

    fn down() -> Error {
        Error::not_reachable("test", "down")
    }

    #[tokio::test(start_paused = true)]
    async fn emits_only_changes_and_resyncs_after_a_lost_source() {
        let source = Scripted {
            wakeups: VecDeque::from([Ok(()), Ok(()), Err(down()), Ok(())]),
            reads: VecDeque::from([Ok(1), Ok(2), Ok(3), Ok(4)]),
            reconnects: VecDeque::from([Err(down()), Ok(())]),
        };
        let cancel = CancellationToken::new();
        let mut stream = watch_stream(source, 1, cancel.clone(), Duration::from_secs(60));
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(stream.next().await.unwrap().unwrap());
        }
        // 1 first; the wake-up that reads 1 again is not emitted; after the lost source the
        // driver reconnects (one failure, then success) and re-reads 3.
        assert_eq!(got, [1, 2, 3, 4]);
        cancel.cancel();
        assert!(stream.next().await.is_none(), "cancel ends the stream");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_reconnect_timeout_with_an_error() {
        let source = Scripted {
            wakeups: VecDeque::from([Err(down())]),
            reads: VecDeque::new(),
            reconnects: (0..1000).map(|_| Err(down())).collect(),
        };
        let mut stream = watch_stream(source, 0, CancellationToken::new(), Duration::from_secs(5));
        assert_eq!(stream.next().await.unwrap().unwrap(), 0);
        let started = Instant::now();
        assert!(stream.next().await.unwrap().is_err());
        assert!(started.elapsed() >= Duration::from_secs(5));
        assert!(stream.next().await.is_none(), "an Err item ends the stream");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_read_error_is_yielded_once() {
        let source = Scripted {
            wakeups: VecDeque::from([Ok(())]),
            reads: VecDeque::from([Err(Error::backend("test", "corrupt"))]),
            reconnects: VecDeque::new(),
        };
        let mut stream = watch_stream(source, 0, CancellationToken::new(), Duration::from_secs(5));
        assert_eq!(stream.next().await.unwrap().unwrap(), 0);
        assert!(matches!(
            stream.next().await,
            Some(Err(Error::Backend { .. }))
        ));
        assert!(stream.next().await.is_none());
    }
}
