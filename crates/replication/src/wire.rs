//! The replication wire protocol between a primary and its secondary, over one TCP connection (inside mutual
//! TLS unless the operator asked for plaintext: `kemari_transport::Security`).
//!
//! ```text
//!  primary                                          secondary (kemari standby)
//!  HELLO       shape, storage mode, node, fence ──►  builds an empty machine of that shape, checks the arbiter
//!  PAGES       state stream of PAGS sections    ──►  writes pages (first synchronisation: pre-copy rounds)
//!                                               ◄──  DIGESTS  replicated disks: SHA-256 of each chunk of
//!  DISK        disk, offset, chunk              ──►  this node's copy; the primary sends each chunk that
//!                                                    differs, all before the first CHECKPOINT (`disks.rs`)
//!  CHECKPOINT  epoch u64, state stream          ──►  stages, verifies, commits atomically
//!                                               ◄──  ACK epoch  (committed)  |  NACK epoch (refused: the
//!                                                    secondary drops what follows; resend it and its successors)
//!  INPUT       inputs the guest consumed        ──►  kept until a commit covers them; replayed on failover
//!              (source, sequence, bytes)...          (see `inputs.rs`)
//!  HEARTBEAT   (both ways, every interval)      ◄─►  liveness: silence longer than the timeout is a failure
//!  SHUTDOWN    the guest powered off            ──►  the secondary ends too
//! ```
//!
//! Messages use the framing both kemari protocols share (`kemari_transport::frame`: kind, length, payload; a
//! REFUSE with a reason for whatever a node turns away). The receiver treats every payload as untrusted (state
//! streams are validated by the one decoder of `kemari-state`) and caps lengths by what the message may be: a
//! HELLO or an answer is small ([`SMALL_MESSAGE`]); after the HELLO, nothing is longer than the longest state
//! a machine of the announced size has ([`session_cap`]).

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kemari_state::Arch;
pub use kemari_transport::frame::{receive, send, FrameError as WireError};
use kemari_transport::frame::{Cursor, Protocol};

use crate::Storage;

pub const HELLO: u8 = 1;
pub const PAGES: u8 = 2;
pub const CHECKPOINT: u8 = 5;
pub const ACK: u8 = 6;
pub const NACK: u8 = 7;
pub const HEARTBEAT: u8 = 8;
pub const SHUTDOWN: u8 = 9;
pub const INPUT: u8 = 10;
pub const DIGESTS: u8 = 11;
pub const DISK: u8 = 12;

/// Largest HELLO, ACK, NACK or heartbeat accepted.
pub const SMALL_MESSAGE: u64 = 64 << 10;
/// The replication protocol's HELLO preamble and version window. 2: INPUT. 3: DIGESTS and DISK. 4: the
/// shared framing (a 4-byte magic; REFUSE).
pub const PROTOCOL: Protocol = Protocol { name: "replication", magic: *b"KMFT", versions: 4..=5 };
/// Version 3's preamble: an 8-byte magic, then the version. Its messages are version 4's, so a standby still
/// takes such a primary (upgrade the standby first); it cannot read a REFUSE, and sees the connection close.
const V3_MAGIC: &[u8; 8] = b"KEMARIFT";

/// The longest message a session may carry: a checkpoint's epoch and the longest state stream of the replica
/// machine (`max_state`, from the machine seam).
pub fn session_cap(max_state: u64) -> u64 {
    8 + max_state
}

pub use kemari_transport::Deadline;

/// A reader that notes when the peer makes progress, so that silence measures liveness and not message
/// boundaries: a checkpoint that takes long to arrive is not mistaken for a dead peer, while a peer that
/// trickles (a byte now and then inside a message that never ends) is. Progress is a whole message (the
/// receiver calls [`Tracked::heard`]) or [`PROGRESS_BYTES`] more bytes of one.
pub struct Tracked<R> {
    inner: R,
    last: Arc<LastHeard>,
    /// Bytes read since progress was last noted.
    pending: usize,
}

/// Bytes of a message in transit that count as a sign of life (one full TLS record): a link must carry at
/// least this much per heartbeat timeout while a long message crosses it.
pub const PROGRESS_BYTES: usize = 16 << 10;

