//! The secondary (`kemari standby`): holds one complete, consistent replica and takes over when the primary
//! fails.
//!
//! Per connection (a *session*): HELLO → an empty machine of the primary's shape with this node's own devices
//! → pre-copy pages → checkpoints. Each checkpoint arrives whole (the reader thread hands over complete
//! messages only), is verified and committed atomically by `Machine::apply_checkpoint`, and only then
//! acknowledged; a checkpoint that fails verification is refused (NACK) and the last committed state stays;
//! the checkpoints already on the wire behind it are dropped until the primary resends it and its successors.
//! With replicated storage each session first brings this node's disk copies in step with the primary's
//! (`disks.rs`: digests of every chunk go to the primary, the chunks that differ come back, all before the
//! first checkpoint); then the block writes a committed checkpoint carries are applied to them at commit, in
//! sequence order, each once.
//!
//! The primary counts as failed when the connection ends or nothing was heard for the heartbeat timeout.
//! Failover: take the active role through the arbiter (refused for good if the primary went on without us:
//! the fence moved), re-issue the effects held in the committed checkpoint, announce the guest's MACs, and hand
//! the machine back to run as the active node.

use std::net::{TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kemari_machine::{Arch, Machine, Shape};
use kemari_runtime::control::{serve_without_guest, Reply};
use kemari_runtime::Event;
use kemari_transport::{frame, Channel, Security};

use crate::arbiter::{Arbiter, TakeOver};
use crate::disks::{self, Replica};
use crate::inputs::InputLog;
use crate::metrics::{Metrics, SharedMetrics};
use crate::protocol::{Inbound, Offered};
use crate::wire::{self, Hello, LastHeard, Tracked, WireError};
use crate::{Options, Storage};

/// Bytes one page takes inside a checkpoint (index + data), to report page counts.
const PAGE_RECORD: u64 = 8 + 4096;
/// Connections whose HELLO is being read at once, at most; more are closed at once (one peer must not keep
/// the standby from hearing the real primary).
const MAX_HANDSHAKES: usize = 16;
/// Reads of the arbiter a primary's introduction gets before "not now" becomes a refusal (each read has the
/// arbiter's own timeout: 500 ms for etcd).
const ARBITER_READ_ATTEMPTS: u32 = 4;

/// A connection that made the link's handshake and sent a HELLO (or failed to), from a handshake thread.
type Handshake = kemari_transport::Introduction<Hello>;

/// A primary that introduced itself.
struct Offer {
    channel: Channel,
    peer: String,
    hello: Hello,
}

/// Builds an empty machine of a primary's shape for its replica (zeroed RAM, this node's devices).
pub type BuildReplica<M> = Box<dyn FnMut(Shape) -> Result<M, String> + Send>;

pub struct StandbyConfig<M> {
    pub listen: String,
    /// How the link to the primary is secured: with TLS, only a node of this VM's cluster gets a hearing.
    pub security: Security,
    pub opts: Options,
    pub arbiter: Box<dyn Arbiter>,
    /// The architecture of the machines this node builds: a primary of another is refused.
    pub arch: Arch,
    /// This node's disk images, in order (their sizes must match the primary's; replicated storage writes them).
    pub disks: Vec<std::path::PathBuf>,
    /// Builds the replica once a primary introduced itself (CPUs and memory come from its HELLO).
    pub build: BuildReplica<M>,
    /// CPUs given on this node's command line, if any: the primary must have as many.
    pub expect_cpus: Option<usize>,
    /// MiB of guest RAM given on this node's command line, if any: the primary must have as much.
    pub expect_memory_mib: Option<u64>,
}

/// How standing by ended.
pub enum StandbyEnd<M> {
    /// This node took over: run `machine` as the active node.
    TookOver { machine: Box<M>, arbiter: Box<dyn Arbiter>, metrics: SharedMetrics },
    /// The primary's guest ended (powered off); so does this replica.
    Shutdown,
    /// The user quit this standby (Ctrl-A x, SIGTERM) while no guest ran here.
    Quit,
}

#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error(
        "the primary went on without this secondary (arbiter fence {fence}, this replica is from fence {ours}): \
         its state is stale, so this node must not take over"
    )]
    Stale { fence: u64, ours: u64 },
    #[error("applying a committed checkpoint's block writes to this node's disk failed: {0}")]
    Disk(std::io::Error),
}

