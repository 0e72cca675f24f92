//! Live migration over TCP, through the machine seam only: full-memory pre-copy while the guest runs,
//! dirty-page rounds until the rest fits the downtime budget, then stop-and-copy of the whole machine state
//! (the same encoding as snapshots). The sender is part of the runtime's run state ([`Outgoing`], advanced
//! between rounds); the receiver ([`Incoming`]) waits before any machine exists and builds one of the
//! sender's shape.
//!
//! ```text
//!  sender                                   receiver (kemari run --incoming ADDR)
//!  HELLO  "KMIG", version u32, CPUs u32, memory bytes u64, architecture tag [u8; 4] (version 3 on)
//!                                       ──►  builds an empty machine of that shape
//!                                      ◄──  READY (empty; version 3 on), or REFUSE (reason)
//!  PAGES  state stream of PAGS sections ──► writes the pages (repeated: pre-copy, then dirty rounds)
//!  SYNC   (empty)                       ──► once everything before it is applied:
//!                                      ◄──  SYNCED (empty)
//!  FINAL  full state stream (dirty pages) ► restores everything on top
//!                                      ◄──  ACK (empty); the receiver runs, announces MACs, the sender exits
//!                                      ◄──  REFUSE (reason) instead, for whatever the receiver will not take
//! ```
//!
//! Messages use the framing both kemari protocols share (`kemari_transport::frame`); the receiver caps lengths
//! and validates payloads like any state stream. Version 2 frames the answers. Version 3 names the
//! architecture (earlier senders are RISC-V ones) and waits for READY, sent once the receiver built its
//! machine, before it streams: a sender turned away (its HELLO, or a machine the receiver cannot build)
//! reads the reason instead of losing it to a connection reset mid-stream. A receiver still takes a version 1
//! sender, answering it as version 1 did (SYNCED and ACK as bare bytes, no REFUSE), and a sender refused by
//! a receiver that speaks version 2 at most asks again in version 2 (RISC-V machines only). The sender stays
//! the active copy until the ACK: any failure before it leaves the guest running where it was. The stream runs inside the link [`Security`] gives (mutual TLS unless the operator
//! asked for plaintext): with TLS, a receiver reads nothing from, and a sender sends nothing to, a peer that
//! is not a node of the same VM.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::control::{serve_without_guest, Reply};
pub use kemari_machine::precopy::{PageSink, PreCopy, Progress};
use kemari_machine::{Arch, Machine, Pages, Shape};
use kemari_transport::frame::{self, FrameError, Protocol};
use kemari_transport::{Channel, Introduction, Security};

use crate::{Event, Wake};

const HELLO: u8 = 1;
const PAGES: u8 = 2;
const FINAL: u8 = 3;
const ACK: u8 = 4;
const SYNC: u8 = 5;
const SYNCED: u8 = 5;
const READY: u8 = 6;
/// The migration protocol's HELLO preamble and version window. 1: as drawn above, answers as bare bytes.
/// 2: answers framed, REFUSE. 3: the HELLO ends with the architecture.
const PROTOCOL: Protocol = Protocol { name: "migration", magic: *b"KMIG", versions: 1..=3 };
/// The architecture of a sender before version 3.
const FIRST_ARCH: Arch = Arch::Riscv64;
/// How long the sender waits for the receiver to acknowledge the final state.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a sender has for its whole HELLO (an idle or trickling connection is refused after it).
const HELLO_WITHIN: Duration = Duration::from_secs(5);
/// Silence after which the receiver gives up on a sender (the sender streams without pause while it sends).
const SENDER_SILENCE: Duration = Duration::from_secs(30);
/// How long the sender waits for the TCP connection and for the TLS handshake, each.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);
/// How long the sender waits for READY (the receiver builds its machine meanwhile).
const READY_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    PreCopy(String),
    /// The sender's state, which this machine refused.
    #[error("{0}")]
    Invalid(String),
    /// No machine of the sender's shape could be built here.
    #[error("{0}")]
    Build(String),
    #[error("the machine state cannot be encoded: {0}")]
    Save(kemari_machine::StateError),
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

