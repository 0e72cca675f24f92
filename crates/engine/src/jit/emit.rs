//! x86-64 code generation for one block (see `mod.rs` for what compiled code may and may not do).
//!
//! Register use: r15 holds the [`JitCtx`], r14 the guest register file; rax, rcx, rdx, rsi and rdi are
//! scratch; up to eight guest registers (the ones the block uses most) live in rbx, rbp, r8-r13 from the
//! prologue to each exit, where those the block wrote so far are stored back. The common ALU ops work in place
//! on rd's host register (`rd = rs1; rd op= rs2`) and branches compare host registers directly; every other op
//! is compiled as "load the operands into scratch registers, compute, write the result": simple, and the
//! moves are nearly free. The code calls nothing, so it needs no stack alignment and no caller-saved spills.
//!
//! A block that branches back to its own start goes round without leaving host code: its registers stay in
//! host registers (so each of its exits stores every register the block writes anywhere), and the exit word
//! and the budget are checked each time round, as at the chained entry.
//!
//! A load or store computes its address, looks the page up in the load or store TLB the way `mmu.rs` does
//! (tag = virtual page number | context bits), checks that the access stays inside the page, and on any
//! mismatch jumps to a *fallback stub* of its op, which stores the written registers back and returns
//! [`FALLBACK`] with the op's index.
//!
//! Layout of a block: the dispatcher's entry (saves the callee-saved registers, loads r14/r15), then the
//! *chained* entry, where linked exits of other blocks jump (exit word and budget checks, the block's id, its
//! registers loaded), the body, its exits, the fallback stubs. An exit to a static target in the same page
//! ends with a 5-byte `jmp rel32` to the next instruction, which returns to the dispatcher and tells it where
//! that jump is (`JitCtx::link`); linking patches the jump to the target's chained entry.

// dynasm's dynamic-register operands (`Rq(reg)`) expand to `reg.into()`.
#![allow(clippy::useless_conversion)]

use std::mem::offset_of;

use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler};

use super::{JitCtx, DONE, FALLBACK};
use crate::decode::{Kind, Op};
use crate::mmu::{TLB_ENTRY_SIZE, TLB_SIZE};

type Assembler = VecAssembler<X64Relocation>;

const RAX: u8 = 0;
const RCX: u8 = 1;
const RSI: u8 = 6;
/// Host registers that hold guest registers.
const POOL: [u8; 8] = [3, 5, 8, 9, 10, 11, 12, 13];

const CTX_X: i32 = offset_of!(JitCtx, x) as i32;
const CTX_RAM: i32 = offset_of!(JitCtx, ram) as i32;
const CTX_LOAD_TLB: i32 = offset_of!(JitCtx, load_tlb) as i32;
const CTX_STORE_TLB: i32 = offset_of!(JitCtx, store_tlb) as i32;
const CTX_TAG: i32 = offset_of!(JitCtx, tag) as i32;
const CTX_VPC: i32 = offset_of!(JitCtx, vpc) as i32;
const CTX_EXIT: i32 = offset_of!(JitCtx, exit) as i32;
const CTX_LEFT: i32 = offset_of!(JitCtx, left) as i32;
const CTX_RETIRED: i32 = offset_of!(JitCtx, retired) as i32;
const CTX_PC: i32 = offset_of!(JitCtx, pc) as i32;
const CTX_BLOCK: i32 = offset_of!(JitCtx, block) as i32;
const CTX_INDEX: i32 = offset_of!(JitCtx, index) as i32;
const CTX_LINK: i32 = offset_of!(JitCtx, link) as i32;

const _: () = assert!(TLB_ENTRY_SIZE == 16, "the TLB lookup scales the index by 16");

/// The guest registers `op` reads and the one it writes (x0 included; the caller ignores it).
fn operands(op: &Op) -> ([Option<u8>; 2], Option<u8>) {
    use Kind::*;
    let (rd, rs1, rs2) = (Some(op.rd), Some(op.rs1), Some(op.rs2));
    match op.kind {
        Nop | FenceI | Fp | Amo | System | Illegal => ([None, None], None),
        Lui | Auipc | Jal => ([None, None], rd),
        Beq | Bne | Blt | Bge | Bltu | Bgeu | Sb | Sh | Sw | Sd => ([rs1, rs2], None),
        Jalr | Lb | Lh | Lw | Ld | Lbu | Lhu | Lwu | Addi | Slti | Sltiu | Xori | Ori | Andi | Slli | Srli | Srai
        | Addiw | Slliw | Srliw | Sraiw => ([rs1, None], rd),
        _ => ([rs1, rs2], rd),
    }
}

