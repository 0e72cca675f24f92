//! Live migration over TCP: full-memory pre-copy while the guest runs, dirty-page rounds until the rest fits
//! the downtime budget, then stop-and-copy of the whole machine state (the same encoding as snapshots).
//!
//! ```text
//!  sender                                   receiver (kemari run --incoming ADDR)
//!  HELLO  harts u32, memory bytes u64  ──►  builds an empty machine of that shape
//!  PAGES  state stream of PAGS sections ──► writes the pages (repeated: pre-copy, then dirty rounds)
//!  FINAL  full state stream (dirty pages) ► restores everything on top
//!                                      ◄──  ACK (one byte); the receiver runs, announces MACs, the sender exits
//! ```
//!
//! Every message is `kind u8, length u64, payload`; the receiver caps lengths and validates payloads like any
//! state stream. The sender stays the active copy until the ACK: any failure before it leaves the guest
//! running where it was.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use kemari_engine::PAGE_SIZE;

use crate::control::Reply;
use crate::machine::{BuildError, Machine, MachineConfig, RunOutcome};
use crate::persist::{Pages, RestoreError};

const HELLO: u8 = 1;
const PAGES: u8 = 2;
const FINAL: u8 = 3;
const ACK: u8 = 4;
/// Pages sent per slice during the full pass (the guest runs a slice between batches).
const BATCH_PAGES: u64 = 1024;
/// How long one step of the machine loop may spend sending pre-copy batches (the guest runs between steps).
const STEP_TIME: Duration = Duration::from_millis(5);
/// Dirty rounds before giving up on convergence and stopping the guest anyway.
const MAX_ROUNDS: u32 = 30;
/// Largest message the receiver accepts.
const MAX_MESSAGE: u64 = 8 << 30;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Build(#[from] BuildError),
}

fn send(stream: &mut TcpStream, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    stream.write_all(&head)?;
    stream.write_all(payload)
}

fn receive(stream: &mut TcpStream) -> Result<(u8, Vec<u8>), MigrateError> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head)?;
    let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
    if len > MAX_MESSAGE {
        return Err(MigrateError::Protocol(format!("message of {len} bytes is too large")));
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload)?;
    Ok((head[0], payload))
}

/// Progress, reported by `status` while a migration runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub round: u32,
    pub bytes: u64,
    pub pages_left: u64,
    pub dirty_pages_last_round: u64,
}

enum Phase {
    /// Sending every non-zero page, from this page index on.
    FullPass(u64),
    /// Resending what the guest dirtied since the previous round.
    Rounds,
}

/// Full-memory pre-copy while the guest runs, then dirty-page rounds until the rest fits a downtime budget.
/// Live migration and the first synchronisation of fault tolerance both use it; the caller sends each batch
/// and, when [`PreCopy::next_batch`] says the rest fits, stops the guest and sends the final state.
pub struct PreCopy {
    phase: Phase,
    budget: Duration,
    started: Instant,
    pub progress: Progress,
}

impl PreCopy {
    /// Starts tracking: every page written from now on is resent in a dirty round.
    pub fn start(m: &Machine, budget: Duration) -> PreCopy {
        m.ram.take_dirty();
        PreCopy {
            phase: Phase::FullPass(0),
            budget,
            started: Instant::now(),
            progress: Progress { pages_left: m.ram.size() / PAGE_SIZE, ..Progress::default() },
        }
    }

    fn bandwidth(&self) -> f64 {
        (self.progress.bytes as f64 / self.started.elapsed().as_secs_f64().max(1e-3)).max(1.0)
    }

    /// The next batch of pages to send (a state stream of PAGS sections), or `None` once the memory dirtied
    /// since the last batch would take at most the budget to send (or rounds stopped converging): then it is
    /// time to stop the guest and send the final state with [`Machine::save`] of the dirty pages.
    pub fn next_batch(&mut self, m: &Machine) -> Option<Vec<u8>> {
        let total = m.ram.size() / PAGE_SIZE;
        let bytes = match self.phase {
            Phase::FullPass(next) => {
                let end = (next + BATCH_PAGES).min(total);
                let pages: Vec<u64> = (next..end).filter(|&p| !m.page_is_zero(p)).collect();
                self.progress.pages_left = total - end;
                self.phase = if end == total { Phase::Rounds } else { Phase::FullPass(end) };
                m.save_pages(&pages)
            }
            Phase::Rounds => {
                let dirty = m.ram.dirty_count();
                let expected = Duration::from_secs_f64((dirty * PAGE_SIZE) as f64 / self.bandwidth());
                if expected <= self.budget || self.progress.round >= MAX_ROUNDS {
                    return None;
                }
                let pages = m.ram.take_dirty();
                self.progress.round += 1;
                self.progress.dirty_pages_last_round = pages.len() as u64;
                m.save_pages(&pages)
            }
        };
        self.progress.bytes += bytes.len() as u64;
        Some(bytes)
    }