enum SessionEnd<M> {
    /// The primary is gone after at least one commit: fail over.
    Lost {
        why: String,
        machine: Box<M>,
        hello: Hello,
        /// Inputs the primary's guest consumed after the committed state (replayed at failover).
        inputs: InputLog,
    },
    /// The session ended before protection was established: wait for the next primary.
    Retry(String),
    Shutdown,
    Quit,
}

/// Waits for a primary, replicates it, and fails over when it dies.
pub fn standby<M: Machine>(mut cfg: StandbyConfig<M>, input: &Receiver<Event>) -> Result<StandbyEnd<M>, StandbyError> {
    let listener =
        TcpListener::bind(&cfg.listen).map_err(|source| StandbyError::Listen { addr: cfg.listen.clone(), source })?;
    kemari_machine::say!("standby: waiting for a primary on {} ({})", cfg.listen, cfg.security.describe());
    let (conns_tx, conns) = mpsc::channel();
    let within = cfg.opts.heartbeat_timeout.max(Duration::from_secs(2));
    let hello = |r: &mut dyn std::io::Read| {
        wire::receive(r, wire::SMALL_MESSAGE)
            .and_then(|(k, p)| match k {
                wire::HELLO => Hello::decode(&p),
                k => Err(WireError::Protocol(format!("expected HELLO, got message kind {k}"))),
            })
            .map_err(|e| e.to_string())
    };
    // Accepting (and turning away a second primary) goes on until this function returns.
    let _accepting = kemari_transport::serve_introductions(
        "ft",
        listener,
        cfg.security.clone(),
        within,
        MAX_HANDSHAKES,
        hello,
        conns_tx,
    )
    .map_err(|source| StandbyError::Listen { addr: cfg.listen.clone(), source })?;
    let metrics = Metrics::new("secondary", "standby");
    let mut s = Standby { metrics, input_bytes: Vec::new() };
    loop {
        let stream = loop {
            if s.serve_events(input).is_break() {
                return Ok(StandbyEnd::Quit);
            }
            match conns.recv_timeout(Duration::from_millis(20)) {
                Ok(c) => break c,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(StandbyError::Listen {
                        addr: cfg.listen.clone(),
                        source: std::io::Error::other("the listener stopped"),
                    })
                }
            }
        };
        let Handshake { peer, outcome } = stream;
        let offer = match outcome {
            Ok((channel, hello)) => Offer { channel, peer, hello },
            Err(e) => {
                kemari_machine::say!("standby: refused a connection from {peer}: {e}");
                continue;
            }
        };
        match s.session(&mut cfg, offer, &conns, input) {
            Ok(SessionEnd::Shutdown) => return Ok(StandbyEnd::Shutdown),
            Ok(SessionEnd::Quit) => return Ok(StandbyEnd::Quit),
            Ok(SessionEnd::Retry(why)) => {
                kemari_machine::say!(
                    "standby: the session ended before protection was established ({why}); waiting for a primary"
                );
                // The status shows no primary until the next one connects.
                let mut m = s.metrics.lock().expect("metrics lock");
                m.state = "standby";
                m.peer.clear();
            }
            Ok(SessionEnd::Lost { why, machine, hello, inputs }) => {
                return s.fail_over(cfg.arbiter, *machine, &hello, inputs, &why, input);
            }
            Err(e) => return Err(e),
        }
    }
}

struct Standby {
    metrics: SharedMetrics,
    /// Console input typed before this node became active, for the guest once it runs here.
    input_bytes: Vec<u8>,
}

impl Standby {
    /// Answers control requests while no guest runs here. Breaks when the user quits.
    fn serve_events(&mut self, input: &Receiver<Event>) -> ControlFlow<()> {
        let metrics = &self.metrics;
        let status = || Reply::Status {
            paused: true,
            cpus: 0,
            memory_mib: 0,
            instret: 0,
            migration: None,
            protection: Some(Box::new(metrics.lock().expect("metrics lock").report(0))),
            io_error: None,
        };
        serve_without_guest(input, &mut self.input_bytes, status, "this node is a standby: no guest runs here")
    }

