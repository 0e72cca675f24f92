//! kemari-replication: Kemari fault tolerance on top of the output gate and the one save/restore path.
//!
//! A **primary** ([`primary::run`]) runs the guest and, before any effect the guest handed to the output gate
//! leaves the VM, brings the **secondary** ([`secondary::standby`]) up to date with a checkpoint: dirty pages +
//! the whole machine state (CPUs, board, devices, the gate's held effects) in the encoding snapshots and
//! migration use. The gate releases an effect only once the checkpoint that covers it is acknowledged (output
//! commit). When the primary dies, the secondary takes the active role through the [`arbiter`], re-issues the
//! effects recorded in its last committed checkpoint, announces the guest's MAC and runs the guest on.
//!
//! Owns: the wire protocol ([`wire`]) and its rules without I/O ([`protocol`]), synchronisation policies, failure detection (connection loss, heartbeat
//! silence), failover, the storage modes, and the replication metrics ([`metrics`]).
//!
//! Never does: special cases inside devices. Devices hand effects to the gate; the board saves and restores.
//!
//! Invariants kept here: output commit (release after ack only); atomic checkpoints (the secondary stages,
//! verifies, then commits with `Machine::apply_checkpoint`); one active (every release is preceded by an arbiter
//! check, and a primary that lost its secondary goes on only after bumping the fence, so the stale replica can
//! never take over); disk never ahead of memory (block writes are effects, released or applied at commit).

use std::time::Duration;

pub mod arbiter;
pub mod disks;
pub mod inputs;
pub mod metrics;
pub mod primary;
pub mod protocol;
pub mod secondary;
pub mod wire;

/// When the primary takes a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Kemari: the first pending effect triggers a checkpoint; effects arriving within `window` of it join the
    /// same checkpoint (zero: one checkpoint per trigger).
    Event { window: Duration },
    /// Remus: a checkpoint every period while effects are pending.
    Interval { period: Duration },
}

/// How the guest's disks reach durable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Both nodes name the same image; only the active one ever writes it.
    Shared,
    /// Each node has its own copy; block writes travel inside checkpoints and the secondary applies them at
    /// commit. Each session first brings the secondary's copy in step with the primary's ([`disks`]).
    Replicated,
}

impl std::str::FromStr for Storage {
    type Err = String;
    fn from_str(s: &str) -> Result<Storage, String> {
        match s {
            "shared" => Ok(Storage::Shared),
            "replicated" => Ok(Storage::Replicated),
            _ => Err(format!("unknown storage mode {s:?} (known: shared, replicated)")),
        }
    }
}

/// Settings both sides share.
#[derive(Clone, Debug)]
pub struct Options {
    pub sync: SyncPolicy,
    /// Resume the guest once a checkpoint is copied out locally; only the gate waits for the acknowledgement.
    /// Off (strict): the guest stays paused until the secondary acknowledged.
    pub speculative: bool,
    pub storage: Storage,
    /// How often each side sends a heartbeat (and the active node renews its lease).
    pub heartbeat: Duration,
    /// Silence after which the peer counts as failed (also the arbiter lease's time to live).
    pub heartbeat_timeout: Duration,
    /// Policy `event`: console output alone triggers a checkpoint only at the end of its burst (see
    /// `primary.rs`); off, every console write is an effect like any other.
    pub console_bursts: bool,
    /// Send the inputs the guest consumes to the secondary, which replays those its committed state had not
    /// seen at failover (`inputs.rs`); off, they die with the primary and clients resend them.
    pub input_log: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sync: SyncPolicy::Event { window: Duration::ZERO },
            speculative: true,
            storage: Storage::Shared,
            heartbeat: Duration::from_millis(50),
            heartbeat_timeout: Duration::from_millis(200),
            console_bursts: true,
            input_log: true,
        }
    }
}
