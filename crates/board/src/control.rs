//! Control requests the machine loop serves between slices (so the machine is always quiesced when one runs).
//! The front end carries them over the control API socket.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};

use crate::machine::{Event, Machine};
use crate::persist::Pages;

/// File in a snapshot directory holding the machine state (memory included).
pub const SNAPSHOT_STATE: &str = "state";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Pause,
    Resume,
    /// Writes the machine state to `dir/state` (the directory is created). Works paused or running.
    Snapshot {
        dir: PathBuf,
    },
    Status,
    /// Live-migrates to a `kemari run --incoming` at `to`; the reply comes when the receiver took over.
    Migrate {
        to: String,
        downtime_ms: u64,
    },
}

/// Serves the user while no guest runs on this node (a standby, a migration receiver waiting for its sender):
/// console input is kept in `typed` for the guest to come, `status` answers a status request, anything else
/// is refused with `refusal`. Returns once nothing waits on `input`, or with `Break` when the user quit (the
/// caller says what quitting leaves behind).
pub fn serve_without_guest(
    input: &Receiver<Event>,
    typed: &mut Vec<u8>,
    status: impl Fn() -> Reply,
    refusal: &str,
) -> ControlFlow<()> {
    loop {
        match input.try_recv() {
            Ok(Event::Console(bytes)) => typed.extend(bytes),
            Ok(Event::Control(Request::Status, reply)) => {
                let _ = reply.send(status());
            }
            Ok(Event::Control(_, reply)) => {
                let _ = reply.send(Reply::Error(refusal.to_string()));
            }
            Ok(Event::Quit) => return ControlFlow::Break(()),
            Ok(Event::Wake) => {}
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => return ControlFlow::Continue(()),
        }
    }
}

/// Fault-tolerance status as the replication driver reports it (plain data: the board knows nothing of
/// replication; the driver installs [`Machine::protection`] to fill it in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protection {
    /// "primary", "secondary" or "standalone".
    pub role: String,
    /// "connecting", "syncing", "protected", "unprotected", "standby", "failing-over".
    pub state: String,
    /// The other side's address.
    pub peer: String,
    /// The arbiter's fencing number this node acts under.
    pub fence: u64,
    /// Checkpoints taken (primary) or committed (secondary).
    pub checkpoints: u64,
    /// Checkpoints the secondary refused (corrupt or invalid).
    pub rejected: u64,
    /// Effects the gate holds now.
    pub effects_held: u64,
    /// Guest pause per checkpoint, in microseconds.
    pub pause_last_us: u64,
    pub pause_p50_us: u64,
    pub pause_p99_us: u64,
    pub pause_max_us: u64,
    /// Size of the last checkpoint and totals.
    pub pages_last: u64,
    pub bytes_last: u64,
    pub pages_total: u64,
    pub bytes_total: u64,
    /// Time from detecting the failure to the guest running here, once this node failed over.
    pub failover_ms: Option<u64>,
    /// Replicated disks: the last comparison of this node's copies with the secondary's.
    pub disks: Option<DiskComparison>,
}

/// How far the comparison of replicated disk copies at the start of a session got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskComparison {
    pub compared_bytes: u64,
    pub total_bytes: u64,
    /// Bytes of the chunks that differed, sent to the secondary.
    pub differed_bytes: u64,
    pub done: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Status {
        paused: bool,
        harts: usize,
        memory_mib: u64,
        instret: u64,
        migration: Option<crate::migrate::Progress>,
        protection: Option<Box<Protection>>,
        /// Why the guest is paused on a disk write that could not be performed, if it is.
        io_error: Option<String>,
    },
    /// Status of a `run --incoming` that waits for its sender (no guest here yet).
    Incoming {
        listen: String,
        /// Senders refused so far, and why the last one was.
        refused: u64,
        last_refusal: Option<String>,
        /// The sender whose stream is being received, if one is.
        receiving_from: Option<String>,
    },
    Migrated {
        rounds: u32,
        bytes: u64,
        total_millis: u64,
        downtime_micros: u64,
    },
    Snapshot {
        bytes: u64,
        millis: u64,
    },
    Error(String),
}

impl Machine {
    /// Serves a request; `reply` is used for requests that answer later (migration).
    pub(crate) fn control(&mut self, req: Request, reply: std::sync::mpsc::Sender<Reply>) -> Option<Reply> {
        if let Request::Migrate { to, downtime_ms } = req {
            if self.migration.is_some() {
                return Some(Reply::Error("a migration is already running".into()));
            }
            if self.protection.is_some() {
                return Some(Reply::Error(
                    "this VM is protected by a secondary: live migration of a protected pair is not supported".into(),
                ));
            }
            let budget = std::time::Duration::from_millis(downtime_ms.max(1));
            return match crate::migrate::Migration::start(self, &to, budget, reply) {
                Ok(m) => {
                    self.migration = Some(m);
                    None
                }
                Err(e) => Some(Reply::Error(format!("cannot migrate to {to}: {e}"))),
            };
        }
        Some(match req {
            Request::Pause => {
                self.paused = true;
                self.dev.clock.pause();
                Reply::Ok
            }
            Request::Resume => {
                // A stalled disk write is tried again by the next release.
                self.dev.gate.lock().expect("gate lock").clear_stall();
                self.paused = false;
                Reply::Ok
            }
            Request::Status => Reply::Status {
                paused: self.paused,
                harts: self.harts.len(),
                memory_mib: self.ram.size() >> 20,
                instret: self.harts.iter().map(|h| h.state().instret).sum(),
                migration: self.migration.as_ref().map(|m| m.progress()),
                protection: self.protection.as_ref().map(|status| Box::new(status())),
                io_error: self.dev.gate.lock().expect("gate lock").stalled().map(str::to_string),
            },
            Request::Snapshot { dir } => {
                let start = std::time::Instant::now();
                // Guest time stops while the state is taken, so the restored guest sees no jump.
                self.dev.clock.pause();
                let bytes = match self.save(Pages::AllNonZero) {
                    Ok(bytes) => bytes,
                    Err(e) => return Some(Reply::Error(format!("cannot take a snapshot: {e}"))),
                };
                let written =
                    std::fs::create_dir_all(&dir).and_then(|()| write_atomically(&dir.join(SNAPSHOT_STATE), &bytes));
                match written {
                    Ok(()) => Reply::Snapshot { bytes: bytes.len() as u64, millis: start.elapsed().as_millis() as u64 },
                    Err(e) => Reply::Error(format!("cannot write snapshot to {}: {e}", dir.display())),
                }
            }
            Request::Migrate { .. } => unreachable!("handled above"),
        })
    }
}

/// Writes via a temporary file and rename, so a crash never leaves a half-written snapshot under the real name.
/// On an error the temporary file is removed: a full disk must not stay full of a snapshot that failed.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("kemari-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The target is a non-empty directory, so the final rename fails after the temporary file is written.
        let target = dir.join("state");
        std::fs::create_dir_all(target.join("occupied")).unwrap();
        assert!(write_atomically(&target, b"snapshot").is_err());
        assert!(!dir.join("state.tmp").exists(), "the temporary file was left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
