//! Live migration over TCP: full-memory pre-copy while the guest runs, dirty-page rounds until the rest fits
//! the downtime budget, then stop-and-copy of the whole machine state (the same encoding as snapshots).
//!
//! ```text
//!  sender                                   receiver (kemari run --incoming ADDR)
//!  HELLO  "KMIG", version u32, harts u32, memory bytes u64
//!                                       ──►  builds an empty machine of that shape
//!  PAGES  state stream of PAGS sections ──► writes the pages (repeated: pre-copy, then dirty rounds)
//!  SYNC   (empty)                       ──► once everything before it is applied:
//!                                      ◄──  SYNCED (empty)
//!  FINAL  full state stream (dirty pages) ► restores everything on top
//!                                      ◄──  ACK (empty); the receiver runs, announces MACs, the sender exits
//!                                      ◄──  REFUSE (reason) instead, for whatever the receiver will not take
//! ```
//!
//! Messages use the framing both kemari protocols share (`kemari_transport::frame`); the receiver caps lengths
//! and validates payloads like any state stream. Version 2 frames the answers; a receiver still takes a
//! version 1 sender, answering it as version 1 did (SYNCED and ACK as bare bytes, no REFUSE). The sender stays the active copy until the ACK: any failure before it leaves the guest
//! running where it was. The stream runs inside the link [`Security`] gives (mutual TLS unless the operator
//! asked for plaintext): with TLS, a receiver reads nothing from, and a sender sends nothing to, a peer that
//! is not a node of the same VM.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kemari_engine::{GuestRam, PAGE_SIZE};
use kemari_transport::frame::{self, FrameError, Protocol};
pub use kemari_transport::Deadline;
use kemari_transport::{Channel, Introduction, Security};

use crate::control::Reply;
use crate::machine::{receiver_ram, BuildError, Machine, MachineConfig, RunOutcome};
use crate::persist::{encode_pages_into, Pages, RestoreError};

const HELLO: u8 = 1;
const PAGES: u8 = 2;
const FINAL: u8 = 3;
const ACK: u8 = 4;
const SYNC: u8 = 5;
const SYNCED: u8 = 5;
/// The migration protocol's HELLO preamble and version window. 1: as drawn above, answers as bare bytes.
/// 2: answers framed, REFUSE.
const PROTOCOL: Protocol = Protocol { name: "migration", magic: *b"KMIG", versions: 1..=2 };
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
/// How long the sender waits for the receiver to acknowledge the final state.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a sender has for its whole HELLO (an idle or trickling connection is refused after it).
const HELLO_WITHIN: Duration = Duration::from_secs(5);
/// Silence after which the receiver gives up on a sender (the sender streams without pause while it sends).
const SENDER_SILENCE: Duration = Duration::from_secs(30);
/// How long the sender waits for the TCP connection and for the TLS handshake, each.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    PreCopy(String),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("the machine state cannot be encoded: {0}")]
    Save(kemari_state::StateError),
    #[error(transparent)]
    Link(#[from] kemari_transport::TlsError),
    #[error("network: {0}")]
    Frame(FrameError),
    #[error("the receiver refused: {0}")]
    Refused(String),
}

impl From<FrameError> for MigrateError {
    fn from(e: FrameError) -> MigrateError {
        match e {
            FrameError::Refused(why) => MigrateError::Refused(why),
            e => MigrateError::Frame(e),
        }
    }
}

fn send(stream: &mut dyn Write, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    frame::send(stream, kind, &[payload])
}

/// Reads one message of at most `max` bytes into `payload` (reused: no allocation per batch). Returns its kind.
fn receive_into(stream: &mut dyn Read, payload: &mut Vec<u8>, max: u64) -> Result<u8, MigrateError> {
    frame::receive_into(stream, payload, max).map_err(|e| match e {
        FrameError::Truncated(len) => {
            let why = format!("the sender vanished inside a message of {len} bytes");
            MigrateError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, why))
        }
        e => e.into(),
    })
}