struct Emitter {
    a: Assembler,
    /// Host register of each guest register kept in one.
    host: [Option<u8>; 32],
    /// Guest registers written so far (bit per register).
    written: u32,
    /// Fallback stubs still to emit: label, op index, registers written before the op.
    fallbacks: Vec<(DynamicLabel, usize, u32)>,
    /// Byte offset of the block's first instruction in its page.
    page_off: i64,
    /// Compiled ops (what must fit in the budget for the block to start or go round again).
    ops: usize,
    /// Where the body starts, guest registers loaded (a branch back to the block's start jumps here).
    body: Option<DynamicLabel>,
}

/// Whether `op` jumps back to the first instruction of its block (a loop of one block).
fn loops_back(op: &Op) -> bool {
    use Kind::*;
    matches!(op.kind, Beq | Bne | Blt | Bge | Bltu | Bgeu | Jal) && op.off as i64 + op.imm as i64 == 0
}

/// Compiles `ops` (the first ops of block `id`, `block_len` long, all of which [`super::compiles`]), whose
/// first instruction is at byte `page_off` of its page, for the address `base`. Returns the machine code and
/// the offset of its chained entry, or `None` if the assembler refused it.
pub(super) fn compile(ops: &[Op], block_len: usize, base: usize, id: u32, page_off: u64) -> Option<(Vec<u8>, usize)> {
    let mut e = Emitter {
        a: Assembler::new(base),
        host: [None; 32],
        written: 0,
        fallbacks: Vec::new(),
        page_off: page_off as i64,
        ops: ops.len(),
        body: None,
    };
    e.allocate(ops);
    if ops.iter().any(loops_back) {
        // Going round again keeps the guest registers in host registers without storing them: so every exit
        // stores all those the block writes anywhere (the host registers hold their current values).
        e.written = ops.iter().filter_map(|op| operands(op).1).fold(0, |w, r| w | 1 << r) & !1;
    }
    let chained = e.prologue(ops.len(), id);
    for (i, op) in ops.iter().enumerate() {
        if e.op(i, op) {
            return e.finish().map(|code| (code, chained));
        }
    }
    if ops.len() < block_len {
        // The next op is one the interpreter runs.
        let label = e.a.new_dynamic_label();
        e.fallbacks.push((label, ops.len(), e.written));
        dynasm!(e.a ; .arch x64 ; jmp =>label);
    } else {
        // The block ends at the end of its page.
        let last = ops[ops.len() - 1];
        e.pc_plus(RAX, last.off as i64 + last.len as i64);
        e.exit(ops.len());
    }
    e.finish().map(|code| (code, chained))
}

impl Emitter {
    /// Keeps the most used guest registers of the block in host registers.
    fn allocate(&mut self, ops: &[Op]) {
        let mut uses = [0u32; 32];
        for op in ops {
            let (reads, write) = operands(op);
            for r in reads.into_iter().chain([write]).flatten() {
                uses[r as usize] += 1;
            }
        }
        let mut regs: Vec<usize> = (1..32).filter(|&r| uses[r] > 0).collect();
        regs.sort_by_key(|&r| std::cmp::Reverse(uses[r]));
        for (&g, &h) in regs.iter().zip(POOL.iter()) {
            self.host[g] = Some(h);
        }
    }

