//! The interpreter: fetch, decode and execute RV64GC instructions.

use crate::csr::mstatus;
use crate::fpu::{self, Rounding};
use crate::hart::{cause, Bus, Exception, Exit, Hart, Privilege, Stop};
use crate::memory::GuestRam;
use crate::mmu::{read_ram, write_ram, Access};
use crate::rvc;

type Step = Result<(), Stop>;

#[inline(always)]
fn illegal(raw: u32) -> Stop {
    Stop::Exception(Exception { cause: cause::ILLEGAL, tval: raw as u64 })
}

#[inline(always)]
fn sext(v: u64, bits: u32) -> u64 {
    (((v << (64 - bits)) as i64) >> (64 - bits)) as u64
}

#[inline(always)]
fn imm_i(i: u32) -> u64 {
    ((i as i32) >> 20) as i64 as u64
}

#[inline(always)]
fn imm_s(i: u32) -> u64 {
    ((((i as i32) >> 25) << 5) as i64 as u64) | ((i >> 7) & 0x1f) as u64
}

#[inline(always)]
fn imm_b(i: u32) -> u64 {
    let v = (((i >> 31) & 1) << 12) | (((i >> 7) & 1) << 11) | (((i >> 25) & 0x3f) << 5) | (((i >> 8) & 0xf) << 1);
    sext(v as u64, 13)
}

#[inline(always)]
fn imm_j(i: u32) -> u64 {
    let v = (((i >> 31) & 1) << 20) | (((i >> 12) & 0xff) << 12) | (((i >> 20) & 1) << 11) | (((i >> 21) & 0x3ff) << 1);
    sext(v as u64, 21)
}

const F32_NAN: u32 = fpu::F32_CANONICAL_NAN;

impl Hart {
    pub(crate) fn execute(&mut self, ram: &GuestRam, bus: &mut dyn Bus, budget: u64) -> Exit {
        for _ in 0..budget {
            if self.check_irq {
                self.check_irq = false;
                if let Some(i) = self.pending_interrupt() {
                    if let Some(exit) = self.take_trap(i as u64, 0, true) {
                        return exit;
                    }
                }
            }
            match self.step(ram, bus) {
                Ok(()) => self.s.instret = self.s.instret.wrapping_add(1),
                Err(Stop::Exception(e)) => {
                    if let Some(exit) = self.take_trap(e.cause, e.tval, false) {
                        return exit;
                    }
                }
                Err(Stop::Exit(exit)) => {
                    if exit != Exit::Sbi {
                        self.s.instret = self.s.instret.wrapping_add(1);
                    }
                    return exit;
                }
            }
        }
        Exit::Budget
    }

    #[inline(always)]
    fn step(&mut self, ram: &GuestRam, bus: &mut dyn Bus) -> Step {
        let pc = self.s.pc;
        let word = self.fetch(ram, pc)?;
        let lo = word as u16;
        if lo & 3 == 3 {
            let insn = if pc & 0xfff <= 0xffc {
                word
            } else {
                // Straddles a page: the second parcel needs its own translation.
                (self.fetch16(ram, pc.wrapping_add(2))? as u32) << 16 | lo as u32
            };
            self.exec(ram, bus, insn, insn, 4)
        } else {
            let insn = rvc::expand(lo).ok_or(illegal(lo as u32))?;
            self.exec(ram, bus, insn, lo as u32, 2)
        }
    }

    #[inline(always)]
    fn x(&self, r: u32) -> u64 {
        self.s.x[r as usize]
    }

    #[inline(always)]
    fn wx(&mut self, r: u32, v: u64) {
        if r != 0 {
            self.s.x[r as usize] = v;
        }
    }

