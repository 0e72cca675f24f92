//! Control and status registers: numbers, field masks and the access rules of the privileged spec.

use crate::hart::irq;
use crate::hart::{cause, Bus, Exception, Hart, Privilege};

pub mod mstatus {
    pub const SIE: u64 = 1 << 1;
    pub const MIE: u64 = 1 << 3;
    pub const SPIE: u64 = 1 << 5;
    pub const MPIE: u64 = 1 << 7;
    pub const SPP: u64 = 1 << 8;
    pub const MPP_SHIFT: u32 = 11;
    pub const MPP: u64 = 3 << 11;
    pub const FS_SHIFT: u32 = 13;
    pub const FS: u64 = 3 << 13;
    pub const MPRV: u64 = 1 << 17;
    pub const SUM: u64 = 1 << 18;
    pub const MXR: u64 = 1 << 19;
    pub const TVM: u64 = 1 << 20;
    pub const TW: u64 = 1 << 21;
    pub const TSR: u64 = 1 << 22;
    pub const SD: u64 = 1 << 63;
}

/// UXL = SXL = 2 (64-bit), read-only.
pub const MSTATUS_UXL_SXL: u64 = (2 << 32) | (2 << 34);
const MSTATUS_WRITABLE: u64 = mstatus::SIE
    | mstatus::MIE
    | mstatus::SPIE
    | mstatus::MPIE
    | mstatus::SPP
    | mstatus::MPP
    | mstatus::FS
    | mstatus::MPRV
    | mstatus::SUM
    | mstatus::MXR
    | mstatus::TVM
    | mstatus::TW
    | mstatus::TSR;
const SSTATUS_MASK: u64 =
    mstatus::SIE | mstatus::SPIE | mstatus::SPP | mstatus::FS | mstatus::SUM | mstatus::MXR | mstatus::SD | (3 << 32);

/// RV64 with A, C, D, F, I, M, S, U.
pub const MISA: u64 =
    (2 << 62) | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 8) | (1 << 12) | (1 << 18) | (1 << 20);

pub const FFLAGS: u16 = 0x001;
pub const FRM: u16 = 0x002;
pub const FCSR: u16 = 0x003;
pub const CYCLE: u16 = 0xc00;
pub const TIME: u16 = 0xc01;
pub const INSTRET: u16 = 0xc02;
pub const SSTATUS: u16 = 0x100;
pub const SIE: u16 = 0x104;
pub const STVEC: u16 = 0x105;
pub const SCOUNTEREN: u16 = 0x106;
pub const SENVCFG: u16 = 0x10a;
pub const SSCRATCH: u16 = 0x140;
pub const SEPC: u16 = 0x141;
pub const SCAUSE: u16 = 0x142;
pub const STVAL: u16 = 0x143;
pub const SIP: u16 = 0x144;
pub const SATP: u16 = 0x180;
pub const MVENDORID: u16 = 0xf11;
pub const MARCHID: u16 = 0xf12;
pub const MIMPID: u16 = 0xf13;
pub const MHARTID: u16 = 0xf14;
pub const MCONFIGPTR: u16 = 0xf15;
pub const MSTATUS: u16 = 0x300;
pub const MISA_CSR: u16 = 0x301;
pub const MEDELEG: u16 = 0x302;
pub const MIDELEG: u16 = 0x303;
pub const MIE: u16 = 0x304;
pub const MTVEC: u16 = 0x305;
pub const MCOUNTEREN: u16 = 0x306;
pub const MENVCFG: u16 = 0x30a;
pub const MCOUNTINHIBIT: u16 = 0x320;
pub const MSCRATCH: u16 = 0x340;
pub const MEPC: u16 = 0x341;
pub const MCAUSE: u16 = 0x342;
pub const MTVAL: u16 = 0x343;
pub const MIP: u16 = 0x344;
/// Sdtrig: this hart has no triggers, reported the way the spec's discovery sequence reads it: `tselect`
/// holds 0 whatever is written, `tdata1` reads type 0 ("no trigger at this index"), `tinfo` reads 1 (only type 0
/// is supported), `tdata2`/`tdata3` read 0; writes are ignored.
pub const TSELECT: u16 = 0x7a0;
pub const TDATA1: u16 = 0x7a1;
pub const TDATA2: u16 = 0x7a2;
pub const TDATA3: u16 = 0x7a3;
pub const TINFO: u16 = 0x7a4;
pub const MCYCLE: u16 = 0xb00;
pub const MINSTRET: u16 = 0xb02;

