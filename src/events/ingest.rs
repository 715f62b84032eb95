//! The event log's single writer: one thread that takes batches from concurrent requests,
//! drops retried `event_id`s, appends everything new as one record batch and syncs it per the
//! fsync policy (group commit: one sync acknowledges every request waiting), then answers each
//! request. A request is acknowledged only after its events are written, so an acknowledged
//! event survives `kill -9` of the server.
//!
//! Idempotency: the ids of the last `dedupe_window` (bounded by `dedupe_capacity`) are kept in
//! memory and rebuilt from the log's recent segments at start, so the set always agrees with
//! what the log holds. It is per log (per server instance).

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::log::{self, EventLog, EventLogError, LogOptions, LoggedEvent};

/// Events one group commit takes at most (several requests' batches).
const MAX_GROUP_EVENTS: usize = 16_384;

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub log: LogOptions,
    /// How long an `event_id` is remembered.
    pub dedupe_window: Duration,
    /// How many ids are remembered at most (oldest forgotten first).
    pub dedupe_capacity: usize,
    /// Batches waiting for the writer before requests are refused (backpressure).
    pub queue: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Log(#[from] EventLogError),
    #[error("event writer: {0}")]
    Writer(String),
    #[error("event writer is busy ({0} batches waiting)")]
    Busy(usize),
}

/// Which events of a submitted batch were new (true) and which were retries of a recorded id.
pub type Submitted = Vec<bool>;

struct Job {
    events: Vec<LoggedEvent>,
    reply: oneshot::Sender<Result<Submitted, String>>,
}

/// Counters for `/readyz` and the benches, and the commit-time histogram `/metrics` exports.
#[derive(Debug)]
pub struct IngestStats {
    pub appended: AtomicU64,
    pub duplicates: AtomicU64,
    pub commits: AtomicU64,
    pub failures: AtomicU64,
    /// Time of each group commit (append and, per the fsync policy, sync).
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for IngestStats {
    fn default() -> Self {
        IngestStats {
            appended: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            commit_seconds: crate::observe::metrics::commit_histogram(),
        }
    }
}

/// Handle to the writer thread; dropping it closes the log (the thread finishes its queue and
/// closes the segment before the drop returns).
pub struct Ingestor {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
    queue: usize,
    pub stats: Arc<IngestStats>,
    /// Ids remembered at start (from the log).
    pub recovered_ids: usize,
}

impl Ingestor {
    /// Opens the log in `dir` (cutting a torn tail), rebuilds the id window from its recent
    /// segments and starts the writer thread.
    pub fn start(dir: &Path, opts: IngestOptions) -> Result<Ingestor, IngestError> {
        let log = EventLog::open(dir, opts.log.clone())?;
        let mut dedupe = DedupeWindow::new(opts.dedupe_window, opts.dedupe_capacity);
        let recovered_ids = recover_ids(dir, &mut dedupe)?;
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let stats = Arc::new(IngestStats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("funnel-event-log".into())
            .spawn(move || writer(log, dedupe, rx, st))
            .map_err(|e| IngestError::Writer(e.to_string()))?;
        Ok(Ingestor {
            tx: Some(tx),
            thread: Some(thread),
            dir: dir.to_path_buf(),
            queue: opts.queue.max(1),
            stats,
            recovered_ids,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `events` durably (per the fsync policy); returns which were new. Refused at once
    /// when the writer's queue is full.
    pub async fn submit(&self, events: Vec<LoggedEvent>) -> Result<Submitted, IngestError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| IngestError::Writer("stopped".into()))?;
        tx.try_send(Job { events, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => IngestError::Busy(self.queue),
            mpsc::error::TrySendError::Closed(_) => IngestError::Writer("stopped".into()),
        })?;
        match rx.await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(IngestError::Writer(e)),
            Err(_) => Err(IngestError::Writer("stopped before answering".into())),
        }
    }
}

impl Drop for Ingestor {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once the queue is drained.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("event log writer thread panicked");
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn writer(
    mut log: EventLog,
    mut dedupe: DedupeWindow,
    mut rx: mpsc::Receiver<Job>,
    stats: Arc<IngestStats>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let mut n = jobs[0].events.len();
        while n < MAX_GROUP_EVENTS {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.events.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let now = now_ms();
        let mut fresh: Vec<LoggedEvent> = Vec::with_capacity(n);
        let mut inserted: Vec<u64> = Vec::new();
        let mut flags: Vec<Submitted> = Vec::with_capacity(jobs.len());
        for job in &mut jobs {
            let mut f = Vec::with_capacity(job.events.len());
            for e in job.events.drain(..) {
                let new = match &e.event_id {
                    None => true,
                    Some(id) => {
                        let h = id_hash(id);
                        let new = dedupe.insert(h, now);
                        if new {
                            inserted.push(h);
                        }
                        new
                    }
                };
                if new {
                    fresh.push(e);
                }
                f.push(new);
            }
            flags.push(f);
        }
        let t = Instant::now();
        let result = log.append(&fresh);
        stats.commit_seconds.observe(t.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                let dups = flags.iter().flatten().filter(|n| !**n).count() as u64;
                stats
                    .appended
                    .fetch_add(fresh.len() as u64, Ordering::Relaxed);
                stats.duplicates.fetch_add(dups, Ordering::Relaxed);
                stats.commits.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(events = fresh.len(), jobs = jobs.len(), ms = ?t.elapsed(), "event log commit");
                for (job, f) in jobs.into_iter().zip(flags) {
                    let _ = job.reply.send(Ok(f));
                }
            }
            Err(e) => {
                // Nothing of this group is acknowledged, so nothing of it may count as seen.
                for h in inserted {
                    dedupe.remove(h);
                }
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "event log append failed");
                let msg = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(msg.clone()));
                }
            }
        }
    }
}