    /// The entries (see the module docs) of a block of `n` compiled ops; returns the offset of the chained one.
    fn prologue(&mut self, n: usize, id: u32) -> usize {
        let bail = self.a.new_dynamic_label();
        let body = self.a.new_dynamic_label();
        dynasm!(self.a
            ; .arch x64
            ; push rbx
            ; push rbp
            ; push r12
            ; push r13
            ; push r14
            ; push r15
            ; mov r15, rdi
            ; mov r14, QWORD [r15 + CTX_X]
        );
        let chained = self.a.offset().0;
        self.stop_unless_it_fits(n, bail);
        dynasm!(self.a ; .arch x64 ; mov QWORD [r15 + CTX_BLOCK], id as i32);
        for g in 1..32 {
            if let Some(h) = self.host[g] {
                let disp = 8 * g as i32;
                dynasm!(self.a ; .arch x64 ; mov Rq(h), QWORD [r14 + disp]);
            }
        }
        // Not started: the dispatcher goes on at this block.
        dynasm!(self.a
            ; .arch x64
            ; jmp =>body
            ; =>bail
            ; mov rax, QWORD [r15 + CTX_VPC]
            ; mov QWORD [r15 + CTX_PC], rax
            ; mov QWORD [r15 + CTX_LINK], 0
        );
        self.epilogue(DONE);
        dynasm!(self.a ; .arch x64 ; =>body);
        self.body = Some(body);
        chained
    }

    /// Jumps to `stop` if the exit word is set or fewer than `n` instructions of the budget are left (checked
    /// before a block starts or goes round again: all of its compiled part must fit).
    fn stop_unless_it_fits(&mut self, n: usize, stop: DynamicLabel) {
        dynasm!(self.a
            ; .arch x64
            ; mov rax, QWORD [r15 + CTX_EXIT]
            ; cmp BYTE [rax], 0
            ; jne =>stop
            ; mov rax, QWORD [r15 + CTX_LEFT]
            ; sub rax, QWORD [r15 + CTX_RETIRED]
            ; cmp rax, n as i32
            ; jb =>stop
        );
    }

    /// `reg` = guest register `g`.
    fn get(&mut self, g: u8, reg: u8) {
        if g == 0 {
            dynasm!(self.a ; .arch x64 ; xor Rd(reg), Rd(reg));
        } else if let Some(h) = self.host[g as usize] {
            dynasm!(self.a ; .arch x64 ; mov Rq(reg), Rq(h));
        } else {
            let disp = 8 * g as i32;
            dynasm!(self.a ; .arch x64 ; mov Rq(reg), QWORD [r14 + disp]);
        }
    }

    /// Guest register `g` = `reg` (nothing for x0).
    fn set(&mut self, g: u8, reg: u8) {
        if g == 0 {
            return;
        }
        if let Some(h) = self.host[g as usize] {
            dynasm!(self.a ; .arch x64 ; mov Rq(h), Rq(reg));
        } else {
            let disp = 8 * g as i32;
            dynasm!(self.a ; .arch x64 ; mov QWORD [r14 + disp], Rq(reg));
        }
        self.written |= 1 << g;
    }

    /// `reg` = the block's virtual pc + `c`.
    fn pc_plus(&mut self, reg: u8, c: i64) {
        dynasm!(self.a ; .arch x64 ; mov Rq(reg), QWORD [r15 + CTX_VPC]);
        if let Ok(c) = i32::try_from(c) {
            dynasm!(self.a ; .arch x64 ; add Rq(reg), c);
        } else {
            dynasm!(self.a ; .arch x64 ; mov rdx, QWORD c ; add Rq(reg), rdx);
        }
    }

    /// Stores the guest registers in `written` that live in host registers.
    fn write_back(&mut self, written: u32) {
        for g in 1..32 {
            if let (Some(h), true) = (self.host[g], written & (1 << g) != 0) {
                let disp = 8 * g as i32;
                dynasm!(self.a ; .arch x64 ; mov QWORD [r14 + disp], Rq(h));
            }
        }
    }

    fn epilogue(&mut self, code: u64) {
        dynasm!(self.a
            ; .arch x64
            ; mov eax, code as i32
            ; pop r15
            ; pop r14
            ; pop r13
            ; pop r12
            ; pop rbp
            ; pop rbx
            ; ret
        );
    }

    /// Ends the block with the next pc in rax, `retired` instructions done.
    fn exit(&mut self, retired: usize) {
        dynasm!(self.a ; .arch x64 ; mov QWORD [r15 + CTX_PC], rax);
        self.write_back(self.written);
        dynasm!(self.a
            ; .arch x64
            ; add QWORD [r15 + CTX_RETIRED], retired as i32
            ; mov QWORD [r15 + CTX_LINK], 0
        );
        self.epilogue(DONE);
    }

