//! The arbiter decides which copy of a protected VM is the *active* one, the only copy that may release the
//! guest's outputs (network frames, disk writes, console bytes). The DESIGN contract "One active" must hold even
//! when the primary and the secondary cannot reach each other, so neither may decide alone: both ask a third
//! party, the arbiter store.
//!
//! # The seam
//! [`Arbiter`] is the trait the VMM uses. [`FileArbiter`] is the default store (`--arbiter file:DIR`): a lease
//! kept in files inside a directory that both nodes can reach. [`etcd::EtcdArbiter`] (`--arbiter
//! etcd:HOST:PORT[,HOST:PORT...][/PREFIX]`) keeps the same lease and fence in an etcd cluster, for hosts that
//! share no storage; its module doc says how, and what it does and does not protect against.
//!
//! # Lease and fence
//! The lease is `{owner, fence, expires_unix_ms, active_lock}`. The *fence* is a number that grows by one on
//! every change of holder (and on [`Arbiter::bump_fence`]). A secondary remembers the fence of the primary it
//! replicates; it may take over only while the stored fence is still that number. So a primary that lost its
//! secondary and went on alone bumps the fence, and the stale secondary, whose replica is now in the past,
//! gets [`TakeOver::Stale`] and can never resume the guest from it.
//!
//! # Files in DIR
//! - `kemari.lock`: empty. Every read-modify-write of the lease happens under an exclusive `flock` on it; reads
//!   take it shared. The directory is never created by us: if the shared mount is missing we must fail rather
//!   than give each node a private directory (that would be two actives).
//! - `kemari.lease`: the lease as one JSON object, padded with spaces to a fixed 512 bytes and written in place
//!   with one `pwrite` at offset 0 under the exclusive lock, so a reader (who holds the shared lock) never sees
//!   half a record. Records that change the owner or the fence are `fdatasync`ed; plain renewals are not (they
//!   come every heartbeat; losing one only makes the lease look older). An empty or missing file is a free
//!   lease with fence 0. A record that does not parse is [`ArbiterError::Corrupt`]: an operator must look at
//!   it; fix or delete it only while no node runs (nodes keep the files open and refuse to go on when a file
//!   they hold was removed or replaced under them).
//! - `kemari.active`: empty. While a node holds the lease it also tries to hold an exclusive `flock` on its own
//!   open file of `kemari.active`, and records in the lease whether it got it (`active_lock`). The kernel drops
//!   that lock when the process dies (also on SIGKILL), which gives fast death detection: a secondary in
//!   [`Arbiter::take_over`] tries `LOCK_EX|LOCK_NB`; when the lease says the owner holds the active lock and we
//!   still get it, the owner is dead and we take over at once instead of waiting for expiry. When we do not get
//!   it (the owner is alive behind a partition, or stopped by SIGSTOP), we fall back to time and take over only
//!   once `expires_unix_ms` has passed. After such a time-based takeover the old, stopped holder may still hold
//!   the active lock: the winner then runs without it (`active_lock: false`, so no one trusts the fast path for
//!   it) and tries again on every renewal. The flag matters: without it a live owner that has not yet picked up
//!   the lock freed by a dead predecessor would look dead.
//!
//! # Time
//! Other nodes judge expiry by wall-clock unix milliseconds stored in the file. The owner itself judges by its
//! own monotonic clock: [`Arbiter::check`] passes only before `renewed_at + ttl - clock_margin - 1 ms`, where
//! `renewed_at` is read *before* the wall clock used for the stored expiry, so the owner stops releasing no later
//! than the moment anyone else may consider the lease expired (the 1 ms covers rounding to whole ms). Here both
//! nodes share one clock (network namespaces on one machine). On real hosts the clocks must be synchronised
//! (NTP/PTP), and [`FileArbiter::with_clock_margin`] must exceed the worst skew; a wall clock stepped forward on
//! the secondary shortens the lease by that step. A process that is stopped and continued sees its monotonic
//! deadline passed; a suspended host (monotonic clock paused) is still caught because `check` also reads the
//! stored lease and sees the new owner.
//!
//! # Who may release
//! `check` returns `Ok` only while our monotonic deadline has not passed AND the stored lease, read now, still
//! names us with our fence. An old owner that wakes up after someone else took over gets
//! [`ArbiterError::Fenced`] from `check` and `renew`; `renew` compares owner and fence under the exclusive lock,
//! so it can never extend a lease someone else has won.
//!
//! # Residual race (honest limits)
//! - Check-then-release is not atomic. A process stopped (or descheduled for long) between a successful `check`
//!   and the actual write can release one batch after it has lost the lease. Real fencing needs the storage to
//!   check the fence token itself (e.g. a shared disk target that rejects writes carrying an old fence). Here
//!   the window is bounded to one batch, and it matters only for shared disks: network duplicates are harmless
//!   (see "Re-issue on failover"), and a secondary's private replica disk is not written by the old primary.
//! - A process frozen (SIGSTOP) exactly inside the few microseconds it holds `kemari.lock` blocks everyone else's
//!   lease operations until it is continued or killed: `take_over` then keeps returning `Wait`. A flock cannot
//!   be broken. The window is tiny but real; an etcd arbiter would not have it.
//! - Dropping a `FileArbiter` behaves like the process dying (the active lock goes, the lease stays until it
//!   expires). A clean stop must call [`Arbiter::release`]. Released and expired leases look the same to a
//!   secondary: it must learn of a clean guest power-off over the replication channel, or it will take over.
//! - Shared directory on NFS: Linux emulates `flock` with POSIX locks there (works across clients), and taking
//!   the lock revalidates the cached file, which is why even `check` reads under the shared lock.
//! - Locks are per open file description; std opens files close-on-exec, so a helper process spawned by the VMM
//!   does not inherit the active lock and cannot keep a dead primary looking alive.

