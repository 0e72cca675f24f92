//! The input log: what the primary's guest consumed after the secondary's committed state, so that a failover
//! replays it instead of losing it.
//!
//! Inputs need no synchronisation for correctness (DESIGN.md): one that dies with the primary is a packet lost
//! on a network, and TCP resends it. But the resend waits for the client's retransmission timeout (200 ms at
//! least on Linux), a stall on every failover that hits a busy connection. So the primary sends each input to
//! the secondary in an INPUT message, numbered the way the gate counts what the guest consumes per source (see
//! `kemari_devices::gate::Input`): a frame as soon as it arrives from the tap (`Machine::log_frames_on_arrival`,
//! written by the tap reader itself when the link is idle, else by the link's sender; the tap's queue is first in, first out, so the n-th frame to arrive is the
//! n-th the guest consumes), console bytes right after the guest took them. Delivery to the guest never waits.
//! Every checkpoint carries the per-source counts of its state. The secondary keeps what its committed state has not consumed and
//! drops the rest at each commit; on failover it delivers, per source and in order, the inputs after the
//! committed counts, before anything new. To the guest that is a network that delivered them a little late.
//!
//! Ordering cases:
//! - *An input consumed while a checkpoint is taken*: cannot happen; both run on the machine thread, inputs
//!   between slices and checkpoints between rounds. An input is in a checkpoint's state or after it. Console
//!   bytes leave before the next checkpoint (the same ordered link); a frame's INPUT may come after a
//!   checkpoint that counts it consumed (another thread queues it), and is then a duplicate (below).
//! - *Duplicates*: an input the committed state consumed has a sequence number at or below its count and is
//!   dropped, never replayed.
//! - *Inputs still on the wire when the primary died*: the secondary reads everything that reached it before
//!   the connection ended, then fails over; what never reached it is lost as before (and TCP resends it).
//! - *Inputs the primary had not consumed yet*: a frame waiting in the tap's queue (the machine busy with a
//!   checkpoint, no RX buffers) is in the log already and is replayed; typed bytes waiting for FIFO space are
//!   not, and are lost as before. A frame that never reached kemari (on the wire, in the kernel's tap queue)
//!   is lost as before.
//! - *The console*: typed bytes are inputs like frames; replayed ones come before what is typed on the new
//!   primary's own console.
//! - *A gap* (the log overflowed, or an INPUT message was lost with a session): a source is replayed only
//!   while its sequence numbers follow on from the committed count; from its first gap on, nothing of it.
//!
//! Memory is bounded: the primary checkpoints once it logged [`CHECKPOINT_AFTER`] bytes that no checkpoint
//! covers, and a secondary that holds more than [`CAP`] bytes drops its whole log (a replay then starts at the
//! next commit's counts, through the gap rule) and says so.

use std::collections::VecDeque;

use kemari_devices::gate::{Input, Source, MAX_SOURCES};

use crate::wire::WireError;

/// Bytes of inputs the primary logs before it takes a checkpoint even with no output pending.
pub const CHECKPOINT_AFTER: u64 = 4 << 20;
/// Bytes of inputs a secondary keeps at most.
pub const CAP: u64 = 64 << 20;
/// Largest single input (a frame, a chunk of console bytes).
const MAX_INPUT: usize = 1 << 17;

/// An INPUT message's payload: per input, source u32 (0 the console, 1 + n interface n), sequence u64, length
/// u32, bytes.
pub fn encode(inputs: &[Input]) -> Vec<u8> {
    let mut v = Vec::with_capacity(inputs.iter().map(|i| 16 + i.bytes.len()).sum());
    for i in inputs {
        v.extend_from_slice(&(i.source.index() as u32).to_le_bytes());
        v.extend_from_slice(&i.seq.to_le_bytes());
        v.extend_from_slice(&(i.bytes.len() as u32).to_le_bytes());
        v.extend_from_slice(&i.bytes);
    }
    v
}

/// Decodes an INPUT payload (untrusted).
pub fn decode(mut b: &[u8]) -> Result<Vec<Input>, WireError> {
    let bad = |why: String| WireError::Protocol(format!("bad INPUT: {why}"));
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 16 {
            return Err(bad("truncated".into()));
        }
        let source = u32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as usize;
        let seq = u64::from_le_bytes(b[4..12].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")) as usize;
        if source >= MAX_SOURCES || seq == 0 || len > MAX_INPUT || b.len() - 16 < len {
            return Err(bad(format!("source {source}, sequence {seq}, {len} bytes")));
        }
        out.push(Input { source: Source::from_index(source), seq, bytes: b[16..16 + len].to_vec() });
        b = &b[16 + len..];
    }
    Ok(out)
}