/// Why the receiver closed a stream a write to it failed with `e`: its refusal, when it sent one (a receiver
/// that turns a sender away says why, then closes), else the network error.
fn why_closed(link: &mut Channel, e: io::Error) -> String {
    let _ = link.socket.set_read_timeout(Some(Duration::from_secs(1)));
    match frame::receive(&mut link.reader, 0) {
        Err(FrameError::Refused(why)) => format!("the receiver refused: {why}"),
        _ => format!("network: {e}"),
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
        let mut link = lock(&self.0);
        send(&mut link.writer, PAGES, batch).map_err(|e| why_closed(&mut link, e))
    }

    fn sync(&mut self) -> Result<(), String> {
        let mut link = lock(&self.0);
        send(&mut link.writer, SYNC, &[]).map_err(|e| format!("network: {e}"))?;
        answer(&mut link.reader, SYNCED, "a sync").map_err(|e| e.to_string())
    }
}

/// A live migration from this node under way: the runtime's run state while it lasts.
pub struct Outgoing {
    to: String,
    budget: Duration,
    /// The connection and handshake, made on a thread of their own (the guest runs meanwhile): the link, or
    /// why there is none. Taken once it answered.
    connecting: Option<mpsc::Receiver<Result<Channel, MigrateError>>>,
    /// Set once connected.
    stream: Option<Stream>,
    copy: Option<PreCopy>,
    wake: Wake,
    reply: Sender<Reply>,
    /// Why the guest does not run meanwhile, if it does not (paused before, or since): a failed migration
    /// leaves it so.
    pub(crate) paused: Option<crate::Paused>,
}

/// What a step of a migration came to.
pub enum Step {
    /// Still under way.
    Going,
    /// The receiver acknowledged the final state: it runs the guest now, this copy must not run again.
    Done,
    /// It failed before the receiver could run the guest: the guest carries on here (unless it was paused).
    Failed,
    /// The final state left but no acknowledgement came: the receiver may be running the guest. The guest
    /// stays paused here, so that at most one copy runs; the user decides.
    Unknown,
}

impl Outgoing {
    /// Starts connecting to the receiver at `to` for a machine of `shape`; the pre-copy starts once the link
    /// is up. `reply` gets the outcome (the `migrate` request's answer).
    pub fn start(
        shape: Shape,
        security: Option<&Security>,
        wake: Wake,
        to: &str,
        budget: Duration,
        reply: Sender<Reply>,
        paused: Option<crate::Paused>,
    ) -> Result<Outgoing, MigrateError> {
        let security = security.cloned().ok_or_else(|| {
            MigrateError::Protocol(
                "this node has no link credentials: start it with --tls DIR/NODE (or --insecure-plaintext)".into(),
            )
        })?;
        let (tx, connecting) = mpsc::channel();
        let (addr, wake2) = (to.to_string(), wake.clone());
        std::thread::Builder::new().name("mig-connect".into()).spawn(move || {
            let _ = tx.send(connect(&addr, &security, shape));
            wake2();
        })?;
        Ok(Outgoing {
            to: to.to_string(),
            budget,
            connecting: Some(connecting),
            stream: None,
            copy: None,
            wake,
            reply,
            paused,
        })
    }

    /// What `status` shows: nothing is sent while connecting.
    pub fn progress(&self) -> Progress {
        self.copy.as_ref().map(|c| c.progress.clone()).unwrap_or_default()
    }

