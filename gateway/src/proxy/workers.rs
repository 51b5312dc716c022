//! Session workers: one thread per core, each running its own single-threaded runtime. A
//! session is handed to one worker when it is accepted and stays there to its end, so its
//! client side, its upstream side and its response pumps never cross a thread. On a
//! work-stealing runtime each I/O wake-up may move a task to another thread or wake an idle
//! one to look for work (a futex call and a context switch); on a two-core node that was
//! most of the latency the gateway added (see `bench/`). Envoy pins connections to worker
//! threads for the same reason.
use std::{
    future::Future,
    io,
    num::NonZeroUsize,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
};

use tokio::runtime::Handle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub struct Workers {
    workers: Vec<Worker>,
    stop: CancellationToken,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
}

struct Worker {
    runtime: Handle,
    /// Sessions running on this worker, so new ones go where the fewest are.
    sessions: Arc<AtomicUsize>,
}

/// Counts a session on its worker for as long as the session runs.
struct SessionSlot(Arc<AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `count` workers, or one per CPU this process may use.
    pub fn start(count: Option<NonZeroUsize>) -> io::Result<Workers> {
        let count = count
            .or_else(|| thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get);
        let stop = CancellationToken::new();
        let mut workers = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.push(Worker {
                runtime: runtime.handle().clone(),
                sessions: Arc::new(AtomicUsize::new(0)),
            });
            let stop = stop.clone();
            threads.push(
                thread::Builder::new()
                    .name(format!("interlock-worker-{index}"))
                    .spawn(move || runtime.block_on(stop.cancelled()))?,
            );
        }
        Ok(Workers {
            workers,
            stop,
            threads: Mutex::new(threads),
        })
    }

    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// Runs a session on the worker with the fewest, tracked by `tracker`. `session` is
    /// called on that worker, so the sockets it registers belong to that worker's reactor.
    pub fn spawn<S, F>(&self, tracker: &TaskTracker, session: S)
    where
        S: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.sessions.load(Ordering::Relaxed))
            .expect("at least one worker is started");
        worker.sessions.fetch_add(1, Ordering::Relaxed);
        let slot = SessionSlot(worker.sessions.clone());
        worker.runtime.spawn(tracker.track_future(async move {
            let _slot = slot;
            session().await
        }));
    }

    /// Stops the workers once their sessions are over (the proxy drains them first); a
    /// session still running then is dropped with its runtime.
    pub fn stop(&self) {
        self.stop.cancel();
        for thread in std::mem::take(&mut *self.threads.lock().expect("workers lock")) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_go_to_the_least_loaded_worker_and_are_tracked_to_their_end() {
        let workers = Workers::start(NonZeroUsize::new(2)).unwrap();
        assert_eq!(workers.count(), 2);
        let tracker = TaskTracker::new();
        let release = CancellationToken::new();
        let (threads_tx, mut threads) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let (release, threads_tx) = (release.clone(), threads_tx.clone());
            workers.spawn(&tracker, move || async move {
                let name = thread::current().name().map(str::to_string);
                threads_tx.send(name).unwrap();
                release.cancelled().await;
            });
        }
        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(threads.recv().await.unwrap().unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "interlock-worker-0",
                "interlock-worker-0",
                "interlock-worker-1",
                "interlock-worker-1"
            ],
            "two sessions on each worker"
        );
        let load = |w: &Worker| w.sessions.load(Ordering::Relaxed);
        assert_eq!(workers.workers.iter().map(load).collect::<Vec<_>>(), [2, 2]);

        tracker.close();
        assert_eq!(tracker.len(), 4, "open sessions are tracked");
        release.cancel();
        tracker.wait().await;
        assert_eq!(workers.workers.iter().map(load).collect::<Vec<_>>(), [0, 0]);
        tokio::task::spawn_blocking(move || workers.stop())
            .await
            .unwrap();
    }
}