/// The secondary's log.
#[derive(Default)]
pub struct InputLog {
    inputs: VecDeque<Input>,
    bytes: u64,
}

impl InputLog {
    /// Appends what an INPUT message brought. False when the log went over [`CAP`] and was dropped.
    pub fn push(&mut self, inputs: Vec<Input>) -> bool {
        for i in inputs {
            self.bytes += i.bytes.len() as u64;
            self.inputs.push_back(i);
        }
        if self.bytes > CAP {
            self.inputs.clear();
            self.bytes = 0;
            return false;
        }
        true
    }

    /// After a commit: drops what the committed state consumed (`consumed(source)`).
    pub fn prune(&mut self, consumed: impl Fn(Source) -> u64) {
        self.inputs.retain(|i| i.seq > consumed(i.source));
        self.bytes = self.inputs.iter().map(|i| i.bytes.len() as u64).sum();
    }

    /// What a failover replays: for each source, the inputs that follow on from `consumed(source)` without a
    /// gap, in log order.
    pub fn replay(self, consumed: impl Fn(Source) -> u64) -> Vec<Input> {
        let mut next = std::collections::HashMap::new();
        let mut out = Vec::new();
        for i in self.inputs {
            let want = next.entry(i.source).or_insert_with(|| consumed(i.source) + 1);
            if i.seq == *want {
                *want += 1;
                out.push(i);
            } else if i.seq > *want {
                // A gap: nothing more of this source.
                *want = u64::MAX;
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(source: Source, seq: u64, bytes: &[u8]) -> Input {
        Input { source, seq, bytes: bytes.to_vec() }
    }

    #[test]
    fn inputs_round_trip_and_bad_ones_are_refused() {
        let v = vec![input(Source::Console, 1, b"ls\r"), input(Source::Nic(2), 7, &[0xaa; 60])];
        assert_eq!(decode(&encode(&v)).unwrap(), v);
        let mut cut = encode(&v);
        cut.pop();
        assert!(decode(&cut).is_err());
        let mut zero = encode(&v[..1]);
        zero[4..12].copy_from_slice(&0u64.to_le_bytes());
        assert!(decode(&zero).is_err(), "sequence numbers start at 1");
        let mut far = encode(&v[..1]);
        far[..4].copy_from_slice(&(MAX_SOURCES as u32).to_le_bytes());
        assert!(decode(&far).is_err(), "no such source");
    }

    #[test]
    fn a_failover_replays_what_the_committed_state_had_not_consumed_in_order_and_once() {
        let mut log = InputLog::default();
        let (c, n0) = (Source::Console, Source::Nic(0));
        log.push(vec![input(n0, 1, b"a"), input(c, 1, b"x"), input(n0, 2, b"b"), input(n0, 3, b"c")]);
        // A checkpoint that consumed frame 1 and the console byte.
        log.prune(|_| 1);
        assert_eq!(log.len(), 2);
        log.push(vec![input(c, 2, b"y"), input(n0, 4, b"d")]);
        let replay = log.replay(|s| if s == n0 { 2 } else { 1 });
        let got: Vec<(Source, u64)> = replay.iter().map(|i| (i.source, i.seq)).collect();
        assert_eq!(got, [(n0, 3), (c, 2), (n0, 4)], "frame 2 was in the state; the rest in order");
    }

    #[test]
    fn a_source_is_replayed_only_up_to_its_first_gap() {
        let mut log = InputLog::default();
        let n = Source::Nic(0);
        log.push(vec![input(n, 5, b"e"), input(n, 6, b"f"), input(n, 8, b"h"), input(n, 9, b"i")]);
        let replay = log.replay(|_| 4);
        assert_eq!(replay.iter().map(|i| i.seq).collect::<Vec<_>>(), [5, 6]);
        let mut log = InputLog::default();
        log.push(vec![input(n, 7, b"g")]);
        assert!(log.replay(|_| 4).is_empty(), "5 and 6 are missing: replaying 7 would skip them");
    }

    #[test]
    fn an_overflowing_log_is_dropped() {
        let mut log = InputLog::default();
        let big = vec![0u8; MAX_INPUT];
        let many: Vec<Input> = (1..=(CAP / MAX_INPUT as u64) + 1).map(|s| input(Source::Nic(0), s, &big)).collect();
        assert!(!log.push(many));
        assert!(log.is_empty());
    }
}
