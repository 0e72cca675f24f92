//! The test machine: one hart, guest RAM at 0x8000_0000 and a recording [`TestBus`].
//!
//! Convention: the M-mode trap vector (`mtvec`, installed at reset) is [`HALT_VECTOR`], which stores to the
//! MMIO address [`HALT_MMIO`] with `sw x0, 0x100(x0)` (no register is touched) and spins. [`Machine::run`]
//! returns [`Outcome::Halted`] when that store happens, so every test ends by trapping to M-mode — typically
//! with an `ecall` — and the trap that ended it is in `mcause`/`mepc`/`mtval` ([`Machine::m_trap`]).
//! [`S_ESCALATE`] is an S-mode trap vector that just executes `ecall`, which (not being delegated) ends the
//! test from S-mode with `scause`/`sepc`/`stval` describing the S-level trap.

use super::asm::*;
use kemari_engine::{Bus, Engine, Exit, GuestRam, Hart, HartState, Privilege};

pub const RAM_BASE: u64 = 0x8000_0000;
pub const RAM_SIZE: u64 = 16 << 20;
/// M-mode trap vector: `sw x0, 0x100(x0); j .`
pub const HALT_VECTOR: u64 = RAM_BASE;
/// S-mode trap vector: `ecall; j .`
pub const S_ESCALATE: u64 = RAM_BASE + 0x10;
/// Where M-mode test programs start.
pub const CODE: u64 = RAM_BASE + 0x1000;
/// Where S/U-mode programs live (entered with `mret`).
pub const GUEST_CODE: u64 = RAM_BASE + 0x8000;
pub const DATA: u64 = RAM_BASE + 0x10_0000;
/// Page tables are allocated from here.
pub const PT_AREA: u64 = RAM_BASE + 0x40_0000;
/// A window of MMIO registers served by [`TestBus`].
pub const MMIO_BASE: u64 = 0x1000_0000;
pub const MMIO_SIZE: u64 = 0x1000;
pub const HALT_MMIO: u64 = 0x100;
/// A store here makes [`Machine::run`] return [`Outcome::Paused`] (the program can be resumed).
pub const PAUSE_MMIO: u64 = 0x108;

/// Exception and interrupt causes.
pub mod cause {
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
    pub const INTERRUPT: u64 = 1 << 63;
}

/// `mstatus` fields.
pub mod mstatus {
    pub const SIE: u64 = 1 << 1;
    pub const MIE: u64 = 1 << 3;
    pub const SPIE: u64 = 1 << 5;
    pub const MPIE: u64 = 1 << 7;
    pub const SPP: u64 = 1 << 8;
    pub const MPP_SHIFT: u32 = 11;
    pub const MPP: u64 = 3 << 11;
    pub const FS: u64 = 3 << 13;
    pub const FS_INITIAL: u64 = 1 << 13;
    pub const FS_DIRTY: u64 = 3 << 13;
    pub const MPRV: u64 = 1 << 17;
    pub const SUM: u64 = 1 << 18;
    pub const MXR: u64 = 1 << 19;
    pub const TVM: u64 = 1 << 20;
    pub const TW: u64 = 1 << 21;
    pub const TSR: u64 = 1 << 22;
    pub const SD: u64 = 1 << 63;
}

/// `fflags` bits.
pub mod fflags {
    pub const NX: u64 = 1;
    pub const UF: u64 = 2;
    pub const OF: u64 = 4;
    pub const DZ: u64 = 8;
    pub const NV: u64 = 16;
}

/// A recording bus: MMIO loads in the window return [`TestBus::mmio_value`] (masked to the access size) and
/// are logged; stores in the window are logged; stores to [`HALT_MMIO`] / [`PAUSE_MMIO`] set flags; everything
/// else is an access fault.
#[derive(Default)]
pub struct TestBus {
    pub time: u64,
    pub mmio_value: u64,
    pub loads: Vec<(u64, u8)>,
    pub stores: Vec<(u64, u8, u64)>,
    pub halted: bool,
    pub paused: bool,
}

fn size_mask(size: u8) -> u64 {
    if size == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * size)) - 1
    }
}

impl Bus for TestBus {
    fn load(&mut self, _hart: usize, addr: u64, size: u8) -> Option<u64> {
        if !(MMIO_BASE..MMIO_BASE + MMIO_SIZE).contains(&addr) {
            return None;
        }
        self.loads.push((addr, size));
        Some(self.mmio_value & size_mask(size))
    }

    fn store(&mut self, _hart: usize, addr: u64, size: u8, value: u64) -> bool {
        match addr {
            HALT_MMIO => self.halted = true,
            PAUSE_MMIO => self.paused = true,
            _ if (MMIO_BASE..MMIO_BASE + MMIO_SIZE).contains(&addr) => self.stores.push((addr, size, value)),
            _ => return false,
        }
        true
    }