    /// Advances the migration by one step; `m` is quiesced (between rounds).
    pub fn step(&mut self, m: &mut dyn Machine) -> Step {
        if let Some(connecting) = self.connecting.take() {
            let started = match connecting.try_recv() {
                Err(mpsc::TryRecvError::Empty) => {
                    self.connecting = Some(connecting);
                    return Step::Going;
                }
                Err(mpsc::TryRecvError::Disconnected) => Err("the connecting thread ended".to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(link)) => {
                    let stream = Arc::new(Mutex::new(link));
                    PreCopy::start(m, self.wake.clone(), self.budget, Box::new(StreamSink(stream.clone())))
                        .map(|copy| (stream, copy))
                        .map_err(|e| format!("network: {e}"))
                }
            };
            match started {
                Ok((stream, copy)) => (self.stream, self.copy) = (Some(stream), Some(copy)),
                Err(e) => {
                    // Nothing was sent: the guest goes on as it was.
                    let _ = self.reply.send(Reply::Error(format!("cannot migrate to {}: {e}", self.to)));
                    return Step::Failed;
                }
            }
        }
        let copy = self.copy.as_mut().expect("a connected migration has its pre-copy");
        let switch = match copy.step(m) {
            Ok(false) => return Step::Going,
            // Stop and copy: the machine is quiesced here (between rounds).
            Ok(true) => self.stop_and_copy(m),
            Err(e) => {
                let _ = self.reply.send(Reply::Error(format!("migration failed: {e}")));
                Err((Step::Failed, MigrateError::PreCopy(e)))
            }
        };
        match switch {
            Ok(()) => Step::Done,
            Err((step, e)) => {
                // The receiver sees the connection drop and gives up.
                match step {
                    Step::Unknown => tracing::warn!(
                        "live migration: no acknowledgement of the final state ({e}); the guest stays paused"
                    ),
                    _ => tracing::warn!("live migration failed: {e}"),
                }
                step
            }
        }
    }

    /// Stops the guest, sends the final state and waits for the receiver's acknowledgement; replies to the
    /// `migrate` request either way.
    fn stop_and_copy(&mut self, m: &mut dyn Machine) -> Result<(), (Step, MigrateError)> {
        let (Some(stream), Some(copy)) = (self.stream.take(), self.copy.take()) else {
            unreachable!("stop-and-copy of a connected migration")
        };
        let reply = &self.reply;
        let stop = Instant::now();
        m.stop_time();
        let elapsed = copy.elapsed();
        let mut progress = copy.finish();
        let pages = m.take_dirty();
        let state = match m.save(Pages::Only(&pages)) {
            Ok(state) => state,
            Err(e) => {
                // Nothing of the final state left: the guest resumes here.
                let _ = reply.send(Reply::Error(format!("migration failed: the machine state cannot be encoded: {e}")));
                return Err((Step::Failed, MigrateError::Save(e)));
            }
        };
        // The pre-copy thread is done with the stream.
        let mut stream = lock(&stream);
        if let Err(e) = send(&mut stream.writer, FINAL, &state) {
            // Not all of it was handed to the kernel, so the receiver cannot have it all.
            let _ = reply.send(Reply::Error(format!("migration failed: network: {e}")));
            return Err((Step::Failed, e.into()));
        }
        let acked = (|| {
            stream.socket.set_read_timeout(Some(ACK_TIMEOUT))?;
            answer(&mut stream.reader, ACK, "the final state")
        })();
        if let Err(MigrateError::Refused(why)) = acked {
            // The receiver said it will not run this state: the guest carries on here.
            let _ = reply.send(Reply::Error(format!("migration failed: the receiver refused the final state: {why}")));
            return Err((Step::Failed, MigrateError::Refused(why)));
        }
        if let Err(e) = acked {
            let _ = reply.send(Reply::Error(format!(
                "migration outcome unknown: the final state was sent but not acknowledged ({e}). The receiver \
                 may be running the guest, so it stays paused here: resume it (kemari ctl resume) only if the \
                 receiver is not running it"
            )));
            return Err((Step::Unknown, e));
        }
        let downtime = stop.elapsed();
        progress.bytes += state.len() as u64;
        let _ = reply.send(Reply::Migrated {
            rounds: progress.round,
            bytes: progress.bytes,
            total_millis: (elapsed + downtime).as_millis() as u64,
            downtime_micros: downtime.as_micros() as u64,
        });
        Ok(())
    }
}

/// The HELLO of protocol `version` (2 or 3) for a machine of `shape`.
fn hello(shape: Shape, version: u32) -> Vec<u8> {
    let mut hello = PROTOCOL.magic.to_vec();
    hello.extend_from_slice(&version.to_le_bytes());
    hello.extend_from_slice(&(shape.cpus as u32).to_le_bytes());
    hello.extend_from_slice(&shape.memory.to_le_bytes());
    if version >= 3 {
        hello.extend_from_slice(&shape.arch.tag());
    }
    hello
}