    /// Ends the block, `retired` instructions done, going on at the block's pc + `delta`: through a linkable
    /// jump if that is in the same page.
    fn exit_to(&mut self, retired: usize, delta: i64) {
        if let (0, Some(body)) = (delta, self.body) {
            self.loop_back(retired, body);
            return;
        }
        if !(0..4096).contains(&(self.page_off + delta)) {
            self.pc_plus(RAX, delta);
            self.exit(retired);
            return;
        }
        let jump_end = self.a.new_dynamic_label();
        self.write_back(self.written);
        dynasm!(self.a
            ; .arch x64
            ; add QWORD [r15 + CTX_RETIRED], retired as i32
            ; add QWORD [r15 + CTX_VPC], delta as i32
            // The linkable jump (rel32, to the next instruction until linked).
            ; jmp =>jump_end
            ; =>jump_end
            ; lea rax, [=>jump_end]
            ; mov QWORD [r15 + CTX_LINK], rax
            ; mov rax, QWORD [r15 + CTX_VPC]
            ; mov QWORD [r15 + CTX_PC], rax
        );
        self.epilogue(DONE);
    }

    /// Goes round the block again (`retired` instructions done), registers kept in host registers, with the
    /// checks of the chained entry (the exit word, the budget for all of the compiled part); else returns to
    /// the dispatcher at the block's start.
    fn loop_back(&mut self, retired: usize, body: DynamicLabel) {
        let stop = self.a.new_dynamic_label();
        dynasm!(self.a ; .arch x64 ; add QWORD [r15 + CTX_RETIRED], retired as i32);
        self.stop_unless_it_fits(self.ops, stop);
        dynasm!(self.a ; .arch x64 ; jmp =>body ; =>stop);
        self.write_back(self.written);
        dynasm!(self.a
            ; .arch x64
            ; mov rax, QWORD [r15 + CTX_VPC]
            ; mov QWORD [r15 + CTX_PC], rax
            ; mov QWORD [r15 + CTX_LINK], 0
        );
        self.epilogue(DONE);
    }

    fn finish(mut self) -> Option<Vec<u8>> {
        for (label, index, written) in std::mem::take(&mut self.fallbacks) {
            dynasm!(self.a ; .arch x64 ; =>label);
            self.write_back(written);
            dynasm!(self.a
                ; .arch x64
                ; add QWORD [r15 + CTX_RETIRED], index as i32
                ; mov QWORD [r15 + CTX_INDEX], index as i32
            );
            self.epilogue(FALLBACK);
        }
        self.a.finalize().ok()
    }

    /// rax = the host address of `op`'s data access of `size` bytes at x[rs1] + imm, through the load or
    /// store TLB; jumps to the op's fallback stub when the TLB does not have it or it crosses its page.
    fn address(&mut self, i: usize, op: &Op, size: i32, store: bool) {
        let label = self.a.new_dynamic_label();
        self.fallbacks.push((label, i, self.written));
        let tlb = if store { CTX_STORE_TLB } else { CTX_LOAD_TLB };
        let imm = op.imm;
        let index_mask = (TLB_SIZE - 1) as i32;
        self.get(op.rs1, RSI);
        dynasm!(self.a
            ; .arch x64
            ; add rsi, imm
            ; mov rax, rsi
            ; shr rax, 12
            ; mov edx, eax
            ; and edx, index_mask
            ; shl edx, 4
            ; or rax, QWORD [r15 + CTX_TAG]
            ; mov rdi, QWORD [r15 + tlb]
            ; cmp rax, QWORD [rdi + rdx]
            ; jne =>label
        );
        if size > 1 {
            let last = 4096 - size;
            dynasm!(self.a
                ; .arch x64
                ; mov eax, esi
                ; and eax, 0xfff
                ; cmp eax, last
                ; ja =>label
            );
        }
        dynasm!(self.a
            ; .arch x64
            ; mov rax, QWORD [rdi + rdx + 8]
            ; and esi, 0xfff
            ; add rax, rsi
            ; add rax, QWORD [r15 + CTX_RAM]
        );
    }

