//! The interpreter: runs decoded blocks (`block.rs`, `decode.rs`).
//!
//! `execute` looks up the block at the pc and runs its instructions with `run_ops`, one `match` on the decoded
//! kind each. Interrupts are checked and the budget is counted per block; `instret` is added per block too, and
//! brought up to date before a SYSTEM instruction (which may read or write it) runs. Nothing that can make an
//! interrupt pending (a CSR write, xRET, a trap) happens anywhere but at the end of a block, so checking at block
//! boundaries takes interrupts exactly where a per-instruction check would. A block is cut short where the
//! budget ends, so `run` never overshoots it. An exception in the middle of a block leaves the pc at the
//! faulting instruction and `instret` counting the instructions before it; a store that wrote to a code page
//! ends the block right after itself. An MMIO store ends the block by leaving `run`; an MMIO load need not end
//! it: the bus cannot reach the hart, and interrupt lines change only between runs.

use crate::block::{CodeCache, Fetched, PendingLink};
use crate::csr::mstatus;
use crate::decode::{Kind, Op};
use crate::fpu::{self, Rounding};
use crate::hart::{cause, Bus, Engine, Exception, Exit, Hart, Privilege, Stop};
use crate::jit::{self, JitCode, JitCtx};
use crate::memory::GuestRam;
use crate::mmu::{read_ram, write_ram, Access};
use std::sync::atomic::Ordering;
use std::sync::Arc;

type Step = Result<(), Stop>;

#[inline(always)]
fn illegal(raw: u32) -> Stop {
    Stop::Exception(Exception { cause: cause::ILLEGAL, tval: raw as u64 })
}

#[inline(always)]
fn imm_i(i: u32) -> u64 {
    ((i as i32) >> 20) as i64 as u64
}

#[inline(always)]
fn imm_s(i: u32) -> u64 {
    ((((i as i32) >> 25) << 5) as i64 as u64) | ((i >> 7) & 0x1f) as u64
}

const F32_NAN: u32 = fpu::F32_CANONICAL_NAN;

impl Hart {
    pub(crate) fn execute(&mut self, code: &mut CodeCache, ram: &GuestRam, bus: &mut dyn Bus, budget: u64) -> Exit {
        self.end_block = false;
        let mut left = budget;
        while left > 0 {
            if self.check_irq {
                self.check_irq = false;
                if let Some(i) = self.pending_interrupt() {
                    if let Some(exit) = self.take_trap(i as u64, 0, true) {
                        return exit;
                    }
                }
            }
            if self.exit_word.load(Ordering::Relaxed) {
                break;
            }
            let pc = self.s.pc;
            let (attempted, result) = match self.lookup(code, ram, pc) {
                Ok(Fetched::Block(id, start, end)) => self.run_block(code, ram, bus, id, start, end, pc, left),
                Ok(Fetched::Single(op)) => self.run_ops(ram, bus, &[op], pc),
                Err(e) => {
                    left -= 1;
                    if let Some(exit) = self.take_trap(e.cause, e.tval, false) {
                        return exit;
                    }
                    continue;
                }
            };
            left -= attempted;
            match result {
                Ok(()) => {}
                Err(Stop::Exception(e)) => {
                    if let Some(exit) = self.take_trap(e.cause, e.tval, false) {
                        return exit;
                    }
                }
                Err(Stop::Exit(exit)) => return exit,
            }
        }
        Exit::Budget
    }