const S_INTERRUPTS: u64 = (1 << irq::SSI) | (1 << irq::STI) | (1 << irq::SEI);
const M_INTERRUPTS: u64 = S_INTERRUPTS | (1 << irq::MSI) | (1 << irq::MTI) | (1 << irq::MEI);
/// mip bits software may write from M-mode (the others are driven by the board).
const MIP_WRITABLE: u64 = S_INTERRUPTS;
const MEDELEG_WRITABLE: u64 = 0xb3ff; // causes 0-9, 12, 13, 15 (not ecall from M)

fn illegal() -> Exception {
    Exception { cause: cause::ILLEGAL, tval: 0 }
}

impl Hart {
    fn fp_enabled(&self) -> bool {
        self.s.mstatus & mstatus::FS != 0
    }

    pub(crate) fn mark_fs_dirty(&mut self) {
        self.s.mstatus |= mstatus::FS | mstatus::SD;
    }

    /// Counter access from S/U is governed by mcounteren (and scounteren for U).
    fn counter_allowed(&self, bit: u16) -> bool {
        let b = 1u64 << bit;
        match self.s.privilege {
            Privilege::Machine => true,
            Privilege::Supervisor => self.s.mcounteren & b != 0,
            Privilege::User => self.s.mcounteren & b != 0 && self.s.scounteren & b != 0,
        }
    }

    fn sstatus(&self) -> u64 {
        let st = self.s.mstatus & SSTATUS_MASK;
        if st & mstatus::FS == mstatus::FS {
            st | mstatus::SD
        } else {
            st & !mstatus::SD
        }
    }

    /// Reads a CSR with the access checks of the current privilege.
    pub(crate) fn csr_read(&mut self, num: u16, bus: &dyn Bus) -> Result<u64, Exception> {
        let required = (num >> 8) & 3;
        if (self.s.privilege as u16) < required {
            return Err(illegal());
        }
        let v = match num {
            FFLAGS | FRM | FCSR => {
                if !self.fp_enabled() {
                    return Err(illegal());
                }
                match num {
                    FFLAGS => self.s.fcsr & 0x1f,
                    FRM => (self.s.fcsr >> 5) & 7,
                    _ => self.s.fcsr & 0xff,
                }
            }
            CYCLE | INSTRET | TIME => {
                if !self.counter_allowed(num - CYCLE) {
                    return Err(illegal());
                }
                if num == TIME {
                    bus.time()
                } else {
                    self.s.instret
                }
            }
            0xc03..=0xc1f => {
                if !self.counter_allowed(num - CYCLE) {
                    return Err(illegal());
                }
                0
            }
            SSTATUS => self.sstatus(),
            SIE => self.s.mie & self.s.mideleg,
            STVEC => self.s.stvec,
            SCOUNTEREN => self.s.scounteren,
            SENVCFG => self.s.senvcfg,
            SSCRATCH => self.s.sscratch,
            SEPC => self.s.sepc,
            SCAUSE => self.s.scause,
            STVAL => self.s.stval,
            SIP => self.s.mip & self.s.mideleg,
            SATP => {
                if self.s.privilege == Privilege::Supervisor && self.s.mstatus & mstatus::TVM != 0 {
                    return Err(illegal());
                }
                self.s.satp
            }
            MVENDORID | MARCHID | MIMPID | MCONFIGPTR => 0,
            MHARTID => self.s.id,
            MSTATUS => {
                let st = self.s.mstatus;
                if st & mstatus::FS == mstatus::FS {
                    st | mstatus::SD
                } else {
                    st & !mstatus::SD
                }
            }
            MISA_CSR => MISA,
            MEDELEG => self.s.medeleg,
            MIDELEG => self.s.mideleg,
            MIE => self.s.mie,
            MTVEC => self.s.mtvec,
            MCOUNTEREN => self.s.mcounteren,
            MENVCFG => self.s.menvcfg,
            MCOUNTINHIBIT => 0,
            MSCRATCH => self.s.mscratch,
            MEPC => self.s.mepc,
            MCAUSE => self.s.mcause,
            MTVAL => self.s.mtval,
            MIP => self.s.mip,
            MCYCLE | MINSTRET => self.s.instret,
            0xb03..=0xb1f | 0x323..=0x33f => 0,
            0x3a0 | 0x3a2 => self.s.pmpcfg[((num - 0x3a0) / 2) as usize],
            0x3b0..=0x3bf => self.s.pmpaddr[(num - 0x3b0) as usize],
            0x3c0..=0x3ef => 0,
            TSELECT | TDATA1 | TDATA2 | TDATA3 => 0,
            TINFO => 1,
            _ => return Err(illegal()),
        };
        Ok(v)
    }

