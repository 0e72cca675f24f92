//! The primary: runs the guest, and before any effect leaves the VM brings the secondary up to date.
//!
//! The loop is the runtime's (`kemari_runtime::run`); this is its [`Driver`]. Between two rounds the machine is
//! quiesced (CPUs at instruction boundaries, device work done), which is where this driver checkpoints:
//!
//! ```text
//!  trigger (policy) → take dirty log → save(dirty pages + whole state + held effects) → queue for the sender
//!  thread → [strict: wait for ACK] → guest runs on … ACK(epoch) → arbiter check → gate releases what the
//!  checkpoint covers
//! ```
//!
//! Phases: *connecting* (the guest runs unprotected, effects pass at once) → *syncing* (full pre-copy while
//! the guest runs; with replicated disks the secondary's copies are compared with ours meanwhile and brought in
//! step, `disks.rs`; then the first checkpoint, from which on the gate holds) → *protected* once that
//! checkpoint is acknowledged. Losing the secondary: *confirming* — the gate keeps holding until the arbiter
//! confirms this node is still the active one and the fence is bumped (the stale replica can then never take
//! over); only then are the held effects released and the guest goes on *unprotected*, waiting for a new
//! secondary. Each new session starts its checkpoint epochs at 1 again (a new standby knows nothing of the
//! last one's).
//!
//! The arbiter's answers are typed, and only proof that another node is active is final: a node that finds
//! itself fenced stops without releasing anything ([`Ended::Fenced`]). A lease that lapsed by our own clock
//! (a release that took longer than the lease, a loaded host) is renewed and checked again; an arbiter that
//! does not answer (a slow or unreachable store) only delays releases: the gate holds, and the next round
//! asks again.
//!
//! Console output comes a byte per effect; under policy `event` a line would cost a checkpoint per byte. So
//! while only console output is pending, the trigger waits for the end of the burst: a line ends, the guest
//! stops writing for [`CONSOLE_QUIET`], or [`CONSOLE_BURST`] passed since its first byte (console latency stays
//! bounded). Any other pending effect (a frame, a block write) triggers as before, taking the console bytes
//! along.

use std::io::{BufWriter, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kemari_devices::gate::{Effect, Input, OutputGate};
use kemari_devices::host::Wake;
use kemari_machine::precopy::{PageSink, PreCopy};
use kemari_machine::{Machine, Pages, RunOutcome};
use kemari_runtime::control::Protection;
pub use kemari_runtime::Ended;
use kemari_runtime::{Driver, Event, MAX_IDLE};
use kemari_transport::{Channel, Security};

use crate::arbiter::{Arbiter, ArbiterError};
use crate::disks::{self, Comparison};
use crate::metrics::{Metrics, SharedMetrics};
use crate::protocol::Outbound;
use crate::wire::{self, Hello, LastHeard, Tracked};
use crate::{inputs, Options, Storage, SyncPolicy};

/// Checkpoints sent but not yet acknowledged, at most (speculative mode); the guest waits beyond that.
const MAX_IN_FLIGHT: usize = 8;
/// Downtime budget of the pre-copy's last round: the first checkpoint carries what is dirty after it.
const PRECOPY_BUDGET: Duration = Duration::from_millis(10);
/// Back-off between attempts to protect again after a lost secondary.
const MIN_RECONNECT: Duration = Duration::from_secs(1);
const MAX_RECONNECT: Duration = Duration::from_secs(16);
/// Bytes of frames logged on arrival that one INPUT message carries at most (beyond one frame).
const ARRIVALS_PER_MESSAGE: usize = 1 << 20;
/// Messages queued for the sender thread (back-pressure on the machine loop beyond that).
const SEND_QUEUE: usize = 16;
/// Held effects beyond this many bytes are not left to pile up: the pre-copy ends (the first checkpoint covers
/// them) and the guest waits for acknowledgements, so a checkpoint never carries more than the state format
/// accepts (the gate section's cap is 256 MiB; one round of the guest adds far less than the rest).
const HELD_HIGH_WATER: u64 = 64 << 20;
/// The TCP connection and the TLS handshake to the secondary, each within this.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);
/// At most one warning per this interval about an arbiter that does not answer.
const WARN_EVERY: Duration = Duration::from_secs(5);
/// A console burst ends when the guest wrote nothing more for this long...
pub const CONSOLE_QUIET: Duration = Duration::from_millis(2);
/// ...or at the latest this long after its first byte.
pub const CONSOLE_BURST: Duration = Duration::from_millis(20);

/// What the primary needs besides the machine.
pub struct PrimaryConfig {
    /// The secondary to protect to (`HOST:PORT`); `None` runs active without protection (a node that took
    /// over, until re-protection).
    pub peer: Option<String>,
    pub opts: Options,
    pub arbiter: Box<dyn Arbiter>,
    /// The disk images, in order (the secondary checks the sizes of its own against them; with replicated
    /// storage each session compares the contents).
    pub disks: Vec<PathBuf>,
    /// How the link to the secondary is secured.
    pub security: Security,
    /// Wakes the machine loop (an acknowledgement arrived).
    pub wake: Wake,
    /// Metrics to continue (a node that failed over keeps its figures), or fresh ones.
    pub metrics: Option<SharedMetrics>,
}

struct Outgoing {
    kind: u8,
    epoch: Option<u64>,
    body: Arc<Vec<u8>>,
}

/// The link's writer, shared by its sender thread and the tap readers. A frame logged on arrival is written to
/// the secondary by the tap reader that received it when the link is idle (nobody writes, and the socket's
/// send buffer has ample room, so the write does not wait for the peer), microseconds after it reached this
/// host rather than after two thread handoffs: a request that dies with the primary is one its client resends
/// only after its retransmission timeout (200 ms). Otherwise the sender thread writes it next to its messages.
struct LinkWriter {
    stream: Mutex<BufWriter<Box<dyn Write + Send>>>,
    /// Frames logged on arrival and not written yet, in arrival order.
    arrivals: Mutex<Vec<Input>>,
    socket: TcpStream,
}

impl LinkWriter {
    /// Takes the frames waiting now and writes them to `w`, the locked stream, in INPUT messages of up to
    /// [`ARRIVALS_PER_MESSAGE`] bytes. One take: frames that arrive meanwhile wait for the next call, so a
    /// flood of input does not hold back what the sender thread has queued (checkpoints, heartbeats).
    fn write_arrivals(&self, w: &mut BufWriter<Box<dyn Write + Send>>) -> std::io::Result<()> {
        let waiting = std::mem::take(&mut *self.arrivals.lock().expect("arrivals lock"));
        let mut batch: &[Input] = &waiting;
        while !batch.is_empty() {
            // As many as fit in one message, and at least one.
            let mut bytes = 0;
            let n = batch
                .iter()
                .position(|i| {
                    bytes += i.bytes.len();
                    bytes > ARRIVALS_PER_MESSAGE
                })
                .map_or(batch.len(), |p| p.max(1));
            wire::send(w, wire::INPUT, &[&inputs::encode(&batch[..n])])?;
            batch = &batch[n..];
        }
        Ok(())
    }

    /// A frame was logged: the tap reader that received it writes what waits at once when nobody else writes
    /// and the socket can take twice that without waiting for the peer; else it leaves it to the sender
    /// thread, which `nudge` wakes (a full queue means that thread is busy, and it writes arrivals around each
    /// message anyway). Never waits for the peer.
    fn arrived(&self, input: Input, nudge: &SyncSender<Outgoing>) {
        let waiting: usize = {
            let mut arrivals = self.arrivals.lock().expect("arrivals lock");
            arrivals.push(input);
            arrivals.iter().map(|i| i.bytes.len() + INPUT_FRAMING).sum()
        };
        if let Ok(mut w) = self.stream.try_lock() {
            if 2 * waiting as i64 + TLS_RECORD_SLACK < self.send_room() {
                // A failed write shows up to the sender thread, which closes the link.
                let _ = self.write_arrivals(&mut w);
                return;
            }
        }
        let _ = nudge.try_send(Outgoing { kind: NUDGE, epoch: None, body: Arc::default() });
    }

    /// Payload bytes the socket's send buffer takes now without waiting for the peer, about: half of
    /// `SO_SNDBUF` (the kernel doubles the size asked for, to count its own overhead), less what is queued.
    fn send_room(&self) -> i64 {
        let fd = self.socket.as_raw_fd();
        let (mut size, mut queued): (libc::c_int, libc::c_int) = (0, 0);
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt(SO_SNDBUF) writes one int into `size` (`len` says how big it is) and TIOCOUTQ
        // (SIOCOUTQ for TCP) one int, the bytes in the send queue, into `queued`; both live across the calls,
        // and the descriptor is the link's socket, open while `self` is.
        let ok = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, (&raw mut size).cast(), &mut len) == 0
                && libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) == 0
        };
        if ok {
            i64::from(size / 2) - i64::from(queued)
        } else {
            0
        }
    }
}