    fn time(&self) -> u64 {
        self.time
    }
}

/// Sets the engine the tests of this binary run under: test binaries whose name ends in `jit` use the JIT and
/// compile every block the first time it runs; the others the interpreter.
pub fn configure_engine(hart: &mut Hart) {
    if env!("CARGO_CRATE_NAME").ends_with("jit") {
        hart.set_engine(Engine::Jit);
        hart.set_jit_threshold(0);
    } else {
        hart.set_engine(Engine::Interp);
    }
}

/// Why [`Machine::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Halted,
    Paused,
    Wfi,
    Sbi,
    MachineTrap { cause: u64, tval: u64, pc: u64 },
    Budget,
}

/// A trap as recorded in `xcause`/`xtval`/`xepc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trap {
    pub cause: u64,
    pub tval: u64,
    pub epc: u64,
}

impl Trap {
    pub fn new(cause: u64, tval: u64, epc: u64) -> Trap {
        Trap { cause, tval, epc }
    }

    /// An `ecall` at `pc` (tval 0).
    pub fn ecall(cause: u64, pc: u64) -> Trap {
        Trap { cause, tval: 0, epc: pc }
    }

    /// An interrupt with code `code` taken before the instruction at `pc`.
    pub fn interrupt(code: u64, pc: u64) -> Trap {
        Trap { cause: cause::INTERRUPT | code, tval: 0, epc: pc }
    }
}

pub struct Machine {
    pub hart: Hart,
    pub ram: GuestRam,
    pub bus: TestBus,
}

impl Default for Machine {
    fn default() -> Machine {
        Machine::new()
    }
}

impl Machine {
    /// A bare-metal machine: hart 0 in M-mode at [`CODE`], `mtvec` = [`HALT_VECTOR`].
    pub fn new() -> Machine {
        Machine::with_hart(Hart::new(0, false))
    }

    /// A machine whose hart runs under a VMM that plays M-mode (starts in S-mode at [`CODE`]).
    pub fn new_vmm() -> Machine {
        Machine::with_hart(Hart::new(0, true))
    }

    pub fn with_hart(mut hart: Hart) -> Machine {
        configure_engine(&mut hart);
        let ram = GuestRam::new(RAM_BASE, RAM_SIZE).expect("guest RAM");
        let mut m = Machine { hart, ram, bus: TestBus::default() };
        let mut vectors = Asm::new(HALT_VECTOR);
        vectors.i(sw(ZERO, HALT_MMIO as i32, ZERO)).label("spin").j("spin");
        m.load(&vectors);
        let mut escalate = Asm::new(S_ESCALATE);
        escalate.i(ecall()).label("spin").j("spin");
        m.load(&escalate);
        m.edit(|s| {
            s.pc = CODE;
            s.mtvec = HALT_VECTOR;
        });
        m
    }

    pub fn state(&self) -> &HartState {
        self.hart.state()
    }

    /// Changes the architectural state (through `set_state`, which also drops cached translations).
    pub fn edit(&mut self, f: impl FnOnce(&mut HartState)) {
        let mut s = self.hart.state().clone();
        f(&mut s);
        self.hart.set_state(s);
    }

    pub fn x(&self, r: u32) -> u64 {
        self.hart.reg(r as usize)
    }

    pub fn set_x(&mut self, r: u32, v: u64) {
        self.hart.set_reg(r as usize, v);
    }

    pub fn f(&self, r: u32) -> u64 {
        self.state().f[r as usize]
    }

    pub fn set_f(&mut self, r: u32, bits: u64) {
        self.edit(|s| s.f[r as usize] = bits);
    }

    /// An f32 value NaN-boxed into an f register.
    pub fn set_f32(&mut self, r: u32, v: f32) {
        self.set_f(r, 0xffff_ffff_0000_0000 | v.to_bits() as u64);
    }

    pub fn set_f64(&mut self, r: u32, v: f64) {
        self.set_f(r, v.to_bits());
    }

    /// Sets mstatus.FS to Initial so FP instructions are legal.
    pub fn enable_fp(&mut self) {
        self.edit(|s| s.mstatus = (s.mstatus & !mstatus::FS) | mstatus::FS_INITIAL);
    }

    pub fn fflags(&self) -> u64 {
        self.state().fcsr & 0x1f
    }

    /// Copies a program into RAM at its base address.
    pub fn load(&mut self, a: &Asm) {
        self.write_bytes(a.base(), &a.bytes());
    }

    pub fn write_bytes(&self, addr: u64, bytes: &[u8]) {
        self.ram.write(addr, bytes).unwrap_or_else(|| panic!("write outside RAM at {addr:#x}"));
    }

    pub fn write_u64(&self, addr: u64, v: u64) {
        self.write_bytes(addr, &v.to_le_bytes());
    }

    pub fn write_u32(&self, addr: u64, v: u32) {
        self.write_bytes(addr, &v.to_le_bytes());
    }

