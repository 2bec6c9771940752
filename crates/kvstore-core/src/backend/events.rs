//! The event driver: one loop for every backend's `watch_events` — a `Snapshot` or the changes
//! after `since` first, then `Changes` read from the backend's history after each wake-up,
//! resumed from the last revision it yielded after a lost connection.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::watch::reconnect_with_backoff;
use crate::{Error, Event, EventStream, KvPair, Result, WatchEvent};

/// What a backend's history says after a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// The events under the directory after it, oldest first, and the revision they bring
    /// the view to (the store's current revision, or the last one read).
    Events(Vec<Event>, u64),
    /// The history no longer holds every change after it (compacted, trimmed, or a revision
    /// the store has not reached): the driver sends a `Snapshot`.
    Unknown,
}

/// What a backend supplies for one `watch_events` stream.
///
/// The backend opens the wake-up source *before* [`event_stream`] makes its first read, so
/// no change can fall between the two.
#[async_trait]
pub trait EventSource: Send + 'static {
    /// Every pair under the directory and the revision they were read at, in one read.
    ///
    /// # Errors
    ///
    /// Transient errors make the driver reconnect and try again; `Closed` ends the stream;
    /// any other error is yielded and ends it.
    async fn snapshot(&mut self) -> Result<(Vec<KvPair>, u64)>;

    /// The changes under the directory after revision `after`, in one read.
    ///
    /// # Errors
    ///
    /// As [`snapshot`](Self::snapshot).
    async fn since(&mut self, after: u64) -> Result<Since>;

    /// Waits until there may be changes after the last read (spurious wake-ups are fine).
    ///
    /// # Errors
    ///
    /// A transient error means the wake-up source was lost: the driver calls
    /// [`reconnect`](Self::reconnect) with backoff, then reads after the last revision it
    /// yielded. `Closed` ends the stream; any other error is yielded and ends it.
    async fn changed(&mut self) -> Result<()>;

    /// Opens the wake-up source again after a transient error. Nothing by default.
    ///
    /// # Errors
    ///
    /// As [`changed`](Self::changed).
    async fn reconnect(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The `watch_events` stream over `source`: a `Snapshot` first (or, given `since`, the changes
/// after it, or a `Snapshot` when the source can no longer tell them), then a `Changes` item
/// for every read after a wake-up that found changes under the directory. A read that finds
/// the history moved past the last revision yielded sends a `Snapshot`. Revisions strictly
/// increase: a `Snapshot` at the last revision yielded is not sent again, and one below it
/// (the store lost or restored its data) ends the stream with an error. Transient errors reconnect with backoff (50 ms doubling to 2 s) for up to
/// `reconnect_timeout`, then end the stream with `NotReachable`; `cancel` ends it.
pub fn event_stream<S: EventSource>(
    source: S,
    since: Option<u64>,
    cancel: CancellationToken,
    reconnect_timeout: Duration,
) -> EventStream {
    let driver = Driver {
        source,
        cursor: since,
        yielded: None,
        fresh: true,
        cancel,
        reconnect_timeout,
        reconnect: false,
        ended: false,
    };
    futures::stream::unfold(driver, |mut d| async move {
        let item = d.next().await?;
        Some((item, d))
    })
    .boxed()
}

struct Driver<S> {
    source: S,
    /// The revision the consumer's view is at; `None`: it needs a `Snapshot`.
    cursor: Option<u64>,
    /// The revision of the last item yielded.
    yielded: Option<u64>,
    /// Nothing was waited for since the last read: read before waiting.
    fresh: bool,
    cancel: CancellationToken,
    reconnect_timeout: Duration,
    reconnect: bool,
    ended: bool,
}

/// What one step of the driver gives.
enum Step {
    Yield(WatchEvent),
    /// Nothing new: wait for a wake-up.
    Wait,
}

impl<S: EventSource> Driver<S> {
    async fn next(&mut self) -> Option<Result<WatchEvent>> {
        loop {
            if self.ended || self.cancel.is_cancelled() {
                return None;
            }
            if self.reconnect {
                if let Err(err) = self.reconnect().await? {
                    return self.fail(err);
                }
                self.reconnect = false;
                self.fresh = true;
            }
            if !self.fresh {
                let woke = tokio::select! {
                    biased;
                    () = self.cancel.cancelled() => return None,
                    woke = self.source.changed() => woke,
                };
                if let Err(err) = woke {
                    match self.handle(err) {
                        Some(item) => return Some(item),
                        None if self.ended => return None,
                        None => continue,
                    }
                }
            }
            let cancel = self.cancel.clone();
            let step = tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                step = self.step() => step,
            };
            match step {
                Ok(Step::Yield(item)) => {
                    self.fresh = true;
                    return Some(Ok(item));
                }
                Ok(Step::Wait) => self.fresh = false,
                Err(err) => {
                    if let Some(item) = self.handle(err) {
                        return Some(item);
                    }
                }
            }
        }
    }

    /// One read: a `Snapshot` when the view needs one, else the changes after the cursor.
    async fn step(&mut self) -> Result<Step> {
        loop {
            let Some(after) = self.cursor else {
                let (pairs, revision) = self.source.snapshot().await?;
                match self.yielded {
                    // The view is already there (a source that could not tell its changes).
                    Some(last) if revision == last => {
                        self.cursor = Some(revision);
                        return Ok(Step::Wait);
                    }
                    Some(last) if revision < last => {
                        return Err(Error::backend(
                            "watch_events",
                            format!(
                                "the store's revision went back from {last} to {revision} (data \
                                 lost or restored): watch again for a Snapshot"
                            ),
                        ));
                    }
                    _ => {}
                }
                self.cursor = Some(revision);
                self.yielded = Some(revision);
                return Ok(Step::Yield(WatchEvent::Snapshot { pairs, revision }));
            };
            return match self.source.since(after).await? {
                Since::Unknown => {
                    self.cursor = None;
                    continue;
                }
                Since::Events(events, revision) if !events.is_empty() => {
                    if revision <= after {
                        return Err(Error::backend(
                            "watch_events",
                            format!("events after revision {after} brought it to {revision}"),
                        ));
                    }
                    self.cursor = Some(revision);
                    self.yielded = Some(revision);
                    Ok(Step::Yield(WatchEvent::Changes { events, revision }))
                }
                Since::Events(_, revision) => {
                    // Revisions elsewhere in the store: nothing under the directory.
                    self.cursor = Some(revision.max(after));
                    Ok(Step::Wait)
                }
            };
        }
    }

    /// Turns a source error into the stream's next item (`Some`), an end (`None` with
    /// `ended`), or a reconnect (`None`).
    fn handle(&mut self, err: Error) -> Option<Result<WatchEvent>> {
        match err {
            Error::Closed { .. } => {
                self.ended = true;
                None
            }
            err if err.is_transient() => {
                tracing::debug!(error = %err, "event watch lost its source; reconnecting");
                self.reconnect = true;
                None
            }
            err => self.fail(err),
        }
    }

    fn fail(&mut self, err: Error) -> Option<Result<WatchEvent>> {
        self.ended = true;
        Some(Err(err))
    }

    /// Reconnects with backoff for up to `reconnect_timeout`.
    async fn reconnect(&mut self) -> Option<Result<()>> {
        let (cancel, timeout) = (self.cancel.clone(), self.reconnect_timeout);
        let what = "watch_events";
        reconnect_with_backoff(&mut self.source, |s| s.reconnect(), &cancel, timeout, what).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A source that answers from a script: each read takes the next answer.
    struct Scripted {
        answers: VecDeque<Answer>,
    }

    enum Answer {
        Snapshot(u64),
        Since(Since),
    }

    #[async_trait]
    impl EventSource for Scripted {
        async fn snapshot(&mut self) -> Result<(Vec<KvPair>, u64)> {
            match self.answers.pop_front() {
                Some(Answer::Snapshot(revision)) => Ok((Vec::new(), revision)),
                _ => panic!("a snapshot the script did not expect"),
            }
        }

        async fn since(&mut self, _after: u64) -> Result<Since> {
            match self.answers.pop_front() {
                Some(Answer::Since(since)) => Ok(since),
                _ => panic!("a read the script did not expect"),
            }
        }

        async fn changed(&mut self) -> Result<()> {
            if self.answers.is_empty() {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
    }

    fn stream(answers: Vec<Answer>) -> EventStream {
        let source = Scripted {
            answers: answers.into(),
        };
        event_stream(source, None, CancellationToken::new(), Duration::ZERO)
    }

    async fn next(stream: &mut EventStream) -> Option<Result<WatchEvent>> {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap_or(None)
    }

    #[tokio::test]
    async fn a_snapshot_at_the_revision_already_yielded_is_not_sent_again() {
        let mut stream = stream(vec![
            Answer::Snapshot(5),
            Answer::Since(Since::Unknown),
            Answer::Snapshot(5),
            Answer::Since(Since::Events(vec![Event::put("k", "v", 6)], 6)),
        ]);
        assert!(matches!(
            next(&mut stream).await,
            Some(Ok(WatchEvent::Snapshot { revision: 5, .. }))
        ));
        match next(&mut stream).await {
            Some(Ok(WatchEvent::Changes {
                events,
                revision: 6,
            })) => assert_eq!(events, vec![Event::put("k", "v", 6)]),
            other => panic!("expected the change at 6, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_snapshot_below_the_revision_yielded_ends_the_stream() {
        let mut stream = stream(vec![
            Answer::Snapshot(5),
            Answer::Since(Since::Unknown),
            Answer::Snapshot(3),
        ]);
        assert!(matches!(
            next(&mut stream).await,
            Some(Ok(WatchEvent::Snapshot { revision: 5, .. }))
        ));
        match next(&mut stream).await {
            Some(Err(err)) => assert!(!err.is_transient(), "{err:?}"),
            other => panic!("expected an error, got {other:?}"),
        }
        assert!(
            next(&mut stream).await.is_none(),
            "an error ends the stream"
        );
    }
}
