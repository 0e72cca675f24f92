//! Control requests the runtime serves between rounds of the machine (so the machine is quiesced when one
//! runs), and their replies. The front end carries them over the control API socket.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};

use crate::Event;

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

/// Fault-tolerance status as the replication driver reports it (plain data: a machine knows nothing of
/// replication; the runtime asks its driver for it).
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
        cpus: usize,
        memory_mib: u64,
        instret: u64,
        migration: Option<kemari_machine::precopy::Progress>,
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
