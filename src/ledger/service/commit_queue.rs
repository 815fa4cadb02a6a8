//! Group commit: requests that arrive while a write transaction is running queue up and
//! go into the next transaction together, so N concurrent payments cost one commit
//! instead of N.
//!
//! There is no background worker and no waiting window. A request queues its job and
//! then either receives its outcome or, when a batch slot is free, becomes the leader:
//! it takes everything queued (oldest first, up to `batch_max`) and runs it as one
//! batch. A lone request therefore runs at once, and a busy server forms batches exactly
//! as large as the load makes them. The batch runs on its own task, so a leader whose
//! client disconnects cannot cancel its followers' transaction halfway.
//!
//! A bulk request queues its jobs as one unit: a unit is never split between batches
//! and keeps its order, so its jobs are decided in the order given, each against what
//! the earlier ones left, and a unit larger than `batch_max` forms a batch of its own.
//!
//! Only how many transactions there are changes. Each job still gets its own outcome,
//! and the database still judges everything (keys, locks, versions), so instances that
//! batch independently on one database stay correct.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, oneshot};

/// A queued job and the way back to the request that queued it.
pub struct Queued<Job, Outcome> {
    pub job: Job,
    reply: oneshot::Sender<Outcome>,
}

impl<Job, Outcome> Queued<Job, Outcome> {
    /// Hands the outcome back. A requester that has gone away simply does not hear it;
    /// the outcome itself (say, a committed payment) stands, and a retry replays it.
    pub fn answer(self, outcome: Outcome) {
        let _ = self.reply.send(outcome);
    }
}

/// Jobs queued by one request, which go into one batch together and in order.
type Unit<Job, Outcome> = Vec<Queued<Job, Outcome>>;

pub struct CommitQueue<Job, Outcome> {
    pending: Mutex<VecDeque<Unit<Job, Outcome>>>,
    slots: Arc<Semaphore>,
    batch_max: usize,
}

