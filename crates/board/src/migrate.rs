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
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kemari_memory::GuestRam;
use kemari_transport::frame::{self, FrameError, Protocol};
pub use kemari_transport::Deadline;
use kemari_transport::{Channel, Introduction, Security};

use crate::control::Reply;
use crate::machine::{receiver_ram, BuildError, Machine, MachineConfig, RunOutcome};
use crate::persist::{Pages, RestoreError};
pub use kemari_machine::precopy::{PageSink, PreCopy, Progress};

const HELLO: u8 = 1;
const PAGES: u8 = 2;
const FINAL: u8 = 3;
const ACK: u8 = 4;
const SYNC: u8 = 5;
const SYNCED: u8 = 5;
/// The migration protocol's HELLO preamble and version window. 1: as drawn above, answers as bare bytes.
/// 2: answers framed, REFUSE.
const PROTOCOL: Protocol = Protocol { name: "migration", magic: *b"KMIG", versions: 1..=2 };
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
                    PreCopy::start(self, self.wake.clone(), mig.budget, Box::new(StreamSink(stream.clone())))
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