/// Connects to the receiver at `to`, makes the link's handshake and introduces the machine, in the newest
/// version. A receiver that speaks only up to version 2 (a kemari from before version 3, which refuses it
/// saying so) is asked again in version 2 when the machine is a RISC-V one, all that version knows: so the
/// nodes can be upgraded one at a time, and a guest can still move to a node not upgraded yet.
fn connect(to: &str, security: &Security, shape: Shape) -> Result<Channel, MigrateError> {
    let newest = *PROTOCOL.versions.end();
    match connect_as(to, security, shape, newest) {
        Err(MigrateError::Refused(why)) if shape.arch == FIRST_ARCH && speaks_up_to_2(&why, newest) => {
            tracing::info!("the receiver at {to} speaks migration protocol 2 at most: migrating in version 2");
            connect_as(to, security, shape, 2)
        }
        connected => connected,
    }
}

/// Whether `why`, a receiver's refusal of version `newest`, says it speaks versions up to 2. These are the
/// words of `frame::Protocol::accept` as the kemari binaries of protocol 2 have them, frozen there: this
/// literal must not follow later changes to `accept`.
fn speaks_up_to_2(why: &str, newest: u32) -> bool {
    why.contains(&format!("migration protocol version {newest}, this kemari speaks 1 to 2"))
}

/// [`connect`] in protocol `version`; from version 3 on, up to the receiver's READY.
fn connect_as(to: &str, security: &Security, shape: Shape, version: u32) -> Result<Channel, MigrateError> {
    let addr = to.to_socket_addrs()?.next().ok_or_else(|| io::Error::other(format!("{to}: no address")))?;
    let sock = TcpStream::connect_timeout(&addr, CONNECT_WITHIN)?;
    sock.set_nodelay(true)?;
    let mut link = security.connect(sock, CONNECT_WITHIN)?;
    send(&mut link.writer, HELLO, &hello(shape, version))?;
    if version >= 3 {
        link.socket.set_read_timeout(Some(READY_WITHIN))?;
        answer(&mut link.reader, READY, "the HELLO")?;
        link.socket.set_read_timeout(None)?;
    }
    Ok(link)
}

/// The receiving end of live migration (`kemari run --incoming ADDR`): listens, makes each connection's
/// handshake and reads its HELLO on a thread of its own (so an idle or trickling peer blocks neither the
/// caller nor a real sender), and hands over introduced senders. A refused stream leaves it ready for the
/// next sender.
pub struct Incoming {
    local: SocketAddr,
    arrivals: mpsc::Receiver<Introduction<Announced>>,
    /// Accepting goes on while this lives.
    _accepting: kemari_transport::Introductions,
}

/// Introductions (handshake and HELLO) under way at once, at most; more connections are closed at once.
const MAX_INTRODUCTIONS: usize = 16;

/// The machine a sender announced, and the protocol version it speaks.
#[derive(Clone, Copy, Debug)]
struct Announced {
    shape: Shape,
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
    announced: Announced,
}

impl Incoming {
    /// Listens on `addr` for senders of `arch` machines (of `expect_memory_mib` MiB of RAM, when given).
    pub fn bind(
        addr: &str,
        security: Security,
        arch: Arch,
        expect_memory_mib: Option<u64>,
    ) -> Result<Incoming, MigrateError> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let (tx, arrivals) = mpsc::channel();
        let hello = move |r: &mut dyn Read| {
            read_hello(r, arch, expect_memory_mib).map_err(|e| match e {
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
        Ok(Incoming { local, arrivals, _accepting })
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
            Ok((link, announced)) => {
                tracing::info!("incoming migration from {peer}");
                Arrival::Sender(IncomingSender { peer, link, announced })
            }
            Err(why) => Arrival::Refused { peer, why },
        })
    }
}

impl IncomingSender {
    /// The machine the sender announced.
    pub fn shape(&self) -> Shape {
        self.announced.shape
    }

    /// Turns the sender away, telling it why (senders from version 2 on hear it).
    pub fn refuse(mut self, why: &str) {
        if self.announced.version >= 2 {
            let _ = self.link.socket.set_write_timeout(Some(Duration::from_secs(1)));
            frame::refuse(&mut self.link.writer, why);
        }
    }