impl<R: Read> Tracked<R> {
    pub fn new(inner: R, last: Arc<LastHeard>) -> Tracked<R> {
        Tracked { inner, last, pending: 0 }
    }

    /// A whole message arrived.
    pub fn heard(&mut self) {
        self.pending = 0;
        self.last.touch();
    }
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pending += n;
        if self.pending >= PROGRESS_BYTES {
            self.heard();
        }
        Ok(n)
    }
}

/// When the peer was last heard from.
pub struct LastHeard {
    origin: Instant,
    micros: AtomicU64,
}

impl Default for LastHeard {
    fn default() -> LastHeard {
        LastHeard { origin: Instant::now(), micros: AtomicU64::new(0) }
    }
}

impl LastHeard {
    pub fn touch(&self) {
        self.micros.store(self.origin.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// Time since the peer was last heard from.
    pub fn silence(&self) -> std::time::Duration {
        let now = self.origin.elapsed().as_micros() as u64;
        std::time::Duration::from_micros(now.saturating_sub(self.micros.load(Ordering::Relaxed)))
    }
}

/// The primary's introduction: what the secondary must build and whom it protects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The machine's architecture (version 5 on; a version 3 or 4 primary is RISC-V, the only one it had).
    pub arch: Arch,
    pub cpus: u32,
    pub memory: u64,
    pub storage: Storage,
    /// Size in bytes of each disk, in order (the secondary's must match).
    pub disks: Vec<u64>,
    /// The primary's node name and the arbiter fence it holds.
    pub node: String,
    pub fence: u64,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = PROTOCOL.preamble();
        v.extend_from_slice(&self.cpus.to_le_bytes());
        v.extend_from_slice(&self.memory.to_le_bytes());
        v.push(match self.storage {
            Storage::Shared => 0,
            Storage::Replicated => 1,
        });
        v.extend_from_slice(&(self.disks.len() as u32).to_le_bytes());
        for d in &self.disks {
            v.extend_from_slice(&d.to_le_bytes());
        }
        v.extend_from_slice(&self.fence.to_le_bytes());
        v.extend_from_slice(&(self.node.len() as u32).to_le_bytes());
        v.extend_from_slice(self.node.as_bytes());
        v.extend_from_slice(&self.arch.tag());
        v
    }

    /// Decodes and checks a HELLO (untrusted).
    pub fn decode(b: &[u8]) -> Result<Hello, WireError> {
        let bad = |why: &str| WireError::Protocol(format!("bad HELLO: {why}"));
        let (version, mut r) = match b.strip_prefix(V3_MAGIC) {
            Some(rest) if rest.get(..4) == Some(&3u32.to_le_bytes()[..]) => (3, Cursor::new(&rest[4..])),
            _ => PROTOCOL.accept(b).map_err(WireError::Protocol)?,
        };
        let cpus = r.u32().ok_or_else(|| bad("truncated"))?;
        let memory = r.u64().ok_or_else(|| bad("truncated"))?;
        let storage = match r.u8().ok_or_else(|| bad("truncated"))? {
            0 => Storage::Shared,
            1 => Storage::Replicated,
            k => return Err(bad(&format!("unknown storage mode {k}"))),
        };
        let n = r.u32().ok_or_else(|| bad("truncated"))?;
        if n > 64 {
            return Err(bad("too many disks"));
        }
        let disks = (0..n).map(|_| r.u64().ok_or_else(|| bad("truncated"))).collect::<Result<_, _>>()?;
        let fence = r.u64().ok_or_else(|| bad("truncated"))?;
        let len = r.u32().ok_or_else(|| bad("truncated"))? as usize;
        if len > 256 {
            return Err(bad("node name too long"));
        }
        let node = String::from_utf8(r.take(len).ok_or_else(|| bad("truncated"))?.to_vec())
            .map_err(|_| bad("node name is not UTF-8"))?;
        let arch = if version >= 5 {
            let tag = r.take(4).ok_or_else(|| bad("truncated"))?;
            let tag: [u8; 4] = tag.try_into().expect("4 bytes");
            Arch::from_tag(tag)
                .ok_or_else(|| bad(&format!("unknown architecture {:?}", String::from_utf8_lossy(&tag))))?
        } else {
            Arch::Riscv64
        };
        if !r.rest().is_empty() {
            return Err(bad("trailing bytes"));
        }
        if cpus == 0 || memory == 0 || memory % (1 << 20) != 0 {
            return Err(bad(&format!("impossible machine shape: {cpus} CPUs, {memory} bytes")));
        }
        Ok(Hello { arch, cpus, memory, storage, disks, node, fence })
    }
}