    fn session<M: Machine>(
        &mut self,
        cfg: &mut StandbyConfig<M>,
        offer: Offer,
        others: &Receiver<Handshake>,
        input: &Receiver<Event>,
    ) -> Result<SessionEnd<M>, StandbyError> {
        let Offer { mut channel, peer, hello } = offer;
        if let Err(why) = self.check_hello(cfg, &hello) {
            kemari_machine::say!("standby: refused the primary at {peer}: {why}");
            // A few bytes; a peer that reads nothing must not hold this loop.
            let _ = channel.socket.set_write_timeout(Some(Duration::from_secs(1)));
            frame::refuse(&mut channel.writer, &why);
            return Ok(SessionEnd::Retry(why));
        }
        let shape = Shape { arch: hello.arch, cpus: hello.cpus as usize, memory: hello.memory };
        let mut machine = match (cfg.build)(shape) {
            Ok(m) => Box::new(m),
            Err(e) => return Ok(SessionEnd::Retry(format!("cannot build the replica machine: {e}"))),
        };
        {
            let mut m = self.metrics.lock().expect("metrics lock");
            m.peer = peer.clone();
            m.fence = hello.fence;
            m.state = "syncing";
        }
        let heard = Arc::new(LastHeard::default());
        heard.touch();
        let (msgs_tx, msgs) = mpsc::channel();
        let Channel { reader, writer: mut out, socket } = channel;
        let mut reader = Tracked::new(reader, heard.clone());
        let cap = wire::session_cap(machine.max_state_len());
        let _ = std::thread::Builder::new().name("ft-recv".into()).spawn(move || loop {
            let m = wire::receive(&mut reader, cap);
            let end = m.is_err();
            if !end {
                reader.heard();
            }
            if msgs_tx.send(m).is_err() || end {
                return;
            }
        });
        // Ends the connection when the session ends, so that the reader thread finishes too.
        let _closer = Closer(socket);
        // The epochs committed, and after a refusal, the wait for its resend (`protocol.rs`).
        let mut epochs = Inbound::default();
        let mut applied_seq = 0u64;
        let mut last_beat = Instant::now();
        let mut inputs = InputLog::default();
        // Replicated disks: this node's copies, and their digests from a thread of their own (heartbeats go on).
        let (mut replica, digests) = if cfg.opts.storage == Storage::Replicated {
            let paths = cfg.disks.clone();
            let refs: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
            let replica = match Replica::open(&refs) {
                Ok(r) => r,
                Err(e) => return Ok(SessionEnd::Retry(format!("cannot open this node's disk copies: {e}"))),
            };
            let (tx, rx) = mpsc::channel();
            let _ =
                std::thread::Builder::new().name("disk-digest".into()).spawn(move || disks::digest_copies(paths, tx));
            (Some(replica), Some(rx))
        } else {
            (None, None)
        };
        let lost = |why: String, machine: Box<M>, committed: u64, inputs: &mut InputLog| {
            if committed == 0 {
                SessionEnd::Retry(why)
            } else {
                SessionEnd::Lost { why, machine, hello: hello.clone(), inputs: std::mem::take(inputs) }
            }
        };
        loop {
            let committed = epochs.committed_epoch();
            if self.serve_events(input).is_break() {
                kemari_machine::say!("standby: quit; the primary at {peer} goes on unprotected");
                return Ok(SessionEnd::Quit);
            }
            // One primary at a time: anyone else is turned away.
            while let Ok(other) = others.try_recv() {
                kemari_machine::say!(
                    "standby: refused a second primary connection from {} while protecting {peer}",
                    other.peer
                );
                if let Ok((mut channel, _)) = other.outcome {
                    // A few bytes into a fresh connection's buffer; never long on this loop's time.
                    let _ = channel.socket.set_write_timeout(Some(Duration::from_millis(100)));
                    frame::refuse(&mut channel.writer, &format!("this standby already protects the primary at {peer}"));
                }
            }
            if last_beat.elapsed() >= cfg.opts.heartbeat {
                let _ = wire::send(&mut out, wire::HEARTBEAT, &[]);
                last_beat = Instant::now();
            }
            while let Some(d) = digests.as_ref().and_then(|rx| rx.try_recv().ok()) {
                match d {
                    Ok(payload) => {
                        let _ = wire::send(&mut out, wire::DIGESTS, &[&payload]);
                    }
                    Err(e) => return Ok(SessionEnd::Retry(format!("reading this node's disk copies: {e}"))),
                }
            }
            let silence = heard.silence();
            if silence > cfg.opts.heartbeat_timeout {
                return Ok(lost(
                    format!("no heartbeat for {} ms", silence.as_millis()),
                    machine,
                    committed,
                    &mut inputs,
                ));
            }
            let msg = match msgs.recv_timeout(Duration::from_millis(10)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => Err(WireError::Closed),
            };
            let (kind, payload) = match msg {
                Ok(m) => m,
                Err(e) => return Ok(lost(e.to_string(), machine, committed, &mut inputs)),
            };
            match kind {
                wire::INPUT => match crate::inputs::decode(&payload) {
                    Ok(taken) => {
                        if !inputs.push(taken) {
                            kemari_machine::say!(
                                "standby: the input log passed {} MiB and was dropped; inputs after checkpoint \
                                 {committed} may not be replayed on failover",
                                crate::inputs::CAP >> 20
                            );
                        }
                    }
                    Err(e) => return Ok(lost(e.to_string(), machine, committed, &mut inputs)),
                },
                wire::DISK if committed == 0 && replica.is_some() => {
                    if let Err(e) = replica.as_mut().expect("checked").write(&payload) {
                        return Ok(SessionEnd::Retry(format!("bad disk chunk from {peer}: {e}")));
                    }
                }
                wire::PAGES if committed == 0 => {
                    if let Err(e) = machine.restore_pages(&payload) {
                        return Ok(SessionEnd::Retry(format!("bad pre-copy pages from {peer}: {e}")));
                    }
                }
                wire::CHECKPOINT => {
                    let (epoch, state) = match wire::split_epoch(&payload) {
                        Ok(x) => x,
                        Err(e) => return Ok(lost(e.to_string(), machine, committed, &mut inputs)),
                    };
                    match epochs.offered(epoch) {
                        Offered::Apply => {}
                        // A resend of what we hold: acknowledge the newest again.
                        Offered::AckAgain => {
                            let _ = wire::send(&mut out, wire::ACK, &[&epoch.to_le_bytes()]);
                            continue;
                        }
                        Offered::Ignore => continue,
                        Offered::OutOfSequence(why) => return Ok(lost(why, machine, committed, &mut inputs)),
                    }
                    if committed == 0 {
                        if let Some(r) = replica.take() {
                            // The first commit builds on the chunks written: make them durable first.
                            if let Err(e) = r.sync() {
                                return Ok(SessionEnd::Retry(format!("making the disk copies durable: {e}")));
                            }
                            kemari_machine::say!(
                                "standby: disk copies in step with the primary's: {} chunks ({} KiB) rewritten",
                                r.chunks,
                                r.bytes >> 10
                            );
                        }
                    }
                    let start = Instant::now();
                    match machine.apply_checkpoint(state) {
                        Ok(()) => {
                            if cfg.opts.storage == Storage::Replicated {
                                let mut gate = machine.gate().lock().expect("gate lock");
                                applied_seq = gate.perform_held_blocks(applied_seq).map_err(StandbyError::Disk)?;
                            }
                            epochs.committed(epoch);
                            let gate = machine.gate().lock().expect("gate lock");
                            inputs.prune(|s| gate.consumed(s));
                            drop(gate);
                            let us = start.elapsed().as_micros() as u64;
                            let bytes = state.len() as u64;
                            {
                                let mut m = self.metrics.lock().expect("metrics lock");
                                m.checkpoint(us, bytes / PAGE_RECORD, bytes);
                                m.state = "protected";
                            }
                            let _ = wire::send(&mut out, wire::ACK, &[&epoch.to_le_bytes()]);
                            if epoch == 1 {
                                kemari_machine::say!(
                                    "protection established: standing by for the primary {} at {peer}",
                                    hello.node
                                );
                            }
                        }
                        Err(e) => {
                            self.metrics.lock().expect("metrics lock").rejected += 1;
                            kemari_machine::say!(
                                "standby: rejected checkpoint {epoch} from {peer}: {e}; keeping checkpoint {committed}"
                            );
                            let _ = wire::send(&mut out, wire::NACK, &[&epoch.to_le_bytes()]);
                            epochs.refused();
                        }
                    }
                }
                wire::HEARTBEAT => {}
                wire::SHUTDOWN => {
                    kemari_machine::say!("standby: the primary's guest ended; so does this replica");
                    return Ok(SessionEnd::Shutdown);
                }
                k => {
                    let why = format!("unexpected message kind {k} from the primary");
                    return Ok(lost(why, machine, committed, &mut inputs));
                }
            }
        }
    }