    /// The common ALU ops in place when rd lives in a host register (most ops of hot loops): `rd = rs1;
    /// rd op= rs2` in two host instructions instead of four through scratch registers. False if the op has
    /// another shape (the caller then emits the general form).
    fn alu_in_place(&mut self, op: &Op) -> bool {
        use Kind::*;
        let Some(d) = self.host[op.rd as usize] else { return false };
        let (rd, rs1, rs2) = (op.rd, op.rs1, op.rs2);
        match op.kind {
            Add | Sub | Xor | Or | And | Mul => {
                if rs1 == 0 || rs2 == 0 {
                    return false;
                }
                // rd = rs2 first would lose rs2: swap the operands if the op allows it.
                let (first, second) = match (rd == rs2 && rd != rs1, op.kind) {
                    (false, _) => (rs1, rs2),
                    (true, Add | Xor | Or | And | Mul) => (rs2, rs1),
                    (true, _) => return false,
                };
                if first != rd {
                    self.get(first, d);
                }
                match (self.host[second as usize], op.kind) {
                    (Some(s), Add) => dynasm!(self.a ; .arch x64 ; add Rq(d), Rq(s)),
                    (Some(s), Sub) => dynasm!(self.a ; .arch x64 ; sub Rq(d), Rq(s)),
                    (Some(s), Xor) => dynasm!(self.a ; .arch x64 ; xor Rq(d), Rq(s)),
                    (Some(s), Or) => dynasm!(self.a ; .arch x64 ; or Rq(d), Rq(s)),
                    (Some(s), And) => dynasm!(self.a ; .arch x64 ; and Rq(d), Rq(s)),
                    (Some(s), _) => dynasm!(self.a ; .arch x64 ; imul Rq(d), Rq(s)),
                    (None, kind) => {
                        let disp = 8 * second as i32;
                        match kind {
                            Add => dynasm!(self.a ; .arch x64 ; add Rq(d), QWORD [r14 + disp]),
                            Sub => dynasm!(self.a ; .arch x64 ; sub Rq(d), QWORD [r14 + disp]),
                            Xor => dynasm!(self.a ; .arch x64 ; xor Rq(d), QWORD [r14 + disp]),
                            Or => dynasm!(self.a ; .arch x64 ; or Rq(d), QWORD [r14 + disp]),
                            And => dynasm!(self.a ; .arch x64 ; and Rq(d), QWORD [r14 + disp]),
                            _ => dynasm!(self.a ; .arch x64 ; imul Rq(d), QWORD [r14 + disp]),
                        }
                    }
                }
            }
            Addi | Xori | Ori | Andi | Slli | Srli | Srai => {
                if rs1 != rd {
                    self.get(rs1, d);
                }
                let imm = op.imm;
                match op.kind {
                    Addi => dynasm!(self.a ; .arch x64 ; add Rq(d), imm),
                    Xori => dynasm!(self.a ; .arch x64 ; xor Rq(d), imm),
                    Ori => dynasm!(self.a ; .arch x64 ; or Rq(d), imm),
                    Andi => dynasm!(self.a ; .arch x64 ; and Rq(d), imm),
                    Slli => dynasm!(self.a ; .arch x64 ; shl Rq(d), (imm & 63) as i8),
                    Srli => dynasm!(self.a ; .arch x64 ; shr Rq(d), (imm & 63) as i8),
                    _ => dynasm!(self.a ; .arch x64 ; sar Rq(d), (imm & 63) as i8),
                }
            }
            _ => return false,
        }
        self.written |= 1 << rd;
        true
    }

    /// rax = x[rs1] op x[rs2] (`f` sees rax = x[rs1], rcx = x[rs2]).
    fn binary(&mut self, op: &Op, f: impl FnOnce(&mut Assembler)) {
        self.get(op.rs2, RCX);
        self.get(op.rs1, RAX);
        f(&mut self.a);
        self.set(op.rd, RAX);
    }

    /// rax = x[rs1] op imm (`f` sees rax = x[rs1]).
    fn unary(&mut self, op: &Op, f: impl FnOnce(&mut Assembler, i32)) {
        self.get(op.rs1, RAX);
        f(&mut self.a, op.imm);
        self.set(op.rd, RAX);
    }

