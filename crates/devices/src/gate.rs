//! The output gate: the ONE place through which the guest's effects leave the VM.
//!
//! Devices never write to a tap, a disk image or the terminal. They hand each effect (a frame, a block write or
//! flush, console bytes) to [`OutputGate::submit`]; the gate's [`Backend`] performs it. Effects carry their
//! data (a copy, never a pointer into guest memory), so a held effect stays valid after the guest reuses its
//! buffer, and a checkpoint can carry it.
//!
//! Modes:
//! - **pass-through** (no fault tolerance): every effect is performed at once, in order.
//! - **holding** (under protection): effects queue with a sequence number; [`OutputGate::release_through`]
//!   performs them in order once the checkpoint covering them is acknowledged. Because the gate holds the data,
//!   a device may complete a block write to the guest as soon as `submit` returns: the write survives any
//!   single failure inside the checkpoint that carries it (DESIGN.md, "nothing acknowledged is lost").
//!
//! Reads see the guest's own writes: [`OutputGate::overlay_read`] patches data read from a disk with the block
//! writes the gate still holds.
//!
//! A held block write or flush that cannot be performed when it is released (EIO, ENOSPC) was already
//! completed to the guest, so it must not be dropped: the gate *stalls*. It keeps that effect and everything
//! after it (in order), holds whatever is submitted next, and performs nothing until [`OutputGate::clear_stall`]
//! lets the next release try again. The machine pauses the guest while the gate is stalled (as QEMU's
//! `werror=stop` does) and the user resumes it once the disk is fixed. A frame or console bytes that cannot
//! be written are dropped (a lost packet), as on any network.
//!
//! The gate also counts the inputs the guest *consumes* (a frame moved into its RX buffers, console bytes
//! moved into the UART FIFO), per source, and under protection keeps a copy of each ([`Input`]) for the
//! primary driver to send to the secondary. The counts are machine state (saved with every checkpoint), so a
//! secondary knows which of the logged inputs its committed state has not seen, and replays exactly those
//! after a failover: a request that reached the old primary after its last checkpoint is not lost with it.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};

use kemari_state::{Reader, StateError, Writer};

/// An effect of the guest on the outside world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Bytes for the console.
    Console(Vec<u8>),
    /// A frame to send on network interface `nic`.
    NetTx { nic: usize, frame: Vec<u8> },
    /// `data` written at byte `offset` of disk `disk`.
    BlockWrite { disk: usize, offset: u64, data: Vec<u8> },
    /// Make every earlier write to disk `disk` durable.
    BlockFlush { disk: usize },
}

impl Effect {
    /// Bytes of data it carries.
    pub fn payload_len(&self) -> u64 {
        match self {
            Effect::Console(b) | Effect::NetTx { frame: b, .. } | Effect::BlockWrite { data: b, .. } => b.len() as u64,
            Effect::BlockFlush { .. } => 0,
        }
    }

    /// A short name for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Effect::Console(_) => "console output",
            Effect::NetTx { .. } => "frame",
            Effect::BlockWrite { .. } => "block write",
            Effect::BlockFlush { .. } => "flush",
        }
    }
}

/// Where an input came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Console,
    /// Network interface `n`.
    Nic(usize),
}

impl Source {
    /// Index in the per-source counters: 0 the console, 1 + n interface n.
    pub fn index(self) -> usize {
        match self {
            Source::Console => 0,
            Source::Nic(n) => 1 + n,
        }
    }

    pub fn from_index(i: usize) -> Source {
        if i == 0 {
            Source::Console
        } else {
            Source::Nic(i - 1)
        }
    }
}

/// One input the guest consumed: where from, its number among that source's inputs (1, 2, ...), its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub source: Source,
    pub seq: u64,
    pub bytes: Vec<u8>,
}

/// Most input sources a machine has (the console and 64 interfaces): a restored count list is capped by it.
pub const MAX_SOURCES: usize = 65;

/// Performs effects on the real world (or records them, in tests).
pub trait Backend: Send {
    fn perform(&mut self, effect: &Effect) -> io::Result<()>;
}