    /// Executes one (expanded) 32-bit instruction of length `len`; `raw` is what was fetched.
    #[inline(always)]
    fn exec(&mut self, ram: &GuestRam, bus: &mut dyn Bus, insn: u32, raw: u32, len: u64) -> Step {
        let pc = self.s.pc;
        let next = pc.wrapping_add(len);
        let rd = (insn >> 7) & 31;
        let f3 = (insn >> 12) & 7;
        let rs1 = (insn >> 15) & 31;
        let rs2 = (insn >> 20) & 31;
        let f7 = insn >> 25;
        match insn & 0x7f {
            0x37 => self.wx(rd, (insn & 0xffff_f000) as i32 as i64 as u64),
            0x17 => self.wx(rd, pc.wrapping_add((insn & 0xffff_f000) as i32 as i64 as u64)),
            0x6f => {
                self.wx(rd, next);
                self.s.pc = pc.wrapping_add(imm_j(insn));
                return Ok(());
            }
            0x67 => {
                if f3 != 0 {
                    return Err(illegal(raw));
                }
                let target = self.x(rs1).wrapping_add(imm_i(insn)) & !1;
                self.wx(rd, next);
                self.s.pc = target;
                return Ok(());
            }
            0x63 => {
                let a = self.x(rs1);
                let b = self.x(rs2);
                let taken = match f3 {
                    0 => a == b,
                    1 => a != b,
                    4 => (a as i64) < (b as i64),
                    5 => (a as i64) >= (b as i64),
                    6 => a < b,
                    7 => a >= b,
                    _ => return Err(illegal(raw)),
                };
                self.s.pc = if taken { pc.wrapping_add(imm_b(insn)) } else { next };
                return Ok(());
            }
            0x03 => {
                let addr = self.x(rs1).wrapping_add(imm_i(insn));
                let v = match f3 {
                    0 => self.load::<1>(ram, bus, addr)? as i8 as i64 as u64,
                    1 => self.load::<2>(ram, bus, addr)? as i16 as i64 as u64,
                    2 => self.load::<4>(ram, bus, addr)? as i32 as i64 as u64,
                    3 => self.load::<8>(ram, bus, addr)?,
                    4 => self.load::<1>(ram, bus, addr)?,
                    5 => self.load::<2>(ram, bus, addr)?,
                    6 => self.load::<4>(ram, bus, addr)?,
                    _ => return Err(illegal(raw)),
                };
                self.wx(rd, v);
            }
            0x23 => {
                let addr = self.x(rs1).wrapping_add(imm_s(insn));
                let v = self.x(rs2);
                let mmio = match f3 {
                    0 => self.store::<1>(ram, bus, addr, v)?,
                    1 => self.store::<2>(ram, bus, addr, v)?,
                    2 => self.store::<4>(ram, bus, addr, v)?,
                    3 => self.store::<8>(ram, bus, addr, v)?,
                    _ => return Err(illegal(raw)),
                };
                if mmio {
                    self.s.pc = next;
                    return Err(Stop::Exit(Exit::MmioStore));
                }
            }
            0x13 => {
                let a = self.x(rs1);
                let imm = imm_i(insn);
                let shamt = (insn >> 20) & 63;
                let v = match f3 {
                    0 => a.wrapping_add(imm),
                    1 if insn >> 26 == 0 => a << shamt,
                    2 => ((a as i64) < (imm as i64)) as u64,
                    3 => (a < imm) as u64,
                    4 => a ^ imm,
                    5 if insn >> 26 == 0 => a >> shamt,
                    5 if insn >> 26 == 0x10 => ((a as i64) >> shamt) as u64,
                    6 => a | imm,
                    7 => a & imm,
                    _ => return Err(illegal(raw)),
                };
                self.wx(rd, v);
            }
            0x1b => {
                let a = self.x(rs1) as u32;
                let shamt = (insn >> 20) & 31;
                let v = match (f3, f7) {
                    (0, _) => a.wrapping_add(imm_i(insn) as u32) as i32,
                    (1, 0) => (a << shamt) as i32,
                    (5, 0) => (a >> shamt) as i32,
                    (5, 0x20) => (a as i32) >> shamt,
                    _ => return Err(illegal(raw)),
                };
                self.wx(rd, v as i64 as u64);
            }
            0x33 => {
                let a = self.x(rs1);
                let b = self.x(rs2);
                let v = match (f7, f3) {
                    (0, 0) => a.wrapping_add(b),
                    (0x20, 0) => a.wrapping_sub(b),
                    (0, 1) => a << (b & 63),
                    (0, 2) => ((a as i64) < (b as i64)) as u64,
                    (0, 3) => (a < b) as u64,
                    (0, 4) => a ^ b,
                    (0, 5) => a >> (b & 63),
                    (0x20, 5) => ((a as i64) >> (b & 63)) as u64,
                    (0, 6) => a | b,
                    (0, 7) => a & b,
                    (1, 0) => a.wrapping_mul(b),
                    (1, 1) => ((a as i64 as i128 * b as i64 as i128) >> 64) as u64,
                    (1, 2) => ((a as i64 as i128 * b as u128 as i128) >> 64) as u64,
                    (1, 3) => ((a as u128 * b as u128) >> 64) as u64,
                    (1, 4) => div_s(a, b),
                    (1, 5) => a.checked_div(b).unwrap_or(u64::MAX),
                    (1, 6) => rem_s(a, b),
                    (1, 7) => a.checked_rem(b).unwrap_or(a),
                    _ => return Err(illegal(raw)),
                };
                self.wx(rd, v);
            }
            0x3b => {
                let a = self.x(rs1) as u32;
                let b = self.x(rs2) as u32;
                let v: u32 = match (f7, f3) {
                    (0, 0) => a.wrapping_add(b),
                    (0x20, 0) => a.wrapping_sub(b),
                    (0, 1) => a << (b & 31),
                    (0, 5) => a >> (b & 31),
                    (0x20, 5) => ((a as i32) >> (b & 31)) as u32,
                    (1, 0) => a.wrapping_mul(b),
                    (1, 4) => {
                        let (a, b) = (a as i32, b as i32);
                        if b == 0 {
                            u32::MAX
                        } else {
                            a.wrapping_div(b) as u32
                        }
                    }
                    (1, 5) => a.checked_div(b).unwrap_or(u32::MAX),
                    (1, 6) => {
                        let (a, b) = (a as i32, b as i32);
                        if b == 0 {
                            a as u32
                        } else {
                            a.wrapping_rem(b) as u32
                        }
                    }
                    (1, 7) => a.checked_rem(b).unwrap_or(a),
                    _ => return Err(illegal(raw)),
                };
                self.wx(rd, v as i32 as i64 as u64);
            }
            0x0f => match f3 {
                0 => {} // fence: one thread runs all harts in order, so memory is coherent.
                1 => {} // fence.i: no decoded-instruction cache survives a store.
                _ => return Err(illegal(raw)),
            },
            0x73 => return self.exec_system(bus, insn, raw, next),
            0x2f => return self.exec_amo(ram, insn, raw, next),
            0x07 | 0x27 | 0x43 | 0x47 | 0x4b | 0x4f | 0x53 => return self.exec_fp(ram, bus, insn, raw, next),
            _ => return Err(illegal(raw)),
        }
        self.s.pc = next;
        Ok(())
    }

