//! kemari-machine: the machine seam.
//!
//! Everything above a machine (the runtime loop, live migration, fault tolerance, the binary) sees it only
//! through the [`Machine`] trait and the plain types here; what engine runs its CPUs and what board it models
//! stays behind it. The RISC-V board (`kemari-board`) implements it today; a KVM x86-64 machine will implement
//! the same trait, which is why nothing here names an architecture except as data ([`Arch`] in a [`Shape`]).
//!
//! The contract, which every implementation keeps:
//! - **Quiesced between rounds.** [`Machine::step_round`] returns with every CPU stopped at an instruction
//!   boundary and device work done; everything else here is called only then. Its return is the
//!   acknowledgement that the machine is paused (a hardware engine kicks its vCPU threads out and waits).
//!   A machine never reads the runtime's events: console input arrives through [`Machine::push_input`], and
//!   a round whose CPUs all wait says how long they may sleep ([`Round::Idle`]); the runtime does the waiting.
//! - **Exact dirty log.** [`Machine::take_dirty`] returns every RAM page written since the last call, by the
//!   guest, by devices or by the VMM, and starts a new log.
//! - **One state path.** [`Machine::save`] encodes the whole machine (CPUs, devices, the gate, the pages asked
//!   for); [`Machine::apply_checkpoint`] applies such a stream all or nothing, after checking all of it.
//! - **Effects only through the gate.** Every effect of the guest (console bytes, frames, block writes) goes
//!   through [`Machine::gate`]; a driver decides when the gate releases, never a device.
//!
//! Also here, because every driver shares them: guest memory in a state stream (`pages`), the pre-copy of
//! memory while the guest runs (`precopy`) and the log line macro ([`say!`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use kemari_devices::gate::{Input, OutputGate};
pub use kemari_memory::GuestRam;
pub use kemari_state::{Arch, StateError};

pub mod log;
pub mod pages;
pub mod precopy;
#[cfg(feature = "testing")]
pub mod testing;

/// What a machine is, as far as another node of the same VM must agree: its architecture, CPUs and RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub arch: Arch,
    /// Virtual CPUs (harts, on RISC-V).
    pub cpus: usize,
    /// Bytes of RAM.
    pub memory: u64,
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest powered off.
    PowerOff,
    /// The guest asked to reboot (kemari does not reboot guests; the caller decides).
    Reboot,
    /// The guest crashed: kernel panic, or a trap nobody can handle.
    Crash(String),
    /// Bare-metal test ended (RISC-V HTIF `tohost`): 0 = pass, otherwise the failure code.
    TestExit(u64),
    /// The user quit.
    Quit,
    /// The machine moved to another host (live migration); this copy must not run again.
    Migrated,
}

/// What one round did.
#[derive(Debug, PartialEq, Eq)]
pub enum Round {
    /// The CPUs ran (or the machine has more to do at once).
    Ran,
    /// Every CPU waits: nothing happens in the guest for this long unless input or a device wakes it (the
    /// runtime sleeps until then, or until an event).
    Idle(Duration),
    /// The run ended.
    Ended(RunOutcome),
}

/// Where frames logged on arrival go (see [`Machine::log_frames_on_arrival`]): called in arrival order per
/// interface, on the thread that received the frame (or, for frames already waiting, inside
/// `log_frames_on_arrival`); it must not wait for anything slow (e.g. a peer).
pub type InputSink = Arc<dyn Fn(Input) + Send + Sync>;

/// Which guest pages a save carries.
pub enum Pages<'a> {
    /// Every non-zero page (a restore starts from zeroed RAM).
    AllNonZero,
    /// Exactly these pages (e.g. the dirty log), zero or not.
    Only(&'a [u64]),
}

/// Why a machine refused a state stream; the reason is for the operator and the peer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The seam: what the runtime, migration and replication may do with a machine (see the crate docs for the
/// contract).
pub trait Machine {
    /// Architecture, CPUs and RAM.
    fn shape(&self) -> Shape;

    /// Guest RAM (read by the pre-copy thread while the guest runs; written only through the state path).
    fn memory(&self) -> &Arc<GuestRam>;

    /// Where every effect of the guest waits for its release.
    fn gate(&self) -> &Arc<Mutex<OutputGate>>;

    /// Runs the guest for one round (a slice of every CPU, or until a device needs the VMM) and returns
    /// quiesced. Guest time runs from here on (see [`Machine::stop_time`]).
    fn step_round(&mut self) -> Round;

    /// Stops guest time until the next round (the guest is paused, or its state is being saved: a restored
    /// guest must see no jump).
    fn stop_time(&mut self);

    /// Instructions the CPUs retired so far (status).
    fn instructions(&self) -> u64;

    /// Pages written since the last call (indices inside RAM); starts a new log.
    fn take_dirty(&mut self) -> Vec<u64> {
        self.memory().take_dirty()
    }

    /// How many pages are dirty now (the pre-copy's estimate of the next round).
    fn dirty_count(&mut self) -> u64 {
        self.memory().dirty_count()
    }

    /// The whole state with the pages asked for. An error when the state holds what no restore would accept.
    fn save(&self, pages: Pages) -> Result<Vec<u8>, StateError>;

    /// Writes the pages of a stream of PAGS sections (`pages`), checked first; returns how many.
    fn restore_pages(&mut self, bytes: &[u8]) -> Result<u64, StateError>;

    /// Applies a checkpoint (a stream `save` made) all or nothing: on error the machine is unchanged.
    fn apply_checkpoint(&mut self, bytes: &[u8]) -> Result<(), Refused>;

    /// The longest stream `save` can make for a machine of `memory` bytes (a receiver caps what it reads by
    /// it before a byte arrives).
    fn max_state_len(&self) -> u64;

    /// Under protection: every frame the network interfaces receive goes to `sink` as it arrives, numbered the
    /// way the gate counts consumed inputs; `None` stops (see `OutputGate::set_nics_logged_on_arrival`).
    fn log_frames_on_arrival(&mut self, sink: Option<InputSink>);

    /// Drops the frames waiting on the network interfaces; returns how many.
    fn discard_received_frames(&mut self) -> usize;

    /// Delivers inputs another node's guest consumed after the state this one holds (a failover's replay),
    /// ahead of anything received here; returns how many were taken.
    fn replay_inputs(&mut self, inputs: Vec<Input>) -> usize;

    /// Console input for the guest, as if typed.
    fn push_input(&mut self, bytes: &[u8]);

    /// Announces every network interface's MAC (the machine moved hosts), so switches learn its port.
    fn announce(&mut self);
}