/// Bytes an INPUT message adds to each frame (its source, number and length), at most.
const INPUT_FRAMING: usize = 16;
/// Bytes TLS adds to a write (record headers and tags), at most, for what a tap reader writes.
const TLS_RECORD_SLACK: i64 = 4096;

/// Not a message: wakes the sender thread to write the frames logged on arrival.
const NUDGE: u8 = 0;

/// The link's queue as the pre-copy's sink: batches go out in order with everything else the link sends.
struct LinkSink(SyncSender<Outgoing>);

impl PageSink for LinkSink {
    fn send(&mut self, batch: &[u8]) -> Result<(), String> {
        // A copy: the link's queue holds its messages until they are written.
        let msg = Outgoing { kind: wire::PAGES, epoch: None, body: Arc::new(batch.to_vec()) };
        self.0.send(msg).map_err(|_| "the link to the secondary closed".to_string())
    }
}

enum Incoming {
    Ack(u64),
    Nack(u64),
    Closed(String),
}

/// The connection to the secondary: a sender thread, a reader thread, and when the peer was last heard.
struct Link {
    /// To the sender thread (taken away to let it finish).
    out: Option<SyncSender<Outgoing>>,
    writer: Arc<LinkWriter>,
    events: Receiver<Incoming>,
    heard: Arc<LastHeard>,
    sender: Option<std::thread::JoinHandle<()>>,
    socket: std::net::TcpStream,
}

