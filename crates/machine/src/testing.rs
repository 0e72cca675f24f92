//! A machine without a guest, behind the seam: for tests of what sits above it (replication, migration, the
//! runtime), proving they need nothing but the seam. It even claims to be an x86-64 machine, which no code
//! above the seam may care about.
//!
//! Its "guest" is a counter: every round bumps it, writes it into a RAM page (page `counter % pages`) and
//! prints `tick N` through the gate. Its state stream is a real one (`kemari-state` framing, the gate's
//! sections, PAGS), checked in full before anything is applied. Console input it consumes is counted by the
//! gate like any input and kept in [`FakeMachine::typed`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kemari_devices::gate::{Effect, Input, OutputGate, Recorder, Source};
use kemari_memory::{GuestRam, PAGE_SIZE};
use kemari_state::{Arch, Encoder, Reader, Section, StateError, StateFile, Writer};

use crate::{pages, InputSink, Machine, Pages, Refused, Round, RunOutcome, Shape};

const FAKE: Section = Section { tag: *b"FAKE", version: 1, cap: 8 + 8 + 1024 };
const GATE: Section = Section { tag: *b"GATE", version: 1, cap: 16 << 20 };
const INPT: Section = Section { tag: *b"INPT", version: 1, cap: 4 + 8 * kemari_devices::gate::MAX_SOURCES as u32 };
const ROUND: Duration = Duration::from_millis(1);

pub struct FakeMachine {
    /// What it claims to be (x86-64 unless made otherwise).
    arch: Arch,
    ram: Arc<GuestRam>,
    gate: Arc<Mutex<OutputGate>>,
    /// Every effect the gate released, in order.
    pub performed: Recorder,
    /// The guest's state besides RAM.
    counter: u64,
    /// Console input the guest consumed, in order.
    pub typed: Vec<u8>,
    pending: Vec<u8>,
    /// The guest powers off once its counter reaches this.
    pub power_off_at: Option<u64>,
    /// While set, a round does not return (the machine loop hangs, as a stopped process's would).
    pub hang: Arc<AtomicBool>,
    /// Announcements made (after a failover).
    pub announced: usize,
}

impl FakeMachine {
    /// An x86-64 machine of `pages` pages of RAM, counter 0.
    pub fn new(pages: u64) -> FakeMachine {
        FakeMachine::claiming(Arch::X86_64, pages)
    }

    /// A machine of `pages` pages of RAM that claims to be an `arch` one.
    pub fn claiming(arch: Arch, pages: u64) -> FakeMachine {
        let performed = Recorder::default();
        FakeMachine {
            arch,
            ram: Arc::new(GuestRam::new(1 << 32, pages * PAGE_SIZE).expect("test RAM")),
            gate: Arc::new(Mutex::new(OutputGate::new(Box::new(performed.clone())))),
            performed,
            counter: 0,
            typed: Vec::new(),
            pending: Vec::new(),
            power_off_at: None,
            hang: Arc::default(),
            announced: 0,
        }
    }

    /// An empty machine of another's shape (a replica, a migration receiver).
    pub fn empty(shape: Shape) -> Result<FakeMachine, String> {
        Ok(FakeMachine::claiming(shape.arch, shape.memory / PAGE_SIZE))
    }

    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// The counter as the guest last wrote it into RAM page `page`, if it did.
    pub fn page_word(&self, page: u64) -> u64 {
        let mut b = [0u8; 8];
        self.ram.read(self.ram.address_of(page * PAGE_SIZE), &mut b).expect("page inside RAM");
        u64::from_le_bytes(b)
    }

    /// The counters of the `tick N` lines the gate released, in order.
    pub fn ticks_performed(&self) -> Vec<u64> {
        ticks(&self.performed)
    }

    fn pages(&self) -> u64 {
        self.ram.size() / PAGE_SIZE
    }
}

/// The counters of the `tick N` lines among the effects `performed` recorded, in order.
pub fn ticks(performed: &Recorder) -> Vec<u64> {
    let text: Vec<u8> = performed
        .0
        .lock()
        .expect("recorder lock")
        .iter()
        .filter_map(|e| if let Effect::Console(b) = e { Some(b.clone()) } else { None })
        .flatten()
        .collect();
    String::from_utf8_lossy(&text).lines().filter_map(|l| l.strip_prefix("tick ")?.parse().ok()).collect()
}

impl Machine for FakeMachine {
    fn shape(&self) -> Shape {
        Shape { arch: self.arch, cpus: 1, memory: self.ram.size() }
    }

