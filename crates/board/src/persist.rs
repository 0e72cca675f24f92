//! Save and restore of the whole machine: the one path that snapshots, migration and fault tolerance share.
//!
//! Quiesce order (the machine loop calls this between slices, so it already holds): harts are stopped at an
//! instruction boundary; device work is synchronous and finished (queue notifications are processed inside the
//! store that rings them); pending interrupts live in the PLIC and the harts' `mip` and are saved there.
//! Sections, in stream order: BORD (machine shape and timers), HART × harts, CLNT, PLIC, UART, VIRT × slots,
//! GATE, INPT (inputs consumed per source; absent in streams of older kemari: zero), then PAGS (guest memory
//! pages, 1,024 per section).

use std::io::Write;

use kemari_devices::gate::{GateState, InputCounts, OutputGate, SharedEffects};
use kemari_devices::host::Wake;
use kemari_devices::virtio::mmio::TransportState;
use kemari_engine::{Engine, Hart};
use kemari_machine::pages::{self, PAGES_PER_SECTION, PAGS};
use kemari_memory::PAGE_SIZE;
use kemari_state::{Arch, Encoder, Reader, Section, StateError, StateFile, Writer};

use crate::clint::Clint;
use crate::hart;
use crate::machine::{BuildError, GuestClock, Machine, MachineConfig};
use crate::plic::Plic;
use crate::uart::{self, Uart};

const BORD: Section = Section { tag: *b"BORD", version: 1, cap: 1024 };
const CLNT: Section = Section { tag: *b"CLNT", version: 1, cap: 1024 };
const PLIC: Section = Section { tag: *b"PLIC", version: 1, cap: 4096 };
const UART: Section = Section { tag: *b"UART", version: 1, cap: 1024 };
const VIRT: Section = Section { tag: *b"VIRT", version: 1, cap: 2 << 20 };
const GATE: Section = Section { tag: *b"GATE", version: 1, cap: 256 << 20 };
const INPT: Section = Section { tag: *b"INPT", version: 1, cap: 4 + 8 * kemari_devices::gate::MAX_SOURCES as u32 };

// Every page of the largest machine fits in one stream, with the other sections.
const _: () = {
    let page_sections = (crate::machine::MAX_MEMORY_MIB << 20) / PAGE_SIZE / PAGES_PER_SECTION as u64;
    assert!(page_sections + 7 + crate::layout::MAX_HARTS as u64 <= kemari_state::MAX_SECTIONS as u64);
};

/// The longest state stream a machine with `memory` bytes of RAM has: every page once, every other section
/// at its cap, as many hart sections as the board has harts at most. Receivers cap what they read by it
/// before a byte of it arrives.
pub fn max_state_len(memory: u64) -> u64 {
    const FRAMING: u64 = 20 + 4;
    let section = |s: &Section| 10 + s.cap as u64 + 4;
    let pages = memory / PAGE_SIZE;
    let fixed: u64 = [BORD, CLNT, PLIC, UART, VIRT, GATE, INPT].iter().map(section).sum();
    let harts = crate::layout::MAX_HARTS as u64 * section(&hart::SECTION);
    FRAMING + fixed + harts + pages.div_ceil(PAGES_PER_SECTION as u64) * section(&PAGS)
}

/// The machines this board builds, as state streams name them.
pub const ARCH: Arch = Arch::Riscv64;

/// Decodes a stream's framing and refuses one of another architecture's machine.
fn decode<'a>(bytes: &'a [u8], known: &[Section]) -> Result<StateFile<'a>, StateError> {
    let f = StateFile::decode(bytes, known)?;
    f.expect_arch(ARCH)?;
    Ok(f)
}