    fn exec_system(&mut self, bus: &mut dyn Bus, insn: u32, raw: u32, next: u64) -> Step {
        let rd = (insn >> 7) & 31;
        let f3 = (insn >> 12) & 7;
        let rs1 = (insn >> 15) & 31;
        let p = self.s.privilege;
        if f3 == 0 {
            if rd != 0 {
                return Err(illegal(raw));
            }
            match insn {
                0x0000_0073 => {
                    if p == Privilege::Supervisor && self.vmm_is_m_mode {
                        return Err(Stop::Exit(Exit::Sbi));
                    }
                    let c = match p {
                        Privilege::User => cause::ECALL_U,
                        Privilege::Supervisor => cause::ECALL_S,
                        Privilege::Machine => cause::ECALL_M,
                    };
                    return Err(Exception { cause: c, tval: 0 }.into());
                }
                0x0010_0073 => return Err(Exception { cause: cause::BREAKPOINT, tval: self.s.pc }.into()),
                0x1020_0073 => {
                    if p < Privilege::Supervisor || (p == Privilege::Supervisor && self.s.mstatus & mstatus::TSR != 0) {
                        return Err(illegal(raw));
                    }
                    let mut st = self.s.mstatus;
                    let to = if st & mstatus::SPP != 0 { Privilege::Supervisor } else { Privilege::User };
                    st = if st & mstatus::SPIE != 0 { st | mstatus::SIE } else { st & !mstatus::SIE };
                    st |= mstatus::SPIE;
                    st &= !mstatus::SPP;
                    if to != Privilege::Machine {
                        st &= !mstatus::MPRV;
                    }
                    self.s.mstatus = st;
                    self.s.privilege = to;
                    self.s.pc = self.s.sepc;
                    self.s.reservation = None;
                    self.check_irq = true;
                    return Ok(());
                }
                0x3020_0073 => {
                    if p < Privilege::Machine {
                        return Err(illegal(raw));
                    }
                    let mut st = self.s.mstatus;
                    let to = Privilege::from_bits((st & mstatus::MPP) >> mstatus::MPP_SHIFT).unwrap_or(Privilege::User);
                    st = if st & mstatus::MPIE != 0 { st | mstatus::MIE } else { st & !mstatus::MIE };
                    st |= mstatus::MPIE;
                    st &= !mstatus::MPP;
                    if to != Privilege::Machine {
                        st &= !mstatus::MPRV;
                    }
                    self.s.mstatus = st;
                    self.s.privilege = to;
                    self.s.pc = self.s.mepc;
                    self.s.reservation = None;
                    self.check_irq = true;
                    return Ok(());
                }
                0x1050_0073 => {
                    if p == Privilege::User || (p == Privilege::Supervisor && self.s.mstatus & mstatus::TW != 0) {
                        return Err(illegal(raw));
                    }
                    self.s.pc = next;
                    if !self.wakeup_pending() {
                        self.s.waiting = true;
                        return Err(Stop::Exit(Exit::Wfi));
                    }
                    return Ok(());
                }
                _ if insn >> 25 == 0x09 => {
                    if p == Privilege::User || (p == Privilege::Supervisor && self.s.mstatus & mstatus::TVM != 0) {
                        return Err(illegal(raw));
                    }
                    self.tlb.flush_all();
                }
                _ => return Err(illegal(raw)),
            }
            self.s.pc = next;
            return Ok(());
        }
        // Zicsr
        let num = (insn >> 20) as u16;
        let src = if f3 & 4 != 0 { rs1 as u64 } else { self.x(rs1) };
        let op = f3 & 3;
        if op == 0 {
            return Err(illegal(raw));
        }
        let writes = op == 1 || rs1 != 0;
        // csrrw with rd = x0 does not read (no read side effects); a pure write still needs the access check,
        // which csr_write performs.
        let reads = op != 1 || rd != 0;
        let old = if reads { self.csr_read(num, bus)? } else { 0 };
        if writes {
            let new = match op {
                1 => src,
                2 => old | src,
                _ => old & !src,
            };
            self.csr_write(num, new)?;
        }
        self.wx(rd, old);
        self.s.pc = next;
        Ok(())
    }