/// What happened to a submitted effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Performed already (pass-through mode).
    Performed,
    /// Held under sequence number `seq` until released.
    Held(u64),
}

/// What the machine's devices can take. A restored held effect for anything else is refused (a state stream
/// is untrusted: a held write must not reach past its disk, or a disk the machine does not have).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outlets {
    /// Size in bytes of each disk, by index.
    pub disk_bytes: Vec<u64>,
    /// Number of network interfaces.
    pub nics: usize,
}

pub struct OutputGate {
    backend: Box<dyn Backend>,
    /// When set, restored held effects are checked against it.
    outlets: Option<Outlets>,
    holding: bool,
    held: VecDeque<(u64, Effect)>,
    next_seq: u64,
    /// While replicated disks are compared (see [`OutputGate::track_block_writes`]): the chunk size, and the
    /// (disk, chunk) pairs that performed block writes touched since.
    written: Option<(u64, BTreeSet<(usize, u64)>)>,
    /// Why a held block effect could not be performed; releases wait until the stall is cleared.
    stalled: Option<String>,
    /// Payload bytes of the held effects.
    held_bytes: u64,
    /// Inputs consumed so far, per source index (see [`Source::index`]).
    consumed: Vec<u64>,
    /// Under protection: copies of the inputs consumed since the driver last took them.
    input_log: Option<Vec<Input>>,
    /// Frames are logged as they arrive, not here (see [`OutputGate::set_nics_logged_on_arrival`]).
    nics_logged_on_arrival: bool,
}

/// What a device may do with the gate: hand it an effect, read a disk through the writes it holds, and report
/// an input the guest consumed. Holding, releasing, saving, restoring and the input log are not here: fault tolerance lives in the gate and the driver that runs it,
/// never in a device, and the compiler sees to it.
pub struct Effects<'a> {
    gate: &'a mut OutputGate,
}

impl Effects<'_> {
    /// See [`OutputGate::submit`].
    pub fn submit(&mut self, effect: Effect) -> io::Result<Submitted> {
        self.gate.submit(effect)
    }

    /// See [`OutputGate::overlay_read`].
    pub fn overlay_read(&self, disk: usize, offset: u64, buf: &mut [u8]) {
        self.gate.overlay_read(disk, offset, buf)
    }

    /// See [`OutputGate::consume`].
    pub fn consume(&mut self, source: Source, bytes: &[u8]) {
        self.gate.consume(source, bytes)
    }
}

/// [`Effects`] for a device that keeps its handle between calls (the UART, whose writer vm-superio calls from
/// inside a register write): the machine's shared gate, of which it can use only what [`Effects`] offers.
#[derive(Clone)]
pub struct SharedEffects(Arc<Mutex<OutputGate>>);

impl SharedEffects {
    pub fn new(gate: &Arc<Mutex<OutputGate>>) -> SharedEffects {
        SharedEffects(gate.clone())
    }

    /// Runs `f` with the gate's [`Effects`].
    pub fn with<R>(&self, f: impl FnOnce(&mut Effects) -> R) -> R {
        f(&mut self.0.lock().expect("gate lock").effects())
    }
}

impl OutputGate {
    /// A pass-through gate over `backend`.
    pub fn new(backend: Box<dyn Backend>) -> OutputGate {
        OutputGate {
            backend,
            outlets: None,
            holding: false,
            held: VecDeque::new(),
            next_seq: 1,
            written: None,
            stalled: None,
            held_bytes: 0,
            consumed: Vec::new(),
            input_log: None,
            nics_logged_on_arrival: false,
        }
    }

    /// The guest consumed an input from `source`: counts it, and keeps a copy while the input log is on.
    pub fn consume(&mut self, source: Source, bytes: &[u8]) {
        let i = source.index();
        if self.consumed.len() <= i {
            self.consumed.resize(i + 1, 0);
        }
        self.consumed[i] += 1;
        let on_arrival = self.nics_logged_on_arrival && matches!(source, Source::Nic(_));
        if let (Some(log), false) = (&mut self.input_log, on_arrival) {
            log.push(Input { source, seq: self.consumed[i], bytes: bytes.to_vec() });
        }
    }