    pub fn read_bytes<const N: usize>(&self, addr: u64) -> [u8; N] {
        let mut buf = [0u8; N];
        self.ram.read(addr, &mut buf).unwrap_or_else(|| panic!("read outside RAM at {addr:#x}"));
        buf
    }

    pub fn read_u64(&self, addr: u64) -> u64 {
        u64::from_le_bytes(self.read_bytes(addr))
    }

    pub fn read_u32(&self, addr: u64) -> u32 {
        u32::from_le_bytes(self.read_bytes(addr))
    }

    pub fn read_u16(&self, addr: u64) -> u16 {
        u16::from_le_bytes(self.read_bytes(addr))
    }

    pub fn read_u8(&self, addr: u64) -> u8 {
        self.read_bytes::<1>(addr)[0]
    }

    /// Runs exactly up to `budget` instructions (one `Hart::run` call).
    pub fn step(&mut self, budget: u64) -> Exit {
        self.hart.run(&self.ram, &mut self.bus, budget)
    }

    /// Runs until the program halts, pauses, waits, calls SBI, or a million instructions pass. Stores to the
    /// MMIO window are logged and execution goes on.
    pub fn run(&mut self) -> Outcome {
        self.bus.halted = false;
        for _ in 0..10_000 {
            match self.hart.run(&self.ram, &mut self.bus, 1_000_000) {
                Exit::MmioStore => {
                    if self.bus.halted {
                        return Outcome::Halted;
                    }
                    if std::mem::take(&mut self.bus.paused) {
                        return Outcome::Paused;
                    }
                }
                Exit::Budget => return Outcome::Budget,
                Exit::Wfi => return Outcome::Wfi,
                Exit::Sbi => return Outcome::Sbi,
                Exit::MachineTrap { cause, tval, pc } => return Outcome::MachineTrap { cause, tval, pc },
            }
        }
        Outcome::Budget
    }

    /// Runs and insists on halting (a trap to M-mode); returns that trap.
    pub fn run_to_halt(&mut self) -> Trap {
        let outcome = self.run();
        assert_eq!(outcome, Outcome::Halted, "program did not halt; {}", self.describe());
        self.m_trap()
    }

    /// Loads `a` and runs it to the trap that ends it (see the module docs).
    pub fn run_program(&mut self, a: &Asm) -> Trap {
        self.load(a);
        self.run_to_halt()
    }

    /// Appends `ecall` to an M-mode program, runs it, and checks that it got there without any other trap.
    pub fn run_to_ecall(&mut self, a: &mut Asm) {
        let end = a.pc();
        a.i(ecall());
        let trap = self.run_program(a);
        assert_eq!(
            trap,
            Trap::ecall(cause::ECALL_M, end),
            "program did not reach its final ecall; {}",
            self.describe()
        );
    }

    /// The last trap taken to M-mode.
    pub fn m_trap(&self) -> Trap {
        let s = self.state();
        Trap { cause: s.mcause, tval: s.mtval, epc: s.mepc }
    }

    /// The last trap taken to S-mode.
    pub fn s_trap(&self) -> Trap {
        let s = self.state();
        Trap { cause: s.scause, tval: s.stval, epc: s.sepc }
    }

    pub fn privilege(&self) -> Privilege {
        self.hart.privilege()
    }

    /// A one-line summary for assertion messages.
    pub fn describe(&self) -> String {
        let s = self.state();
        format!(
            "pc={:#x} priv={:?} mcause={:#x} mepc={:#x} mtval={:#x} scause={:#x} sepc={:#x} stval={:#x} mstatus={:#x}",
            s.pc, s.privilege, s.mcause, s.mepc, s.mtval, s.scause, s.sepc, s.stval, s.mstatus
        )
    }

    /// Loads `guest` (an S- or U-mode program) and an M-mode boot program at [`CODE`] that installs `satp` and
    /// enters `mode` at the guest's first instruction with `mret`; runs to halt.
    pub fn run_guest(&mut self, mode: Privilege, satp: u64, guest: &Asm) -> Trap {
        let mut boot = Asm::new(CODE);
        boot.li(T6, satp).i(csrw(csr::SATP, T6));
        enter_with_mret(&mut boot, mode, guest.base());
        self.load(&boot);
        self.run_program(guest)
    }
}

/// Emits M-mode code that sets mstatus.MPP = `mode`, mepc = `entry` and executes `mret` (clobbers t6).
pub fn enter_with_mret(a: &mut Asm, mode: Privilege, entry: u64) {
    a.li(T6, mstatus::MPP)
        .i(csrc(csr::MSTATUS, T6))
        .li(T6, (mode as u64) << mstatus::MPP_SHIFT)
        .i(csrs(csr::MSTATUS, T6))
        .li(T6, entry)
        .i(csrw(csr::MEPC, T6))
        .i(mret());
}
