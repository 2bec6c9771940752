//! In-process watches: re-read on every relevant committed change, emit when the state differs.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use kvstore_core::Result;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::client::{Change, Shared};

/// Builds a watch stream over `read`.
///
/// The stream subscribes to the change feed *before* its first read, so no commit can fall
/// between the snapshot and the first wait. After that, every change that `relevant` accepts
/// triggers a fresh read, and the result is emitted only if it differs from the last one
/// emitted: a consumer slower than the writers sees states coalesced but always the latest. A
/// lagging subscription (more than the feed's capacity behind) re-reads too, so nothing is
/// lost. The stream ends when the handle is closed or dropped (`cancel`), and after yielding an
/// `Err` from a failed read.
pub(crate) fn watch_stream<T, R, F>(
    shared: &Arc<Shared>,
    cancel: CancellationToken,
    relevant: R,
    read: F,
) -> BoxStream<'static, Result<T>>
where
    T: PartialEq + Clone + Send + 'static,
    R: Fn(&Change) -> bool + Send + 'static,
    F: Fn(&Shared) -> Result<T> + Send + Sync + 'static,
{
    struct State<T, R, F> {
        shared: Arc<Shared>,
        changes: tokio::sync::broadcast::Receiver<Change>,
        cancel: CancellationToken,
        relevant: R,
        read: Arc<F>,
        last: Option<T>,
        ended: bool,
    }

    let state = State {
        changes: shared.subscribe(),
        shared: shared.clone(),
        cancel,
        relevant,
        read: Arc::new(read),
        last: None,
        ended: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.ended {
                return None;
            }
            if st.last.is_some() {
                tokio::select! {
                    biased;
                    () = st.cancel.cancelled() => return None,
                    change = st.changes.recv() => match change {
                        Ok(change) if !(st.relevant)(&change) => continue,
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return None,
                    },
                }
            } else if st.cancel.is_cancelled() {
                return None;
            }
            let read = st.read.clone();
            match st.shared.blocking(move |s| read(s)).await {
                Ok(state) if st.last.as_ref() == Some(&state) => continue,
                Ok(state) => {
                    st.last = Some(state.clone());
                    return Some((Ok(state), st));
                }
                Err(err) => {
                    st.ended = true;
                    return Some((Err(err), st));
                }
            }
        }
    })
    .boxed()
}
