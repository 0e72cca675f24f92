//! One hart: its architectural state, trap delivery and the public run interface.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::block::CodeCache;
use crate::csr::{self, mstatus};
use crate::memory::GuestRam;
use crate::mmu::Tlb;

/// How a hart runs guest code. Both give exactly the same architectural results; the JIT is faster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The decode-once block interpreter (every host).
    Interp,
    /// Hot blocks compiled to host code, the interpreter for the rest (x86-64 hosts; elsewhere the same as
    /// `Interp`).
    Jit,
}

impl Engine {
    /// The default of this host: the JIT where there is one.
    pub const fn host_default() -> Engine {
        if cfg!(target_arch = "x86_64") {
            Engine::Jit
        } else {
            Engine::Interp
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Interp => "interp",
            Engine::Jit => "jit",
        }
    }
}

impl Default for Engine {
    fn default() -> Engine {
        Engine::host_default()
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Engine, String> {
        match s {
            "interp" => Ok(Engine::Interp),
            "jit" => Ok(Engine::Jit),
            _ => Err(format!("unknown engine {s:?} (interp or jit)")),
        }
    }
}

/// Runs of a block in the interpreter before the JIT compiles it.
pub const DEFAULT_JIT_THRESHOLD: u32 = 16;

/// Privilege modes with their RISC-V encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum Privilege {
    User = 0,
    #[default]
    Supervisor = 1,
    Machine = 3,
}

impl Privilege {
    pub fn from_bits(b: u64) -> Option<Privilege> {
        match b {
            0 => Some(Privilege::User),
            1 => Some(Privilege::Supervisor),
            3 => Some(Privilege::Machine),
            _ => None,
        }
    }
}

/// Interrupt bit numbers in `mip`/`mie`.
pub mod irq {
    pub const SSI: u32 = 1;
    pub const MSI: u32 = 3;
    pub const STI: u32 = 5;
    pub const MTI: u32 = 7;
    pub const SEI: u32 = 9;
    pub const MEI: u32 = 11;
}

/// Everything outside RAM, as seen by a hart: MMIO devices and the guest's time base.
pub trait Bus {
    /// Reads `size` (1, 2, 4 or 8) bytes at physical `addr`; `None` is an access fault.
    fn load(&mut self, hart: usize, addr: u64, size: u8) -> Option<u64>;
    /// Writes `size` bytes at physical `addr`; `false` is an access fault.
    fn store(&mut self, hart: usize, addr: u64, size: u8, value: u64) -> bool;
    /// Guest time in timebase ticks (the `time` CSR, CLINT `mtime`).
    fn time(&self) -> u64;
}

/// Why `run` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The instruction budget is used up.
    Budget,
    /// A store reached the bus: device state (and so interrupt lines) may have changed.
    MmioStore,
    /// `ecall` from S-mode while the VMM provides SBI: the caller reads a0..a7, then calls
    /// [`Hart::complete_sbi`].
    Sbi,
    /// The hart waits for an interrupt (`wfi`); `run` returns this until one is pending.
    Wfi,
    /// A trap had to be taken to M-mode but the VMM plays M-mode (no firmware): the guest is beyond help.
    MachineTrap { cause: u64, tval: u64, pc: u64 },
}

/// The complete architectural state of a hart, as plain data. This is what a checkpoint carries.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HartState {
    pub id: u64,
    pub x: [u64; 32],
    pub f: [u64; 32],
    pub pc: u64,
    pub privilege: Privilege,
    pub fcsr: u64,
    pub mstatus: u64,
    pub medeleg: u64,
    pub mideleg: u64,
    pub mie: u64,
    pub mip: u64,
    pub mtvec: u64,
    pub mscratch: u64,
    pub mepc: u64,
    pub mcause: u64,
    pub mtval: u64,
    pub mcounteren: u64,
    pub menvcfg: u64,
    pub stvec: u64,
    pub sscratch: u64,
    pub sepc: u64,
    pub scause: u64,
    pub stval: u64,
    pub scounteren: u64,
    pub senvcfg: u64,
    pub satp: u64,
    pub pmpcfg: [u64; 2],
    pub pmpaddr: [u64; 16],
    /// Retired instructions (`cycle` and `instret` both count these).
    pub instret: u64,
    /// Physical address of the LR reservation, if any.
    pub reservation: Option<u64>,
    /// Waiting in `wfi`.
    pub waiting: bool,
    /// Parked by SBI HSM (not started, or stopped).
    pub stopped: bool,
}

/// A synchronous exception: cause and `tval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Exception {
    pub cause: u64,
    pub tval: u64,
}