/// Waits for the receiver's answer `kind` (empty), or its refusal.
fn answer(stream: &mut dyn Read, kind: u8, to: &str) -> Result<(), MigrateError> {
    match frame::receive(stream, 0)? {
        (k, _) if k == kind => Ok(()),
        (k, _) => Err(MigrateError::Protocol(format!("unexpected answer {k} to {to}"))),
    }
}

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
    pub fn start(m: &Machine, budget: Duration, mut sink: Box<dyn PageSink>) -> std::io::Result<PreCopy> {
        m.ram.take_dirty();
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE_DEPTH);
        let counters = Arc::new(Counters::default());
        let (c, ram, wake) = (counters.clone(), m.ram.clone(), m.wake.clone());
        let thread = std::thread::Builder::new().name("pre-copy".into()).spawn(move || {
            let mut buf = Vec::new();
            for job in queue {
                let sent = match job {
                    Job::Scan(range) => {
                        let pages = range.filter(|&p| !ram.page_is_zero(p)).collect();
                        send_pages(&ram, &mut *sink, &c, pages, &mut buf)
                    }
                    Job::Pages(pages) => send_pages(&ram, &mut *sink, &c, pages, &mut buf),
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
                pages: m.ram.size() / PAGE_SIZE,
                pages_left: m.ram.size() / PAGE_SIZE,
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
    pub fn step(&mut self, m: &Machine) -> Result<bool, String> {
        if self.counters.failed.lock().expect("counters lock").is_some() {
            return Err(self.failure());
        }
        let total = m.ram.size() / PAGE_SIZE;
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
                    let dirty = m.ram.dirty_count();
                    if self.another_round(dirty) {
                        let pages = m.ram.take_dirty();
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
    *buf = encode_pages_into(ram, &pages, std::mem::take(buf));
    c.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
    let sent = sink.send(buf);
    c.busy_nanos.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    sent
}

/// The migration stream, shared by the pre-copy thread (its sink) and the machine loop (the final state):
/// one at a time.
type Stream = Arc<Mutex<Channel>>;

fn lock(stream: &Stream) -> std::sync::MutexGuard<'_, Channel> {
    stream.lock().unwrap_or_else(|p| p.into_inner())
}

/// The migration stream as a pre-copy sink.
struct StreamSink(Stream);

impl PageSink for StreamSink {
    fn send(&mut self, batch: &[u8]) -> Result<(), String> {
        send(&mut lock(&self.0).writer, PAGES, batch).map_err(|e| format!("network: {e}"))
    }

    fn sync(&mut self) -> Result<(), String> {
        let mut link = lock(&self.0);
        send(&mut link.writer, SYNC, &[]).map_err(|e| format!("network: {e}"))?;
        answer(&mut link.reader, SYNCED, "a sync").map_err(|e| e.to_string())
    }
}

pub(crate) struct Migration {
    to: String,
    budget: Duration,
    /// The connection and handshake, made on a thread of their own (the guest runs meanwhile): the link, or
    /// why there is none. Taken once it answered.
    connecting: Option<mpsc::Receiver<Result<Channel, MigrateError>>>,
    /// Set once connected.
    stream: Option<Stream>,
    pub(crate) copy: Option<PreCopy>,
    reply: Sender<Reply>,
    /// The user had paused the guest before migrating: a failed migration leaves it paused.
    was_paused: bool,
}

impl Migration {
    /// Starts connecting to the receiver at `to`; the pre-copy starts once the link is up.
    pub(crate) fn start(
        m: &Machine,
        to: &str,
        budget: Duration,
        reply: Sender<Reply>,
    ) -> Result<Migration, MigrateError> {
        let security = m.link_security.clone().ok_or_else(|| {
            MigrateError::Protocol(
                "this node has no link credentials: start it with --tls DIR/NODE (or --insecure-plaintext)".into(),
            )
        })?;
        let (tx, connecting) = mpsc::channel();
        let (addr, wake) = (to.to_string(), m.wake.clone());
        let mut hello = PROTOCOL.preamble();
        hello.extend_from_slice(&(m.harts.len() as u32).to_le_bytes());
        hello.extend_from_slice(&m.ram.size().to_le_bytes());
        std::thread::Builder::new().name("mig-connect".into()).spawn(move || {
            let _ = tx.send(connect(&addr, &security, &hello));
            wake();
        })?;
        Ok(Migration {
            to: to.to_string(),
            budget,
            connecting: Some(connecting),
            stream: None,
            copy: None,
            reply,
            was_paused: m.paused,
        })
    }

    /// What `status` shows: nothing is sent while connecting.
    pub(crate) fn progress(&self) -> Progress {
        self.copy.as_ref().map(|c| c.progress.clone()).unwrap_or_default()
    }
}

/// Connects to the receiver at `to`, makes the link's handshake and sends the HELLO.
fn connect(to: &str, security: &Security, hello: &[u8]) -> Result<Channel, MigrateError> {
    let addr = to.to_socket_addrs()?.next().ok_or_else(|| io::Error::other(format!("{to}: no address")))?;
    let sock = TcpStream::connect_timeout(&addr, CONNECT_WITHIN)?;
    sock.set_nodelay(true)?;
    let mut link = security.connect(sock, CONNECT_WITHIN)?;
    send(&mut link.writer, HELLO, hello)?;
    Ok(link)
}

/// How a stop-and-copy ended.
enum Switch {
    /// The receiver acknowledged: it runs the guest now.
    Done,
    /// The final state did not leave in full: the receiver cannot run the guest, so it carries on here.
    Failed(MigrateError),
    /// The final state left but no acknowledgement came: the receiver may be running the guest. It stays
    /// paused here, so that at most one copy runs; the user decides.
    Unknown(MigrateError),
}

impl Machine {
    /// Advances a running migration by one step. Returns the run's end once the receiver took over.
    pub(crate) fn migration_step(&mut self) -> Option<RunOutcome> {
        let mut mig = self.migration.take()?;
        if let Some(connecting) = mig.connecting.take() {
            let started = match connecting.try_recv() {
                Err(mpsc::TryRecvError::Empty) => {
                    mig.connecting = Some(connecting);
                    self.migration = Some(mig);
                    return None;
                }
                Err(mpsc::TryRecvError::Disconnected) => Err("the connecting thread ended".to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(link)) => {
                    let stream = Arc::new(Mutex::new(link));
                    PreCopy::start(self, mig.budget, Box::new(StreamSink(stream.clone())))
                        .map(|copy| (stream, copy))
                        .map_err(|e| format!("network: {e}"))
                }
            };
            match started {
                Ok((stream, copy)) => (mig.stream, mig.copy) = (Some(stream), Some(copy)),
                Err(e) => {
                    // Nothing was sent: the guest goes on as it was.
                    let _ = mig.reply.send(Reply::Error(format!("cannot migrate to {}: {e}", mig.to)));
                    return None;
                }
            }
        }
        let was_paused = mig.was_paused;
        let copy = mig.copy.as_mut().expect("a connected migration has its pre-copy");
        let switch = match copy.step(self) {
            Ok(false) => {
                self.migration = Some(mig);
                return None;
            }
            // Stop and copy: the machine is quiesced here (between slices).
            Ok(true) => self.stop_and_copy(mig),
            Err(e) => {
                let _ = mig.reply.send(Reply::Error(format!("migration failed: {e}")));
                Switch::Failed(MigrateError::PreCopy(e))
            }
        };
        match switch {
            Switch::Done => Some(RunOutcome::Migrated),
            Switch::Failed(e) => {
                // The guest carries on here (unless the user had paused it); the receiver sees the connection
                // drop and gives up.
                tracing::warn!("live migration failed: {e}");
                self.paused = was_paused;
                if !was_paused {
                    self.dev.clock.resume();
                }
                None
            }
            Switch::Unknown(e) => {
                tracing::warn!("live migration: no acknowledgement of the final state ({e}); the guest stays paused");
                self.paused = true;
                None
            }
        }
    }

    /// Stops the guest, sends the final state and waits for the receiver's acknowledgement; replies to the
    /// `migrate` request either way.
    fn stop_and_copy(&mut self, mig: Migration) -> Switch {
        let Migration { stream, copy, reply, .. } = mig;
        let (Some(stream), Some(copy)) = (stream, copy) else { unreachable!("stop-and-copy of a connected migration") };
        let stop = Instant::now();
        self.dev.clock.pause();
        let elapsed = copy.elapsed();
        let mut progress = copy.finish();
        let pages = self.ram.take_dirty();
        let state = match self.save(Pages::Only(&pages)) {
            Ok(state) => state,
            Err(e) => {
                // Nothing of the final state left: the guest resumes here.
                let _ = reply.send(Reply::Error(format!("migration failed: the machine state cannot be encoded: {e}")));
                return Switch::Failed(MigrateError::Save(e));
            }
        };
        // The pre-copy thread is done with the stream.
        let mut stream = lock(&stream);
        if let Err(e) = send(&mut stream.writer, FINAL, &state) {
            // Not all of it was handed to the kernel, so the receiver cannot have it all.
            let _ = reply.send(Reply::Error(format!("migration failed: network: {e}")));
            return Switch::Failed(e.into());
        }
        let acked = (|| {
            stream.socket.set_read_timeout(Some(ACK_TIMEOUT))?;
            answer(&mut stream.reader, ACK, "the final state")
        })();
        if let Err(MigrateError::Refused(why)) = acked {
            // The receiver said it will not run this state: the guest carries on here.
            let _ = reply.send(Reply::Error(format!("migration failed: the receiver refused the final state: {why}")));
            return Switch::Failed(MigrateError::Refused(why));
        }
        if let Err(e) = acked {
            let _ = reply.send(Reply::Error(format!(
                "migration outcome unknown: the final state was sent but not acknowledged ({e}). The receiver \
                 may be running the guest, so it stays paused here: resume it (kemari ctl resume) only if the \
                 receiver is not running it"
            )));
            return Switch::Unknown(e);
        }
        let downtime = stop.elapsed();
        progress.bytes += state.len() as u64;
        let _ = reply.send(Reply::Migrated {
            rounds: progress.round,
            bytes: progress.bytes,
            total_millis: (elapsed + downtime).as_millis() as u64,
            downtime_micros: downtime.as_micros() as u64,
        });
        Switch::Done
    }
}

/// The receiving end of live migration (`kemari run --incoming ADDR`): listens, makes each connection's
/// handshake and reads its HELLO on a thread of its own (so an idle or trickling peer blocks neither the
/// caller nor a real sender), and hands over introduced senders. A refused stream leaves it ready for the
/// next sender.
pub struct Incoming {
    local: SocketAddr,
    arrivals: mpsc::Receiver<Introduction<Shape>>,
    /// Accepting goes on while this lives.
    _accepting: kemari_transport::Introductions,
    expect_memory_mib: Option<u64>,
    prealloc: bool,
    /// RAM of the expected size, being faulted in while we wait (--prealloc); untouched until a sender is
    /// accepted.
    ram: Option<Arc<GuestRam>>,
}

/// Introductions (handshake and HELLO) under way at once, at most; more connections are closed at once.
const MAX_INTRODUCTIONS: usize = 16;

/// The machine a sender announced: harts and memory bytes.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub harts: usize,
    pub memory: u64,
    /// The migration protocol version the sender speaks.
    version: u32,
}

/// What [`Incoming::next`] brings.
pub enum Arrival {
    /// A sender that passed the handshake and introduced a machine this receiver takes.
    Sender(IncomingSender),
    /// A connection refused before its stream (handshake, HELLO): who, and why.
    Refused { peer: String, why: String },
}

/// A sender that passed the handshake and the HELLO; [`IncomingSender::receive`] takes its machine.
pub struct IncomingSender {
    pub peer: String,
    link: Channel,
    shape: Shape,
}

impl Incoming {
    /// Listens on `addr`. With `prealloc`, maps the guest's RAM (`expect_memory_mib`, which it needs) and faults
    /// it in while no sender is there yet.
    pub fn bind(
        addr: &str,
        security: Security,
        expect_memory_mib: Option<u64>,
        prealloc: bool,
    ) -> Result<Incoming, MigrateError> {
        let ram = receiver_ram(prealloc, expect_memory_mib)?;
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let (tx, arrivals) = mpsc::channel();
        let hello = move |r: &mut dyn Read| {
            read_hello(r, expect_memory_mib).map_err(|e| match e {
                MigrateError::Io(io) if io.kind() == io::ErrorKind::TimedOut => {
                    format!("protocol: no complete HELLO within {} s", HELLO_WITHIN.as_secs())
                }
                e => e.to_string(),
            })
        };
        let _accepting = kemari_transport::serve_introductions(
            "mig",
            listener,
            security,
            HELLO_WITHIN,
            MAX_INTRODUCTIONS,
            hello,
            tx,
        )?;
        Ok(Incoming { local, arrivals, _accepting, expect_memory_mib, prealloc, ram })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits up to `patience` for the next introduced sender or refused connection (so that the caller can
    /// serve its control API between waits).
    pub fn next(&self, patience: Duration) -> Option<Arrival> {
        let Introduction { peer, outcome } = self.arrivals.recv_timeout(patience).ok()?;
        Some(match outcome {
            Ok((link, shape)) => {
                tracing::info!("incoming migration from {peer}");
                Arrival::Sender(IncomingSender { peer, link, shape })
            }
            Err(why) => Arrival::Refused { peer, why },
        })
    }

    /// The RAM prepared for the next sender (--prealloc), for [`IncomingSender::receive`].
    pub fn take_ram(&mut self) -> Option<Arc<GuestRam>> {
        self.ram.take()
    }

    /// After a refused stream: pages of it may be in the prepared RAM, so the next sender gets fresh RAM.
    pub fn refill_ram(&mut self) {
        if self.prealloc && self.ram.is_none() {
            match receiver_ram(true, self.expect_memory_mib) {
                Ok(ram) => self.ram = ram,
                Err(e) => tracing::warn!("{e}; the next sender's pages fault in as they arrive"),
            }
        }
    }
}

impl IncomingSender {
    /// Receives the sender's machine (into `ram` when prepared): builds it with the devices of `cfg`, applies
    /// the pre-copied pages and the final state, acknowledges, announces the guest's MACs, and returns the
    /// machine ready to run. An error means this sender's stream was refused (nothing of it runs); the next
    /// sender may come. Runs on any thread.
    pub fn receive(
        self,
        ram: Option<Arc<GuestRam>>,
        cfg: &MachineConfig,
        console: Box<dyn Write + Send>,
        wake: kemari_devices::host::Wake,
    ) -> Result<Machine, MigrateError> {
        let IncomingSender { link: Channel { mut reader, mut writer, socket }, shape, .. } = self;
        let answer = |w: &mut dyn Write, kind: u8| match shape.version {
            1 => w.write_all(&[kind]),
            _ => send(w, kind, &[]),
        };
        let received = Self::stream(&mut reader, &mut *writer, &socket, shape, ram, cfg, console, wake, answer);
        if let Err(e) = &received {
            if shape.version >= 2 {
                let _ = socket.set_write_timeout(Some(Duration::from_secs(1)));
                frame::refuse(&mut writer, &e.to_string());
            }
        }
        received
    }

    /// The stream after the HELLO, up to the acknowledgement of the final state.
    #[allow(clippy::too_many_arguments)]
    fn stream(
        reader: &mut dyn Read,
        writer: &mut dyn Write,
        socket: &TcpStream,
        shape: Shape,
        ram: Option<Arc<GuestRam>>,
        cfg: &MachineConfig,
        console: Box<dyn Write + Send>,
        wake: kemari_devices::host::Wake,
        answer: impl Fn(&mut dyn Write, u8) -> io::Result<()>,
    ) -> Result<Machine, MigrateError> {
        socket.set_read_timeout(Some(SENDER_SILENCE))?;
        let max = crate::persist::max_state_len(shape.memory);
        let cfg = MachineConfig { harts: shape.harts, memory_mib: shape.memory >> 20, ..cfg.clone() };
        let mut m = match ram {
            Some(ram) => Machine::empty_on(ram, &cfg, console, wake)?,
            None => Machine::build(&cfg, console, wake, false)?,
        };
        let mut payload = Vec::new();
        loop {
            let kind = receive_into(reader, &mut payload, max)?;
            match kind {
                PAGES => {
                    m.restore_pages(&payload).map_err(RestoreError::from)?;
                }
                SYNC if payload.is_empty() => answer(writer, SYNCED)?,
                FINAL => {
                    m.restore_into(&payload)?;
                    // From here on this copy runs. Should the acknowledgement not reach the sender, the sender
                    // keeps its guest paused (it cannot tell whether we run), so there is still one active copy.
                    if let Err(e) = answer(writer, ACK) {
                        tracing::warn!("could not acknowledge the final state ({e}); running here anyway");
                    }
                    break;
                }
                k => return Err(MigrateError::Protocol(format!("unexpected message kind {k}"))),
            }
        }
        m.announce();
        Ok(m)
    }
}

/// Reads and checks a sender's HELLO: protocol, machine shape (the memory size `expect_memory_mib` when given).
fn read_hello(stream: &mut dyn Read, expect_memory_mib: Option<u64>) -> Result<Shape, MigrateError> {
    let not_kemari = || MigrateError::Protocol("not a kemari migration stream (no HELLO first)".into());
    let (kind, hello) = match frame::receive(stream, 64) {
        Ok(m) => m,
        Err(FrameError::TooLarge { .. }) => return Err(not_kemari()),
        Err(FrameError::Io(e)) => return Err(MigrateError::Io(e)),
        Err(e) => return Err(e.into()),
    };
    if kind != HELLO {
        return Err(not_kemari());
    }
    let (version, mut rest) = PROTOCOL.accept(&hello).map_err(|why| match why.contains("bad magic") {
        true => not_kemari(),
        false => MigrateError::Protocol(why),
    })?;
    let (Some(harts), Some(memory), []) = (rest.u32(), rest.u64(), rest.rest()) else {
        return Err(MigrateError::Protocol(format!("HELLO of {} bytes, expected 20", hello.len())));
    };
    if memory % (1 << 20) != 0 {
        return Err(MigrateError::Protocol(format!("memory size {memory} is not whole MiB")));
    }
    if let Some(mib) = expect_memory_mib.filter(|&mib| mib != memory >> 20) {
        return Err(MigrateError::Protocol(format!(
            "the sender's guest has {} MiB of RAM, this receiver was given --memory {mib}",
            memory >> 20
        )));
    }
    Ok(Shape { harts: harts as usize, memory, version })
}
