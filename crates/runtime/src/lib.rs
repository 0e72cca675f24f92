//! kemari-runtime: the loop that runs a machine.
//!
//! Every node that runs a guest runs it here, through the machine seam only: one loop takes the events
//! (console input, control requests, wake-ups), runs the machine round by round, keeps the run state
//! ([`RunState`]: running, paused and why, migrating) and serves control requests between rounds, when the
//! machine is quiesced. What a node does with its machine besides running it belongs to one driver at a time:
//! - **standalone** ([`Standalone`]): nothing;
//! - **live migration**: sending is part of the run state ([`migrate::Outgoing`], stepped between rounds);
//!   receiving happens before any machine exists ([`migrate::Incoming`]) and hands the built machine over;
//! - **the replication primary**: a [`Driver`] that checkpoints between rounds and holds outputs until the
//!   secondary acknowledged them (in `kemari-replication`);
//! - **the replication standby**: no guest runs; the replica it keeps becomes a primary's machine when it
//!   takes over.
//!
//! Status is the runtime's: the machine reports its shape and counters, the driver its protection.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use control::{Protection, Reply, Request, SNAPSHOT_STATE};
use kemari_machine::Pages;
pub use kemari_machine::{Machine, Round, RunOutcome};
use kemari_transport::Security;

pub mod control;
pub mod migrate;

/// Events that reach the runtime loop from other threads.
pub enum Event {
    /// Console input.
    Console(Vec<u8>),
    /// The user asked to quit (Ctrl-A x).
    Quit,
    /// A device has outside work (e.g. a received frame); the loop polls devices.
    Wake,
    /// A control API request; the reply goes back on the channel.
    Control(Request, Sender<Reply>),
}

/// Wakes the loop from another thread (it then looks at its driver and devices again).
pub type Wake = kemari_devices::host::Wake;

/// Longest the loop sleeps while every CPU waits, unless the driver asks for less.
pub const MAX_IDLE: Duration = Duration::from_millis(10);

/// How long a loop whose guest does not run waits for an event before giving its driver a turn.
const PAUSED_WAIT: Duration = Duration::from_millis(50);

/// How a node's run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The machine's run ended (the driver let everything held leave first).
    Machine(RunOutcome),
    /// Another node is active: this copy must stop at once without releasing anything.
    Fenced(String),
}

/// What a node does with its running machine besides running it. Called only between rounds.
pub trait Driver {
    /// After every round, and every wait while the guest does not run. An error fences this node.
    fn after_round(&mut self, machine: &mut dyn Machine) -> Result<(), String>;

    /// The longest the loop may sleep before the next [`Driver::after_round`] (a deadline of the driver).
    fn max_idle(&self) -> Duration {
        MAX_IDLE
    }

    /// The run ended with `outcome`: finish (e.g. let held outputs leave) and say how the node ends.
    fn finish(&mut self, machine: &mut dyn Machine, outcome: RunOutcome) -> Ended {
        let _ = machine;
        Ended::Machine(outcome)
    }

    /// The fault-tolerance status a `status` request shows, if this driver protects the guest.
    fn protection(&self, machine: &dyn Machine) -> Option<Protection> {
        let _ = machine;
        None
    }

    /// Why a live migration from here cannot start under this driver, if it cannot.
    fn forbids_migration(&self) -> Option<String> {
        None
    }
}

/// A machine on its own: no driver work.
pub struct Standalone;

impl Driver for Standalone {
    fn after_round(&mut self, _: &mut dyn Machine) -> Result<(), String> {
        Ok(())
    }
}

/// Why a guest does not run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Paused {
    /// The user asked (`pause`), or a migration whose outcome is unknown left it paused.
    User,
    /// A held disk write could not be performed (`werror=stop`): it runs again once the user resumes it.
    Disk(String),
}

/// The run state: exactly one of these.
pub enum RunState {
    Running,
    /// CPUs do not run and guest time stands still.
    Paused(Paused),
    /// Live-migrating to another host; the guest runs during the pre-copy unless it is paused.
    Migrating(Box<migrate::Outgoing>),
}