impl<Job, Outcome> CommitQueue<Job, Outcome>
where
    Job: Send + 'static,
    Outcome: Send + 'static,
{
    /// `slots`: how many batches may run at once; `batch_max`: jobs per batch.
    pub fn new(slots: usize, batch_max: usize) -> Self {
        Self {
            pending: Mutex::new(VecDeque::new()),
            slots: Arc::new(Semaphore::new(slots.max(1))),
            batch_max: batch_max.max(1),
        }
    }

    /// Queues `job` and returns its outcome. `run` executes one batch and must answer
    /// every job in it. `None` only if a batch ended without answering (a bug or a
    /// panic in `run`); whether the job took effect is then unknown to this request.
    /// (The server queues through `submit_all`; this one-job form is the tests'.)
    #[cfg(test)]
    pub async fn submit<Run, RunFuture>(&self, job: Job, run: Run) -> Option<Outcome>
    where
        Run: Fn(Vec<Queued<Job, Outcome>>) -> RunFuture,
        RunFuture: Future<Output = ()> + Send + 'static,
    {
        self.submit_all(vec![job], run).await.pop().flatten()
    }

    /// Queues `jobs` as one unit (one batch, in this order) and returns their outcomes
    /// in the same order, each as `submit` would.
    pub async fn submit_all<Run, RunFuture>(&self, jobs: Vec<Job>, run: Run) -> Vec<Option<Outcome>>
    where
        Run: Fn(Vec<Queued<Job, Outcome>>) -> RunFuture,
        RunFuture: Future<Output = ()> + Send + 'static,
    {
        if jobs.is_empty() {
            return Vec::new();
        }
        let (unit, outcomes): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .map(|job| {
                let (reply, outcome) = oneshot::channel();
                (Queued { job, reply }, outcome)
            })
            .unzip();
        self.lock_pending().push_back(unit);
        let answered = futures::future::join_all(
            outcomes
                .into_iter()
                .map(|outcome| async move { outcome.await.ok() }),
        );
        tokio::pin!(answered);
        loop {
            tokio::select! {
                biased;
                answered = &mut answered => return answered,
                permit = self.slots.clone().acquire_owned() => {
                    let Ok(permit) = permit else {
                        return answered.await;
                    };
                    let batch = self.take_batch();
                    if batch.is_empty() {
                        // Another leader took these jobs; its batch will answer.
                        drop(permit);
                        return answered.await;
                    }
                    let running = run(batch);
                    tokio::spawn(async move {
                        running.await;
                        drop(permit);
                    });
                }
            }
        }
    }

    /// The oldest queued units, whole, up to `batch_max` jobs (or one larger unit
    /// alone), skipping jobs whose requester has gone away: they have stored nothing
    /// yet, so dropping them is the same as never having received them.
    fn take_batch(&self) -> Vec<Queued<Job, Outcome>> {
        let mut pending = self.lock_pending();
        let mut batch = Vec::new();
        while let Some(unit) = pending.front() {
            if !batch.is_empty() && batch.len() + unit.len() > self.batch_max {
                break;
            }
            let unit = pending.pop_front().unwrap_or_default();
            batch.extend(unit.into_iter().filter(|queued| !queued.reply.is_closed()));
        }
        batch
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, VecDeque<Unit<Job, Outcome>>> {
        // The queue is a plain list; a panic elsewhere cannot leave it half-changed.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    type BatchFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Runs a batch by doubling every job after a short pause, recording batch sizes.
    fn doubling(
        sizes: Arc<Mutex<Vec<usize>>>,
        running: Arc<AtomicUsize>,
        most_running: Arc<AtomicUsize>,
    ) -> impl Fn(Vec<Queued<u64, u64>>) -> BatchFuture {
        move |batch| {
            let sizes = sizes.clone();
            let running = running.clone();
            let most_running = most_running.clone();
            Box::pin(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most_running.fetch_max(now, Ordering::SeqCst);
                sizes.lock().unwrap().push(batch.len());
                tokio::time::sleep(Duration::from_millis(5)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                for queued in batch {
                    let doubled = queued.job * 2;
                    queued.answer(doubled);
                }
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_share_batches_and_each_gets_its_own_outcome() {
        let queue = Arc::new(CommitQueue::<u64, u64>::new(2, 8));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let most_running = Arc::new(AtomicUsize::new(0));
        let run = Arc::new(doubling(sizes.clone(), running, most_running.clone()));
        let tasks: Vec<_> = (0..100_u64)
            .map(|job| {
                let queue = queue.clone();
                let run = run.clone();
                tokio::spawn(async move { (job, queue.submit(job, |batch| run(batch)).await) })
            })
            .collect();
        for task in tasks {
            let (job, outcome) = task.await.unwrap();
            assert_eq!(outcome, Some(job * 2));
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(
            sizes.iter().sum::<usize>(),
            100,
            "every job ran exactly once"
        );
        assert!(sizes.iter().all(|&size| (1..=8).contains(&size)));
        assert!(
            sizes.len() < 100,
            "100 simultaneous jobs must share transactions, got batch sizes {sizes:?}"
        );
        assert!(most_running.load(Ordering::SeqCst) <= 2);
    }

    #[tokio::test]
    async fn a_lone_job_runs_at_once() {
        let queue = CommitQueue::<u64, u64>::new(1, 8);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let run = doubling(
            sizes.clone(),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        assert_eq!(queue.submit(21, &run).await, Some(42));
        assert_eq!(queue.submit(5, &run).await, Some(10));
        assert_eq!(*sizes.lock().unwrap(), [1, 1]);
    }

    #[tokio::test]
    async fn jobs_whose_requester_left_are_not_run() {
        let queue = CommitQueue::<u64, u64>::new(1, 8);
        let (reply, outcome) = oneshot::channel();
        drop(outcome);
        queue
            .lock_pending()
            .push_back(vec![Queued { job: 1, reply }]);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let run = doubling(
            sizes.clone(),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        assert_eq!(queue.submit(2, &run).await, Some(4));
        assert_eq!(*sizes.lock().unwrap(), [1]);
    }

    #[tokio::test]
    async fn a_batch_that_does_not_answer_yields_none() {
        let queue = CommitQueue::<u64, u64>::new(1, 8);
        let outcome = queue
            .submit(1, |batch| async move {
                drop(batch);
            })
            .await;
        assert_eq!(outcome, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_unit_stays_whole_and_in_order_even_beyond_batch_max() {
        let queue = Arc::new(CommitQueue::<u64, u64>::new(2, 8));
        let batches = Arc::new(Mutex::new(Vec::<Vec<u64>>::new()));
        let record = {
            let batches = batches.clone();
            move |batch: Vec<Queued<u64, u64>>| {
                let batches = batches.clone();
                async move {
                    batches
                        .lock()
                        .unwrap()
                        .push(batch.iter().map(|queued| queued.job).collect());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    for queued in batch {
                        let job = queued.job;
                        queued.answer(job + 1);
                    }
                }
            }
        };
        let singles: Vec<_> = (0..20_u64)
            .map(|job| {
                let queue = queue.clone();
                let record = record.clone();
                tokio::spawn(async move { queue.submit(1000 + job, record).await })
            })
            .collect();
        let unit: Vec<u64> = (0..30).collect();
        let outcomes = queue.submit_all(unit.clone(), record.clone()).await;
        assert_eq!(
            outcomes,
            unit.iter().map(|job| Some(job + 1)).collect::<Vec<_>>()
        );
        for single in singles {
            assert!(single.await.unwrap().is_some());
        }
        let batches = batches.lock().unwrap();
        let with_unit: Vec<&Vec<u64>> = batches
            .iter()
            .filter(|batch| batch.iter().any(|&job| job < 1000))
            .collect();
        assert_eq!(with_unit.len(), 1, "the unit was split: {batches:?}");
        let in_unit: Vec<u64> = with_unit[0]
            .iter()
            .copied()
            .filter(|&job| job < 1000)
            .collect();
        assert_eq!(in_unit, unit, "the unit lost its order");
        assert!(
            batches
                .iter()
                .all(|batch| batch.len() <= 8 || batch.iter().all(|&job| job < 1000))
        );
    }
}