impl Link {
    /// Starts the threads. The sender also beats every `heartbeat` the queue is idle, so that a busy machine
    /// loop (a long checkpoint, a loaded host) is not mistaken for a dead primary.
    /// The secondary's DIGESTS (replicated disks) go to `digests`.
    fn open(
        channel: Channel,
        wake: Wake,
        heartbeat: Duration,
        digests: Option<Sender<Vec<u8>>>,
    ) -> std::io::Result<Link> {
        let heard = Arc::new(LastHeard::default());
        heard.touch();
        let (out, queue) = mpsc::sync_channel::<Outgoing>(SEND_QUEUE);
        let (events_tx, events) = mpsc::channel();
        let Channel { reader, writer, socket } = channel;
        let writer = Arc::new(LinkWriter {
            stream: Mutex::new(BufWriter::with_capacity(1 << 16, writer)),
            arrivals: Mutex::default(),
            socket: socket.try_clone()?,
        });
        let (shared, closer) = (writer.clone(), socket.try_clone()?);
        let sender = std::thread::Builder::new().name("ft-send".into()).spawn(move || {
            loop {
                let m = match queue.recv_timeout(heartbeat) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        Outgoing { kind: wire::HEARTBEAT, epoch: None, body: Arc::default() }
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                let epoch = m.epoch.map(u64::to_le_bytes);
                let parts: Vec<&[u8]> = epoch.iter().map(|e| &e[..]).chain([&m.body[..]]).collect();
                let mut w = shared.stream.lock().expect("link writer lock");
                // Frames that arrived before this message go first, those that arrive while it is written
                // (their readers found the writer busy) right after it.
                let sent = shared
                    .write_arrivals(&mut w)
                    .and_then(|()| if m.kind == NUDGE { Ok(()) } else { wire::send(&mut *w, m.kind, &parts) })
                    .and_then(|()| shared.write_arrivals(&mut w));
                if let Err(e) = sent {
                    tracing::debug!("replication send failed: {e}");
                    break;
                }
            }
            // The reader then sees the connection end and reports it.
            let _ = closer.shutdown(std::net::Shutdown::Both);
        })?;
        let mut reader = Tracked::new(reader, heard.clone());
        std::thread::Builder::new().name("ft-recv".into()).spawn(move || loop {
            let received = wire::receive(&mut reader, wire::SMALL_MESSAGE);
            if received.is_ok() {
                reader.heard();
            }
            let ev = match received {
                Ok((wire::ACK, p)) => wire::split_epoch(&p).map(|(e, _)| Incoming::Ack(e)),
                Ok((wire::NACK, p)) => wire::split_epoch(&p).map(|(e, _)| Incoming::Nack(e)),
                Ok((wire::HEARTBEAT, _)) => continue,
                Ok((wire::DIGESTS, p)) if digests.is_some() => {
                    // Gone once the comparison is over or failed (then it said why).
                    let _ = digests.as_ref().expect("checked").send(p);
                    continue;
                }
                Ok((k, _)) => Err(wire::WireError::Protocol(format!("unexpected message kind {k} from the secondary"))),
                Err(e) => Err(e),
            };
            let ev = ev.unwrap_or_else(|e| Incoming::Closed(e.to_string()));
            let closed = matches!(ev, Incoming::Closed(_));
            if events_tx.send(ev).is_err() || closed {
                wake();
                return;
            }
            wake();
        })?;
        Ok(Link { out: Some(out), writer, events, heard, sender: Some(sender), socket })
    }