    fn check_hello<M>(&self, cfg: &mut StandbyConfig<M>, hello: &Hello) -> Result<(), String> {
        if hello.arch != cfg.arch {
            return Err(format!("the primary runs a {} machine, this node {}", hello.arch, cfg.arch));
        }
        if hello.storage != cfg.opts.storage {
            return Err(format!("the primary uses {:?} storage, this node {:?}", hello.storage, cfg.opts.storage));
        }
        // Only what this node's command line gave is checked: the rest comes from the primary.
        if let Some(cpus) = cfg.expect_cpus.filter(|&c| c != hello.cpus as usize) {
            return Err(format!("the primary has {} CPUs, this node was given --cpus {cpus}", hello.cpus));
        }
        if let Some(mib) = cfg.expect_memory_mib.filter(|&m| m != hello.memory >> 20) {
            return Err(format!(
                "the primary has {} MiB of RAM, this node was given --memory {mib}",
                hello.memory >> 20
            ));
        }
        if hello.disks.len() != cfg.disks.len() {
            return Err(format!("the primary has {} disks, this node {}", hello.disks.len(), cfg.disks.len()));
        }
        for (i, (size, path)) in hello.disks.iter().zip(&cfg.disks).enumerate() {
            let ours = kemari_devices::virtio::blk::image_size_at(path).map_err(|e| format!("disk {i}: {e}"))?;
            if ours != *size {
                return Err(format!("disk {i} is {size} bytes on the primary, {ours} here ({})", path.display()));
            }
        }
        let lease = crate::arbiter::read_patiently(&mut *cfg.arbiter, ARBITER_READ_ATTEMPTS)
            .map_err(|e| format!("cannot read the arbiter: {e}"))?;
        if lease.owner != hello.node || lease.fence != hello.fence {
            return Err(format!(
                "the primary {} claims fence {}, but the arbiter names {} with fence {}",
                hello.node, hello.fence, lease.owner, lease.fence
            ));
        }
        Ok(())
    }