pub mod etcd;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Name of the file whose flock serialises every read-modify-write of the lease.
pub const LOCK_FILE: &str = "kemari.lock";
/// Name of the file holding the lease record.
pub const LEASE_FILE: &str = "kemari.lease";
/// Name of the file the owner keeps flocked for as long as it lives (fast death detection).
pub const ACTIVE_FILE: &str = "kemari.active";

/// Every record is padded to this size so one pwrite replaces the whole previous record.
const RECORD_LEN: usize = 512;
/// Anything longer than this in the lease file is not ours.
const MAX_FILE_LEN: usize = 4096;
/// Keeps the longest possible record (every char escaped) well inside `RECORD_LEN`.
const MAX_NODE_LEN: usize = 128;
/// `check` is on the output path: wait only briefly for a writer (who holds the lock for microseconds).
const CHECK_LOCK_WAIT: Duration = Duration::from_millis(10);
/// Between two attempts to take a busy lock.
const LOCK_RETRY: Duration = Duration::from_micros(200);
/// Stored expiries are whole milliseconds (rounded down): the owner stops this much earlier.
const ROUNDING: Duration = Duration::from_millis(1);

/// Who may release outputs. See the module doc for the protocol.
pub trait Arbiter: Send {
    /// Node name this arbiter acts for.
    fn node(&self) -> &str;
    /// Take the active role as a starting primary. Succeeds when the lease is free, expired, or already held by
    /// this very arbiter; fails with [`ArbiterError::Held`] when another holder (another node, or another process
    /// using the same node name) has an unexpired lease. Returns the fence now in force; a new holding increments
    /// the fence.
    fn acquire(&mut self) -> Result<u64, ArbiterError>;
    /// Extend our lease (every heartbeat interval). `Err(Fenced)` when the stored lease is no longer ours.
    fn renew(&mut self) -> Result<(), ArbiterError>;
    /// May we release outputs right now? `Ok` only while our lease is unexpired by our own monotonic clock and
    /// the stored lease, read now, still names us with our fence. Cheap (a few microseconds).
    fn check(&mut self) -> Result<(), ArbiterError>;
    /// Primary that lost its secondary and goes on unprotected: keep the lease, bump the fence so that the stale
    /// secondary can never take over with its old replica. Returns the new fence.
    fn bump_fence(&mut self) -> Result<u64, ArbiterError>;
    /// Secondary: try to take over from the primary whose fence we last saw.
    fn take_over(&mut self, expected_fence: u64) -> Result<TakeOver, ArbiterError>;
    /// The stored lease, read now (status; the secondary learns the fence at start).
    fn read(&mut self) -> Result<Lease, ArbiterError>;
    /// Give the lease up cleanly (guest powered off): expire it now, keep the fence. A no-op when not held.
    fn release(&mut self) -> Result<(), ArbiterError>;
}

/// [`Arbiter::read`], tried up to `attempts` times while the answer is "not now" (etcd unreachable for the moment,
/// or its records changed under the read). An etcd client connects on its first call, which on a loaded host can
/// outlast one call's timeout: a standby checking a primary's introduction must not refuse it for that.
pub fn read_patiently(arbiter: &mut dyn Arbiter, attempts: u32) -> Result<Lease, ArbiterError> {
    let mut tries = 1;
    loop {
        match arbiter.read() {
            Err(e @ (ArbiterError::Unreachable { .. } | ArbiterError::Raced { .. })) if tries < attempts => {
                tracing::debug!("arbiter read, try {tries} of {attempts}: {e}");
                tries += 1;
            }
            answer => return answer,
        }
    }
}

/// Outcome of [`Arbiter::take_over`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeOver {
    /// We are the active node now, with this fence.
    Won { fence: u64 },
    /// The holder's lease is still valid (it may be alive behind a partition, or stopped): retry in a few ms.
    Wait,
    /// The stored fence is not the one we expected: the primary went on without us. Never take over.
    Stale { fence: u64 },
}

/// The stored lease record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// Node holding (or last holding) the lease; empty when it was never taken.
    pub owner: String,
    /// Grows by one on every new holder and on `bump_fence`.
    pub fence: u64,
    /// Wall-clock unix ms after which others may take the lease; 0 after `release`.
    pub expires_unix_ms: u64,
    /// Whether the owner held the flock on `kemari.active` when it wrote this record. Only then may a secondary
    /// read a free active lock as "owner dead".
    #[serde(default)]
    pub active_lock: bool,
}

impl Lease {
    fn free() -> Lease {
        Lease { owner: String::new(), fence: 0, expires_unix_ms: 0, active_lock: false }
    }

    /// Free (never taken or released) or expired at wall-clock time `now_ms`.
    fn expired_at(&self, now_ms: u64) -> bool {
        self.owner.is_empty() || self.expires_unix_ms <= now_ms
    }
}

