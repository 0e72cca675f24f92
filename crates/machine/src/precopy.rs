//! Full-memory pre-copy while the guest runs, then dirty-page rounds: what live migration and the first
//! synchronisation of fault tolerance share. It sees the machine only through the seam.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kemari_devices::host::Wake;
use kemari_memory::{GuestRam, PAGE_SIZE};
use kemari_state::Arch;

use crate::Machine;

/// Pages per batch of the full pass (4 MiB at most: one PAGS section).
const BATCH_PAGES: u64 = 1024;
/// Batches queued for the pre-copy thread (it encodes the next while the kernel sends the last).
const QUEUE_DEPTH: usize = 2;
/// Dirty rounds before giving up on convergence and stopping the guest anyway.
const MAX_ROUNDS: u32 = 30;
/// Confirmations from the receiver before the stop (each after a dirty round), at most.
const MAX_SYNCS: u32 = 4;
/// A rest that takes this long to send is not worth another round.
const SETTLED: Duration = Duration::from_micros(250);

/// Progress, reported by `status` while a migration runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub round: u32,
    pub bytes: u64,
    /// Guest RAM pages, and those the full pass has not reached yet.
    pub pages: u64,
    pub pages_left: u64,
    pub dirty_pages_last_round: u64,
    /// How fast the guest dirtied memory over the last round (bytes per second of pages written).
    pub dirty_rate: u64,
}