/// The epoch at the front of a CHECKPOINT, ACK or NACK payload, and the rest.
pub fn split_epoch(payload: &[u8]) -> Result<(u64, &[u8]), WireError> {
    if payload.len() < 8 {
        return Err(WireError::Protocol("message too short for its epoch".into()));
    }
    let (e, rest) = payload.split_at(8);
    Ok((u64::from_le_bytes(e.try_into().expect("8 bytes")), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            arch: Arch::Riscv64,
            cpus: 2,
            memory: 256 << 20,
            storage: Storage::Replicated,
            disks: vec![64 << 20],
            node: "pri".into(),
            fence: 7,
        }
    }

    #[test]
    fn hello_round_trips_and_every_truncation_is_refused() {
        let b = hello().encode();
        assert_eq!(Hello::decode(&b).unwrap(), hello());
        for n in 0..b.len() {
            assert!(Hello::decode(&b[..n]).is_err(), "truncated at {n} accepted");
        }
        let mut extra = b.clone();
        extra.push(0);
        assert!(Hello::decode(&extra).is_err());
    }

    /// A primary of protocol version 3 (before the shared framing) is still understood.
    #[test]
    fn a_version_3_hello_is_taken() {
        let v5 = hello().encode();
        let mut v3 = b"KEMARIFT".to_vec();
        v3.extend_from_slice(&3u32.to_le_bytes());
        v3.extend_from_slice(&v5[8..v5.len() - 4]);
        assert_eq!(Hello::decode(&v3).unwrap(), hello());
        v3[8] = 2;
        assert!(Hello::decode(&v3).is_err(), "version 2 is outside the window");
    }

    /// Version 4 had no architecture (RISC-V was the only one); version 5 names it, and an unknown one is
    /// refused by name.
    #[test]
    fn the_architecture_travels_from_version_5_on() {
        let x86 = Hello { arch: Arch::X86_64, ..hello() };
        assert_eq!(Hello::decode(&x86.encode()).unwrap().arch, Arch::X86_64);
        let mut v4 = x86.encode();
        v4.truncate(v4.len() - 4);
        v4[4] = 4;
        assert_eq!(Hello::decode(&v4).unwrap(), hello(), "a version 4 primary is RISC-V");
        let mut odd = hello().encode();
        let n = odd.len();
        odd[n - 4..].copy_from_slice(b"MIPS");
        let err = Hello::decode(&odd).unwrap_err().to_string();
        assert!(err.contains("unknown architecture \"MIPS\""), "{err}");
    }

    #[test]
    fn hello_with_bad_fields_is_refused() {
        let mut h = hello();
        h.memory = 12345;
        assert!(Hello::decode(&h.encode()).is_err());
        let mut b = hello().encode();
        b[4] = 9; // protocol version 9
        assert!(matches!(Hello::decode(&b), Err(WireError::Protocol(m)) if m.contains("version 9")));
        b = hello().encode();
        b[0] = b'X';
        assert!(Hello::decode(&b).is_err());
    }

    #[test]
    fn a_checkpoint_longer_than_the_machine_could_have_is_refused_unread() {
        let mut buf = Vec::new();
        send(&mut buf, CHECKPOINT, &[&5u64.to_le_bytes(), b"state"]).unwrap();
        let (kind, payload) = receive(&mut buf.as_slice(), SMALL_MESSAGE).unwrap();
        assert_eq!((kind, split_epoch(&payload).unwrap()), (CHECKPOINT, (5, &b"state"[..])));
        let mut big = vec![CHECKPOINT];
        big.extend_from_slice(&(session_cap(16 << 20) + 1).to_le_bytes());
        let err = receive(&mut big.as_slice(), session_cap(16 << 20)).unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
    }
}