    /// Whether frames are logged as they arrive (`tap::RxQueue::log_arrivals`) rather than here when consumed.
    pub fn set_nics_logged_on_arrival(&mut self, on: bool) {
        self.nics_logged_on_arrival = on;
    }

    /// Inputs consumed from `source` so far.
    pub fn consumed(&self, source: Source) -> u64 {
        self.consumed.get(source.index()).copied().unwrap_or(0)
    }

    /// Starts (or stops, dropping what it holds) keeping copies of consumed inputs.
    pub fn set_input_log(&mut self, on: bool) {
        self.input_log = on.then(Vec::new);
    }

    /// Whether inputs wait in the log for [`OutputGate::take_inputs`].
    pub fn inputs_logged(&self) -> bool {
        self.input_log.as_ref().is_some_and(|log| !log.is_empty())
    }

    /// The inputs consumed since the last call (in the order the guest consumed them).
    pub fn take_inputs(&mut self) -> Vec<Input> {
        self.input_log.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The handle devices get (see [`Effects`]).
    pub fn effects(&mut self) -> Effects<'_> {
        Effects { gate: self }
    }

    /// Hands an effect to the gate. In pass-through mode the backend's error (if any) is returned so the
    /// device can report it to the guest (e.g. an I/O error status); a held effect cannot fail here.
    pub fn submit(&mut self, effect: Effect) -> io::Result<Submitted> {
        // Behind a stalled write nothing may overtake it.
        if self.holding || self.stalled.is_some() {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.held_bytes += effect.payload_len();
            self.held.push_back((seq, effect));
            Ok(Submitted::Held(seq))
        } else {
            self.note_written(&effect);
            self.backend.perform(&effect)?;
            Ok(Submitted::Performed)
        }
    }

    /// Starts noting which chunks of `chunk` bytes the block writes performed from now on touch (cleared), or
    /// stops with `None`. The replication driver compares disk copies while the guest writes on, then sends the
    /// chunks written meanwhile again.
    pub fn track_block_writes(&mut self, chunk: Option<u64>) {
        self.written = chunk.map(|c| (c.max(1), BTreeSet::new()));
    }

    /// The (disk, chunk) pairs noted since the last call, in order.
    pub fn take_block_writes(&mut self) -> Vec<(usize, u64)> {
        self.written.as_mut().map(|(_, w)| std::mem::take(w).into_iter().collect()).unwrap_or_default()
    }

    fn note_written(&mut self, effect: &Effect) {
        if let (Some((chunk, written)), Effect::BlockWrite { disk, offset, data }) = (&mut self.written, effect) {
            let last = (offset + (data.len() as u64).max(1) - 1) / *chunk;
            written.extend((offset / *chunk..=last).map(|c| (*disk, c)));
        }
    }

    /// Performs the held block writes and flushes with a sequence number above `after`, in order, and keeps
    /// holding them (a secondary with its own disk copy applies them when it commits the checkpoint that
    /// carries them; re-issuing them at failover is harmless because a block write is idempotent). Returns the
    /// highest sequence number performed, or `after`.
    pub fn perform_held_blocks(&mut self, after: u64) -> io::Result<u64> {
        let mut last = after;
        for (seq, effect) in self.held.iter().filter(|(s, _)| *s > after) {
            if matches!(effect, Effect::BlockWrite { .. } | Effect::BlockFlush { .. }) {
                self.backend.perform(effect)?;
            }
            last = *seq;
        }
        Ok(last)
    }

    /// Declares the devices effects may go to (checked when held effects are restored).
    pub fn set_outlets(&mut self, outlets: Outlets) {
        self.outlets = Some(outlets);
    }

    /// Starts or stops holding. Stopping does not release what is held; call `release_through` first.
    pub fn set_holding(&mut self, holding: bool) {
        self.holding = holding;
    }

    pub fn is_holding(&self) -> bool {
        self.holding
    }