/// What went wrong. `Fenced`, `Expired` and `NotHeld` all mean "do not release"; only `Fenced` is final.
#[derive(Debug, thiserror::Error)]
pub enum ArbiterError {
    #[error("arbiter I/O on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("arbiter lease {} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("lease held by {owner} (fence {fence}) until unix ms {expires_unix_ms}")]
    Held { owner: String, fence: u64, expires_unix_ms: u64 },
    #[error("fenced: the lease now belongs to {owner} with fence {fence}")]
    Fenced { owner: String, fence: u64 },
    /// Our own monotonic deadline passed without a renewal; `renew` may still recover if no one took over.
    #[error("lease (fence {fence}) expired by our own clock; not renewed in time")]
    Expired { fence: u64 },
    /// `check`/`renew`/`bump_fence` on a node that never acquired the lease or released it.
    #[error("node {node} does not hold the lease")]
    NotHeld { node: String },
    #[error("bad arbiter spec: {0}")]
    BadSpec(String),
    /// The etcd cluster did not answer (a member down or cut off, no leader, a timeout): not now, try again.
    #[error("etcd did not answer ({what}): {reason}")]
    Unreachable { what: &'static str, reason: String },
    /// A record under the etcd prefix is not what this arbiter writes: an operator must look at it.
    #[error("etcd key {key}: {reason}")]
    BadRecord { key: String, reason: String },
    /// The etcd records changed between our read and our compare-and-swap: the next attempt reads them again.
    #[error("the etcd records changed during {what}; trying again")]
    Raced { what: &'static str },
}

/// Parses an `--arbiter` value: `file:DIR` or `etcd:HOST:PORT[,HOST:PORT...][/PREFIX]`. `ttl` is the heartbeat
/// timeout: the file lease's time to live, the etcd arbiter's confirmation window (see each for how).
pub fn from_spec(spec: &str, node: &str, ttl: Duration) -> Result<Box<dyn Arbiter>, ArbiterError> {
    match spec.split_once(':') {
        Some(("file", dir)) if !dir.is_empty() => Ok(Box::new(FileArbiter::new(Path::new(dir), node, ttl)?)),
        Some(("file", _)) => Err(ArbiterError::BadSpec("file: needs a directory, as in file:/shared/vm1".into())),
        Some(("etcd", rest)) => Ok(Box::new(etcd::EtcdArbiter::new(rest, node, ttl)?)),
        _ => Err(ArbiterError::BadSpec(format!(
            "{spec:?}: unknown arbiter kind; expected file:DIR or etcd:HOST:PORT[,HOST:PORT...][/PREFIX]"
        ))),
    }
}

/// Node names are stored in lease records: 1..=[`MAX_NODE_LEN`] bytes without control characters.
fn check_node(node: &str) -> Result<(), ArbiterError> {
    if node.is_empty() || node.len() > MAX_NODE_LEN || node.chars().any(char::is_control) {
        return Err(ArbiterError::BadSpec(format!(
            "node name {node:?} must be 1..={MAX_NODE_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

/// One of our files, with the identity it had when we opened it (to notice it being replaced under us).
#[derive(Debug)]
struct Opened {
    file: File,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Opened {
    fn open(dir: &Path, name: &str) -> Result<Opened, ArbiterError> {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| ArbiterError::Io { path: path.clone(), source })?;
        let meta = file.metadata().map_err(|source| ArbiterError::Io { path: path.clone(), source })?;
        Ok(Opened { file, dev: meta.dev(), ino: meta.ino(), path })
    }

    /// A file deleted or replaced while we hold it open would give us a private lock or lease: refuse.
    fn verify(&self) -> Result<(), ArbiterError> {
        match std::fs::metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => Ok(()),
            Ok(_) => Err(self.replaced()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.replaced()),
            Err(source) => Err(ArbiterError::Io { path: self.path.clone(), source }),
        }
    }

    fn replaced(&self) -> ArbiterError {
        ArbiterError::Corrupt {
            path: self.path.clone(),
            reason: "the file was removed or replaced while this node had it open; restart the node".into(),
        }
    }

    fn io(&self, source: io::Error) -> ArbiterError {
        ArbiterError::Io { path: self.path.clone(), source }
    }
}

/// Releases a flock when dropped. Holds the raw fd: the `File` lives in the arbiter, which outlives the guard.
struct FlockGuard(RawFd);

impl Drop for FlockGuard {
    fn drop(&mut self) {
        // SAFETY: flock on an fd we own (kept open by the arbiter for longer than this guard); no memory involved.
        unsafe { libc::flock(self.0, libc::LOCK_UN) };
    }
}

/// `flock(op | LOCK_NB)`: Ok(true) when taken, Ok(false) when someone else holds a conflicting lock.
fn try_flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a valid open fd; no memory involved.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Held {
    fence: u64,
    /// Monotonic instant after which `check` fails until the next successful renewal.
    deadline: Instant,
}

/// The default arbiter: a lease in files inside a shared directory. See the module doc.
#[derive(Debug)]
pub struct FileArbiter {
    node: String,
    ttl: Duration,
    clock_margin: Duration,
    lock: Opened,
    lease: Opened,
    active: Opened,
    /// Some while we believe we hold the lease.
    held: Option<Held>,
    /// Whether our `active` file description currently holds its flock.
    active_locked: bool,
    /// Who took the lease from us, for `Fenced` answers without I/O.
    lost_to: Option<(String, u64)>,
}

impl FileArbiter {
    /// Opens (creating the files, never the directory) the arbiter store in `dir` for node `node`. `ttl` is the
    /// lease duration: others may take over `ttl` after our last renewal.
    pub fn new(dir: &Path, node: &str, ttl: Duration) -> Result<FileArbiter, ArbiterError> {
        check_node(node)?;
        if ttl < Duration::from_millis(10) || ttl > Duration::from_secs(86_400) {
            return Err(ArbiterError::BadSpec(format!("lease ttl {ttl:?} must be between 10 ms and one day")));
        }
        if !dir.is_dir() {
            // Creating it could hand each node a private, unshared directory: two actives.
            return Err(ArbiterError::Io {
                path: dir.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "arbiter directory does not exist (shared storage not mounted?); it is never created here",
                ),
            });
        }
        Ok(FileArbiter {
            node: node.to_string(),
            ttl,
            clock_margin: Duration::ZERO,
            lock: Opened::open(dir, LOCK_FILE)?,
            lease: Opened::open(dir, LEASE_FILE)?,
            active: Opened::open(dir, ACTIVE_FILE)?,
            held: None,
            active_locked: false,
            lost_to: None,
        })
    }

    /// The owner stops releasing `margin` earlier than the stored expiry: set it above the worst wall-clock skew
    /// between the nodes (0 by default: one machine, one clock). Must leave at least 5 ms of lease.
    pub fn with_clock_margin(mut self, margin: Duration) -> Result<FileArbiter, ArbiterError> {
        if margin.saturating_add(ROUNDING + Duration::from_millis(5)) > self.ttl {
            return Err(ArbiterError::BadSpec(format!("clock margin {margin:?} leaves no lease of {:?}", self.ttl)));
        }
        self.clock_margin = margin;
        Ok(self)
    }

    /// Takes `op` on `kemari.lock`, waiting at most `wait` (a frozen holder must not hang us forever).
    fn lock_store(&self, op: libc::c_int, wait: Duration) -> Result<FlockGuard, ArbiterError> {
        let give_up = Instant::now() + wait;
        loop {
            if try_flock(&self.lock.file, op).map_err(|e| self.lock.io(e))? {
                return Ok(FlockGuard(self.lock.file.as_raw_fd()));
            }
            if Instant::now() >= give_up {
                return Err(self.lock.io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("lock still busy after {wait:?} (a holder stopped inside its critical section?)"),
                )));
            }
            std::thread::sleep(LOCK_RETRY);
        }
    }

    /// Reads and parses the lease. Caller holds `kemari.lock` (shared or exclusive).
    fn read_locked(&self, verify_lock: bool) -> Result<Lease, ArbiterError> {
        if verify_lock {
            self.lock.verify()?;
        }
        self.lease.verify()?;
        let mut buf = [0u8; MAX_FILE_LEN];
        let mut n = 0;
        while n < buf.len() {
            match self.lease.file.read_at(&mut buf[n..], n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.lease.io(e)),
            }
        }
        if n == 0 {
            return Ok(Lease::free());
        }
        if n == buf.len() {
            return Err(ArbiterError::Corrupt {
                path: self.lease.path.clone(),
                reason: format!("longer than {MAX_FILE_LEN} bytes"),
            });
        }
        serde_json::from_slice(&buf[..n])
            .map_err(|e| ArbiterError::Corrupt { path: self.lease.path.clone(), reason: e.to_string() })
    }

    /// Writes the lease in place as one padded record. Caller holds `kemari.lock` exclusively.
    fn write_locked(&self, lease: &Lease, sync: bool) -> Result<(), ArbiterError> {
        let mut rec = serde_json::to_vec(lease)
            .map_err(|e| ArbiterError::Corrupt { path: self.lease.path.clone(), reason: e.to_string() })?;
        if rec.len() >= RECORD_LEN {
            // Cannot happen with MAX_NODE_LEN; refuse rather than write a record that could tear.
            return Err(ArbiterError::Corrupt {
                path: self.lease.path.clone(),
                reason: format!("record of {} bytes exceeds {RECORD_LEN}", rec.len()),
            });
        }
        rec.resize(RECORD_LEN - 1, b' ');
        rec.push(b'\n');
        let f = &self.lease.file;
        f.write_all_at(&rec, 0).map_err(|e| self.lease.io(e))?;
        // Only a foreign, longer file needs cutting; our records all have the same length.
        if f.metadata().map_err(|e| self.lease.io(e))?.len() != RECORD_LEN as u64 {
            f.set_len(RECORD_LEN as u64).map_err(|e| self.lease.io(e))?;
        }
        if sync {
            f.sync_data().map_err(|e| self.lease.io(e))?;
        }
        Ok(())
    }

    /// Tries (never waits) to take the flock on `kemari.active`; true when we hold it.
    fn try_active_lock(&mut self) -> Result<bool, ArbiterError> {
        if !self.active_locked {
            self.active_locked = try_flock(&self.active.file, libc::LOCK_EX).map_err(|e| self.active.io(e))?;
        }
        Ok(self.active_locked)
    }

    fn drop_active_lock(&mut self) {
        if self.active_locked {
            // SAFETY: flock on our own open fd; no memory involved.
            unsafe { libc::flock(self.active.file.as_raw_fd(), libc::LOCK_UN) };
            self.active_locked = false;
        }
    }

    /// Writes a fresh lease naming us with `fence` and starts our monotonic deadline. Caller holds the store
    /// lock exclusively and has checked that we may.
    fn hold(&mut self, fence: u64, sync: bool) -> Result<u64, ArbiterError> {
        let was_held = self.held.is_some();
        // Picks up the active lock once a stopped or fenced predecessor let go of it.
        self.try_active_lock()?;
        // Monotonic time first, wall clock after: our deadline can only end before the stored expiry.
        let t0 = Instant::now();
        let lease = Lease {
            owner: self.node.clone(),
            fence,
            expires_unix_ms: now_unix_ms() + self.ttl.as_millis() as u64,
            active_lock: self.active_locked,
        };
        if let Err(e) = self.write_locked(&lease, sync) {
            if !was_held {
                self.drop_active_lock();
            }
            // A held lease keeps its old deadline: check fails by itself when it passes.
            return Err(e);
        }
        self.held = Some(Held { fence, deadline: t0 + self.ttl - self.clock_margin - ROUNDING });
        self.lost_to = None;
        Ok(fence)
    }

    /// The stored lease is someone else's now: stop being active at once.
    fn lose(&mut self, stored: &Lease) -> ArbiterError {
        tracing::warn!(node = %self.node, owner = %stored.owner, fence = stored.fence, "arbiter: fenced, lease lost");
        self.held = None;
        self.drop_active_lock();
        self.lost_to = Some((stored.owner.clone(), stored.fence));
        ArbiterError::Fenced { owner: stored.owner.clone(), fence: stored.fence }
    }

    fn not_held(&self) -> ArbiterError {
        match &self.lost_to {
            Some((owner, fence)) => ArbiterError::Fenced { owner: owner.clone(), fence: *fence },
            None => ArbiterError::NotHeld { node: self.node.clone() },
        }
    }

    fn is_ours(&self, stored: &Lease, held: &Held) -> bool {
        stored.owner == self.node && stored.fence == held.fence
    }

    /// Reads the stored lease under the exclusive lock and returns our `Held` if it is still ours.
    fn held_and_ours(&mut self) -> Result<Held, ArbiterError> {
        let held = self.held.ok_or_else(|| self.not_held())?;
        let stored = self.read_locked(true)?;
        if !self.is_ours(&stored, &held) {
            return Err(self.lose(&stored));
        }
        Ok(held)
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn next_fence(path: &Path, fence: u64) -> Result<u64, ArbiterError> {
    fence
        .checked_add(1)
        .ok_or_else(|| ArbiterError::Corrupt { path: path.to_path_buf(), reason: "fence overflow".into() })
}

impl Arbiter for FileArbiter {
    fn node(&self) -> &str {
        &self.node
    }

    fn acquire(&mut self) -> Result<u64, ArbiterError> {
        let _g = self.lock_store(libc::LOCK_EX, self.ttl)?;
        let stored = self.read_locked(true)?;
        if let Some(held) = self.held {
            if self.is_ours(&stored, &held) {
                return self.hold(held.fence, false);
            }
            self.lose(&stored);
        }
        // Another process with our node name counts as another holder: that prevents two actives when a node
        // name is reused by mistake, at the cost of a restarted primary waiting up to one ttl.
        if !stored.expired_at(now_unix_ms()) {
            return Err(ArbiterError::Held {
                owner: stored.owner,
                fence: stored.fence,
                expires_unix_ms: stored.expires_unix_ms,
            });
        }
        let fence = self.hold(next_fence(&self.lease.path, stored.fence)?, true)?;
        tracing::info!(node = %self.node, fence, previous = %stored.owner, "arbiter: acquired lease");
        Ok(fence)
    }

    fn renew(&mut self) -> Result<(), ArbiterError> {
        self.held.ok_or_else(|| self.not_held())?;
        let _g = self.lock_store(libc::LOCK_EX, self.ttl)?;
        let held = self.held_and_ours()?;
        self.hold(held.fence, false).map(drop)
    }

    fn check(&mut self) -> Result<(), ArbiterError> {
        let held = self.held.ok_or_else(|| self.not_held())?;
        // Read the store even when our deadline has passed: a woken old owner must learn it is Fenced (and drop
        // the active lock), not merely Expired.
        let stored = {
            let _g = self.lock_store(libc::LOCK_SH, CHECK_LOCK_WAIT)?;
            // The lock file is verified by every writer; here only the lease, to keep check cheap.
            self.read_locked(false)?
        };
        if !self.is_ours(&stored, &held) {
            return Err(self.lose(&stored));
        }
        // Judge the deadline after the read: the store confirmed us at a moment before it.
        if Instant::now() >= held.deadline {
            return Err(ArbiterError::Expired { fence: held.fence });
        }
        Ok(())
    }

    fn bump_fence(&mut self) -> Result<u64, ArbiterError> {
        self.held.ok_or_else(|| self.not_held())?;
        let _g = self.lock_store(libc::LOCK_EX, self.ttl)?;
        let held = self.held_and_ours()?;
        let fence = self.hold(next_fence(&self.lease.path, held.fence)?, true)?;
        tracing::info!(node = %self.node, fence, "arbiter: fence bumped (running unprotected)");
        Ok(fence)
    }

    fn take_over(&mut self, expected_fence: u64) -> Result<TakeOver, ArbiterError> {
        let _g = match self.lock_store(libc::LOCK_EX, self.ttl) {
            Ok(g) => g,
            // Someone froze inside the critical section: the caller retries, like any other wait.
            Err(ArbiterError::Io { source, .. }) if source.kind() == io::ErrorKind::TimedOut => {
                return Ok(TakeOver::Wait)
            }
            Err(e) => return Err(e),
        };
        let stored = self.read_locked(true)?;
        if let Some(held) = self.held {
            if self.is_ours(&stored, &held) {
                return Ok(TakeOver::Won { fence: self.hold(held.fence, false)? });
            }
            self.lose(&stored);
        }
        if stored.fence != expected_fence {
            return Ok(TakeOver::Stale { fence: stored.fence });
        }
        let expired = stored.expired_at(now_unix_ms());
        // Fast path: only trust a free active lock when the owner recorded that it held it.
        let dead = !expired && stored.active_lock && self.try_active_lock()?;
        if !expired && !dead {
            return Ok(TakeOver::Wait);
        }
        let fence = self.hold(next_fence(&self.lease.path, stored.fence)?, true)?;
        tracing::info!(
            node = %self.node, fence, previous = %stored.owner,
            reason = if dead { "holder died (active lock free)" } else { "lease expired" },
            "arbiter: took over"
        );
        Ok(TakeOver::Won { fence })
    }

    fn read(&mut self) -> Result<Lease, ArbiterError> {
        let _g = self.lock_store(libc::LOCK_SH, self.ttl)?;
        self.read_locked(true)
    }

    fn release(&mut self) -> Result<(), ArbiterError> {
        if self.held.is_none() {
            return Ok(());
        }
        let _g = self.lock_store(libc::LOCK_EX, self.ttl)?;
        let held = self.held_and_ours()?;
        let lease = Lease { owner: self.node.clone(), fence: held.fence, expires_unix_ms: 0, active_lock: false };
        self.write_locked(&lease, true)?;
        // Stop being active only after the record says so: a secondary reading the old record meanwhile still
        // finds the active lock taken and waits.
        self.held = None;
        self.drop_active_lock();
        tracing::info!(node = %self.node, fence = held.fence, "arbiter: lease released");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child, ChildStdin, Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc;

    /// A fresh directory removed at the end of the test.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "kemari-arbiter-{}-{name}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// An arbiter whose reads answer from a script (only `read` is used).
    struct Scripted(Vec<Result<Lease, ArbiterError>>);

    impl Arbiter for Scripted {
        fn node(&self) -> &str {
            "scripted"
        }
        fn acquire(&mut self) -> Result<u64, ArbiterError> {
            unreachable!()
        }
        fn renew(&mut self) -> Result<(), ArbiterError> {
            unreachable!()
        }
        fn check(&mut self) -> Result<(), ArbiterError> {
            unreachable!()
        }
        fn bump_fence(&mut self) -> Result<u64, ArbiterError> {
            unreachable!()
        }
        fn take_over(&mut self, _: u64) -> Result<TakeOver, ArbiterError> {
            unreachable!()
        }
        fn read(&mut self) -> Result<Lease, ArbiterError> {
            self.0.remove(0)
        }
        fn release(&mut self) -> Result<(), ArbiterError> {
            unreachable!()
        }
    }

    #[test]
    fn a_patient_read_tries_again_only_while_the_answer_is_not_now() {
        let lease = Lease { owner: "pri".into(), fence: 7, expires_unix_ms: 1, active_lock: false };
        let unreachable = || ArbiterError::Unreachable { what: "read", reason: "no answer within 500ms".into() };
        // Two "not now" answers, then the lease.
        let mut a = Scripted(vec![Err(unreachable()), Err(ArbiterError::Raced { what: "read" }), Ok(lease.clone())]);
        assert_eq!(read_patiently(&mut a, 3).unwrap().fence, 7);
        // Out of tries: the last error.
        let mut a = Scripted(vec![Err(unreachable()), Err(unreachable()), Ok(lease.clone())]);
        assert!(matches!(read_patiently(&mut a, 2), Err(ArbiterError::Unreachable { .. })));
        // A final answer is not tried again.
        let mut a = Scripted(vec![Err(ArbiterError::BadRecord { key: "k".into(), reason: "r".into() }), Ok(lease)]);
        assert!(matches!(read_patiently(&mut a, 5), Err(ArbiterError::BadRecord { .. })));
    }

    fn arb(dir: &TempDir, node: &str, ttl_ms: u64) -> FileArbiter {
        FileArbiter::new(&dir.0, node, Duration::from_millis(ttl_ms)).unwrap()
    }

    fn assert_fenced(r: Result<(), ArbiterError>, owner: &str, fence: u64) {
        match r {
            Err(ArbiterError::Fenced { owner: o, fence: f }) if o == owner && f == fence => {}
            other => panic!("expected Fenced by {owner}/{fence}, got {other:?}"),
        }
    }

    #[test]
    fn acquire_on_empty_dir() {
        let d = TempDir::new("empty");
        let mut a = arb(&d, "a", 5_000);
        assert_eq!(a.read().unwrap(), Lease::free());
        assert!(matches!(a.check(), Err(ArbiterError::NotHeld { .. })));
        assert_eq!(a.acquire().unwrap(), 1);
        a.check().unwrap();
        let l = a.read().unwrap();
        assert_eq!((l.owner.as_str(), l.fence, l.active_lock), ("a", 1, true));
        assert!(l.expires_unix_ms > now_unix_ms());
        // Already ours: same fence, no bump.
        assert_eq!(a.acquire().unwrap(), 1);
        a.renew().unwrap();
        a.check().unwrap();
        // Fixed-size record, parseable as the documented JSON.
        let raw = std::fs::read(d.0.join(LEASE_FILE)).unwrap();
        assert_eq!(raw.len(), RECORD_LEN);
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(v["owner"], "a");
        assert_eq!(v["fence"], 1);
    }

    #[test]
    fn second_acquire_is_held_until_release() {
        let d = TempDir::new("held");
        let mut a = arb(&d, "a", 5_000);
        let mut b = arb(&d, "b", 5_000);
        assert_eq!(a.acquire().unwrap(), 1);
        match b.acquire() {
            Err(ArbiterError::Held { owner, fence: 1, .. }) => assert_eq!(owner, "a"),
            other => panic!("expected Held, got {other:?}"),
        }
        // The same node name in another process (here: another instance) is another holder too.
        let mut a2 = arb(&d, "a", 5_000);
        assert!(matches!(a2.acquire(), Err(ArbiterError::Held { .. })));
        a.check().unwrap();
        // Clean release: expired at once, fence kept; the next holder bumps it.
        a.release().unwrap();
        assert!(matches!(a.check(), Err(ArbiterError::NotHeld { .. })));
        let l = b.read().unwrap();
        assert_eq!((l.fence, l.expires_unix_ms, l.active_lock), (1, 0, false));
        assert_eq!(b.acquire().unwrap(), 2);
        assert!(b.read().unwrap().active_lock, "a released the active lock");
        assert!(matches!(a.renew(), Err(ArbiterError::NotHeld { .. })));
    }

    #[test]
    fn take_over_waits_while_renewed_then_wins_after_expiry() {
        let d = TempDir::new("expiry");
        let ttl = 300;
        let mut a = arb(&d, "a", ttl);
        let mut b = arb(&d, "b", ttl);
        assert_eq!(a.acquire().unwrap(), 1);
        let fence = b.read().unwrap().fence;
        // For two ttls the owner renews every 10 ms: the secondary must keep waiting.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2 * ttl) {
            a.renew().unwrap();
            a.check().unwrap();
            assert_eq!(b.take_over(fence).unwrap(), TakeOver::Wait);
            std::thread::sleep(Duration::from_millis(10));
        }
        // The owner stops renewing ("stopped"). Its own clock stops it first.
        std::thread::sleep(Duration::from_millis(ttl + 50));
        assert!(matches!(a.check(), Err(ArbiterError::Expired { fence: 1 })));
        assert_eq!(b.take_over(fence).unwrap(), TakeOver::Won { fence: 2 });
        b.check().unwrap();
        // a still holds the active lock (stopped, not dead): b runs without it and says so.
        assert!(!b.read().unwrap().active_lock);
        // a wakes up: its renew must see the takeover (renew first: check alone would hide a blind renew), then
        // check and bump_fence stay fenced.
        assert_fenced(a.renew(), "b", 2);
        assert_fenced(a.check(), "b", 2);
        assert_fenced(a.bump_fence().map(drop), "b", 2);
        let l = b.read().unwrap();
        assert_eq!((l.owner.as_str(), l.fence), ("b", 2));
        // a let go of the active lock when fenced: b picks it up on its next renewal.
        b.renew().unwrap();
        assert!(b.read().unwrap().active_lock);
    }

    #[test]
    fn renew_after_local_expiry_recovers_when_nobody_took_over() {
        let d = TempDir::new("recover");
        let mut a = arb(&d, "a", 50);
        a.acquire().unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert!(matches!(a.check(), Err(ArbiterError::Expired { .. })));
        a.renew().unwrap();
        a.check().unwrap();
        assert_eq!(a.read().unwrap().fence, 1);
    }

    #[test]
    fn take_over_is_stale_after_bump_fence() {
        let d = TempDir::new("stale");
        let mut a = arb(&d, "a", 200);
        let mut b = arb(&d, "b", 200);
        assert_eq!(a.acquire().unwrap(), 1);
        let seen = b.read().unwrap().fence;
        assert_eq!(a.bump_fence().unwrap(), 2);
        a.check().unwrap();
        assert_eq!(b.take_over(seen).unwrap(), TakeOver::Stale { fence: 2 });
        // Even with the primary dead (closing its files drops the active lock) and the lease expired.
        drop(a);
        assert_eq!(b.take_over(seen).unwrap(), TakeOver::Stale { fence: 2 });
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(b.take_over(seen).unwrap(), TakeOver::Stale { fence: 2 });
        assert!(matches!(b.check(), Err(ArbiterError::NotHeld { .. })));
        // A secondary that knows the new fence may take over.
        assert_eq!(b.take_over(2).unwrap(), TakeOver::Won { fence: 3 });
    }

    #[test]
    fn free_active_lock_alone_does_not_mean_dead() {
        // b wins by time while the stopped a still holds the active lock; then a's lock goes away before b has
        // picked it up. A third node must not read the free lock as "b is dead".
        let d = TempDir::new("flag");
        let mut a = arb(&d, "a", 100);
        let mut b = arb(&d, "b", 60_000);
        let mut c = arb(&d, "c", 60_000);
        a.acquire().unwrap();
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(b.take_over(1).unwrap(), TakeOver::Won { fence: 2 });
        assert!(!b.read().unwrap().active_lock);
        drop(a); // the old holder dies: kemari.active is free, b alive but has not renewed yet
        assert_eq!(c.take_over(2).unwrap(), TakeOver::Wait);
        // After its renewal b holds the lock; its death is then detected at once, long before the 60 s expiry.
        b.renew().unwrap();
        assert!(b.read().unwrap().active_lock);
        assert_eq!(c.take_over(2).unwrap(), TakeOver::Wait);
        drop(b);
        assert_eq!(c.take_over(2).unwrap(), TakeOver::Won { fence: 3 });
        c.check().unwrap();
        assert!(c.read().unwrap().active_lock);
    }

    // ---- child processes: the test binary runs itself as the lease holder ----

    const CHILD_DIR: &str = "KEMARI_ARBITER_TEST_CHILD_DIR";
    const CHILD_TTL: &str = "KEMARI_ARBITER_TEST_CHILD_TTL_MS";

    /// Not a test: the entry point of the child process. It acquires the lease as node "child", says READY, then
    /// runs the commands it reads on stdin ("check", "renew") and prints each outcome. Without the environment
    /// variables (a plain `cargo test -- --ignored`) it does nothing.
    #[test]
    #[ignore = "entry point of the child process spawned by the SIGKILL/SIGSTOP tests"]
    fn arbiter_child_holder_entry() {
        let Ok(dir) = std::env::var(CHILD_DIR) else { return };
        let ttl = std::env::var(CHILD_TTL).unwrap().parse().unwrap();
        let mut a = FileArbiter::new(Path::new(&dir), "child", Duration::from_millis(ttl)).unwrap();
        let fence = a.acquire().unwrap();
        println!("KEMARI-CHILD READY {fence}");
        io::stdout().flush().unwrap();
        for line in io::stdin().lock().lines() {
            let r = match line.unwrap().trim() {
                "check" => a.check(),
                "renew" => a.renew(),
                other => panic!("unknown command {other}"),
            };
            let word = match r {
                Ok(()) => "ok".to_string(),
                Err(ArbiterError::Fenced { owner, fence }) => format!("fenced {owner} {fence}"),
                Err(e) => format!("error {e}"),
            };
            println!("KEMARI-CHILD {word}");
            io::stdout().flush().unwrap();
        }
    }

    /// The holder process; killed (SIGKILL) on drop so a failing test leaves nothing behind.
    struct ChildHolder {
        child: Child,
        stdin: Option<ChildStdin>,
        /// Our lines from the child's stdout, read by a thread so that a silent child fails the test, not hangs it.
        lines: mpsc::Receiver<String>,
    }

    impl ChildHolder {
        /// Spawns the child and waits until it holds the lease; returns it and its fence.
        fn spawn(dir: &TempDir, ttl_ms: u64) -> (ChildHolder, u64) {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["arbiter_child_holder_entry", "--ignored", "--nocapture", "--test-threads=1"])
                .env(CHILD_DIR, &dir.0)
                .env(CHILD_TTL, ttl_ms.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take();
            let stdout = BufReader::new(child.stdout.take().unwrap());
            let (tx, lines) = mpsc::channel();
            std::thread::spawn(move || {
                // libtest prints "test NAME ... " before the first line of ours: search, do not anchor.
                for line in stdout.lines().map_while(Result::ok) {
                    if let Some(at) = line.find("KEMARI-CHILD ") {
                        let _ = tx.send(line[at + "KEMARI-CHILD ".len()..].trim_end().to_string());
                    }
                }
            });
            let mut h = ChildHolder { child, stdin, lines };
            let ready = h.next_line();
            let fence = ready.strip_prefix("READY ").unwrap_or_else(|| panic!("child said {ready:?}"));
            (h, fence.parse().unwrap())
        }

        /// Next line the child printed with our prefix (the test harness prints its own lines too).
        fn next_line(&mut self) -> String {
            self.lines.recv_timeout(Duration::from_secs(30)).expect("child exited or went silent")
        }

        fn ask(&mut self, cmd: &str) -> String {
            writeln!(self.stdin.as_mut().unwrap(), "{cmd}").unwrap();
            self.next_line()
        }

        fn signal(&self, sig: libc::c_int) {
            // SAFETY: kill(2) on our own child's pid; no memory involved.
            assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, sig) }, 0);
        }
    }

    impl Drop for ChildHolder {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Fast path. Why a re-executed test binary rather than `flock DIR/kemari.active sleep 60` or fork: the child
    /// then runs the real acquire path (lease record and active lock written by the code under test), it needs no
    /// util-linux, and fork in the multi-threaded test harness is unsafe for anything beyond exec.
    #[test]
    fn sigkilled_holder_is_taken_over_before_expiry() {
        let d = TempDir::new("sigkill");
        let (mut child, fence) = ChildHolder::spawn(&d, 60_000);
        assert_eq!(fence, 1);
        let mut b = arb(&d, "b", 60_000);
        let l = b.read().unwrap();
        assert!(l.owner == "child" && l.active_lock, "{l:?}");
        // Alive: holds the active lock, lease valid for a minute.
        assert_eq!(b.take_over(fence).unwrap(), TakeOver::Wait);
        child.child.kill().unwrap(); // SIGKILL
        child.child.wait().unwrap();
        let t = Instant::now();
        assert_eq!(b.take_over(fence).unwrap(), TakeOver::Won { fence: 2 });
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(now_unix_ms() < l.expires_unix_ms, "won by death detection, not by expiry");
        b.check().unwrap();
        assert!(b.read().unwrap().active_lock);
    }

    /// A stopped holder keeps its active lock: the secondary must wait for expiry, and the woken holder is fenced.
    #[test]
    fn sigstopped_holder_waits_for_expiry_and_is_fenced_on_wake() {
        let d = TempDir::new("sigstop");
        let ttl = 300;
        let (mut child, fence) = ChildHolder::spawn(&d, ttl);
        // The child only touches the store when asked, so SIGSTOP never lands inside its critical section.
        assert_eq!(child.ask("check"), "ok");
        child.signal(libc::SIGSTOP);
        let mut b = arb(&d, "b", 5_000);
        assert_eq!(b.take_over(fence).unwrap(), TakeOver::Wait);
        let start = Instant::now();
        let won = loop {
            match b.take_over(fence).unwrap() {
                TakeOver::Wait if start.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                other => break other,
            }
        };
        assert_eq!(won, TakeOver::Won { fence: fence + 1 });
        assert!(!b.read().unwrap().active_lock, "the stopped child still holds kemari.active");
        child.signal(libc::SIGCONT);
        assert_eq!(child.ask("check"), format!("fenced b {}", fence + 1));
        assert_eq!(child.ask("renew"), format!("fenced b {}", fence + 1));
        b.check().unwrap();
        assert_eq!(b.read().unwrap().owner, "b");
        // Fenced, the child let go of kemari.active: b takes it on renewal.
        b.renew().unwrap();
        assert!(b.read().unwrap().active_lock);
    }

    #[test]
    fn corrupt_lease_is_an_error_not_a_panic() {
        let d = TempDir::new("corrupt");
        let mut a = arb(&d, "a", 5_000);
        for junk in
            [&b"{\"owner\": \"a\", \"fen"[..], b"\xff\xfe\x00garbage", b"   \n", b"{\"owner\":1,\"fence\":\"x\"}"]
        {
            std::fs::write(d.0.join(LEASE_FILE), junk).unwrap();
            for r in [a.read().map(drop), a.acquire().map(drop), a.take_over(0).map(drop)] {
                match r {
                    Err(e @ ArbiterError::Corrupt { .. }) => {
                        assert!(e.to_string().contains(LEASE_FILE), "{e}")
                    }
                    other => panic!("expected Corrupt for {junk:?}, got {other:?}"),
                }
            }
        }
        // The 3-field record of the brief (no active_lock) is accepted.
        std::fs::write(d.0.join(LEASE_FILE), br#"{"owner":"x","fence":7,"expires_unix_ms":0}"#).unwrap();
        assert_eq!(a.read().unwrap().fence, 7);
        assert_eq!(a.acquire().unwrap(), 8);
    }

    #[test]
    fn replaced_lease_file_is_refused() {
        let d = TempDir::new("replaced");
        let mut a = arb(&d, "a", 5_000);
        a.acquire().unwrap();
        std::fs::remove_file(d.0.join(LEASE_FILE)).unwrap();
        assert!(matches!(a.check(), Err(ArbiterError::Corrupt { .. })));
        assert!(matches!(a.renew(), Err(ArbiterError::Corrupt { .. })));
    }

    #[test]
    fn from_spec_kinds() {
        let ttl = Duration::from_millis(500);
        for (spec, needle) in [("etcd:x", "HOST:PORT"), ("bogus", "unknown"), ("file:", "directory")] {
            match from_spec(spec, "a", ttl) {
                Err(e @ ArbiterError::BadSpec(_)) => assert!(e.to_string().contains(needle), "{e}"),
                Err(e) => panic!("{spec}: expected BadSpec, got {e:?}"),
                Ok(_) => panic!("{spec}: expected BadSpec, got an arbiter"),
            }
        }
        assert!(matches!(from_spec("file:/nonexistent/kemari", "a", ttl), Err(ArbiterError::Io { .. })));
        assert!(!Path::new("/nonexistent/kemari").exists(), "the directory must never be created");
        assert!(matches!(FileArbiter::new(Path::new("/tmp"), "", ttl), Err(ArbiterError::BadSpec(_))));
        let d = TempDir::new("spec");
        let mut a = from_spec(&format!("file:{}", d.0.display()), "a", ttl).unwrap();
        assert_eq!(a.node(), "a");
        assert_eq!(a.acquire().unwrap(), 1);
    }

    #[test]
    fn check_cost() {
        let d = TempDir::new("cost");
        let mut a = arb(&d, "a", 60_000);
        a.acquire().unwrap();
        let n = 20_000;
        let t = Instant::now();
        for _ in 0..n {
            a.check().unwrap();
        }
        let per = t.elapsed() / n;
        println!("arbiter check(): {per:?} per call over {n} calls ({})", d.0.display());
    }
}