/// What the runtime needs besides the machine and its driver.
pub struct Config {
    /// Wakes this loop (given to helper threads, e.g. a migration's).
    pub wake: Wake,
    /// How a live migration from here secures its link; `None` refuses to migrate (no credentials given).
    pub link_security: Option<Security>,
}

/// Runs `machine` under `driver` until its run ends or the driver is fenced; `events` brings console input,
/// control requests and wake-ups.
pub fn run(machine: &mut dyn Machine, events: &Receiver<Event>, driver: &mut dyn Driver, cfg: Config) -> Ended {
    Runtime { events, events_open: true, state: RunState::Running, cfg }.run(machine, driver)
}

struct Runtime<'a> {
    events: &'a Receiver<Event>,
    /// The event channel still has a sender.
    events_open: bool,
    state: RunState,
    cfg: Config,
}

impl Runtime<'_> {
    fn run(&mut self, m: &mut dyn Machine, driver: &mut dyn Driver) -> Ended {
        loop {
            // Events first, so a guest that polls sees its input promptly.
            while let Some(ev) = self.try_event() {
                if let Some(outcome) = self.handle(m, driver, ev) {
                    return driver.finish(m, outcome);
                }
            }
            if let Some(outcome) = self.migration_step(m) {
                return driver.finish(m, outcome);
            }
            self.pause_on_stalled_disk(m);
            let wait = if self.guest_runs() {
                match m.step_round() {
                    Round::Ran => Duration::ZERO,
                    Round::Idle(wait) => wait.min(driver.max_idle()),
                    Round::Ended(outcome) => return driver.finish(m, outcome),
                }
            } else {
                PAUSED_WAIT
            };
            if let Some(outcome) = self.wait(m, driver, wait) {
                return driver.finish(m, outcome);
            }
            if let Err(why) = driver.after_round(m) {
                return Ended::Fenced(why);
            }
        }
    }

    fn guest_runs(&self) -> bool {
        match &self.state {
            RunState::Running => true,
            RunState::Paused(_) => false,
            RunState::Migrating(mig) => mig.paused.is_none(),
        }
    }

    fn paused(&self) -> bool {
        !self.guest_runs()
    }

    fn try_event(&mut self) -> Option<Event> {
        match self.events.try_recv() {
            Ok(ev) => Some(ev),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.events_open = false;
                None
            }
        }
    }

    /// Sleeps up to `wait`, or until an event comes (which it handles).
    fn wait(&mut self, m: &mut dyn Machine, driver: &mut dyn Driver, wait: Duration) -> Option<RunOutcome> {
        if wait.is_zero() {
            return None;
        }
        if !self.events_open {
            std::thread::sleep(wait);
            return None;
        }
        match self.events.recv_timeout(wait) {
            Ok(ev) => self.handle(m, driver, ev),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                self.events_open = false;
                None
            }
        }
    }

    fn handle(&mut self, m: &mut dyn Machine, driver: &mut dyn Driver, ev: Event) -> Option<RunOutcome> {
        match ev {
            Event::Console(bytes) => m.push_input(&bytes),
            Event::Quit => return Some(RunOutcome::Quit),
            Event::Wake => {}
            Event::Control(req, reply) => {
                if let Some(answer) = self.control(m, &*driver, req, reply.clone()) {
                    let _ = reply.send(answer);
                }
            }
        }
        None
    }

    /// Serves a control request; `None` when the answer comes later (a migration's, on `reply`).
    fn control(
        &mut self,
        m: &mut dyn Machine,
        driver: &dyn Driver,
        req: Request,
        reply: Sender<Reply>,
    ) -> Option<Reply> {
        Some(match req {
            Request::Migrate { to, downtime_ms } => {
                if matches!(self.state, RunState::Migrating(_)) {
                    return Some(Reply::Error("a migration is already running".into()));
                }
                if let Some(why) = driver.forbids_migration() {
                    return Some(Reply::Error(why));
                }
                let budget = Duration::from_millis(downtime_ms.max(1));
                let (wake, security) = (self.cfg.wake.clone(), self.cfg.link_security.as_ref());
                let paused = match &self.state {
                    RunState::Paused(why) => Some(why.clone()),
                    _ => None,
                };
                match migrate::Outgoing::start(m.shape(), security, wake, &to, budget, reply, paused) {
                    Ok(mig) => {
                        self.state = RunState::Migrating(Box::new(mig));
                        return None;
                    }
                    Err(e) => Reply::Error(format!("cannot migrate to {to}: {e}")),
                }
            }
            Request::Pause => {
                m.stop_time();
                match &mut self.state {
                    RunState::Migrating(mig) => mig.paused = Some(Paused::User),
                    state => *state = RunState::Paused(Paused::User),
                }
                Reply::Ok
            }
            Request::Resume => {
                // A stalled disk write is tried again by the next release.
                m.gate().lock().expect("gate lock").clear_stall();
                match &mut self.state {
                    RunState::Migrating(mig) => mig.paused = None,
                    state => *state = RunState::Running,
                }
                Reply::Ok
            }
            Request::Status => {
                let shape = m.shape();
                Reply::Status {
                    paused: self.paused(),
                    cpus: shape.cpus,
                    memory_mib: shape.memory >> 20,
                    instret: m.instructions(),
                    migration: match &self.state {
                        RunState::Migrating(mig) => Some(mig.progress()),
                        _ => None,
                    },
                    protection: driver.protection(&*m).map(Box::new),
                    io_error: m.gate().lock().expect("gate lock").stalled().map(str::to_string),
                }
            }
            Request::Snapshot { dir } => snapshot(m, &dir),
        })
    }

    /// Advances a migration by one step; the run's end once the receiver took over.
    fn migration_step(&mut self, m: &mut dyn Machine) -> Option<RunOutcome> {
        let RunState::Migrating(mig) = &mut self.state else { return None };
        let paused = mig.paused.clone();
        match mig.step(m) {
            migrate::Step::Going => None,
            migrate::Step::Done => Some(RunOutcome::Migrated),
            migrate::Step::Failed => {
                // The guest carries on here as it was last: running, or paused (by the user, or on a disk write
                // that could not be performed), before or during the migration.
                self.state = match paused {
                    Some(why) => RunState::Paused(why),
                    None => RunState::Running,
                };
                None
            }
            migrate::Step::Unknown => {
                self.state = RunState::Paused(Paused::User);
                None
            }
        }
    }

    /// A held disk write that could not be performed stalls the gate: the guest stops until the user resumes
    /// it (`werror=stop`), so that it does not run on past a write it was told had completed.
    fn pause_on_stalled_disk(&mut self, m: &mut dyn Machine) {
        if self.paused() {
            return;
        }
        let Some(why) = m.gate().lock().expect("gate lock").stalled().map(str::to_string) else { return };
        m.stop_time();
        kemari_machine::say!(
            "{why}; the guest is paused and the write kept; fix the disk, then `kemari ctl resume` \
             tries it again"
        );
        match &mut self.state {
            RunState::Migrating(mig) => mig.paused = Some(Paused::Disk(why)),
            state => *state = RunState::Paused(Paused::Disk(why)),
        }
    }
}

/// Writes the machine's whole state into `dir` (created); works paused or running.
fn snapshot(m: &mut dyn Machine, dir: &Path) -> Reply {
    let start = Instant::now();
    // Guest time stops while the state is taken, so the restored guest sees no jump.
    m.stop_time();
    let bytes = match m.save(Pages::AllNonZero) {
        Ok(bytes) => bytes,
        Err(e) => return Reply::Error(format!("cannot take a snapshot: {e}")),
    };
    let written = std::fs::create_dir_all(dir).and_then(|()| write_atomically(&dir.join(SNAPSHOT_STATE), &bytes));
    match written {
        Ok(()) => Reply::Snapshot { bytes: bytes.len() as u64, millis: start.elapsed().as_millis() as u64 },
        Err(e) => Reply::Error(format!("cannot write snapshot to {}: {e}", dir.display())),
    }
}

/// Writes via a temporary file and rename, so a crash never leaves a half-written snapshot under the real name.
/// On an error the temporary file is removed: a full disk must not stay full of a snapshot that failed.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