    /// Sends batches for up to [`STEP_TIME`] (the guest runs between steps; an idle guest's loop sleeps between
    /// them, which must not pace the copy). Returns true once the pre-copy is done: time to stop and copy.
    pub fn step<E>(&mut self, m: &Machine, mut send: impl FnMut(Vec<u8>) -> Result<(), E>) -> Result<bool, E> {
        let start = Instant::now();
        while let Some(batch) = self.next_batch(m) {
            send(batch)?;
            if start.elapsed() >= STEP_TIME {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Time since the pre-copy started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

pub(crate) struct Migration {
    stream: TcpStream,
    pub(crate) copy: PreCopy,
    reply: Sender<Reply>,
}

impl Migration {
    pub(crate) fn start(
        m: &Machine,
        to: &str,
        budget: Duration,
        reply: Sender<Reply>,
    ) -> Result<Migration, MigrateError> {
        let mut stream = TcpStream::connect(to)?;
        stream.set_nodelay(true)?;
        let mut hello = Vec::new();
        hello.extend_from_slice(&(m.harts.len() as u32).to_le_bytes());
        hello.extend_from_slice(&m.ram.size().to_le_bytes());
        send(&mut stream, HELLO, &hello)?;
        Ok(Migration { stream, copy: PreCopy::start(m, budget), reply })
    }
}

impl Machine {
    /// Advances a running migration by one step. Returns the run's end once the receiver took over.
    pub(crate) fn migration_step(&mut self) -> Option<RunOutcome> {
        let mut mig = self.migration.take()?;
        match self.migration_advance(&mut mig) {
            Ok(None) => {
                self.migration = Some(mig);
                None
            }
            Ok(Some(reply)) => {
                let _ = mig.reply.send(reply);
                Some(RunOutcome::Migrated)
            }
            Err(e) => {
                // The guest carries on here; the receiver sees the connection drop and gives up.
                tracing::warn!("live migration failed: {e}");
                self.paused = false;
                let _ = mig.reply.send(Reply::Error(format!("migration failed: {e}")));
                None
            }
        }
    }

    fn migration_advance(&mut self, mig: &mut Migration) -> Result<Option<Reply>, MigrateError> {
        if !mig.copy.step(self, |batch| send(&mut mig.stream, PAGES, &batch))? {
            return Ok(None);
        }
        // Stop and copy: the machine is quiesced here (between slices).
        let stop = Instant::now();
        self.dev.clock.pause();
        let pages = self.ram.take_dirty();
        let state = self.save(Pages::Only(&pages));
        send(&mut mig.stream, FINAL, &state)?;
        mig.stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut ack = [0u8; 1];
        mig.stream.read_exact(&mut ack)?;
        if ack[0] != ACK {
            return Err(MigrateError::Protocol(format!("unexpected reply {} to the final state", ack[0])));
        }
        mig.copy.progress.bytes += state.len() as u64;
        Ok(Some(Reply::Migrated {
            rounds: mig.copy.progress.round,
            bytes: mig.copy.progress.bytes,
            total_millis: mig.copy.elapsed().as_millis() as u64,
            downtime_micros: stop.elapsed().as_micros() as u64,
        }))
    }
}

/// Receives a migrating machine on `addr`: waits for the sender, builds the machine with the devices of `cfg`,
/// applies pre-copied pages and the final state, acknowledges, announces the guest's MACs, and returns the
/// machine ready to run.
pub fn receive_machine(
    addr: &str,
    cfg: &MachineConfig,
    console: Box<dyn Write + Send>,
    wake: kemari_devices::host::Wake,
) -> Result<Machine, MigrateError> {
    let listener = TcpListener::bind(addr)?;
    let (mut stream, peer) = listener.accept()?;
    tracing::info!("incoming migration from {peer}");
    stream.set_nodelay(true)?;
    let (kind, hello) = receive(&mut stream)?;
    if kind != HELLO || hello.len() != 12 {
        return Err(MigrateError::Protocol("expected a HELLO message first".into()));
    }
    let harts = u32::from_le_bytes(hello[..4].try_into().expect("4 bytes")) as usize;
    let memory = u64::from_le_bytes(hello[4..].try_into().expect("8 bytes"));
    if memory % (1 << 20) != 0 {
        return Err(MigrateError::Protocol(format!("memory size {memory} is not whole MiB")));
    }
    let cfg = MachineConfig { harts, memory_mib: memory >> 20, ..cfg.clone() };
    let mut m = Machine::build(&cfg, console, wake, false)?;
    loop {
        let (kind, payload) = receive(&mut stream)?;
        match kind {
            PAGES => {
                m.restore_pages(&payload).map_err(RestoreError::from)?;
            }
            FINAL => {
                m.restore_into(&payload)?;
                stream.write_all(&[ACK])?;
                break;
            }
            k => return Err(MigrateError::Protocol(format!("unexpected message kind {k}"))),
        }
    }
    m.announce();
    Ok(m)
}