    fn memory(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    fn gate(&self) -> &Arc<Mutex<OutputGate>> {
        &self.gate
    }

    fn step_round(&mut self) -> Round {
        while self.hang.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut gate = self.gate.lock().expect("gate lock");
        if !self.pending.is_empty() {
            let bytes = std::mem::take(&mut self.pending);
            gate.consume(Source::Console, &bytes);
            self.typed.extend(bytes);
        }
        self.counter += 1;
        let page = self.counter % self.pages();
        self.ram.write(self.ram.address_of(page * PAGE_SIZE), &self.counter.to_le_bytes()).expect("page inside RAM");
        // An effect the gate cannot take ends the run like a device error would.
        if let Err(e) = gate.submit(Effect::Console(format!("tick {}\n", self.counter).into_bytes())) {
            return Round::Ended(RunOutcome::Crash(format!("console: {e}")));
        }
        drop(gate);
        if self.power_off_at == Some(self.counter) {
            return Round::Ended(RunOutcome::PowerOff);
        }
        // Then the guest waits a millisecond (unless an event comes): it is slow, so a test sees few rounds.
        Round::Idle(ROUND)
    }

    fn stop_time(&mut self) {
        // The counter is the guest's only clock, and it moves only in rounds.
    }

    fn instructions(&self) -> u64 {
        self.counter
    }

    fn save(&self, which: Pages) -> Result<Vec<u8>, StateError> {
        let all: Vec<u64>;
        let list = match which {
            Pages::Only(list) => list,
            Pages::AllNonZero => {
                all = (0..self.pages()).filter(|&p| !self.ram.page_is_zero(p)).collect();
                &all
            }
        };
        let mut f = Encoder::new(self.arch, 4096 + list.len() * (8 + PAGE_SIZE as usize));
        let mut w = Writer::default();
        w.u64(self.counter);
        w.bytes(&self.typed);
        f.push(&FAKE, &w.0);
        let gate = self.gate.lock().expect("gate lock");
        let mut w = Writer::default();
        gate.save(&mut w);
        f.push(&GATE, &w.0);
        let mut w = Writer::default();
        gate.save_inputs(&mut w);
        f.push(&INPT, &w.0);
        drop(gate);
        pages::push(&self.ram, &mut f, list);
        f.finish()
    }

    fn restore_pages(&mut self, bytes: &[u8]) -> Result<u64, StateError> {
        let f = StateFile::decode(bytes, &[pages::PAGS])?;
        f.expect_arch(self.arch)?;
        let list = pages::checked(&f, self.pages())?;
        for (p, data) in &list {
            self.ram.write(self.ram.address_of(p * PAGE_SIZE), data).expect("page inside RAM");
        }
        Ok(list.len() as u64)
    }

    fn apply_checkpoint(&mut self, bytes: &[u8]) -> Result<(), Refused> {
        let refused = |e: StateError| Refused(format!("invalid state: {e}"));
        let f = StateFile::decode(bytes, &[FAKE, GATE, INPT, pages::PAGS]).map_err(refused)?;
        f.expect_arch(self.arch).map_err(refused)?;
        // Everything decoded and checked first, then applied.
        let mut r = Reader::new(f.one(&FAKE).map_err(refused)?, "FAKE");
        let counter = r.u64().map_err(refused)?;
        let typed = r.bytes(1 << 10).map_err(refused)?.to_vec();
        r.finish().map_err(refused)?;
        let gate = self.gate.lock().expect("gate lock");
        let mut r = Reader::new(f.one(&GATE).map_err(refused)?, "GATE");
        let gate_state = gate.decode_state(&mut r).map_err(refused)?;
        let mut r = Reader::new(f.one(&INPT).map_err(refused)?, "INPT");
        let inputs = OutputGate::decode_inputs(&mut r).map_err(refused)?;
        drop(gate);
        let list = pages::checked(&f, self.pages()).map_err(refused)?;
        let mut gate = self.gate.lock().expect("gate lock");
        gate.apply_state(gate_state);
        gate.apply_inputs(inputs);
        drop(gate);
        (self.counter, self.typed) = (counter, typed);
        for (p, data) in &list {
            self.ram.write(self.ram.address_of(p * PAGE_SIZE), data).expect("page inside RAM");
        }
        Ok(())
    }

    fn max_state_len(&self) -> u64 {
        let section = |s: &Section| 10 + s.cap as u64 + 4;
        24 + [FAKE, GATE, INPT].iter().map(section).sum::<u64>()
            + self.pages().div_ceil(pages::PAGES_PER_SECTION as u64) * section(&pages::PAGS)
    }

    fn log_frames_on_arrival(&mut self, sink: Option<InputSink>) {
        // No network interfaces: no frame ever arrives.
        self.gate.lock().expect("gate lock").set_nics_logged_on_arrival(sink.is_some());
    }

    fn discard_received_frames(&mut self) -> usize {
        0
    }

    fn replay_inputs(&mut self, inputs: Vec<Input>) -> usize {
        let console: Vec<u8> =
            inputs.iter().filter(|i| i.source == Source::Console).flat_map(|i| i.bytes.clone()).collect();
        let taken = inputs.iter().filter(|i| i.source == Source::Console).count();
        self.pending.splice(0..0, console);
        taken
    }

    fn push_input(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    fn announce(&mut self) {
        self.announced += 1;
    }
}