    fn exec_amo(&mut self, ram: &GuestRam, insn: u32, raw: u32, next: u64) -> Step {
        let rd = (insn >> 7) & 31;
        let rs1 = (insn >> 15) & 31;
        let rs2 = (insn >> 20) & 31;
        let size: u64 = match (insn >> 12) & 7 {
            2 => 4,
            3 => 8,
            _ => return Err(illegal(raw)),
        };
        let addr = self.x(rs1);
        let f5 = insn >> 27;
        let read =
            |off: u64| if size == 4 { read_ram::<4>(ram, off) as i32 as i64 as u64 } else { read_ram::<8>(ram, off) };
        let write =
            |off: u64, v: u64| if size == 4 { write_ram::<4>(ram, off, v) } else { write_ram::<8>(ram, off, v) };
        match f5 {
            0x02 => {
                if rs2 != 0 {
                    return Err(illegal(raw));
                }
                let off = self.atomic_target(ram, addr, size, Access::Load)?;
                self.wx(rd, read(off));
                self.s.reservation = Some(off);
            }
            0x03 => {
                // Look the address up as a load first, so that a failing SC leaves no dirty mark.
                // Faults must still be reported as store/AMO faults: retry as a store when the lookup fails.
                let off = match self.atomic_target(ram, addr, size, Access::Load) {
                    Ok(off) => off,
                    Err(_) => self.atomic_target(ram, addr, size, Access::Store)?,
                };
                let ok = self.s.reservation == Some(off);
                if ok {
                    let off = self.atomic_target(ram, addr, size, Access::Store)?;
                    write(off, self.x(rs2));
                }
                self.s.reservation = None;
                self.wx(rd, (!ok) as u64);
            }
            _ => {
                let off = self.atomic_target(ram, addr, size, Access::Store)?;
                let old = read(off);
                let src = self.x(rs2);
                let (o, s) = if size == 4 { (old as i32 as i64, src as i32 as i64) } else { (old as i64, src as i64) };
                let (uo, us) = if size == 4 { (old as u32 as u64, src as u32 as u64) } else { (old, src) };
                let new = match f5 {
                    0x01 => src,
                    0x00 => old.wrapping_add(src),
                    0x04 => old ^ src,
                    0x0c => old & src,
                    0x08 => old | src,
                    0x10 => o.min(s) as u64,
                    0x14 => o.max(s) as u64,
                    0x18 => uo.min(us),
                    0x1c => uo.max(us),
                    _ => return Err(illegal(raw)),
                };
                write(off, new);
                self.wx(rd, old);
            }
        }
        self.s.pc = next;
        Ok(())
    }