    /// Runs block `id` (its ops are `code.ops(start, end)`, the first at `vpc`) with `left` instructions of
    /// budget: its host code if it has some and all of it fits, else the interpreter (cut to the budget).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn run_block(
        &mut self,
        code: &mut CodeCache,
        ram: &GuestRam,
        bus: &mut dyn Bus,
        id: u32,
        start: usize,
        end: usize,
        vpc: u64,
        left: u64,
    ) -> (u64, Step) {
        let link = code.pending_link.take();
        if self.engine == Engine::Jit {
            if let Some(JitCode::Compiled { offset, chained, ops }) = code.compiled(id, self.jit_threshold) {
                // The last block's exit went straight here: make it jump here itself from now on.
                if let Some(link) = link.filter(|l| l.pc == vpc && l.generation == code.jit.generation) {
                    code.jit.link(link.at, chained);
                }
                if ops as u64 <= left {
                    return self.run_compiled(code, ram, bus, offset, id, vpc, left);
                }
            }
        }
        let cut = end.min(start.saturating_add(usize::try_from(left).unwrap_or(usize::MAX)));
        self.run_ops(ram, bus, code.ops(start, cut), vpc)
    }

    /// Runs the host code at `offset` of block `id` (and the blocks it chains to), then, if one fell back, the
    /// rest of that block in the interpreter (cut to the budget). Same results as [`Hart::run_ops`] over the
    /// same instructions.
    #[allow(clippy::too_many_arguments)]
    fn run_compiled(
        &mut self,
        code: &mut CodeCache,
        ram: &GuestRam,
        bus: &mut dyn Bus,
        offset: u32,
        id: u32,
        vpc: u64,
        left: u64,
    ) -> (u64, Step) {
        let mut ctx = JitCtx {
            x: self.s.x.as_mut_ptr(),
            ram: ram.host_ptr(),
            load_tlb: self.tlb.load_entries(),
            store_tlb: self.tlb.store_entries(),
            tag: self.data_tag(),
            vpc,
            exit: Arc::as_ptr(&self.exit_word),
            left,
            retired: 0,
            pc: 0,
            block: id as u64,
            index: 0,
            link: 0,
        };
        let status = code.jit.call(offset, &mut ctx);
        let n = ctx.retired;
        self.retire(n as usize);
        match status {
            jit::DONE => {
                self.s.pc = ctx.pc;
                if ctx.link != 0 {
                    code.pending_link = Some(PendingLink { at: ctx.link, pc: ctx.pc, generation: code.jit.generation });
                }
                (n, Ok(()))
            }
            _ => {
                let (start, end) = code.block_ops(ctx.block as u32);
                let vpc = ctx.vpc;
                let i = start + ctx.index as usize;
                let cut = end.min(i + (left - n) as usize);
                if i == cut {
                    self.s.pc = vpc.wrapping_add(code.ops(i, i + 1)[0].off as u64);
                    return (n, Ok(()));
                }
                let (attempted, result) = self.run_ops(ram, bus, code.ops(i, cut), vpc);
                (n + attempted, result)
            }
        }
    }

    #[inline(always)]
    fn retire(&mut self, n: usize) {
        self.s.instret = self.s.instret.wrapping_add(n as u64);
    }

    /// Runs `ops` (a block or its beginning; never empty), whose first instruction is at virtual address `vpc`.
    /// Returns how many instructions it attempted (those that retired, and the one that stopped it, if any)
    /// and why it stopped early. On return the pc and `instret` are up to date: at the faulting instruction
    /// after an exception, after the last instruction otherwise (or wherever it jumped).
    #[inline(always)]
    fn run_ops(&mut self, ram: &GuestRam, bus: &mut dyn Bus, ops: &[Op], vpc: u64) -> (u64, Step) {
        // Privilege and mstatus change only at the end of a block.
        let data_tag = self.data_tag();
        for (i, op) in ops.iter().enumerate() {
            let pc = vpc.wrapping_add(op.off as u64);
            let next = pc.wrapping_add(op.len as u64);
            let imm = op.imm as i64 as u64;
            let (rd, rs1, rs2) = (op.rd as u32, op.rs1 as u32, op.rs2 as u32);
            let done = i as u64 + 1;
            // The instruction did not complete: it traps (or exits) where it is.
            macro_rules! stop {
                ($e:expr) => {{
                    self.s.pc = pc;
                    self.retire(i);
                    return (done, Err($e.into()));
                }};
            }
            // The instruction completed and the block ends with it.
            macro_rules! end {
                ($target:expr, $result:expr) => {{
                    self.s.pc = $target;
                    self.retire(i + 1);
                    return (done, $result);
                }};
            }
            macro_rules! branch {
                ($cond:expr) => {
                    end!(if $cond { pc.wrapping_add(imm) } else { next }, Ok(()))
                };
            }
            macro_rules! load {
                ($n:literal, $extend:ty) => {{
                    match self.load_in::<$n>(ram, bus, self.x(rs1).wrapping_add(imm), data_tag) {
                        Ok(v) => self.wx(rd, v as $extend as i64 as u64),
                        Err(e) => stop!(e),
                    }
                }};
            }
            macro_rules! store {
                ($n:literal) => {{
                    match self.store_in::<$n>(ram, bus, self.x(rs1).wrapping_add(imm), self.x(rs2), data_tag) {
                        Ok(false) => {
                            if self.end_block {
                                self.end_block = false;
                                end!(next, Ok(()));
                            }
                        }
                        Ok(true) => end!(next, Err(Stop::Exit(Exit::MmioStore))),
                        Err(e) => stop!(e),
                    }
                }};
            }
            // ALU kinds never have rd = x0 (the decoder makes those `Nop`).
            macro_rules! alu {
                ($v:expr) => {{
                    let v = $v;
                    self.s.x[(rd & 31) as usize] = v;
                }};
            }
            let a = self.x(rs1);
            let b = self.x(rs2);
            match op.kind {
                Kind::Nop => {}
                Kind::Lui => alu!(imm),
                Kind::Auipc => alu!(pc.wrapping_add(imm)),
                Kind::Jal => {
                    self.wx(rd, next);
                    end!(pc.wrapping_add(imm), Ok(()))
                }
                Kind::Jalr => {
                    let target = a.wrapping_add(imm) & !1;
                    self.wx(rd, next);
                    end!(target, Ok(()))
                }
                Kind::Beq => branch!(a == b),
                Kind::Bne => branch!(a != b),
                Kind::Blt => branch!((a as i64) < (b as i64)),
                Kind::Bge => branch!((a as i64) >= (b as i64)),
                Kind::Bltu => branch!(a < b),
                Kind::Bgeu => branch!(a >= b),
                Kind::Lb => load!(1, i8),
                Kind::Lh => load!(2, i16),
                Kind::Lw => load!(4, i32),
                Kind::Ld => load!(8, i64),
                Kind::Lbu => load!(1, u8),
                Kind::Lhu => load!(2, u16),
                Kind::Lwu => load!(4, u32),
                Kind::Sb => store!(1),
                Kind::Sh => store!(2),
                Kind::Sw => store!(4),
                Kind::Sd => store!(8),
                Kind::Addi => alu!(a.wrapping_add(imm)),
                Kind::Slti => alu!(((a as i64) < (imm as i64)) as u64),
                Kind::Sltiu => alu!((a < imm) as u64),
                Kind::Xori => alu!(a ^ imm),
                Kind::Ori => alu!(a | imm),
                Kind::Andi => alu!(a & imm),
                Kind::Slli => alu!(a << (imm & 63)),
                Kind::Srli => alu!(a >> (imm & 63)),
                Kind::Srai => alu!(((a as i64) >> (imm & 63)) as u64),
                Kind::Addiw => alu!((a as i32).wrapping_add(imm as i32) as i64 as u64),
                Kind::Slliw => alu!(((a as u32) << (imm & 31)) as i32 as i64 as u64),
                Kind::Srliw => alu!(((a as u32) >> (imm & 31)) as i32 as i64 as u64),
                Kind::Sraiw => alu!(((a as i32) >> (imm & 31)) as i64 as u64),
                Kind::Add => alu!(a.wrapping_add(b)),
                Kind::Sub => alu!(a.wrapping_sub(b)),
                Kind::Sll => alu!(a << (b & 63)),
                Kind::Slt => alu!(((a as i64) < (b as i64)) as u64),
                Kind::Sltu => alu!((a < b) as u64),
                Kind::Xor => alu!(a ^ b),
                Kind::Srl => alu!(a >> (b & 63)),
                Kind::Sra => alu!(((a as i64) >> (b & 63)) as u64),
                Kind::Or => alu!(a | b),
                Kind::And => alu!(a & b),
                Kind::Mul => alu!(a.wrapping_mul(b)),
                Kind::Mulh => alu!(((a as i64 as i128 * b as i64 as i128) >> 64) as u64),
                Kind::Mulhsu => alu!(((a as i64 as i128 * b as u128 as i128) >> 64) as u64),
                Kind::Mulhu => alu!(((a as u128 * b as u128) >> 64) as u64),
                Kind::Div => alu!(div_s(a, b)),
                Kind::Divu => alu!(a.checked_div(b).unwrap_or(u64::MAX)),
                Kind::Rem => alu!(rem_s(a, b)),
                Kind::Remu => alu!(a.checked_rem(b).unwrap_or(a)),
                Kind::Addw => alu!((a as i32).wrapping_add(b as i32) as i64 as u64),
                Kind::Subw => alu!((a as i32).wrapping_sub(b as i32) as i64 as u64),
                Kind::Sllw => alu!(((a as u32) << (b & 31)) as i32 as i64 as u64),
                Kind::Srlw => alu!(((a as u32) >> (b & 31)) as i32 as i64 as u64),
                Kind::Sraw => alu!(((a as i32) >> (b & 31)) as i64 as u64),
                Kind::Mulw => alu!((a as i32).wrapping_mul(b as i32) as i64 as u64),
                Kind::Divw => alu!(divw(a as i32, b as i32) as i64 as u64),
                Kind::Divuw => alu!((a as u32).checked_div(b as u32).unwrap_or(u32::MAX) as i32 as i64 as u64),
                Kind::Remw => alu!(remw(a as i32, b as i32) as i64 as u64),
                Kind::Remuw => alu!((a as u32).checked_rem(b as u32).unwrap_or(a as u32) as i32 as i64 as u64),
                Kind::FenceI => end!(next, Ok(())),
                Kind::Fp | Kind::Amo => {
                    self.s.pc = pc;
                    let insn = op.imm as u32;
                    let r = if op.kind == Kind::Fp {
                        self.exec_fp(ram, bus, insn, op.raw, next)
                    } else {
                        self.exec_amo(ram, insn, op.raw, next)
                    };
                    match r {
                        Ok(()) => {
                            if self.end_block {
                                self.end_block = false;
                                end!(next, Ok(()));
                            }
                        }
                        // An FP store to MMIO: it completed.
                        Err(Stop::Exit(exit)) => end!(next, Err(Stop::Exit(exit))),
                        Err(e) => stop!(e),
                    }
                }
                Kind::System => {
                    // It may read or write instret: count what ran before it.
                    self.s.pc = pc;
                    self.retire(i);
                    let r = self.exec_system(bus, op.imm as u32, op.raw, next);
                    match r {
                        // ecall to the VMM's SBI completes when the VMM steps over it; an exception retires nothing.
                        Err(Stop::Exit(Exit::Sbi)) | Err(Stop::Exception(_)) => {}
                        // Done, or done and waiting (wfi).
                        Ok(()) | Err(Stop::Exit(_)) => self.retire(1),
                    }
                    return (done, r);
                }
                Kind::Illegal => stop!(illegal(op.raw)),
            }
        }
        // The block ran to its end (a page boundary) or to where the budget cut it.
        let last = ops[ops.len() - 1];
        self.s.pc = vpc.wrapping_add(last.off as u64).wrapping_add(last.len as u64);
        self.retire(ops.len());
        (ops.len() as u64, Ok(()))
    }

    #[inline(always)]
    fn x(&self, r: u32) -> u64 {
        self.s.x[(r & 31) as usize]
    }

    #[inline(always)]
    fn wx(&mut self, r: u32, v: u64) {
        if r != 0 {
            self.s.x[(r & 31) as usize] = v;
        }
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
fn divw(a: i32, b: i32) -> i32 {
    if b == 0 {
        -1
    } else {
        a.wrapping_div(b)
    }
}

#[inline(always)]
fn remw(a: i32, b: i32) -> i32 {
    if b == 0 {
        a
    } else {
        a.wrapping_rem(b)
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