/// Where the pre-copy's batches go: the migration stream, or the link to a fault-tolerance secondary. Called on
/// the pre-copy's own thread.
pub trait PageSink: Send {
    /// Sends one batch (a state stream of PAGS sections).
    fn send(&mut self, batch: &[u8]) -> Result<(), String>;
    /// Returns once the receiver has applied everything sent so far, so that the stop-and-copy does not also
    /// wait for a backlog in socket buffers. Sinks that cannot tell return at once.
    fn sync(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Work for the pre-copy thread.
enum Job {
    /// Every non-zero page in this range of page indices.
    Scan(std::ops::Range<u64>),
    /// Exactly these pages (a dirty round).
    Pages(Vec<u64>),
    Sync,
}

/// What the pre-copy thread reports back (atomics: the machine loop reads them between slices).
#[derive(Default)]
struct Counters {
    /// Jobs queued or running.
    outstanding: AtomicU64,
    bytes: AtomicU64,
    /// Time spent encoding and sending (not waiting for work): the bandwidth estimate's denominator.
    busy_nanos: AtomicU64,
    failed: Mutex<Option<String>>,
}

enum Phase {
    /// Scanning memory, from this page index on.
    FullPass(u64),
    /// Resending what the guest dirtied since the previous round.
    Rounds,
}

/// Full-memory pre-copy while the guest runs, then dirty-page rounds until the rest is small, then the caller's
/// stop-and-copy. Live migration and the first synchronisation of fault tolerance both use it.
///
/// A thread of its own reads guest memory in place, encodes and sends, while the guest runs on: the machine
/// loop only decides what to send. That is safe because the loop takes the dirty log between slices (quiesced)
/// before handing a round's pages over: a page the guest writes after that is in the next log and sent again,
/// so a torn read is always superseded.
pub struct PreCopy {
    phase: Phase,
    budget: Duration,
    started: Instant,
    jobs: Option<SyncSender<Job>>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
    /// Pages went out since the receiver last confirmed it caught up.
    unsynced: bool,
    syncs: u32,
    /// When the dirty log was last taken (for the dirty rate).
    last_log: Instant,
    pub progress: Progress,
}

impl PreCopy {
    /// Starts tracking (every page written from now on is resent in a dirty round) and the sending thread.
    pub fn start<M: Machine + ?Sized>(
        m: &mut M,
        wake: Wake,
        budget: Duration,
        mut sink: Box<dyn PageSink>,
    ) -> std::io::Result<PreCopy> {
        m.take_dirty();
        let arch = m.shape().arch;
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE_DEPTH);
        let counters = Arc::new(Counters::default());
        let (c, ram) = (counters.clone(), m.memory().clone());
        let thread = std::thread::Builder::new().name("pre-copy".into()).spawn(move || {
            let mut buf = Vec::new();
            for job in queue {
                let sent = match job {
                    Job::Scan(range) => {
                        let pages = range.filter(|&p| !ram.page_is_zero(p)).collect();
                        send_pages(arch, &ram, &mut *sink, &c, pages, &mut buf)
                    }
                    Job::Pages(pages) => send_pages(arch, &ram, &mut *sink, &c, pages, &mut buf),
                    Job::Sync => sink.sync(),
                };
                if let Err(e) = sent {
                    *c.failed.lock().expect("counters lock") = Some(e);
                    wake();
                    return;
                }
                c.outstanding.fetch_sub(1, Ordering::SeqCst);
                wake();
            }
        })?;
        Ok(PreCopy {
            phase: Phase::FullPass(0),
            budget,
            started: Instant::now(),
            jobs: Some(jobs),
            counters,
            thread: Some(thread),
            unsynced: false,
            syncs: 0,
            last_log: Instant::now(),
            progress: Progress {
                pages: m.memory().size() / PAGE_SIZE,
                pages_left: m.memory().size() / PAGE_SIZE,
                ..Progress::default()
            },
        })
    }

    /// Bytes per second the thread achieves while it sends (1 GB/s until it has sent for a while).
    fn bandwidth(&self) -> f64 {
        let busy = self.counters.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let bytes = self.counters.bytes.load(Ordering::Relaxed) as f64;
        if busy < 1e-3 {
            1e9
        } else {
            bytes / busy
        }
    }

    fn submit(&mut self, job: Job) -> Result<(), String> {
        self.unsynced = !matches!(job, Job::Sync);
        self.counters.outstanding.fetch_add(1, Ordering::SeqCst);
        // Never blocks: the loop keeps fewer than QUEUE_DEPTH jobs outstanding.
        self.jobs.as_ref().expect("pre-copy running").send(job).map_err(|_| self.failure())
    }

    fn failure(&self) -> String {
        self.counters.failed.lock().expect("counters lock").clone().unwrap_or_else(|| "pre-copy thread ended".into())
    }

    /// Whether to send the pages dirtied since the last round (`dirty` of them) before stopping the guest:
    /// always while they would not fit the budget (up to MAX_ROUNDS, then the guest stops anyway), and while
    /// they fit but are more than SETTLED's worth and still shrinking from round to round (the budget is a
    /// limit, not a target: a smaller final copy is a shorter stop).
    fn another_round(&self, dirty: u64) -> bool {
        if self.progress.round >= MAX_ROUNDS {
            return false;
        }
        let expected = Duration::from_secs_f64((dirty * PAGE_SIZE) as f64 / self.bandwidth());
        if expected > self.budget {
            return true;
        }
        let last = self.progress.dirty_pages_last_round;
        let shrinking = self.progress.round == 0 || dirty * 8 < last * 7;
        expected > SETTLED.min(self.budget) && shrinking && self.syncs < MAX_SYNCS
    }

    /// Advances the pre-copy without blocking: hands work to the thread. Returns true when it is time to stop
    /// the guest and send the final state (with the dirty pages): the thread is idle, the rest is small, and
    /// the receiver has applied everything sent (where the sink can tell).
    pub fn step<M: Machine + ?Sized>(&mut self, m: &mut M) -> Result<bool, String> {
        if self.counters.failed.lock().expect("counters lock").is_some() {
            return Err(self.failure());
        }
        let total = m.memory().size() / PAGE_SIZE;
        let result = loop {
            let outstanding = self.counters.outstanding.load(Ordering::SeqCst);
            match self.phase {
                Phase::FullPass(next) => {
                    if outstanding >= QUEUE_DEPTH as u64 {
                        break Ok(false);
                    }
                    let end = (next + BATCH_PAGES).min(total);
                    self.submit(Job::Scan(next..end))?;
                    self.progress.pages_left = total - end;
                    self.phase = if end == total { Phase::Rounds } else { Phase::FullPass(end) };
                }
                Phase::Rounds if outstanding > 0 => break Ok(false),
                Phase::Rounds => {
                    let dirty = m.dirty_count();
                    if self.another_round(dirty) {
                        let pages = m.take_dirty();
                        let since = std::mem::replace(&mut self.last_log, Instant::now()).elapsed();
                        self.progress.round += 1;
                        self.progress.dirty_pages_last_round = pages.len() as u64;
                        self.progress.dirty_rate =
                            ((pages.len() as u64 * PAGE_SIZE) as f64 / since.as_secs_f64().max(1e-6)) as u64;
                        self.submit(Job::Pages(pages))?;
                        break Ok(false);
                    }
                    if self.unsynced {
                        self.syncs += 1;
                        self.submit(Job::Sync)?;
                        break Ok(false);
                    }
                    break Ok(true);
                }
            }
        };
        self.progress.bytes = self.counters.bytes.load(Ordering::Relaxed);
        result
    }

    /// Ends the thread (idle once `step` returned true) and returns the final progress.
    pub fn finish(mut self) -> Progress {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.progress.bytes = self.counters.bytes.load(Ordering::Relaxed);
        self.progress.clone()
    }

    /// Time since the pre-copy started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for PreCopy {
    /// An abandoned pre-copy (failed link): the thread ends after its current job; nobody waits for it.
    fn drop(&mut self) {
        self.jobs = None;
    }
}

/// Encodes (into `buf`, reused from batch to batch) and sends one batch on the pre-copy thread, counting its
/// bytes and the time it took.
fn send_pages(
    arch: Arch,
    ram: &GuestRam,
    sink: &mut dyn PageSink,
    c: &Counters,
    pages: Vec<u64>,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    if pages.is_empty() {
        return Ok(());
    }
    let t = Instant::now();
    *buf = crate::pages::encode_into(arch, ram, &pages, std::mem::take(buf));
    c.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
    let sent = sink.send(buf);
    c.busy_nanos.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    sent
}