    /// Queues a message. A full queue is back-pressure: wait, but not past `patience` of silence from the
    /// peer (a partition or a stopped secondary must not wedge the machine loop; the caller then finds the peer
    /// silent and gives up on it). A gone sender thread shows up as a closed link.
    fn send(&self, kind: u8, epoch: Option<u64>, body: Arc<Vec<u8>>, patience: Duration) {
        let Some(out) = &self.out else { return };
        let mut msg = Outgoing { kind, epoch, body };
        loop {
            match out.try_send(msg) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(m)) => {
                    if self.heard.silence() > patience {
                        return;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }

    /// Waits until everything queued went out, the connection failed, or `patience` passed.
    fn close(mut self, patience: Duration) {
        self.out = None;
        let deadline = Instant::now() + patience;
        if let Some(t) = self.sender.take() {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl Drop for Link {
    /// Ends the connection, so that both threads finish even when the peer stopped reading.
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

enum Phase {
    /// Waiting for a connection to the secondary (the guest runs unprotected).
    Connecting(Receiver<Channel>),
    /// Connected: the first synchronisation while `copy` is set, then checkpoints; protected once the first one
    /// is acknowledged.
    Linked { link: Link, copy: Option<Box<FirstSync>>, established: bool },
    /// The secondary is gone; the gate holds until the arbiter confirms this node and the fence is bumped.
    Confirming,
    /// No secondary configured: active, effects pass at once.
    Unprotected,
}

/// A session's first synchronisation: the memory pre-copy and, with replicated disks, the disk comparison.
struct FirstSync {
    pages: PreCopy,
    pages_done: bool,
    disks: Option<Comparison>,
}

/// What the arbiter said about this node being the active one.
enum Confirmed {
    /// It is: release.
    Yes,
    /// No answer now (the store is slow or unreachable, or the lease lapsed and could not be renewed yet):
    /// keep holding and ask again later.
    NotNow(ArbiterError),
}

pub struct Primary {
    cfg: PrimaryConfig,
    metrics: SharedMetrics,
    phase: Phase,
    /// The checkpoints of this session sent and not yet acknowledged (epochs, what they cover, resends).
    flight: Outbound<Arc<Vec<u8>>>,
    /// Highest gate sequence number some checkpoint covers.
    covered: u64,
    /// Highest gate sequence number an acknowledged checkpoint covers (released once the arbiter confirms us).
    acked: u64,
    pending_since: Option<Instant>,
    /// Bytes of inputs sent to the secondary since the last checkpoint.
    inputs_uncovered: u64,
    /// The newest effect seen pending, and when it was first seen (the end of a console burst is a pause).
    newest_seen: u64,
    newest_at: Instant,
    last_checkpoint: Instant,
    last_renew: Instant,
    sync_started: Instant,
    /// Bytes the pre-copy sent (reported when protection is established).
    sync_bytes: u64,
    reconnect_delay: Duration,
    /// When the last warning about an unanswering arbiter was printed.
    warned: Option<Instant>,
    /// How long the runtime may sleep before the next round's work (a pending checkpoint's deadline).
    max_idle: Duration,
}

/// Runs the guest as the active node, in the runtime with a [`Primary`] as its driver, until its run ends or
/// another node is found active.
pub fn run(machine: &mut dyn Machine, events: &Receiver<Event>, cfg: PrimaryConfig) -> Ended {
    let wake = cfg.wake.clone();
    let mut p = match Primary::start(cfg) {
        Ok(p) => p,
        Err(why) => return Ended::Fenced(why),
    };
    // A protected pair does not live-migrate (see `forbids_migration`): no link credentials needed.
    kemari_runtime::run(machine, events, &mut p, kemari_runtime::Config { wake, link_security: None })
}

impl Driver for Primary {
    fn after_round(&mut self, machine: &mut dyn Machine) -> Result<(), String> {
        self.tick(machine)
    }

    fn max_idle(&self) -> Duration {
        self.max_idle
    }

    fn finish(&mut self, machine: &mut dyn Machine, outcome: RunOutcome) -> Ended {
        Primary::finish(self, machine, outcome)
    }

    fn protection(&self, machine: &dyn Machine) -> Option<Protection> {
        let held = machine.gate().lock().expect("gate lock").held().count() as u64;
        Some(self.metrics.lock().expect("metrics lock").report(held))
    }

    fn forbids_migration(&self) -> Option<String> {
        Some("this VM is protected by a secondary: live migration of a protected pair is not supported".into())
    }
}

/// Connects to the secondary from a thread (the guest runs meanwhile), first after `delay`, and makes the
/// link's handshake. A refused handshake (a node of another cluster or VM, a standby without credentials)
/// is reported and retried more slowly: the operator may be fixing the other side.
fn connector(peer: String, security: Security, wake: Wake, delay: Duration) -> Receiver<Channel> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("ft-connect".into()).spawn(move || {
        std::thread::sleep(delay);
        let mut told = String::new();
        loop {
            let sock = peer
                .to_socket_addrs()
                .and_then(|mut a| a.next().ok_or_else(|| std::io::Error::other("no address")))
                .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)));
            let (why, pause) = match sock.map(|s| security.connect(s, CONNECT_WITHIN)) {
                Ok(Ok(channel)) => {
                    let _ = tx.send(channel);
                    wake();
                    return;
                }
                Err(e) => (format!("waiting for the secondary at {peer} ({e})"), Duration::from_millis(200)),
                Ok(Err(e)) => (format!("the secondary at {peer} refused: {e}"), Duration::from_secs(1)),
            };
            if why != told {
                kemari_machine::say!("{why}; the guest runs unprotected");
                told = why;
            }
            std::thread::sleep(pause);
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the connector thread: {e}");
    }
    rx
}

impl Primary {
    fn start(mut cfg: PrimaryConfig) -> Result<Primary, String> {
        let fence = cfg.arbiter.acquire().map_err(|e| format!("cannot take the active role: {e}"))?;
        let metrics = cfg.metrics.take().unwrap_or_else(|| Metrics::new("primary", "connecting"));
        {
            let mut m = metrics.lock().expect("metrics lock");
            m.role = "primary";
            m.fence = fence;
            m.peer = cfg.peer.clone().unwrap_or_default();
            m.state = if cfg.peer.is_some() { "connecting" } else { "unprotected" };
        }
        let phase = match &cfg.peer {
            Some(peer) => {
                kemari_machine::say!("the link to the secondary: {}", cfg.security.describe());
                Phase::Connecting(connector(peer.clone(), cfg.security.clone(), cfg.wake.clone(), Duration::ZERO))
            }
            None => Phase::Unprotected,
        };
        let now = Instant::now();
        Ok(Primary {
            cfg,
            metrics,
            phase,
            flight: Outbound::default(),
            covered: 0,
            acked: 0,
            pending_since: None,
            inputs_uncovered: 0,
            newest_seen: 0,
            newest_at: now,
            last_checkpoint: now,
            last_renew: now,
            sync_started: now,
            sync_bytes: 0,
            reconnect_delay: MIN_RECONNECT,
            warned: None,
            max_idle: MAX_IDLE,
        })
    }

    fn set_state(&self, state: &'static str) {
        self.metrics.lock().expect("metrics lock").state = state;
    }

    fn peer(&self) -> &str {
        self.cfg.peer.as_deref().unwrap_or("-")
    }

    /// Work between two rounds of the machine: lease, link, pre-copy, checkpoint triggers.
    fn tick(&mut self, machine: &mut dyn Machine) -> Result<(), String> {
        self.housekeeping(machine)?;
        self.send_inputs(machine);
        match &mut self.phase {
            Phase::Connecting(rx) => match rx.try_recv() {
                Ok(stream) => self.begin_sync(machine, stream),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => self.phase = Phase::Unprotected,
            },
            Phase::Linked { copy: Some(sync), .. } => {
                if !sync.pages_done {
                    match sync.pages.step(machine) {
                        Ok(done) => sync.pages_done = done,
                        Err(e) => return self.lost(machine, &format!("pre-copy: {e}")),
                    }
                }
                if let Some(e) = sync.disks.as_ref().and_then(Comparison::failed) {
                    return self.lost(machine, &format!("comparing disks: {e}"));
                }
                if sync.pages_done && sync.disks.as_ref().is_none_or(Comparison::done) {
                    self.end_first_sync(machine)?;
                }
            }
            Phase::Linked { copy: None, .. } => self.maybe_checkpoint(machine)?,
            Phase::Confirming => self.go_alone(machine)?,
            Phase::Unprotected => {}
        }
        Ok(())
    }

    /// Lease renewal, heartbeats, incoming acknowledgements and liveness; runs in every phase and while
    /// waiting.
    fn housekeeping(&mut self, machine: &mut dyn Machine) -> Result<(), String> {
        if self.last_renew.elapsed() >= self.cfg.opts.heartbeat {
            match self.cfg.arbiter.renew() {
                Ok(()) => self.last_renew = Instant::now(),
                Err(e) if is_final(&e) => return Err(format!("the arbiter refused to renew this node's lease: {e}")),
                // Not final: releases wait for `check`, which fails by itself once the lease lapsed.
                Err(e) => self.warn(&format!("cannot renew the lease ({e}); outputs wait until it is renewed")),
            }
        }
        self.release_acknowledged(machine)?;
        loop {
            let Phase::Linked { link, .. } = &self.phase else { return Ok(()) };
            let ev = match link.events.try_recv() {
                Ok(ev) => ev,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => Incoming::Closed("reader stopped".into()),
            };
            self.handle(machine, ev)?;
        }
        if let Phase::Linked { link, .. } = &self.phase {
            let silence = link.heard.silence();
            if silence > self.cfg.opts.heartbeat_timeout {
                self.lost(machine, &format!("no heartbeat for {} ms", silence.as_millis()))?;
            }
        }
        Ok(())
    }

    fn handle(&mut self, machine: &mut dyn Machine, ev: Incoming) -> Result<(), String> {
        match ev {
            Incoming::Ack(epoch) => self.acknowledged(machine, epoch),
            Incoming::Nack(epoch) => {
                // The secondary refused `epoch` and drops what follows it: send it and everything after again,
                // in order (each is a delta on the one before).
                let again = match self.flight.nack(epoch) {
                    Ok(again) => again,
                    Err(why) => return self.lost(machine, &why),
                };
                tracing::warn!("the secondary refused checkpoint {epoch}; sending it and its successors again");
                if let Phase::Linked { link, .. } = &self.phase {
                    for (epoch, body) in again {
                        link.send(wire::CHECKPOINT, Some(epoch), body, self.cfg.opts.heartbeat_timeout);
                    }
                }
                Ok(())
            }
            Incoming::Closed(why) => self.lost(machine, &why),
        }
    }

    /// The secondary committed `epoch`: release what it covers (after making sure this node is still the
    /// active one).
    fn acknowledged(&mut self, machine: &mut dyn Machine, epoch: u64) -> Result<(), String> {
        let Some(covered) = self.flight.ack(epoch) else { return Ok(()) };
        self.acked = self.acked.max(covered);
        self.release_acknowledged(machine)?;
        if let Phase::Linked { established: established @ false, .. } = &mut self.phase {
            *established = true;
            let took = self.sync_started.elapsed();
            kemari_machine::say!(
                "protection established with the secondary at {} (first synchronisation: {} MiB in {} ms)",
                self.cfg.peer.as_deref().unwrap_or("-"),
                self.sync_bytes >> 20,
                took.as_millis()
            );
            self.set_state("protected");
            self.reconnect_delay = MIN_RECONNECT;
        }
        Ok(())
    }

    /// Releases what acknowledged checkpoints cover, once the arbiter confirms this node as the active one;
    /// without an answer it stays held for the next round.
    /// (This is also where a write that stalled the gate is tried again, once the user resumed the guest.)
    fn release_acknowledged(&mut self, machine: &mut dyn Machine) -> Result<(), String> {
        let gate = machine.gate().clone();
        // Without a link the gate holds only behind a stalled write: everything may go.
        let target =
            if matches!(self.phase, Phase::Unprotected | Phase::Connecting(_)) { u64::MAX } else { self.acked };
        let first_held = {
            let g = gate.lock().expect("gate lock");
            if g.stalled().is_some() {
                return Ok(());
            }
            let first = g.held().next().map(|(seq, _)| *seq);
            first
        };
        if first_held.is_none_or(|first| first > target) {
            return Ok(());
        }
        if let Confirmed::NotNow(e) = self.confirm_active()? {
            self.warn(&format!("the arbiter does not confirm this node as active yet ({e}); outputs wait"));
            return Ok(());
        }
        if let Err(e) = gate.lock().expect("gate lock").release_through(target) {
            tracing::warn!("releasing effects: {e}");
        }
        Ok(())
    }

    fn confirm_active(&mut self) -> Result<Confirmed, String> {
        confirm_active(self.cfg.arbiter.as_mut())
    }

    /// A warning at most every [`WARN_EVERY`] (a store that does not answer is asked every round).
    fn warn(&mut self, what: &str) {
        if self.warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            kemari_machine::say!("{what}");
            self.warned = Some(Instant::now());
        }
    }

    fn begin_sync(&mut self, machine: &mut dyn Machine, mut channel: Channel) {
        let gate = machine.gate().clone();
        let replicated = self.cfg.opts.storage == Storage::Replicated;
        let sizes: std::io::Result<Vec<u64>> =
            self.cfg.disks.iter().map(|p| kemari_devices::virtio::blk::image_size_at(p)).collect();
        let sizes = match sizes {
            Ok(s) => s,
            Err(e) => {
                kemari_machine::say!("cannot start replication to {}: reading a disk's size: {e}", self.peer());
                return self.reconnect();
            }
        };
        let shape = machine.shape();
        let hello = Hello {
            arch: shape.arch,
            cpus: shape.cpus as u32,
            memory: shape.memory,
            storage: self.cfg.opts.storage,
            disks: sizes,
            node: self.cfg.arbiter.node().to_string(),
            fence: self.metrics.lock().expect("metrics lock").fence,
        };
        let (digests_tx, digests) = mpsc::channel();
        let opened = channel
            .socket
            .set_nodelay(true)
            .and_then(|()| wire::send(&mut channel.writer, wire::HELLO, &[&hello.encode()]))
            .and_then(|()| {
                Link::open(channel, self.cfg.wake.clone(), self.cfg.opts.heartbeat, replicated.then_some(digests_tx))
            })
            .and_then(|link| {
                let out = link.out.clone().expect("a new link's queue");
                let pages =
                    PreCopy::start(machine, self.cfg.wake.clone(), PRECOPY_BUDGET, Box::new(LinkSink(out.clone())))?;
                let disks = replicated.then(|| {
                    let send: disks::Send = Box::new(move |chunk| {
                        let msg = Outgoing { kind: wire::DISK, epoch: None, body: Arc::new(chunk) };
                        out.send(msg).map_err(|_| "the link to the secondary closed".to_string())
                    });
                    Comparison::start(&self.cfg.disks, digests, send)
                });
                Ok((link, FirstSync { pages, pages_done: false, disks: disks.transpose()? }))
            });
        match opened {
            Ok((link, sync)) => {
                let mut g = gate.lock().expect("gate lock");
                // Effects pass until the first checkpoint (the replica starts after them); the chunks of
                // replicated disks written meanwhile are sent again before it.
                g.track_block_writes(replicated.then_some(disks::CHUNK));
                if let Some(d) = &sync.disks {
                    self.metrics.lock().expect("metrics lock").disks = Some(d.progress.clone());
                }
                // From here on the secondary learns every input (replayed on failover): frames as they arrive,
                // console bytes as the guest consumes them.
                g.set_input_log(self.cfg.opts.input_log);
                drop(g);
                if self.cfg.opts.input_log {
                    let (writer, nudge) = (link.writer.clone(), link.out.clone().expect("a new link's queue"));
                    machine.log_frames_on_arrival(Some(Arc::new(move |input| writer.arrived(input, &nudge))));
                }
                self.inputs_uncovered = 0;
                self.sync_started = Instant::now();
                // A new secondary: its first checkpoint is epoch 1 (it knows nothing of an earlier session's).
                self.flight = Outbound::default();
                self.phase = Phase::Linked { link, copy: Some(Box::new(sync)), established: false };
                self.set_state("syncing");
                kemari_machine::say!("synchronising with the secondary at {}", self.peer());
            }
            Err(e) => {
                kemari_machine::say!("cannot start replication to {}: {e}", self.peer());
                self.reconnect();
            }
        }
    }

    /// The pre-copy and the disk comparison are done: from here every effect waits for a checkpoint that
    /// covers it. The chunks of replicated disks the guest wrote during the comparison go again, as they are
    /// now (the disks change no more until a checkpoint is acknowledged), then the first checkpoint.
    fn end_first_sync(&mut self, machine: &mut dyn Machine) -> Result<(), String> {
        let Phase::Linked { link, copy, .. } = &mut self.phase else { return Ok(()) };
        let sync = copy.take().expect("first synchronisation running");
        self.sync_bytes = sync.pages.finish().bytes;
        let written = {
            let mut gate = machine.gate().lock().expect("gate lock");
            gate.set_holding(true);
            let written = gate.take_block_writes();
            gate.track_block_writes(None);
            written
        };
        if let Some(disks) = &sync.disks {
            let patience = self.cfg.opts.heartbeat_timeout;
            let mut send = |chunk: Vec<u8>| {
                link.send(wire::DISK, None, Arc::new(chunk), patience);
                Ok(())
            };
            match disks.resend(&written, &mut send) {
                Ok(bytes) => kemari_machine::say!(
                    "replicated disks in step: {} chunks the guest wrote meanwhile sent again ({} KiB)",
                    written.len(),
                    bytes >> 10
                ),
                Err(e) => return self.lost(machine, &format!("comparing disks: {e}")),
            }
        }
        self.checkpoint(machine)
    }

    /// Waits for a (new) secondary, backing off after failed sessions: a secondary that accepts but never
    /// answers (stopped) must not stall the guest's outputs over and over.
    fn reconnect(&mut self) {
        let delay = self.reconnect_delay;
        self.reconnect_delay = (delay * 2).clamp(MIN_RECONNECT, MAX_RECONNECT);
        self.phase = match &self.cfg.peer {
            Some(peer) => {
                Phase::Connecting(connector(peer.clone(), self.cfg.security.clone(), self.cfg.wake.clone(), delay))
            }
            None => Phase::Unprotected,
        };
    }

    /// Takes a checkpoint when the policy says so; otherwise tells the machine loop how long it may sleep.
    fn maybe_checkpoint(&mut self, machine: &mut dyn Machine) -> Result<(), String> {
        let (newest, console) = {
            let gate = machine.gate().lock().expect("gate lock");
            (gate.next_seq() - 1, console_burst(&gate, self.covered))
        };
        let idle = MAX_IDLE.min(self.cfg.opts.heartbeat);
        self.max_idle = idle;
        if newest <= self.covered {
            // A guest that only takes input: bound the secondary's log.
            if self.inputs_uncovered >= inputs::CHECKPOINT_AFTER {
                return self.checkpoint(machine);
            }
            return Ok(());
        }
        if newest != self.newest_seen {
            (self.newest_seen, self.newest_at) = (newest, Instant::now());
        }
        let since = *self.pending_since.get_or_insert_with(Instant::now);
        let mut wait = match self.cfg.opts.sync {
            SyncPolicy::Event { window } => window.saturating_sub(since.elapsed()),
            SyncPolicy::Interval { period } => period.saturating_sub(self.last_checkpoint.elapsed()),
        };
        if let (Some(line_ended), true, SyncPolicy::Event { .. }) =
            (console, self.cfg.opts.console_bursts, self.cfg.opts.sync)
        {
            let burst = if line_ended {
                Duration::ZERO
            } else {
                CONSOLE_QUIET
                    .saturating_sub(self.newest_at.elapsed())
                    .min(CONSOLE_BURST.saturating_sub(since.elapsed()))
            };
            wait = wait.max(burst);
        }
        if wait.is_zero() {
            self.checkpoint(machine)
        } else {
            self.max_idle = idle.min(wait);
            Ok(())
        }
    }

    /// Sends the inputs the guest consumed since the last call; always before the checkpoint whose state
    /// counts them (one ordered link).
    fn send_inputs(&mut self, machine: &dyn Machine) {
        let Phase::Linked { link, .. } = &self.phase else { return };
        let taken = machine.gate().lock().expect("gate lock").take_inputs();
        if taken.is_empty() {
            return;
        }
        let body = inputs::encode(&taken);
        self.inputs_uncovered += body.len() as u64;
        link.send(wire::INPUT, None, Arc::new(body), self.cfg.opts.heartbeat_timeout);
    }

    /// Captures the machine (quiesced: we are between rounds) and ships it.
    fn checkpoint(&mut self, machine: &mut dyn Machine) -> Result<(), String> {
        let start = Instant::now();
        self.send_inputs(machine);
        // Bounded speculation: with too much unacknowledged, wait like strict mode.
        self.wait_in_flight(machine, MAX_IN_FLIGHT - 1)?;
        if !matches!(self.phase, Phase::Linked { copy: None, .. }) {
            return Ok(());
        }
        let pages = machine.take_dirty();
        let covered = machine.gate().lock().expect("gate lock").next_seq() - 1;
        let body = match machine.save(Pages::Only(&pages)) {
            Ok(body) => Arc::new(body),
            // The dirty log is gone with it: the next secondary gets a full pre-copy, which sends every page.
            Err(e) => return self.lost(machine, &format!("a checkpoint cannot be encoded ({e})")),
        };
        let bytes = body.len() as u64;
        let epoch = self.flight.send(covered, body.clone());
        if let Phase::Linked { link, .. } = &self.phase {
            link.send(wire::CHECKPOINT, Some(epoch), body, self.cfg.opts.heartbeat_timeout);
        }
        self.covered = covered;
        self.inputs_uncovered = 0;
        self.pending_since = None;
        self.last_checkpoint = Instant::now();
        let crowded = machine.gate().lock().expect("gate lock").held_bytes() > HELD_HIGH_WATER;
        if !self.cfg.opts.speculative || crowded {
            self.wait_in_flight(machine, 0)?;
        }
        let pause = start.elapsed().as_micros() as u64;
        self.metrics.lock().expect("metrics lock").checkpoint(pause, pages.len() as u64, bytes);
        Ok(())
    }

    /// Waits (guest paused) until at most `max` checkpoints are unacknowledged, or the link is gone.
    fn wait_in_flight(&mut self, machine: &mut dyn Machine, max: usize) -> Result<(), String> {
        while self.flight.in_flight() > max {
            let Phase::Linked { link, .. } = &self.phase else { return Ok(()) };
            let ev = match link.events.recv_timeout(self.cfg.opts.heartbeat.min(Duration::from_millis(10))) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Incoming::Closed("reader stopped".into())),
            };
            if let Some(ev) = ev {
                self.handle(machine, ev)?;
            }
            self.housekeeping(machine)?;
        }
        Ok(())
    }

    /// The secondary is gone: drop the link and go on alone once the arbiter confirms this node (`go_alone`).
    fn lost(&mut self, machine: &mut dyn Machine, why: &str) -> Result<(), String> {
        let Phase::Linked { .. } = &self.phase else { return Ok(()) };
        kemari_machine::say!("secondary at {} lost: {why}", self.peer());
        if let Phase::Linked { link, .. } = std::mem::replace(&mut self.phase, Phase::Confirming) {
            drop(link);
        }
        // What was in flight will never be acknowledged; everything held waits for the confirmation.
        self.flight = Outbound::default();
        let mut gate = machine.gate().lock().expect("gate lock");
        gate.set_holding(true);
        gate.set_input_log(false);
        gate.track_block_writes(None);
        drop(gate);
        machine.log_frames_on_arrival(None);
        self.set_state("confirming");
        self.go_alone(machine)
    }

    /// Goes on alone only as the confirmed active node, with the fence bumped so the replica left behind can
    /// never take over; then releases what was held. Without an answer from the arbiter it stays `Confirming`
    /// (outputs held) and tries again next round.
    fn go_alone(&mut self, machine: &mut dyn Machine) -> Result<(), String> {
        let bumped = match self.cfg.arbiter.bump_fence() {
            Err(ArbiterError::Expired { .. }) => self.cfg.arbiter.renew().and_then(|()| self.cfg.arbiter.bump_fence()),
            other => other,
        };
        let fence = match bumped {
            Ok(fence) => fence,
            Err(e) if is_final(&e) => {
                return Err(format!("lost the secondary and the arbiter does not confirm this node as active: {e}"))
            }
            Err(e) => {
                self.warn(&format!("lost the secondary; the arbiter does not answer yet ({e}): outputs wait"));
                return Ok(());
            }
        };
        self.last_renew = Instant::now();
        {
            let mut gate = machine.gate().lock().expect("gate lock");
            gate.set_holding(false);
            if let Err(e) = gate.release_through(u64::MAX) {
                tracing::warn!("releasing effects: {e}");
            }
            self.covered = gate.next_seq() - 1;
        }
        self.acked = self.covered;
        self.pending_since = None;
        {
            let mut m = self.metrics.lock().expect("metrics lock");
            m.fence = fence;
            m.state = "unprotected";
        }
        kemari_machine::say!("unprotected: this node stays active without a secondary (fence {fence})");
        self.phase = Phase::Unprotected;
        self.reconnect();
        Ok(())
    }

    /// The guest's run ended: let the secondary catch up so that nothing held is lost, release, and tell it.
    fn finish(&mut self, machine: &mut dyn Machine, outcome: RunOutcome) -> Ended {
        let result = (|| {
            if let Phase::Linked { copy: None, .. } = &self.phase {
                self.checkpoint(machine)?;
                self.wait_in_flight(machine, 0)?;
            }
            // The secondary went away during the final checkpoint: bump the fence before anything leaves.
            let give_up = Instant::now() + (self.cfg.opts.heartbeat_timeout * 10).max(Duration::from_secs(10));
            while matches!(self.phase, Phase::Confirming) {
                if Instant::now() >= give_up {
                    return Err("lost the secondary and the arbiter did not confirm this node as active".into());
                }
                std::thread::sleep(Duration::from_millis(10));
                self.go_alone(machine)?;
            }
            if machine.gate().lock().expect("gate lock").held().count() > 0 {
                // Still held (the link went away during pre-copy).
                self.confirm_until_answered(give_up)?;
                let mut gate = machine.gate().lock().expect("gate lock");
                gate.set_holding(false);
                let _ = gate.release_through(u64::MAX);
            }
            Ok::<(), String>(())
        })();
        if let Err(why) = result {
            return Ended::Fenced(why);
        }
        // The guest ended while its last writes were being released and one failed: nothing can carry it on.
        let stalled = machine.gate().lock().expect("gate lock").stalled().map(str::to_string);
        let outcome = match stalled {
            Some(why) => RunOutcome::Crash(format!(
                "the guest ended, but a disk write it was told had completed could not be performed: {why}"
            )),
            None => outcome,
        };
        if let Phase::Linked { link, .. } = std::mem::replace(&mut self.phase, Phase::Unprotected) {
            // The taps' arrival sinks hold a clone of the link's queue: remove them first, or closing the link
            // waits out the heartbeat timeout for that queue to close.
            machine.log_frames_on_arrival(None);
            link.send(wire::SHUTDOWN, None, Arc::default(), self.cfg.opts.heartbeat_timeout);
            link.close(self.cfg.opts.heartbeat_timeout);
        }
        if let Err(e) = self.cfg.arbiter.release() {
            tracing::warn!("giving up the lease: {e}");
        }
        Ended::Machine(outcome)
    }

    /// The guest ended with outputs held: wait (a while) for the arbiter to confirm this node before releasing
    /// them. Nothing is released without that answer.
    fn confirm_until_answered(&mut self, give_up: Instant) -> Result<(), String> {
        loop {
            match self.confirm_active()? {
                Confirmed::Yes => return Ok(()),
                Confirmed::NotNow(e) if Instant::now() >= give_up => {
                    return Err(format!("the arbiter did not confirm this node as active: {e}"))
                }
                Confirmed::NotNow(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// Asks the arbiter whether this node may release now. A lease that lapsed by our own clock is renewed and
/// asked again (nobody else took it meanwhile: renewal checks that under the store's lock). Err only on proof
/// that another node is active, or that this one holds no lease.
fn confirm_active(arbiter: &mut dyn Arbiter) -> Result<Confirmed, String> {
    let fenced = |e: ArbiterError| format!("this node is no longer the active one: {e}");
    match arbiter.check() {
        Ok(()) => return Ok(Confirmed::Yes),
        Err(e) if is_final(&e) => return Err(fenced(e)),
        Err(ArbiterError::Expired { .. }) => {}
        Err(e) => return Ok(Confirmed::NotNow(e)),
    }
    match arbiter.renew() {
        Ok(()) => {}
        Err(e) if is_final(&e) => return Err(fenced(e)),
        Err(e) => return Ok(Confirmed::NotNow(e)),
    }
    match arbiter.check() {
        Ok(()) => Ok(Confirmed::Yes),
        Err(e) if is_final(&e) => Err(fenced(e)),
        Err(e) => Ok(Confirmed::NotNow(e)),
    }
}

/// When only console output is pending (gate sequence numbers after `covered`): whether its last byte ends a
/// line. `None` when anything else is pending too (or nothing is).
fn console_burst(gate: &OutputGate, covered: u64) -> Option<bool> {
    let mut last = None;
    for (_, effect) in gate.held().filter(|(seq, _)| *seq > covered) {
        match effect {
            Effect::Console(bytes) => last = bytes.last().copied().or(last),
            _ => return None,
        }
    }
    last.map(|b| b == b'\n')
}

/// Only proof that another node holds the active role (or that this one holds no lease) is final; anything
/// else (a slow store, a lapsed lease) means "not now".
fn is_final(e: &ArbiterError) -> bool {
    matches!(e, ArbiterError::Fenced { .. } | ArbiterError::NotHeld { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arbiter::{FileArbiter, TakeOver, LOCK_FILE};
    use std::os::fd::AsRawFd;

    fn store(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kemari-primary-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A release that outlasted the lease (a slow disk) lapses it by our own clock; nobody took over, so the
    /// node renews and goes on instead of fencing itself.
    #[test]
    fn a_lapsed_lease_is_renewed_not_fenced() {
        let dir = store("lapsed");
        let mut a = FileArbiter::new(&dir, "pri", Duration::from_millis(50)).unwrap();
        a.acquire().unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert!(matches!(a.check(), Err(ArbiterError::Expired { .. })), "the lease lapsed by the node's clock");
        assert!(matches!(confirm_active(&mut a), Ok(Confirmed::Yes)));
        a.check().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Only another node's holding is final: after a takeover, the old holder is fenced.
    #[test]
    fn another_active_node_is_final() {
        let dir = store("taken");
        let mut a = FileArbiter::new(&dir, "pri", Duration::from_millis(50)).unwrap();
        let fence = a.acquire().unwrap();
        std::thread::sleep(Duration::from_millis(80));
        // The lease expired by the wall clock and the active lock is still held: `b` waits for expiry only.
        let mut b = FileArbiter::new(&dir, "sec", Duration::from_millis(50)).unwrap();
        assert!(matches!(b.take_over(fence), Ok(TakeOver::Won { .. })));
        let err = confirm_active(&mut a).err().expect("fenced");
        assert!(err.contains("no longer the active one"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A store that does not answer in time (its lock held by a stuck writer) means "not now": outputs wait,
    /// the node is not fenced.
    #[test]
    fn an_unanswering_store_only_delays() {
        let dir = store("stuck");
        let mut a = FileArbiter::new(&dir, "pri", Duration::from_secs(5)).unwrap();
        a.acquire().unwrap();
        let stuck = std::fs::File::open(dir.join(LOCK_FILE)).unwrap();
        // SAFETY: flock on a file we own, no memory involved.
        assert_eq!(unsafe { libc::flock(stuck.as_raw_fd(), libc::LOCK_EX) }, 0);
        assert!(matches!(confirm_active(&mut a), Ok(Confirmed::NotNow(_))));
        drop(stuck);
        assert!(matches!(confirm_active(&mut a), Ok(Confirmed::Yes)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