    /// A conditional branch: `jcc` jumps to its label when taken.
    fn branch(&mut self, i: usize, op: &Op, jcc: impl FnOnce(&mut Assembler, DynamicLabel)) {
        let taken = self.a.new_dynamic_label();
        // Compare in place when rs1 lives in a host register.
        match (self.host[op.rs1 as usize], op.rs2, self.host[op.rs2 as usize]) {
            (Some(a), _, Some(b)) => dynasm!(self.a ; .arch x64 ; cmp Rq(a), Rq(b)),
            (Some(a), 0, _) => dynasm!(self.a ; .arch x64 ; cmp Rq(a), 0),
            (Some(a), rs2, None) => {
                let disp = 8 * rs2 as i32;
                dynasm!(self.a ; .arch x64 ; cmp Rq(a), QWORD [r14 + disp]);
            }
            (None, _, _) => {
                self.get(op.rs2, RCX);
                self.get(op.rs1, RAX);
                dynasm!(self.a ; .arch x64 ; cmp rax, rcx);
            }
        }
        jcc(&mut self.a, taken);
        self.exit_to(i + 1, op.off as i64 + op.len as i64);
        dynasm!(self.a ; .arch x64 ; =>taken);
        self.exit_to(i + 1, op.off as i64 + op.imm as i64);
    }