    /// Writes a CSR (the caller checked that the instruction writes at all).
    pub(crate) fn csr_write(&mut self, num: u16, v: u64) -> Result<(), Exception> {
        let required = (num >> 8) & 3;
        if (self.s.privilege as u16) < required || num >> 10 == 3 {
            return Err(illegal());
        }
        match num {
            FFLAGS | FRM | FCSR => {
                if !self.fp_enabled() {
                    return Err(illegal());
                }
                self.s.fcsr = match num {
                    FFLAGS => (self.s.fcsr & !0x1f) | (v & 0x1f),
                    FRM => (self.s.fcsr & 0x1f) | ((v & 7) << 5),
                    _ => v & 0xff,
                };
                self.mark_fs_dirty();
            }
            SSTATUS => {
                let mask = SSTATUS_MASK & MSTATUS_WRITABLE;
                self.write_mstatus((self.s.mstatus & !mask) | (v & mask));
            }
            SIE => {
                let mask = self.s.mideleg;
                self.s.mie = (self.s.mie & !mask) | (v & mask);
            }
            STVEC => self.s.stvec = v & !2,
            SCOUNTEREN => self.s.scounteren = v & 0xffff_ffff,
            SENVCFG => self.s.senvcfg = 0,
            SSCRATCH => self.s.sscratch = v,
            SEPC => self.s.sepc = v & !1,
            SCAUSE => self.s.scause = v,
            STVAL => self.s.stval = v,
            SIP => {
                let mask = self.s.mideleg & (1 << irq::SSI);
                self.s.mip = (self.s.mip & !mask) | (v & mask);
            }
            SATP => {
                if self.s.privilege == Privilege::Supervisor && self.s.mstatus & mstatus::TVM != 0 {
                    return Err(illegal());
                }
                let mode = v >> 60;
                // Unsupported modes leave satp unchanged (WARL), as the spec requires.
                if mode == 0 || mode == 8 || mode == 9 {
                    self.s.satp = v & ((0xf << 60) | ((1 << 44) - 1));
                    self.tlb.flush_all();
                }
            }
            MSTATUS => self.write_mstatus((self.s.mstatus & !MSTATUS_WRITABLE) | (v & MSTATUS_WRITABLE)),
            MISA_CSR => {}
            MEDELEG => self.s.medeleg = v & MEDELEG_WRITABLE,
            MIDELEG => self.s.mideleg = v & S_INTERRUPTS,
            MIE => self.s.mie = v & M_INTERRUPTS,
            MTVEC => self.s.mtvec = v & !2,
            MCOUNTEREN => self.s.mcounteren = v & 0xffff_ffff,
            MENVCFG => self.s.menvcfg = 0,
            MCOUNTINHIBIT => {}
            MSCRATCH => self.s.mscratch = v,
            MEPC => self.s.mepc = v & !1,
            MCAUSE => self.s.mcause = v,
            MTVAL => self.s.mtval = v,
            MIP => self.s.mip = (self.s.mip & !MIP_WRITABLE) | (v & MIP_WRITABLE),
            // The writing instruction's own retirement follows and must not count: the next one reads `v`.
            MCYCLE | MINSTRET => self.s.instret = v.wrapping_sub(1),
            0xb03..=0xb1f | 0x323..=0x33f => {}
            0x3a0 | 0x3a2 => self.s.pmpcfg[((num - 0x3a0) / 2) as usize] = v,
            0x3b0..=0x3bf => self.s.pmpaddr[(num - 0x3b0) as usize] = v & ((1 << 54) - 1),
            0x3c0..=0x3ef => {}
            TSELECT | TDATA1 | TDATA2 | TDATA3 | TINFO => {}
            _ => return Err(illegal()),
        }
        self.check_irq = true;
        Ok(())
    }

    fn write_mstatus(&mut self, new: u64) {
        let mut new = new | MSTATUS_UXL_SXL;
        // MPP is WARL: the reserved encoding 2 becomes U.
        if (new & mstatus::MPP) >> mstatus::MPP_SHIFT == 2 {
            new &= !mstatus::MPP;
        }
        new = if new & mstatus::FS == mstatus::FS { new | mstatus::SD } else { new & !mstatus::SD };
        // No TLB flush: the TLB tag holds the effective privilege (MPRV/MPP) and SUM/MXR.
        self.s.mstatus = new;
    }
}
