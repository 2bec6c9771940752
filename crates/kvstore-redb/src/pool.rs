//! The database's own threads for its blocking calls: every transaction but point reads (which
//! run in place) and the group commit's writes (on the committer thread).
//!
//! A fixed set of [`THREADS`] threads, started with the database and ended with it. A burst of
//! calls (a hundred `keep_alive` renewals falling due together, a thousand watches re-reading)
//! queues for them instead of growing tokio's blocking pool by a thread per concurrent call:
//! every extra thread there keeps its stack and its malloc arena, and the pool's idle threads
//! come and go, so the process's memory followed the largest burst so far (the 10-minute soak
//! grew to 117 threads). redb's write transactions serialize on one writer anyway, and its
//! reads take microseconds, so more threads would only wait.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, mpsc};

use kvstore_core::{Error, Result};
use tokio::sync::oneshot;

/// Threads per database.
pub(crate) const THREADS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

/// The queue of a database's blocking threads; they exit once it is dropped and drained.
#[derive(Debug)]
pub(crate) struct BlockingPool {
    jobs: mpsc::Sender<Job>,
    backend: &'static str,
}

impl BlockingPool {
    /// Starts the threads.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the OS refuses a thread.
    pub(crate) fn start(backend: &'static str) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..THREADS {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("kvstore-redb-io".into())
                .spawn(move || serve(&queue))
                .map_err(|e| Error::backend(backend, e))?;
        }
        Ok(BlockingPool { jobs, backend })
    }

    /// Runs `f` on one of the threads, after the calls queued before it.
    ///
    /// # Errors
    ///
    /// `f`'s error; [`Error::Backend`] when `f` panicked.
    ///
    /// # Cancel safety
    ///
    /// Once queued, `f` runs to the end even if the returned future is dropped.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let (answer, result) = oneshot::channel();
        // The receivers live as long as `self` (the threads hold the queue): sending fails only
        // when every thread has gone, which a panic cannot cause (`serve` catches it).
        self.jobs
            .send(Box::new(move || drop(answer.send(f()))))
            .map_err(|_| Error::Closed {
                backend: self.backend,
            })?;
        result
            .await
            .map_err(|_| Error::backend(self.backend, "a blocking call panicked"))?
    }
}

/// One thread: takes the next job until the queue is dropped and empty.
fn serve(queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(job) = job else { return };
        // A panicking call fails its own caller (its answer is dropped), not the thread.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A call that panics fails its own caller with `Backend`; the threads go on serving, even
    /// after as many panics as there are threads.
    #[tokio::test]
    async fn a_panicking_call_fails_its_caller_and_the_threads_go_on() {
        let pool = BlockingPool::start("redb").unwrap();
        for _ in 0..THREADS {
            let err = pool
                .run(|| -> Result<()> { panic!("a call that panics") })
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Backend { .. }), "{err:?}");
        }
        let answers = tokio::time::timeout(Duration::from_secs(10), async {
            let mut answers = Vec::new();
            for i in 0..THREADS * 2 {
                answers.push(pool.run(move || Ok(i)).await.unwrap());
            }
            answers
        })
        .await
        .expect("the threads still serve calls");
        assert_eq!(answers, (0..THREADS * 2).collect::<Vec<_>>());
    }
}