    /// Emits op `i`; returns true if it ended the block.
    fn op(&mut self, i: usize, op: &Op) -> bool {
        use Kind::*;
        let next = op.off as i64 + op.len as i64;
        if self.alu_in_place(op) {
            return false;
        }
        match op.kind {
            Nop => {}
            Lui => {
                let imm = op.imm;
                dynasm!(self.a ; .arch x64 ; mov rax, imm);
                self.set(op.rd, RAX);
            }
            Auipc => {
                self.pc_plus(RAX, op.off as i64 + op.imm as i64);
                self.set(op.rd, RAX);
            }
            Jal => {
                self.pc_plus(RAX, next);
                self.set(op.rd, RAX);
                self.exit_to(i + 1, op.off as i64 + op.imm as i64);
                return true;
            }
            Jalr => {
                let imm = op.imm;
                self.get(op.rs1, RSI);
                dynasm!(self.a ; .arch x64 ; add rsi, imm ; and rsi, -2);
                self.pc_plus(RAX, next);
                self.set(op.rd, RAX);
                dynasm!(self.a ; .arch x64 ; mov rax, rsi);
                self.exit(i + 1);
                return true;
            }
            Beq => self.branch(i, op, |a, l| dynasm!(a ; .arch x64 ; je =>l)),
            Bne => self.branch(i, op, |a, l| dynasm!(a ; .arch x64 ; jne =>l)),
            Blt => self.branch(i, op, |a, l| dynasm!(a ; .arch x64 ; jl =>l)),
            Bge => self.branch(i, op, |a, l| dynasm!(a ; .arch x64 ; jge =>l)),
            Bltu => self.branch(i, op, |a, l| dynasm!(a ; .arch x64 ; jb =>l)),
            Bgeu => self.branch(i, op, |a, l| dynasm!(a ; .arch x64 ; jae =>l)),
            Lb | Lh | Lw | Ld | Lbu | Lhu | Lwu => {
                let size = match op.kind {
                    Lb | Lbu => 1,
                    Lh | Lhu => 2,
                    Lw | Lwu => 4,
                    _ => 8,
                };
                self.address(i, op, size, false);
                match op.kind {
                    Lb => dynasm!(self.a ; .arch x64 ; movsx rax, BYTE [rax]),
                    Lh => dynasm!(self.a ; .arch x64 ; movsx rax, WORD [rax]),
                    Lw => dynasm!(self.a ; .arch x64 ; movsxd rax, DWORD [rax]),
                    Ld => dynasm!(self.a ; .arch x64 ; mov rax, QWORD [rax]),
                    Lbu => dynasm!(self.a ; .arch x64 ; movzx eax, BYTE [rax]),
                    Lhu => dynasm!(self.a ; .arch x64 ; movzx eax, WORD [rax]),
                    _ => dynasm!(self.a ; .arch x64 ; mov eax, DWORD [rax]),
                }
                self.set(op.rd, RAX);
            }
            Sb | Sh | Sw | Sd => {
                self.get(op.rs2, RCX);
                let size = match op.kind {
                    Sb => 1,
                    Sh => 2,
                    Sw => 4,
                    _ => 8,
                };
                self.address(i, op, size, true);
                match op.kind {
                    Sb => dynasm!(self.a ; .arch x64 ; mov BYTE [rax], cl),
                    Sh => dynasm!(self.a ; .arch x64 ; mov WORD [rax], cx),
                    Sw => dynasm!(self.a ; .arch x64 ; mov DWORD [rax], ecx),
                    _ => dynasm!(self.a ; .arch x64 ; mov QWORD [rax], rcx),
                }
            }
            Addi => self.unary(op, |a, imm| dynasm!(a ; .arch x64 ; add rax, imm)),
            Slti => {
                self.unary(op, |a, imm| dynasm!(a ; .arch x64 ; xor ecx, ecx ; cmp rax, imm ; setl cl ; mov rax, rcx))
            }
            Sltiu => {
                self.unary(op, |a, imm| dynasm!(a ; .arch x64 ; xor ecx, ecx ; cmp rax, imm ; setb cl ; mov rax, rcx))
            }
            Xori => self.unary(op, |a, imm| dynasm!(a ; .arch x64 ; xor rax, imm)),
            Ori => self.unary(op, |a, imm| dynasm!(a ; .arch x64 ; or rax, imm)),
            Andi => self.unary(op, |a, imm| dynasm!(a ; .arch x64 ; and rax, imm)),
            Slli => self.unary(op, |a, imm| dynasm!(a ; .arch x64 ; shl rax, (imm & 63) as i8)),
            Srli => self.unary(op, |a, imm| dynasm!(a ; .arch x64 ; shr rax, (imm & 63) as i8)),
            Srai => self.unary(op, |a, imm| dynasm!(a ; .arch x64 ; sar rax, (imm & 63) as i8)),
            Addiw => self.unary(op, |a, imm| dynasm!(a ; .arch x64 ; add eax, imm ; movsxd rax, eax)),
            Slliw => self.unary(op, |a, imm| dynasm!(a ; .arch x64 ; shl eax, (imm & 31) as i8 ; movsxd rax, eax)),
            Srliw => self.unary(op, |a, imm| dynasm!(a ; .arch x64 ; shr eax, (imm & 31) as i8 ; movsxd rax, eax)),
            Sraiw => self.unary(op, |a, imm| dynasm!(a ; .arch x64 ; sar eax, (imm & 31) as i8 ; movsxd rax, eax)),
            Add => self.binary(op, |a| dynasm!(a ; .arch x64 ; add rax, rcx)),
            Sub => self.binary(op, |a| dynasm!(a ; .arch x64 ; sub rax, rcx)),
            Sll => self.binary(op, |a| dynasm!(a ; .arch x64 ; shl rax, cl)),
            Slt => self.binary(op, |a| dynasm!(a ; .arch x64 ; xor edx, edx ; cmp rax, rcx ; setl dl ; mov rax, rdx)),
            Sltu => self.binary(op, |a| dynasm!(a ; .arch x64 ; xor edx, edx ; cmp rax, rcx ; setb dl ; mov rax, rdx)),
            Xor => self.binary(op, |a| dynasm!(a ; .arch x64 ; xor rax, rcx)),
            Srl => self.binary(op, |a| dynasm!(a ; .arch x64 ; shr rax, cl)),
            Sra => self.binary(op, |a| dynasm!(a ; .arch x64 ; sar rax, cl)),
            Or => self.binary(op, |a| dynasm!(a ; .arch x64 ; or rax, rcx)),
            And => self.binary(op, |a| dynasm!(a ; .arch x64 ; and rax, rcx)),
            Mul => self.binary(op, |a| dynasm!(a ; .arch x64 ; imul rax, rcx)),
            Mulh => self.binary(op, |a| dynasm!(a ; .arch x64 ; imul rcx ; mov rax, rdx)),
            Mulhu => self.binary(op, |a| dynasm!(a ; .arch x64 ; mul rcx ; mov rax, rdx)),
            // Signed × unsigned: the unsigned high half, minus x[rs2] when x[rs1] is negative.
            Mulhsu => self.binary(op, |a| {
                dynasm!(a
                    ; .arch x64
                    ; mov rsi, rax
                    ; mul rcx
                    ; sar rsi, 63
                    ; and rsi, rcx
                    ; sub rdx, rsi
                    ; mov rax, rdx
                )
            }),
            Div | Rem | Divu | Remu | Divw | Remw | Divuw | Remuw => self.divide(op),
            Addw => self.binary(op, |a| dynasm!(a ; .arch x64 ; add eax, ecx ; movsxd rax, eax)),
            Subw => self.binary(op, |a| dynasm!(a ; .arch x64 ; sub eax, ecx ; movsxd rax, eax)),
            Sllw => self.binary(op, |a| dynasm!(a ; .arch x64 ; shl eax, cl ; movsxd rax, eax)),
            Srlw => self.binary(op, |a| dynasm!(a ; .arch x64 ; shr eax, cl ; movsxd rax, eax)),
            Sraw => self.binary(op, |a| dynasm!(a ; .arch x64 ; sar eax, cl ; movsxd rax, eax)),
            Mulw => self.binary(op, |a| dynasm!(a ; .arch x64 ; imul eax, ecx ; movsxd rax, eax)),
            FenceI => {
                self.pc_plus(RAX, next);
                self.exit(i + 1);
                return true;
            }
            Fp | Amo | System | Illegal => unreachable!("not compiled: {:?}", op.kind),
        }
        false
    }