    #[inline(always)]
    fn f32r(&self, r: u32) -> u32 {
        let v = self.s.f[r as usize];
        if v >> 32 == 0xffff_ffff {
            v as u32
        } else {
            F32_NAN
        }
    }

    #[inline(always)]
    fn f64r(&self, r: u32) -> u64 {
        self.s.f[r as usize]
    }

    #[inline(always)]
    fn wf32(&mut self, r: u32, v: u32) {
        self.s.f[r as usize] = 0xffff_ffff_0000_0000 | v as u64;
        self.mark_fs_dirty();
    }

    #[inline(always)]
    fn wf64(&mut self, r: u32, v: u64) {
        self.s.f[r as usize] = v;
        self.mark_fs_dirty();
    }

    #[inline(always)]
    fn fflags(&mut self, flags: u32) {
        if flags != 0 {
            self.s.fcsr |= flags as u64;
            self.mark_fs_dirty();
        }
    }

    fn rounding(&self, f3: u32, raw: u32) -> Result<Rounding, Stop> {
        let rm = if f3 == 7 { ((self.s.fcsr >> 5) & 7) as u32 } else { f3 };
        Rounding::from_bits(rm).ok_or(illegal(raw))
    }

    fn exec_fp(&mut self, ram: &GuestRam, bus: &mut dyn Bus, insn: u32, raw: u32, next: u64) -> Step {
        if self.s.mstatus & mstatus::FS == 0 {
            return Err(illegal(raw));
        }
        let rd = (insn >> 7) & 31;
        let f3 = (insn >> 12) & 7;
        let rs1 = (insn >> 15) & 31;
        let rs2 = (insn >> 20) & 31;
        let f7 = insn >> 25;
        match insn & 0x7f {
            0x07 => {
                let addr = self.x(rs1).wrapping_add(imm_i(insn));
                match f3 {
                    2 => {
                        let v = self.load::<4>(ram, bus, addr)? as u32;
                        self.wf32(rd, v);
                    }
                    3 => {
                        let v = self.load::<8>(ram, bus, addr)?;
                        self.wf64(rd, v);
                    }
                    _ => return Err(illegal(raw)),
                }
            }
            0x27 => {
                let addr = self.x(rs1).wrapping_add(imm_s(insn));
                let v = self.s.f[rs2 as usize];
                let mmio = match f3 {
                    2 => self.store::<4>(ram, bus, addr, v)?,
                    3 => self.store::<8>(ram, bus, addr, v)?,
                    _ => return Err(illegal(raw)),
                };
                if mmio {
                    self.s.pc = next;
                    return Err(Stop::Exit(Exit::MmioStore));
                }
            }
            op @ (0x43 | 0x47 | 0x4b | 0x4f) => {
                let rm = self.rounding(f3, raw)?;
                let rs3 = insn >> 27;
                let (neg_prod, neg_add) = match op {
                    0x43 => (false, false),
                    0x47 => (false, true),
                    0x4b => (true, false),
                    _ => (true, true),
                };
                match (insn >> 25) & 3 {
                    0 => {
                        let a = self.f32r(rs1) ^ if neg_prod { 1 << 31 } else { 0 };
                        let c = self.f32r(rs3) ^ if neg_add { 1 << 31 } else { 0 };
                        let (v, fl) = fpu::f32_mul_add(a, self.f32r(rs2), c, rm);
                        self.wf32(rd, v);
                        self.fflags(fl);
                    }
                    1 => {
                        let a = self.f64r(rs1) ^ if neg_prod { 1 << 63 } else { 0 };
                        let c = self.f64r(rs3) ^ if neg_add { 1 << 63 } else { 0 };
                        let (v, fl) = fpu::f64_mul_add(a, self.f64r(rs2), c, rm);
                        self.wf64(rd, v);
                        self.fflags(fl);
                    }
                    _ => return Err(illegal(raw)),
                }
            }
            _ => self.exec_op_fp(insn, raw, rd, f3, rs1, rs2, f7)?,
        }
        self.s.pc = next;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn exec_op_fp(&mut self, insn: u32, raw: u32, rd: u32, f3: u32, rs1: u32, rs2: u32, f7: u32) -> Result<(), Stop> {
        let _ = insn;
        macro_rules! arith {
            ($f:path, s) => {{
                let rm = self.rounding(f3, raw)?;
                let (v, fl) = $f(self.f32r(rs1), self.f32r(rs2), rm);
                self.wf32(rd, v);
                self.fflags(fl);
            }};
            ($f:path, d) => {{
                let rm = self.rounding(f3, raw)?;
                let (v, fl) = $f(self.f64r(rs1), self.f64r(rs2), rm);
                self.wf64(rd, v);
                self.fflags(fl);
            }};
        }
        match f7 {
            0x00 => arith!(fpu::f32_add, s),
            0x01 => arith!(fpu::f64_add, d),
            0x04 => arith!(fpu::f32_sub, s),
            0x05 => arith!(fpu::f64_sub, d),
            0x08 => arith!(fpu::f32_mul, s),
            0x09 => arith!(fpu::f64_mul, d),
            0x0c => arith!(fpu::f32_div, s),
            0x0d => arith!(fpu::f64_div, d),
            0x2c if rs2 == 0 => {
                let rm = self.rounding(f3, raw)?;
                let (v, fl) = fpu::f32_sqrt(self.f32r(rs1), rm);
                self.wf32(rd, v);
                self.fflags(fl);
            }
            0x2d if rs2 == 0 => {
                let rm = self.rounding(f3, raw)?;
                let (v, fl) = fpu::f64_sqrt(self.f64r(rs1), rm);
                self.wf64(rd, v);
                self.fflags(fl);
            }
            0x10 => {
                let (a, b) = (self.f32r(rs1), self.f32r(rs2));
                let sign = match f3 {
                    0 => b,
                    1 => !b,
                    2 => a ^ b,
                    _ => return Err(illegal(raw)),
                } & (1 << 31);
                self.wf32(rd, (a & !(1 << 31)) | sign);
            }
            0x11 => {
                let (a, b) = (self.f64r(rs1), self.f64r(rs2));
                let sign = match f3 {
                    0 => b,
                    1 => !b,
                    2 => a ^ b,
                    _ => return Err(illegal(raw)),
                } & (1 << 63);
                self.wf64(rd, (a & !(1 << 63)) | sign);
            }
            0x14 => {
                let (v, fl) = match f3 {
                    0 => fpu::f32_min(self.f32r(rs1), self.f32r(rs2)),
                    1 => fpu::f32_max(self.f32r(rs1), self.f32r(rs2)),
                    _ => return Err(illegal(raw)),
                };
                self.wf32(rd, v);
                self.fflags(fl);
            }
            0x15 => {
                let (v, fl) = match f3 {
                    0 => fpu::f64_min(self.f64r(rs1), self.f64r(rs2)),
                    1 => fpu::f64_max(self.f64r(rs1), self.f64r(rs2)),
                    _ => return Err(illegal(raw)),
                };
                self.wf64(rd, v);
                self.fflags(fl);
            }
            0x20 if rs2 == 1 => {
                let rm = self.rounding(f3, raw)?;
                let (v, fl) = fpu::f64_to_f32(self.f64r(rs1), rm);
                self.wf32(rd, v);
                self.fflags(fl);
            }
            0x21 if rs2 == 0 => {
                let (v, fl) = fpu::f32_to_f64(self.f32r(rs1));
                self.wf64(rd, v);
                self.fflags(fl);
            }
            0x50 | 0x51 => {
                let (v, fl) = match (f7, f3) {
                    (0x50, 0) => fpu::f32_le(self.f32r(rs1), self.f32r(rs2)),
                    (0x50, 1) => fpu::f32_lt(self.f32r(rs1), self.f32r(rs2)),
                    (0x50, 2) => fpu::f32_eq(self.f32r(rs1), self.f32r(rs2)),
                    (0x51, 0) => fpu::f64_le(self.f64r(rs1), self.f64r(rs2)),
                    (0x51, 1) => fpu::f64_lt(self.f64r(rs1), self.f64r(rs2)),
                    (0x51, 2) => fpu::f64_eq(self.f64r(rs1), self.f64r(rs2)),
                    _ => return Err(illegal(raw)),
                };
                self.wx(rd, v as u64);
                self.fflags(fl);
            }
            0x60 | 0x61 => {
                let rm = self.rounding(f3, raw)?;
                let (v, fl) = match (f7, rs2) {
                    (0x60, 0) => fpu::f32_to_i32(self.f32r(rs1), rm),
                    (0x60, 1) => fpu::f32_to_u32(self.f32r(rs1), rm),
                    (0x60, 2) => fpu::f32_to_i64(self.f32r(rs1), rm),
                    (0x60, 3) => fpu::f32_to_u64(self.f32r(rs1), rm),
                    (0x61, 0) => fpu::f64_to_i32(self.f64r(rs1), rm),
                    (0x61, 1) => fpu::f64_to_u32(self.f64r(rs1), rm),
                    (0x61, 2) => fpu::f64_to_i64(self.f64r(rs1), rm),
                    (0x61, 3) => fpu::f64_to_u64(self.f64r(rs1), rm),
                    _ => return Err(illegal(raw)),
                };
                self.wx(rd, v);
                self.fflags(fl);
            }
            0x68 => {
                let rm = self.rounding(f3, raw)?;
                let a = self.x(rs1);
                let (v, fl) = match rs2 {
                    0 => fpu::i32_to_f32(a as i32, rm),
                    1 => fpu::u32_to_f32(a as u32, rm),
                    2 => fpu::i64_to_f32(a as i64, rm),
                    3 => fpu::u64_to_f32(a, rm),
                    _ => return Err(illegal(raw)),
                };
                self.wf32(rd, v);
                self.fflags(fl);
            }
            0x69 => {
                let rm = self.rounding(f3, raw)?;
                let a = self.x(rs1);
                let (v, fl) = match rs2 {
                    0 => fpu::i32_to_f64(a as i32, rm),
                    1 => fpu::u32_to_f64(a as u32, rm),
                    2 => fpu::i64_to_f64(a as i64, rm),
                    3 => fpu::u64_to_f64(a, rm),
                    _ => return Err(illegal(raw)),
                };
                self.wf64(rd, v);
                self.fflags(fl);
            }
            0x70 if rs2 == 0 && f3 == 0 => self.wx(rd, self.s.f[rs1 as usize] as u32 as i32 as i64 as u64),
            0x70 if rs2 == 0 && f3 == 1 => self.wx(rd, fpu::f32_classify(self.f32r(rs1))),
            0x71 if rs2 == 0 && f3 == 0 => self.wx(rd, self.f64r(rs1)),
            0x71 if rs2 == 0 && f3 == 1 => self.wx(rd, fpu::f64_classify(self.f64r(rs1))),
            0x78 if rs2 == 0 && f3 == 0 => self.wf32(rd, self.x(rs1) as u32),
            0x79 if rs2 == 0 && f3 == 0 => self.wf64(rd, self.x(rs1)),
            _ => return Err(illegal(raw)),
        }
        Ok(())
    }
}

#[inline(always)]
fn div_s(a: u64, b: u64) -> u64 {
    let (a, b) = (a as i64, b as i64);
    if b == 0 {
        u64::MAX
    } else {
        a.wrapping_div(b) as u64
    }
}

#[inline(always)]
fn rem_s(a: u64, b: u64) -> u64 {
    let (a, b) = (a as i64, b as i64);
    if b == 0 {
        a as u64
    } else {
        a.wrapping_rem(b) as u64
    }
}