    fn fail_over<M: Machine>(
        mut self,
        mut arbiter: Box<dyn Arbiter>,
        mut machine: M,
        hello: &Hello,
        inputs: InputLog,
        why: &str,
        input: &Receiver<Event>,
    ) -> Result<StandbyEnd<M>, StandbyError> {
        let start = Instant::now();
        // What this node's taps received while it stood by, the old primary's guest received too (floods and
        // broadcasts); what it consumed comes from the input log. Frames from now on were never the old
        // primary's inputs: they stay for the guest, also those a client sends in answer to the re-issued
        // output below.
        let stale = machine.discard_received_frames();
        kemari_machine::say!("primary {} lost ({why}): failing over", hello.node);
        self.metrics.lock().expect("metrics lock").state = "failing-over";
        let mut told = false;
        // Polls the arbiter quickly at first: a killed primary's active lock frees within milliseconds of
        // its link closing, and every millisecond here is one in which the guest's peers reach no one. Then
        // more slowly, for a lease that must run out (seconds) or an arbiter across the network.
        let mut pause = Duration::from_micros(200);
        let fence = loop {
            match arbiter.take_over(hello.fence) {
                Ok(TakeOver::Won { fence }) => break fence,
                Ok(TakeOver::Stale { fence }) => {
                    self.metrics.lock().expect("metrics lock").state = "stale";
                    return Err(StandbyError::Stale { fence, ours: hello.fence });
                }
                Ok(TakeOver::Wait) => {}
                Err(e) if !told => {
                    kemari_machine::say!("standby: the arbiter is not answering yet ({e}); retrying");
                    told = true;
                }
                Err(_) => {}
            }
            if self.serve_events(input).is_break() {
                kemari_machine::say!("standby: quit during failover; the guest runs nowhere now");
                return Ok(StandbyEnd::Quit);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        };
        {
            // Re-issue: what the committed checkpoint still held may never have left the old primary.
            let mut gate = machine.gate().lock().expect("gate lock");
            gate.set_holding(false);
            if let Err(e) = gate.release_through(u64::MAX) {
                tracing::warn!("re-issuing effects: {e}");
            }
        }
        // Replay: what the old primary's guest consumed after the committed state, before anything new.
        let replay = {
            let gate = machine.gate().lock().expect("gate lock");
            inputs.replay(|s| gate.consumed(s))
        };
        let replayed = machine.replay_inputs(replay);
        machine.announce();
        machine.push_input(&self.input_bytes);
        let took = start.elapsed().as_millis() as u64;
        {
            let mut m = self.metrics.lock().expect("metrics lock");
            m.failover_ms = Some(took);
            m.fence = fence;
            m.role = "primary";
            m.state = "unprotected";
        }
        kemari_machine::say!(
            "failover complete in {took} ms; this node is now active (fence {fence}); {replayed} inputs replayed, \
             {stale} frames received while standing by dropped"
        );
        Ok(StandbyEnd::TookOver { machine: Box::new(machine), arbiter, metrics: self.metrics })
    }
}

/// Shuts a connection down when dropped.
struct Closer(TcpStream);

impl Drop for Closer {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}