    /// Receives the sender's machine into the empty one `build` makes of its shape: applies the pre-copied
    /// pages and the final state, acknowledges, announces the guest's MACs, and returns the machine ready to
    /// run. An error means this sender's stream was refused (nothing of it runs); the next sender may come.
    /// Runs on any thread.
    pub fn receive<M: Machine>(self, build: impl FnOnce(Shape) -> Result<M, String>) -> Result<M, MigrateError> {
        let IncomingSender { link: Channel { mut reader, mut writer, socket }, announced, .. } = self;
        let answer = |w: &mut dyn Write, kind: u8| match announced.version {
            1 => w.write_all(&[kind]),
            _ => send(w, kind, &[]),
        };
        let received = (|| -> Result<M, MigrateError> {
            socket.set_read_timeout(Some(SENDER_SILENCE))?;
            let mut m = build(announced.shape).map_err(MigrateError::Build)?;
            if announced.version >= 3 {
                send(&mut *writer, READY, &[])?;
            }
            stream(&mut reader, &mut *writer, &mut m, answer)?;
            Ok(m)
        })();
        if let Err(e) = &received {
            if announced.version >= 2 {
                let _ = socket.set_write_timeout(Some(Duration::from_secs(1)));
                frame::refuse(&mut writer, &e.to_string());
            }
        }
        received
    }
}

/// The stream after the HELLO, up to the acknowledgement of the final state, into `m`.
fn stream(
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    m: &mut dyn Machine,
    answer: impl Fn(&mut dyn Write, u8) -> io::Result<()>,
) -> Result<(), MigrateError> {
    let max = m.max_state_len();
    let mut payload = Vec::new();
    loop {
        let kind = receive_into(reader, &mut payload, max)?;
        match kind {
            PAGES => {
                m.restore_pages(&payload).map_err(|e| MigrateError::Invalid(format!("invalid state: {e}")))?;
            }
            SYNC if payload.is_empty() => answer(writer, SYNCED)?,
            FINAL => {
                m.apply_checkpoint(&payload).map_err(|e| MigrateError::Invalid(e.0))?;
                // From here on this copy runs. Should the acknowledgement not reach the sender, the sender keeps
                // its guest paused (it cannot tell whether we run), so there is still one active copy.
                if let Err(e) = answer(writer, ACK) {
                    tracing::warn!("could not acknowledge the final state ({e}); running here anyway");
                }
                break;
            }
            k => return Err(MigrateError::Protocol(format!("unexpected message kind {k}"))),
        }
    }
    m.announce();
    Ok(())
}

/// Reads and checks a sender's HELLO: protocol, machine shape (the architecture `arch`, the memory size
/// `expect_memory_mib` when given).
fn read_hello(stream: &mut dyn Read, arch: Arch, expect_memory_mib: Option<u64>) -> Result<Announced, MigrateError> {
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
    let (Some(cpus), Some(memory)) = (rest.u32(), rest.u64()) else {
        return Err(MigrateError::Protocol(format!("HELLO of {} bytes, too short", hello.len())));
    };
    let sent = match version {
        1 | 2 => Some(FIRST_ARCH),
        _ => rest.take(4).and_then(|t| Arch::from_tag(t.try_into().expect("4 bytes"))),
    };
    let (Some(sent), []) = (sent, rest.rest()) else {
        let expected = if version >= 3 { 24 } else { 20 };
        return Err(MigrateError::Protocol(format!(
            "HELLO of {} bytes, expected {expected} with a known architecture",
            hello.len()
        )));
    };
    if sent != arch {
        return Err(MigrateError::Protocol(format!("the sender runs a {sent} machine, this receiver {arch}")));
    }
    if memory % (1 << 20) != 0 {
        return Err(MigrateError::Protocol(format!("memory size {memory} is not whole MiB")));
    }
    if let Some(mib) = expect_memory_mib.filter(|&mib| mib != memory >> 20) {
        return Err(MigrateError::Protocol(format!(
            "the sender's guest has {} MiB of RAM, this receiver was given --memory {mib}",
            memory >> 20
        )));
    }
    Ok(Announced { shape: Shape { arch: sent, cpus: cpus as usize, memory }, version })
}