pub(crate) mod cause {
    pub const FETCH_MISALIGNED: u64 = 0;
    pub const FETCH_ACCESS: u64 = 1;
    pub const ILLEGAL: u64 = 2;
    pub const BREAKPOINT: u64 = 3;
    pub const LOAD_MISALIGNED: u64 = 4;
    pub const LOAD_ACCESS: u64 = 5;
    pub const STORE_MISALIGNED: u64 = 6;
    pub const STORE_ACCESS: u64 = 7;
    pub const ECALL_U: u64 = 8;
    pub const ECALL_S: u64 = 9;
    pub const ECALL_M: u64 = 11;
    pub const FETCH_PAGE: u64 = 12;
    pub const LOAD_PAGE: u64 = 13;
    pub const STORE_PAGE: u64 = 15;
}

/// How an instruction left the hart, beyond "go on".
pub(crate) enum Stop {
    Exception(Exception),
    Exit(Exit),
}

impl From<Exception> for Stop {
    fn from(e: Exception) -> Stop {
        Stop::Exception(e)
    }
}

pub struct Hart {
    pub(crate) s: HartState,
    /// The VMM implements M-mode (SBI): traps to M are fatal and `ecall` from S exits with [`Exit::Sbi`].
    pub(crate) vmm_is_m_mode: bool,
    pub(crate) tlb: Box<Tlb>,
    /// Dirty-log generation the store TLB was filled in.
    pub(crate) tlb_generation: u64,
    /// Re-evaluate pending interrupts before the next instruction.
    pub(crate) check_irq: bool,
    /// Decoded blocks (taken out while `run` executes them; allocated on the first run).
    pub(crate) code: Option<Box<CodeCache>>,
    /// Jump cache entries of another epoch are dropped: it moves when code is written.
    pub(crate) jump_epoch: u64,
    /// The RAM's code epoch this hart's store translations are up to date with.
    pub(crate) code_epoch: u64,
    /// The RAM's count of code writes this hart's jump cache is up to date with.
    pub(crate) code_writes: u64,
    /// A store just wrote to a code page: the running block ends after it (it may have rewritten what follows).
    pub(crate) end_block: bool,
    pub(crate) engine: Engine,
    pub(crate) jit_threshold: u32,
    /// When set, `run` returns [`Exit::Budget`] before the next block (see [`Hart::set_exit_word`]).
    pub(crate) exit_word: Arc<AtomicBool>,
}

impl Hart {
    /// A hart in reset state. With `vmm_is_m_mode`, the VMM plays M-mode firmware: the hart starts in S-mode
    /// with every trap an OS expects delegated to S, as SBI firmware would leave it.
    pub fn new(id: u64, vmm_is_m_mode: bool) -> Hart {
        let mut s = HartState { id, ..Default::default() };
        s.mstatus = csr::MSTATUS_UXL_SXL;
        if vmm_is_m_mode {
            s.privilege = Privilege::Supervisor;
            // Everything but ecalls from S/M (our SBI) and access faults go to the OS.
            s.medeleg = (1 << cause::FETCH_MISALIGNED)
                | (1 << cause::FETCH_ACCESS)
                | (1 << cause::ILLEGAL)
                | (1 << cause::BREAKPOINT)
                | (1 << cause::LOAD_MISALIGNED)
                | (1 << cause::LOAD_ACCESS)
                | (1 << cause::STORE_MISALIGNED)
                | (1 << cause::STORE_ACCESS)
                | (1 << cause::ECALL_U)
                | (1 << cause::FETCH_PAGE)
                | (1 << cause::LOAD_PAGE)
                | (1 << cause::STORE_PAGE);
            s.mideleg = (1 << irq::SSI) | (1 << irq::STI) | (1 << irq::SEI);
            // As OpenSBI does: cycle/time/instret readable from S and U (the vDSO reads `time` in U-mode;
            // Linux never writes scounteren).
            s.mcounteren = 0x7;
            s.scounteren = 0x7;
            // Firmware enables the S-level interrupt sources it delegates.
            s.mie = (1 << irq::SSI) | (1 << irq::STI) | (1 << irq::SEI);
        } else {
            s.privilege = Privilege::Machine;
        }
        Hart {
            s,
            vmm_is_m_mode,
            tlb: Box::default(),
            tlb_generation: u64::MAX,
            check_irq: true,
            code: None,
            jump_epoch: 0,
            code_epoch: 0,
            code_writes: 0,
            end_block: false,
            engine: Engine::host_default(),
            jit_threshold: DEFAULT_JIT_THRESHOLD,
            exit_word: Arc::default(),
        }
    }