fn known() -> [Section; 9] {
    [BORD, hart::SECTION, CLNT, PLIC, UART, VIRT, GATE, INPT, PAGS]
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("invalid state: {0}")]
    State(#[from] StateError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("the saved machine has {what} {saved}, the command line gives {given}")]
    Mismatch { what: &'static str, saved: u64, given: u64 },
    #[error("the snapshot holds a disk write that cannot be performed now ({0}); fix the disk and restore again")]
    HeldWrite(String),
}

pub use kemari_machine::Pages;

impl Machine {
    /// Encodes the machine's complete state. Must be called with the machine quiesced (between slices). An
    /// error when the state holds what no restore would accept (e.g. more held effects than a checkpoint may
    /// carry): nothing is written that could not be read back.
    pub fn save(&self, pages: Pages) -> Result<Vec<u8>, StateError> {
        let all: Vec<u64>;
        let list: &[u64] = match pages {
            Pages::Only(list) => list,
            Pages::AllNonZero => {
                all = (0..self.ram.size() / PAGE_SIZE).filter(|&p| !self.ram.page_is_zero(p)).collect();
                &all
            }
        };
        let mut f = Encoder::new(ARCH, (64 << 10) + list.len() * (8 + PAGE_SIZE as usize));
        let mut w = Writer::default();
        w.u32(self.harts.len() as u32);
        w.u64(self.ram.size());
        w.bool(self.builtin_sbi);
        w.u64(self.dev.clock.now());
        for t in &self.dev.stimecmp {
            w.u64(*t);
        }
        w.u32(self.dev.virtio.len() as u32);
        f.push(&BORD, &w.0);

        for h in &self.harts {
            f.push(&hart::SECTION, &hart::encode(h.state()));
        }
        let mut w = Writer::default();
        self.dev.clint.save(&mut w);
        f.push(&CLNT, &w.0);
        let mut w = Writer::default();
        self.dev.plic.save(&mut w);
        f.push(&PLIC, &w.0);
        let mut w = Writer::default();
        uart::save(&self.dev.uart, &mut w);
        f.push(&UART, &w.0);

        for t in &self.dev.virtio {
            let mut w = Writer::default();
            t.save(&mut w);
            f.push(&VIRT, &w.0);
        }
        let gate = self.dev.gate.lock().expect("gate lock");
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

    /// Encodes just these guest pages (a live-migration round).
    pub fn save_pages(&self, list: &[u64]) -> Vec<u8> {
        pages::encode(ARCH, &self.ram, list)
    }

    /// Applies a stream of pages made by `save_pages` (validated like any state stream, before any page is
    /// written).
    pub fn restore_pages(&mut self, bytes: &[u8]) -> Result<u64, StateError> {
        let f = decode(bytes, &[PAGS])?;
        let pages = pages::checked(&f, self.ram.size() / PAGE_SIZE)?;
        for (p, data) in &pages {
            self.ram.write(self.ram.address_of(p * PAGE_SIZE), data).expect("page inside RAM");
        }
        Ok(pages.len() as u64)
    }

    /// Applies a checkpoint atomically: all of it, or on any error nothing (the machine keeps the state it had).
    /// The same as [`Machine::restore_into`], which decodes and checks everything before it changes anything.
    pub fn apply_checkpoint(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        self.restore_into(bytes)
    }

    pub fn page_is_zero(&self, page: u64) -> bool {
        self.ram.page_is_zero(page)
    }

    /// Builds a machine from `cfg` (memory, harts, devices as given on the command line) and the saved state.
    /// Everything is validated before the machine is returned; nothing runs.
    pub fn restore(
        cfg: &MachineConfig,
        bytes: &[u8],
        console: Box<dyn Write + Send>,
        wake: Wake,
    ) -> Result<Machine, RestoreError> {
        let mut m = Machine::build(cfg, console, wake, false)?;
        m.restore_into(bytes)?;
        // A snapshot of a protected VM may hold effects no secondary acknowledged yet. The restored machine
        // runs on its own: perform them now (at least once, as a failover does) and let later ones pass.
        let mut gate = m.dev.gate.lock().expect("gate lock");
        gate.set_holding(false);
        let released = gate.release_through(u64::MAX);
        if let Some(why) = gate.stalled() {
            // The snapshot keeps the write: refuse, so that it can be restored again once the disk is fixed.
            return Err(RestoreError::HeldWrite(why.to_string()));
        }
        if let Err(e) = released {
            tracing::warn!("performing the snapshot's held effects: {e}");
        }
        drop(gate);
        Ok(m)
    }

    /// Applies a saved state to this machine (built with the same shape and devices). Pages in the stream
    /// overwrite RAM; pages not in it keep their contents (live migration sends them earlier). Atomic: every
    /// section is decoded and checked against this machine first, and on error nothing has changed.
    pub fn restore_into(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        let f = decode(bytes, &known())?;
        let state = self.decode_state(&f)?;
        self.apply_state(state);
        Ok(())
    }

    /// Decodes a state stream's sections into each component's typed state, checking it against this machine's shape and
    /// devices; changes nothing.
    fn decode_state<'a>(&self, f: &'a StateFile) -> Result<Decoded<'a>, RestoreError> {
        let m = self;
        let pages = pages::checked(f, m.ram.size() / PAGE_SIZE)?;
        let mut r = Reader::new(f.one(&BORD)?, "BORD");
        let harts = r.u32()? as u64;
        let ram_size = r.u64()?;
        let builtin_sbi = r.bool()?;
        let mtime = r.u64()?;
        if harts != m.harts.len() as u64 {
            return Err(RestoreError::Mismatch { what: "harts", saved: harts, given: m.harts.len() as u64 });
        }
        if ram_size != m.ram.size() {
            return Err(RestoreError::Mismatch {
                what: "MiB of memory",
                saved: ram_size >> 20,
                given: m.ram.size() >> 20,
            });
        }
        let stimecmp: Vec<u64> = (0..harts).map(|_| r.u64()).collect::<Result<_, _>>()?;
        let slots = r.u32()? as u64;
        r.finish()?;
        if slots != m.dev.virtio.len() as u64 {
            return Err(RestoreError::Mismatch {
                what: "virtio devices",
                saved: slots,
                given: m.dev.virtio.len() as u64,
            });
        }
        // Guest time far beyond any real uptime (2^62 ticks at 10 MHz is 14,000 years) is a hostile stream.
        if mtime >= 1 << 62 {
            return Err(
                StateError::Invalid { tag: "BORD".into(), why: format!("impossible guest time {mtime}") }.into()
            );
        }

        let hart_payloads = f.all(&hart::SECTION)?;
        if hart_payloads.len() as u64 != harts {
            return Err(StateError::Invalid { tag: "HART".into(), why: "one section per hart expected".into() }.into());
        }
        // The restored harts run as the ones they replace (the engine is a host choice, not guest state).
        let engine = m.harts.first().map_or(Engine::default(), |h| h.engine());
        let mut restored = Vec::new();
        for (i, p) in hart_payloads.into_iter().enumerate() {
            let st = hart::decode(p, harts as usize)?;
            if st.id != i as u64 {
                return Err(StateError::Invalid { tag: "HART".into(), why: "harts out of order".into() }.into());
            }
            let mut h = Hart::new(st.id, builtin_sbi);
            h.set_engine(engine);
            h.set_state(st);
            restored.push(h);
        }

        let section =
            |s: &Section, tag: &'static str| -> Result<Reader<'a>, StateError> { Ok(Reader::new(f.one(s)?, tag)) };
        let mut r = section(&CLNT, "CLNT")?;
        let clint = m.dev.clint.decode_state(&mut r)?;
        r.finish()?;
        let mut r = section(&PLIC, "PLIC")?;
        let plic = m.dev.plic.decode_state(&mut r)?;
        r.finish()?;
        let mut r = section(&UART, "UART")?;
        let uart = uart::decode_state(&mut r, m.dev.uart_irq.clone(), SharedEffects::new(&m.dev.gate))?;
        r.finish()?;

        let virt = f.all(&VIRT)?;
        if virt.len() != m.dev.virtio.len() {
            return Err(StateError::Invalid {
                tag: "VIRT".into(),
                why: format!("{} virtio sections for {} devices", virt.len(), m.dev.virtio.len()),
            }
            .into());
        }
        let mut virtio = Vec::with_capacity(virt.len());
        for (t, payload) in m.dev.virtio.iter().zip(virt) {
            let mut r = Reader::new(payload, "VIRT");
            virtio.push(t.decode_state(&mut r, &m.dev.mem)?);
            r.finish()?;
        }

        let gate = m.dev.gate.lock().expect("gate lock");
        let mut r = section(&GATE, "GATE")?;
        let held = gate.decode_state(&mut r)?;
        r.finish()?;
        drop(gate);
        let inputs = f.all(&INPT)?;
        if inputs.len() > 1 {
            return Err(StateError::Duplicate("INPT".into()).into());
        }
        let mut r = Reader::new(inputs.first().copied().unwrap_or(&[0, 0, 0, 0]), "INPT");
        let inputs = OutputGate::decode_inputs(&mut r)?;
        r.finish()?;

        Ok(Decoded {
            builtin_sbi,
            mtime,
            stimecmp,
            harts: restored,
            clint,
            plic,
            uart,
            virtio,
            gate: held,
            inputs,
            pages,
        })
    }

    /// Applies what [`Machine::decode_state`] returned; cannot fail.
    fn apply_state(&mut self, s: Decoded) {
        self.builtin_sbi = s.builtin_sbi;
        self.dev.clock = GuestClock::paused(s.mtime);
        self.dev.stimecmp = s.stimecmp;
        self.harts = s.harts;
        self.dev.clint = s.clint;
        self.dev.plic = s.plic;
        self.dev.uart = s.uart;
        for (t, st) in self.dev.virtio.iter_mut().zip(s.virtio) {
            t.apply_state(st);
        }
        let mut gate = self.dev.gate.lock().expect("gate lock");
        gate.apply_state(s.gate);
        gate.apply_inputs(s.inputs);
        drop(gate);
        for (p, data) in &s.pages {
            self.ram.write(self.ram.address_of(p * PAGE_SIZE), data).expect("page inside RAM");
        }
    }
}

/// A state stream decoded into each component's state and checked against the machine it is for.
struct Decoded<'a> {
    builtin_sbi: bool,
    mtime: u64,
    stimecmp: Vec<u64>,
    harts: Vec<Hart>,
    clint: Clint,
    plic: Plic,
    uart: Uart,
    virtio: Vec<TransportState>,
    gate: GateState,
    inputs: InputCounts,
    /// Guest pages, by index inside RAM.
    pages: Vec<(u64, &'a [u8])>,
}

/// Reads the machine shape (harts, MiB of memory) from a state stream, so `kemari restore` can build the
/// machine before restoring into it. The stream is fully checked later by [`Machine::restore`].
pub fn peek_shape(bytes: &[u8]) -> Result<(usize, u64), StateError> {
    let f = decode(bytes, &known())?;
    let mut r = Reader::new(f.one(&BORD)?, "BORD");
    let harts = r.u32()? as usize;
    let ram = r.u64()?;
    if harts == 0 || harts > crate::layout::MAX_HARTS || ram % (1 << 20) != 0 {
        return Err(r.invalid("impossible machine shape"));
    }
    Ok((harts, ram >> 20))
}