/// `run --incoming`: waits on `incoming` until a sender migrates its guest here, and returns that machine (what
/// was typed meanwhile is its first console input); `None` when the user quit. A refused stream is reported
/// and the next sender awaited. The control API is answered all along, also while a sender's stream is
/// received (on a thread of its own): `status` tells what it waits for and what it refused, anything else is
/// refused. `prepare` gives the function that builds the machine for the next sender: at the start, and after
/// each stream that was refused (a builder may hold RAM faulted in beforehand, which that stream wrote to).
pub fn receive_guest<M, B>(incoming: &Incoming, events: &Receiver<Event>, mut prepare: impl FnMut() -> B) -> Option<M>
where
    M: Machine + Send + 'static,
    B: FnOnce(Shape) -> Result<M, String> + Send + 'static,
{
    let listen = incoming.local_addr().to_string();
    kemari_machine::say!("waiting for an incoming migration on {listen}");
    let refusal = format!("no guest runs here yet: waiting for an incoming migration on {listen}");
    let (mut typed, mut refused, mut last_refusal) = (Vec::new(), 0, None);
    let mut build = Some(prepare());
    // The sender whose stream is being received, and where its outcome comes.
    let mut receiving: Option<(String, Receiver<Result<M, MigrateError>>)> = None;
    loop {
        let status = || Reply::Incoming {
            listen: listen.clone(),
            refused,
            last_refusal: last_refusal.clone(),
            receiving_from: receiving.as_ref().map(|(peer, _)| peer.clone()),
        };
        if serve_without_guest(events, &mut typed, status, &refusal).is_break() {
            if let Some((peer, outcome)) = receiving.take() {
                // The stream may be past its acknowledgement, the sender then gave its guest up: leaving now
                // would leave the guest running nowhere. Its outcome decides.
                kemari_machine::say!("quit: the migration from {peer} under way must end first");
                if let Ok(Ok(mut m)) = outcome.recv() {
                    kemari_machine::say!(
                        "the migration from {peer} completed: the guest runs here now (the sender gave it up); \
                         quit again to stop it"
                    );
                    m.push_input(&typed);
                    return Some(m);
                }
            }
            kemari_machine::say!("quit");
            return None;
        }
        let mut refuse = |peer: &str, why: String| {
            kemari_machine::say!("incoming migration refused: {why} (from {peer}); waiting for the next sender");
            refused += 1;
            last_refusal = Some(why);
        };
        if let Some((peer, outcome)) = &receiving {
            let failed = match outcome.try_recv() {
                Ok(Ok(mut m)) => {
                    kemari_machine::say!("migration from the sender complete; running here");
                    m.push_input(&typed);
                    return Some(m);
                }
                Ok(Err(e)) => e.to_string(),
                Err(mpsc::TryRecvError::Empty) => String::new(),
                Err(mpsc::TryRecvError::Disconnected) => "the receiving thread failed".into(),
            };
            if !failed.is_empty() {
                refuse(peer, failed);
                receiving = None;
                build = Some(prepare());
            }
        }
        match incoming.next(Duration::from_millis(20)) {
            None => {}
            Some(Arrival::Refused { peer, why }) => refuse(&peer, why),
            Some(Arrival::Sender(sender)) => match build.take() {
                None => {
                    let why = "another sender's migration is being received";
                    refuse(&sender.peer, why.into());
                    sender.refuse(why);
                }
                Some(b) => {
                    let (tx, rx) = mpsc::channel();
                    let peer = sender.peer.clone();
                    let spawned = std::thread::Builder::new().name("mig-receive".into()).spawn(move || {
                        let _ = tx.send(sender.receive(b));
                    });
                    match spawned {
                        Ok(_) => receiving = Some((peer, rx)),
                        Err(e) => {
                            refuse(&peer, format!("cannot start receiving: {e}"));
                            build = Some(prepare());
                        }
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_receiver_of_protocol_2_at_most_is_asked_again() {
        let old = "protocol: migration protocol version 3, this kemari speaks 1 to 2: upgrade this node";
        assert!(speaks_up_to_2(old, 3));
        for other in [
            "protocol: migration protocol version 3, this kemari speaks 1 to 4: upgrade the other node",
            "protocol: the sender runs a x86-64 machine, this receiver riscv64",
            "protocol: the sender's guest has 64 MiB of RAM, this receiver was given --memory 256",
            "another sender's migration is being received",
        ] {
            assert!(!speaks_up_to_2(other, 3), "{other}");
        }
    }
}