    /// The sequence number the next held effect gets (a checkpoint covers everything below it).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The effects still held, oldest first.
    pub fn held(&self) -> impl Iterator<Item = &(u64, Effect)> {
        self.held.iter()
    }

    /// Performs, in order, every held effect with a sequence number up to `seq`. A frame or console write
    /// that fails is dropped and reported after the rest was attempted (a lost frame must not block the disk).
    /// A block write or flush that fails stalls the gate (see the module doc): it stays held with everything
    /// after it, and the error says so. A stalled gate performs nothing.
    pub fn release_through(&mut self, seq: u64) -> io::Result<()> {
        if let Some(why) = &self.stalled {
            return Err(io::Error::other(format!("releases wait for a failed disk write: {why}")));
        }
        let mut first_err = None;
        while self.held.front().is_some_and(|(s, _)| *s <= seq) {
            let (s, effect) = self.held.pop_front().expect("checked non-empty");
            self.held_bytes -= effect.payload_len();
            self.note_written(&effect);
            if let Err(e) = self.backend.perform(&effect) {
                if let Effect::BlockWrite { disk, .. } | Effect::BlockFlush { disk } = &effect {
                    let why = format!("{} on disk {disk} failed: {e}", effect.kind());
                    self.held_bytes += effect.payload_len();
                    self.held.push_front((s, effect));
                    self.stalled = Some(why.clone());
                    return Err(io::Error::new(e.kind(), why));
                }
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Payload bytes of the effects held now (what a checkpoint's gate section carries, about).
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// Why the gate is stalled (a held disk write could not be performed), if it is.
    pub fn stalled(&self) -> Option<&str> {
        self.stalled.as_deref()
    }

    /// Lets the next release try the stalled write again (the user fixed the disk).
    pub fn clear_stall(&mut self) {
        self.stalled = None;
    }

    /// Patches `buf`, read from byte `offset` of disk `disk`, with the writes the gate still holds for it, in
    /// order, so that the guest reads its own writes.
    pub fn overlay_read(&self, disk: usize, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        for (_, effect) in &self.held {
            if let Effect::BlockWrite { disk: d, offset: w_off, data } = effect {
                let w_end = w_off + data.len() as u64;
                if *d != disk || w_end <= offset || *w_off >= end {
                    continue;
                }
                let from = offset.max(*w_off);
                let to = end.min(w_end);
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&data[(from - w_off) as usize..(to - w_off) as usize]);
            }
        }
    }
}
/// Largest single effect payload a state stream may carry (a block write is capped by the device well below).
const MAX_EFFECT_BYTES: usize = 16 << 20;

impl OutputGate {
    /// Writes the per-source input counts (part of every checkpoint).
    pub fn save_inputs(&self, w: &mut Writer) {
        w.u32(self.consumed.len() as u32);
        for c in &self.consumed {
            w.u64(*c);
        }
    }

    /// Decodes what `save_inputs` wrote (untrusted: the number of sources is capped).
    pub fn decode_inputs(r: &mut Reader) -> Result<InputCounts, StateError> {
        let n = r.u32()? as usize;
        if n > MAX_SOURCES {
            return Err(r.invalid(format!("{n} input sources (at most {MAX_SOURCES})")));
        }
        Ok(InputCounts((0..n).map(|_| r.u64()).collect::<Result<_, _>>()?))
    }

    pub fn apply_inputs(&mut self, counts: InputCounts) {
        self.consumed = counts.0;
    }

    /// Writes the held effects and the sequence counter (part of every checkpoint).
    pub fn save(&self, w: &mut Writer) {
        w.bool(self.holding);
        w.u64(self.next_seq);
        w.u32(self.held.len() as u32);
        for (seq, effect) in &self.held {
            w.u64(*seq);
            match effect {
                Effect::Console(b) => {
                    w.u8(0);
                    w.bytes(b);
                }
                Effect::NetTx { nic, frame } => {
                    w.u8(1);
                    w.u32(*nic as u32);
                    w.bytes(frame);
                }
                Effect::BlockWrite { disk, offset, data } => {
                    w.u8(2);
                    w.u32(*disk as u32);
                    w.u64(*offset);
                    w.bytes(data);
                }
                Effect::BlockFlush { disk } => {
                    w.u8(3);
                    w.u32(*disk as u32);
                }
            }
        }
    }

    /// Checks and decodes what `save` wrote (untrusted: kinds, sizes, order, and each effect against this
    /// gate's outlets) without changing the gate.
    pub fn decode_state(&self, r: &mut Reader) -> Result<GateState, StateError> {
        let holding = r.bool()?;
        let next_seq = r.u64()?;
        let n = r.u32()?;
        let mut held = VecDeque::new();
        let mut last = 0;
        for _ in 0..n {
            let seq = r.u64()?;
            if seq <= last || seq >= next_seq {
                return Err(r.invalid("held effects out of order"));
            }
            last = seq;
            let effect = match r.u8()? {
                0 => Effect::Console(r.bytes(MAX_EFFECT_BYTES)?.to_vec()),
                1 => Effect::NetTx { nic: r.u32()? as usize, frame: r.bytes(MAX_EFFECT_BYTES)?.to_vec() },
                2 => Effect::BlockWrite {
                    disk: r.u32()? as usize,
                    offset: r.u64()?,
                    data: r.bytes(MAX_EFFECT_BYTES)?.to_vec(),
                },
                3 => Effect::BlockFlush { disk: r.u32()? as usize },
                k => return Err(r.invalid(format!("unknown effect kind {k}"))),
            };
            if let Some(o) = &self.outlets {
                check_outlet(o, &effect).map_err(|why| r.invalid(format!("held effect {seq}: {why}")))?;
            }
            held.push_back((seq, effect));
        }
        Ok(GateState { holding, next_seq: next_seq.max(1), held })
    }

    /// Applies what [`OutputGate::decode_state`] returned: the held effects it carries replace this gate's.
    pub fn apply_state(&mut self, st: GateState) {
        self.holding = st.holding;
        self.next_seq = st.next_seq;
        self.held_bytes = st.held.iter().map(|(_, e)| e.payload_len()).sum();
        self.held = st.held;
    }
}

/// The gate's part of a checkpoint, decoded and checked: whether it holds, its sequence counter, the held
/// effects.
pub struct GateState {
    holding: bool,
    next_seq: u64,
    held: VecDeque<(u64, Effect)>,
}

/// How many inputs the guest had consumed from each source (a checkpoint's input mark), decoded.
pub struct InputCounts(Vec<u64>);

fn check_outlet(o: &Outlets, effect: &Effect) -> Result<(), String> {
    let disk = |d: usize| o.disk_bytes.get(d).copied().ok_or(format!("disk {d} does not exist"));
    match effect {
        Effect::Console(_) => Ok(()),
        Effect::NetTx { nic, .. } if *nic < o.nics => Ok(()),
        Effect::NetTx { nic, .. } => Err(format!("network interface {nic} does not exist")),
        Effect::BlockWrite { disk: d, offset, data } => {
            let size = disk(*d)?;
            match offset.checked_add(data.len() as u64) {
                Some(end) if end <= size => Ok(()),
                _ => Err(format!("write of {} bytes at {offset} is beyond disk {d} ({size} bytes)", data.len())),
            }
        }
        Effect::BlockFlush { disk: d } => disk(*d).map(|_| ()),
    }
}

/// A backend that records every effect (tests, and the proof that devices use nothing but the gate).
#[derive(Clone, Default)]
pub struct Recorder(pub std::sync::Arc<std::sync::Mutex<Vec<Effect>>>);

impl Backend for Recorder {
    fn perform(&mut self, effect: &Effect) -> io::Result<()> {
        self.0.lock().expect("recorder lock").push(effect.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_through_performs_at_once() {
        let rec = Recorder::default();
        let mut g = OutputGate::new(Box::new(rec.clone()));
        assert_eq!(g.submit(Effect::Console(b"hi".to_vec())).unwrap(), Submitted::Performed);
        assert_eq!(rec.0.lock().unwrap().as_slice(), &[Effect::Console(b"hi".to_vec())]);
    }

    #[test]
    fn holding_releases_in_order_up_to_the_acknowledged_sequence() {
        let rec = Recorder::default();
        let mut g = OutputGate::new(Box::new(rec.clone()));
        g.set_holding(true);
        let a = g.submit(Effect::NetTx { nic: 0, frame: vec![1] }).unwrap();
        let b = g.submit(Effect::BlockFlush { disk: 0 }).unwrap();
        let c = g.submit(Effect::Console(vec![b'x'])).unwrap();
        assert_eq!((a, b, c), (Submitted::Held(1), Submitted::Held(2), Submitted::Held(3)));
        assert!(rec.0.lock().unwrap().is_empty(), "nothing leaves before release");
        g.release_through(2).unwrap();
        assert_eq!(
            rec.0.lock().unwrap().as_slice(),
            &[Effect::NetTx { nic: 0, frame: vec![1] }, Effect::BlockFlush { disk: 0 }]
        );
        assert_eq!(g.held().count(), 1);
    }

    #[test]
    fn held_effects_survive_save_and_restore() {
        let mut g = OutputGate::new(Box::new(Recorder::default()));
        g.set_holding(true);
        g.submit(Effect::BlockWrite { disk: 1, offset: 512, data: vec![7; 512] }).unwrap();
        g.submit(Effect::NetTx { nic: 0, frame: vec![1, 2, 3] }).unwrap();
        g.submit(Effect::BlockFlush { disk: 1 }).unwrap();
        g.submit(Effect::Console(b"ok".to_vec())).unwrap();
        let mut w = Writer::default();
        g.save(&mut w);
        let rec = Recorder::default();
        let mut back = OutputGate::new(Box::new(rec.clone()));
        let st = back.decode_state(&mut Reader::new(&w.0, "GATE")).unwrap();
        back.apply_state(st);
        assert!(back.is_holding());
        assert_eq!(back.next_seq(), 5);
        back.release_through(4).unwrap();
        assert_eq!(rec.0.lock().unwrap().len(), 4, "all four effects re-issued in order");
        let mut w2 = Writer::default();
        g.save(&mut w2);
        assert_eq!(w.0, w2.0, "encoding is deterministic");
        // Out-of-order sequence numbers are refused.
        let mut bad = w.0.clone();
        bad[13] = 9; // first held seq := 9, beyond next_seq
        assert!(OutputGate::new(Box::new(Recorder::default())).decode_state(&mut Reader::new(&bad, "GATE")).is_err());
    }

    #[test]
    fn held_block_writes_are_applied_once_each_and_stay_held() {
        let rec = Recorder::default();
        let mut g = OutputGate::new(Box::new(rec.clone()));
        g.set_holding(true);
        g.submit(Effect::BlockWrite { disk: 0, offset: 0, data: vec![1] }).unwrap();
        g.submit(Effect::Console(b"c".to_vec())).unwrap();
        assert_eq!(g.perform_held_blocks(0).unwrap(), 2);
        g.submit(Effect::BlockFlush { disk: 0 }).unwrap();
        assert_eq!(g.perform_held_blocks(2).unwrap(), 3);
        assert_eq!(
            rec.0.lock().unwrap().as_slice(),
            &[Effect::BlockWrite { disk: 0, offset: 0, data: vec![1] }, Effect::BlockFlush { disk: 0 }],
            "each block effect once, console untouched"
        );
        assert_eq!(g.held().count(), 3, "still held for re-issue at failover");
    }

    #[test]
    fn the_chunks_performed_writes_touch_are_noted_while_tracking() {
        let mut g = OutputGate::new(Box::new(Recorder::default()));
        let write = |disk, offset, len| Effect::BlockWrite { disk, offset, data: vec![0; len] };
        g.submit(write(0, 0, 512)).unwrap();
        assert!(g.take_block_writes().is_empty(), "not tracking yet");
        g.track_block_writes(Some(4096));
        g.submit(write(0, 4000, 200)).unwrap(); // chunks 0 and 1
        g.submit(write(1, 8192, 4096)).unwrap(); // chunk 2 only
        g.set_holding(true);
        g.submit(write(0, 40960, 1)).unwrap(); // held: not on the disk yet
        assert_eq!(g.take_block_writes(), [(0, 0), (0, 1), (1, 2)]);
        g.release_through(u64::MAX).unwrap();
        assert_eq!(g.take_block_writes(), [(0, 10)], "a released write touches the disk then");
        g.track_block_writes(None);
        g.set_holding(false);
        g.submit(write(0, 0, 1)).unwrap();
        assert!(g.take_block_writes().is_empty());
    }

    /// A backend whose disk fails until told otherwise.
    #[derive(Clone, Default)]
    struct FailingDisk {
        failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
        done: Recorder,
    }

    impl Backend for FailingDisk {
        fn perform(&mut self, effect: &Effect) -> io::Result<()> {
            let disk = matches!(effect, Effect::BlockWrite { .. } | Effect::BlockFlush { .. });
            if disk && self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(io::ErrorKind::StorageFull.into());
            }
            self.done.perform(effect)
        }
    }

    #[test]
    fn a_failed_held_write_stalls_the_gate_and_is_kept_in_order() {
        let backend = FailingDisk::default();
        backend.failing.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut g = OutputGate::new(Box::new(backend.clone()));
        g.set_holding(true);
        g.submit(Effect::Console(b"a".to_vec())).unwrap();
        g.submit(Effect::BlockWrite { disk: 0, offset: 0, data: vec![1] }).unwrap();
        g.submit(Effect::NetTx { nic: 0, frame: vec![2, 3] }).unwrap();
        assert_eq!(g.held_bytes(), 4);
        let err = g.release_through(3).unwrap_err();
        assert_eq!(g.held_bytes(), 3, "the failed write is still counted");
        assert!(err.to_string().contains("block write on disk 0 failed"), "{err}");
        assert!(g.stalled().is_some());
        assert_eq!(g.held().count(), 2, "the failed write and what follows it stay held");
        // Nothing overtakes the stalled write, also after holding stops (a node going on alone).
        g.set_holding(false);
        assert_eq!(g.submit(Effect::Console(b"b".to_vec())).unwrap(), Submitted::Held(4));
        assert!(g.release_through(u64::MAX).is_err(), "a stalled gate performs nothing");
        assert_eq!(backend.done.0.lock().unwrap().as_slice(), &[Effect::Console(b"a".to_vec())]);
        // The disk is fixed: the write and everything after it go out, in order.
        backend.failing.store(false, std::sync::atomic::Ordering::SeqCst);
        g.clear_stall();
        g.release_through(u64::MAX).unwrap();
        assert_eq!(
            backend.done.0.lock().unwrap().as_slice(),
            &[
                Effect::Console(b"a".to_vec()),
                Effect::BlockWrite { disk: 0, offset: 0, data: vec![1] },
                Effect::NetTx { nic: 0, frame: vec![2, 3] },
                Effect::Console(b"b".to_vec()),
            ]
        );
        assert_eq!(g.held().count(), 0);
        assert_eq!(g.held_bytes(), 0);
    }

    #[test]
    fn reads_see_held_writes_in_order() {
        let mut g = OutputGate::new(Box::new(Recorder::default()));
        g.set_holding(true);
        g.submit(Effect::BlockWrite { disk: 0, offset: 4, data: vec![1; 8] }).unwrap();
        g.submit(Effect::BlockWrite { disk: 0, offset: 8, data: vec![2; 2] }).unwrap();
        g.submit(Effect::BlockWrite { disk: 1, offset: 0, data: vec![9; 16] }).unwrap();
        let mut buf = [0u8; 12];
        g.overlay_read(0, 2, &mut buf);
        assert_eq!(buf, [0, 0, 1, 1, 1, 1, 2, 2, 1, 1, 0, 0]);
    }
}