    /// The divisions, with RISC-V's results where x86 would trap: division by zero gives all ones (quotient)
    /// or the dividend (remainder); the most negative value divided by -1 gives itself (quotient) or 0
    /// (remainder).
    fn divide(&mut self, op: &Op) {
        use Kind::*;
        let kind = op.kind;
        let zero = self.a.new_dynamic_label();
        let done = self.a.new_dynamic_label();
        let normal = self.a.new_dynamic_label();
        self.binary(op, |a| {
            match kind {
                Div | Rem => dynasm!(a ; .arch x64 ; test rcx, rcx ; jz =>zero ; cmp rcx, -1 ; jne =>normal),
                Divw | Remw => dynasm!(a ; .arch x64 ; test ecx, ecx ; jz =>zero ; cmp ecx, -1 ; jne =>normal),
                Divu | Remu => dynasm!(a ; .arch x64 ; test rcx, rcx ; jz =>zero ; jmp =>normal),
                _ => dynasm!(a ; .arch x64 ; test ecx, ecx ; jz =>zero ; jmp =>normal),
            }
            // Signed, by -1: negation (wrapping), remainder 0.
            match kind {
                Div | Divw => dynasm!(a ; .arch x64 ; neg rax ; jmp =>done),
                Rem | Remw => dynasm!(a ; .arch x64 ; xor eax, eax ; jmp =>done),
                _ => {}
            }
            dynasm!(a ; .arch x64 ; =>normal);
            match kind {
                Div => dynasm!(a ; .arch x64 ; cqo ; idiv rcx),
                Rem => dynasm!(a ; .arch x64 ; cqo ; idiv rcx ; mov rax, rdx),
                Divu => dynasm!(a ; .arch x64 ; xor edx, edx ; div rcx),
                Remu => dynasm!(a ; .arch x64 ; xor edx, edx ; div rcx ; mov rax, rdx),
                Divw => dynasm!(a ; .arch x64 ; cdq ; idiv ecx),
                Remw => dynasm!(a ; .arch x64 ; cdq ; idiv ecx ; mov eax, edx),
                Divuw => dynasm!(a ; .arch x64 ; xor edx, edx ; div ecx),
                _ => dynasm!(a ; .arch x64 ; xor edx, edx ; div ecx ; mov eax, edx),
            }
            dynasm!(a ; .arch x64 ; jmp =>done ; =>zero);
            // By zero: quotient all ones, remainder the dividend (already in rax).
            if matches!(kind, Div | Divu | Divw | Divuw) {
                dynasm!(a ; .arch x64 ; mov rax, -1);
            }
            dynasm!(a ; .arch x64 ; =>done);
            if matches!(kind, Divw | Remw | Divuw | Remuw) {
                dynasm!(a ; .arch x64 ; movsxd rax, eax);
            }
        });
    }
}