/// A stable-within-the-process 64-bit digest of an event id (collisions among a few million
/// ids: ~1e-7).
fn id_hash(id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// Seeds `dedupe` with the ids of the segments written within its window, oldest first.
fn recover_ids(dir: &Path, dedupe: &mut DedupeWindow) -> Result<usize, IngestError> {
    let now = SystemTime::now();
    let mut n = 0;
    for seg in log::segments(dir)? {
        let recent = std::fs::metadata(&seg)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_none_or(|age| age <= dedupe.window);
        if !recent {
            continue;
        }
        let at = now_ms();
        for e in log::read_segment(&seg)? {
            if let Some(id) = &e.event_id {
                dedupe.insert(id_hash(id), at);
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Ids seen within a time window, bounded in count; oldest forgotten first. Each id maps to
/// the time it was remembered, so a queue entry left behind by a removed id is recognised as
/// stale when it reaches the front (removal is O(1), not a scan of the window).
#[derive(Debug)]
struct DedupeWindow {
    at: HashMap<u64, i64>,
    order: VecDeque<(u64, i64)>,
    window: Duration,
    capacity: usize,
}

impl DedupeWindow {
    fn new(window: Duration, capacity: usize) -> Self {
        Self {
            at: HashMap::new(),
            order: VecDeque::new(),
            window,
            capacity: capacity.max(1),
        }
    }

    /// Remembers `h` at `now_ms`; false when it is already remembered.
    fn insert(&mut self, h: u64, now_ms: i64) -> bool {
        let oldest = now_ms - self.window.as_millis() as i64;
        while let Some(&(old, at)) = self.order.front() {
            if at >= oldest && self.at.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            if self.at.get(&old) == Some(&at) {
                self.at.remove(&old);
            }
        }
        if self.at.contains_key(&h) {
            return false;
        }
        self.at.insert(h, now_ms);
        self.order.push_back((h, now_ms));
        true
    }

    fn remove(&mut self, h: u64) {
        self.at.remove(&h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64, id: Option<&str>) -> LoggedEvent {
        LoggedEvent {
            user_id: i,
            item_id: i + 1,
            event_type: "click".into(),
            timestamp: 1_700_000_000,
            weight: 1.0,
            event_id: id.map(str::to_owned),
            request_id: None,
            arm: None,
        }
    }

    fn opts() -> IngestOptions {
        IngestOptions {
            log: LogOptions::default(),
            dedupe_window: Duration::from_secs(3600),
            dedupe_capacity: 1000,
            queue: 64,
        }
    }

    #[test]
    fn window_forgets_by_age_and_count() {
        let mut w = DedupeWindow::new(Duration::from_millis(100), 3);
        assert!(w.insert(1, 0));
        assert!(!w.insert(1, 50));
        assert!(w.insert(2, 60));
        assert!(w.insert(1, 150), "aged out");
        assert!(w.insert(3, 151));
        assert!(w.insert(4, 152));
        assert!(w.insert(5, 153));
        assert!(w.insert(2, 154), "pushed out by capacity");
        w.remove(5);
        assert!(w.insert(5, 155));
    }

    #[tokio::test]
    async fn retried_ids_count_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ing = Ingestor::start(dir.path(), opts()).unwrap();
            let got = ing
                .submit(vec![ev(1, Some("a")), ev(2, None), ev(3, Some("a"))])
                .await
                .unwrap();
            assert_eq!(got, vec![true, true, false]);
            // Concurrent submits: each id is new exactly once.
            let (a, b) = tokio::join!(
                ing.submit(vec![ev(4, Some("b")), ev(5, Some("c"))]),
                ing.submit(vec![ev(4, Some("b")), ev(6, Some("d"))])
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(a[0] as u8 + b[0] as u8, 1);
            assert!(a[1] && b[1]);
        }
        let ing = Ingestor::start(dir.path(), opts()).unwrap();
        assert_eq!(ing.recovered_ids, 4);
        let got = ing
            .submit(vec![ev(7, Some("a")), ev(8, Some("e"))])
            .await
            .unwrap();
        assert_eq!(got, vec![false, true]);
        drop(ing);
        let all = log::read_all(dir.path()).unwrap();
        assert_eq!(all.len(), 6, "a, none, b, c, d, e");
    }
}