    pub fn id(&self) -> u64 {
        self.s.id
    }

    /// Chooses how the hart runs guest code (at any time: compiled code is kept, just not used, under the
    /// interpreter).
    pub fn set_engine(&mut self, engine: Engine) {
        self.engine = engine;
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Runs of a block before the JIT compiles it (0: at its first run; for tests).
    pub fn set_jit_threshold(&mut self, runs: u32) {
        self.jit_threshold = runs;
    }

    /// Shares an exit word: while it is set, `run` returns [`Exit::Budget`] at the next block boundary (or at
    /// once), so one store stops every hart holding the same word. Whoever sets it clears it before running
    /// the harts again.
    pub fn set_exit_word(&mut self, word: Arc<AtomicBool>) {
        self.exit_word = word;
    }

    /// The architectural state (for save, inspection and tests).
    pub fn state(&self) -> &HartState {
        &self.s
    }

    /// Replaces the architectural state. The caller validated it (privilege is an enum; everything else is
    /// representable); cached translations are dropped (and with them the jump cache, which is valid only
    /// where the TLB agrees). Decoded blocks stay: they depend on RAM only.
    pub fn set_state(&mut self, state: HartState) {
        self.s = state;
        self.tlb.flush_all();
        self.check_irq = true;
    }

    pub fn pc(&self) -> u64 {
        self.s.pc
    }

    pub fn set_pc(&mut self, pc: u64) {
        self.s.pc = pc;
    }

    pub fn reg(&self, i: usize) -> u64 {
        self.s.x[i]
    }

    pub fn set_reg(&mut self, i: usize, v: u64) {
        if i != 0 {
            self.s.x[i] = v;
        }
    }

    pub fn privilege(&self) -> Privilege {
        self.s.privilege
    }

    /// Raises or lowers an interrupt line (a bit of `mip` driven by the board: MSI, MTI, MEI, SEI, and STI/SSI
    /// when the VMM plays M-mode firmware).
    pub fn set_irq_line(&mut self, bit: u32, level: bool) {
        let mask = 1u64 << bit;
        let old = self.s.mip;
        if level {
            self.s.mip |= mask;
        } else {
            self.s.mip &= !mask;
        }
        if self.s.mip != old {
            self.check_irq = true;
        }
    }

    pub fn irq_line(&self, bit: u32) -> bool {
        self.s.mip & (1 << bit) != 0
    }

    pub fn is_stopped(&self) -> bool {
        self.s.stopped
    }

    /// Parks or unparks the hart (SBI HSM).
    pub fn set_stopped(&mut self, stopped: bool) {
        self.s.stopped = stopped;
    }

    /// Starts a parked hart at `pc` in S-mode with a0 = hart id, a1 = `opaque`, translation off (SBI HSM).
    pub fn hsm_start(&mut self, pc: u64, opaque: u64) {
        self.s.stopped = false;
        self.s.waiting = false;
        self.s.privilege = Privilege::Supervisor;
        self.s.satp = 0;
        self.s.mstatus &= !(mstatus::SIE);
        self.s.pc = pc;
        self.s.x[10] = self.s.id;
        self.s.x[11] = opaque;
        self.tlb.flush_all();
        self.check_irq = true;
    }

    /// Finishes an SBI call reported by [`Exit::Sbi`]: sets a0/a1 and steps over the `ecall`.
    pub fn complete_sbi(&mut self, error: i64, value: u64) {
        self.s.x[10] = error as u64;
        self.s.x[11] = value;
        self.s.pc = self.s.pc.wrapping_add(4);
    }

    /// True when the hart would leave `wfi` (an interrupt is pending and enabled in `mie`, whether or not
    /// globally enabled).
    pub fn wakeup_pending(&self) -> bool {
        self.s.mip & self.s.mie != 0
    }

    /// Drops all cached translations (after the VMM changed guest page tables behind the hart's back, e.g. a
    /// restore, or for an SBI remote `sfence.vma`). Decoded blocks need nothing: writes to guest memory
    /// invalidate them themselves, so a remote `fence.i` needs no call at all.
    pub fn flush_tlb(&mut self) {
        self.tlb.flush_all();
    }

    /// How many blocks this hart decoded so far (a statistic for tests and benchmarks: a block decoded again
    /// after its code was written counts again).
    pub fn decoded_blocks(&self) -> u64 {
        self.code.as_ref().map_or(0, |c| c.decoded)
    }

    /// How many blocks the JIT compiled so far (a statistic for tests and benchmarks).
    pub fn compiled_blocks(&self) -> u64 {
        self.code.as_ref().map_or(0, |c| c.jit.compiled)
    }

    /// Runs at most `budget` instructions (exactly `budget` when nothing stops it earlier: blocks are cut short
    /// when the budget ends inside one).
    pub fn run(&mut self, ram: &GuestRam, bus: &mut dyn Bus, budget: u64) -> Exit {
        if self.s.stopped {
            return Exit::Wfi;
        }
        if self.tlb_generation != ram.generation() {
            self.tlb.flush_stores();
            self.tlb_generation = ram.generation();
        }
        // While other harts (or the VMM) ran, pages may have become code pages, or code pages written.
        self.sync_code_epoch(ram);
        self.sync_code_writes(ram);
        // A hart switch may have let another hart (or the VMM) write the reserved location.
        self.s.reservation = None;
        if self.s.waiting {
            if !self.wakeup_pending() {
                return Exit::Wfi;
            }
            self.s.waiting = false;
        }
        self.check_irq = true;
        let mut code = self.code.take().unwrap_or_default();
        // Code may have been written since the last run: link only exits taken in this one.
        code.pending_link = None;
        if code.bind(ram) {
            // Another RAM: translations point into the old one.
            self.tlb.flush_all();
        }
        let exit = self.execute(&mut code, ram, bus, budget);
        self.code = Some(code);
        exit
    }

    /// The highest-priority interrupt that is pending, enabled and not masked at the current privilege.
    pub(crate) fn pending_interrupt(&self) -> Option<u32> {
        let pending = self.s.mip & self.s.mie;
        if pending == 0 {
            return None;
        }
        let p = self.s.privilege;
        let m_enabled = p < Privilege::Machine || self.s.mstatus & mstatus::MIE != 0;
        let s_enabled = p < Privilege::Supervisor || (p == Privilege::Supervisor && self.s.mstatus & mstatus::SIE != 0);
        let m_pending = pending & !self.s.mideleg;
        let s_pending = pending & self.s.mideleg;
        const ORDER: [u32; 6] = [irq::MEI, irq::MSI, irq::MTI, irq::SEI, irq::SSI, irq::STI];
        if m_enabled && m_pending != 0 {
            return ORDER.into_iter().find(|b| m_pending & (1 << b) != 0);
        }
        if s_enabled && s_pending != 0 {
            return ORDER.into_iter().find(|b| s_pending & (1 << b) != 0);
        }
        None
    }

    /// Takes a trap (exception or interrupt) at the current pc. Returns an exit if the trap targets M-mode and
    /// the VMM plays M-mode.
    pub(crate) fn take_trap(&mut self, cause: u64, tval: u64, interrupt: bool) -> Option<Exit> {
        let deleg = if interrupt { self.s.mideleg } else { self.s.medeleg };
        let code = cause & 63;
        let from = self.s.privilege;
        let cause_val = cause | if interrupt { 1 << 63 } else { 0 };
        self.s.reservation = None;
        self.check_irq = true;
        if from <= Privilege::Supervisor && (deleg >> code) & 1 != 0 {
            self.s.scause = cause_val;
            self.s.sepc = self.s.pc;
            self.s.stval = tval;
            let mut st = self.s.mstatus;
            st = if st & mstatus::SIE != 0 { st | mstatus::SPIE } else { st & !mstatus::SPIE };
            st &= !mstatus::SIE;
            st = if from == Privilege::Supervisor { st | mstatus::SPP } else { st & !mstatus::SPP };
            self.s.mstatus = st;
            self.s.privilege = Privilege::Supervisor;
            self.s.pc = trap_vector(self.s.stvec, code, interrupt);
        } else {
            if self.vmm_is_m_mode {
                return Some(Exit::MachineTrap { cause: cause_val, tval, pc: self.s.pc });
            }
            self.s.mcause = cause_val;
            self.s.mepc = self.s.pc;
            self.s.mtval = tval;
            let mut st = self.s.mstatus;
            st = if st & mstatus::MIE != 0 { st | mstatus::MPIE } else { st & !mstatus::MPIE };
            st &= !mstatus::MIE;
            st = (st & !mstatus::MPP) | ((from as u64) << mstatus::MPP_SHIFT);
            self.s.mstatus = st;
            self.s.privilege = Privilege::Machine;
            self.s.pc = trap_vector(self.s.mtvec, code, interrupt);
        }
        None
    }
}

fn trap_vector(tvec: u64, code: u64, interrupt: bool) -> u64 {
    let base = tvec & !3;
    if interrupt && tvec & 3 == 1 {
        base.wrapping_add(4 * code)
    } else {
        base
    }
}
