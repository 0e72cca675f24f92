//! A tiny RV64GC assembler: one encoder function per instruction (returning the instruction word) and an
//! [`Asm`] builder that lays instructions out at a guest address, with labels for branches and jumps.
//!
//! Encoders take register numbers (`A0`, `T1`, `F2`, ...) and immediates as signed values, in the operand order
//! of GNU `as` (stores: `sw(rs2, offset, rs1)` like `sw rs2, offset(rs1)`). `tests/encoders.rs` pins a sample of
//! them to the encodings GNU `as` produced.

use std::collections::HashMap;

// ---------------------------------------------------------------------------------------------------------------
// Registers
// ---------------------------------------------------------------------------------------------------------------

pub const ZERO: u32 = 0;
pub const RA: u32 = 1;
pub const SP: u32 = 2;
pub const GP: u32 = 3;
pub const TP: u32 = 4;
pub const T0: u32 = 5;
pub const T1: u32 = 6;
pub const T2: u32 = 7;
pub const S0: u32 = 8;
pub const S1: u32 = 9;
pub const A0: u32 = 10;
pub const A1: u32 = 11;
pub const A2: u32 = 12;
pub const A3: u32 = 13;
pub const A4: u32 = 14;
pub const A5: u32 = 15;
pub const A6: u32 = 16;
pub const A7: u32 = 17;
pub const S2: u32 = 18;
pub const S3: u32 = 19;
pub const S4: u32 = 20;
pub const S5: u32 = 21;
pub const T3: u32 = 28;
pub const T4: u32 = 29;
pub const T5: u32 = 30;
pub const T6: u32 = 31;

pub const F0: u32 = 0;
pub const F1: u32 = 1;
pub const F2: u32 = 2;
pub const F3: u32 = 3;
pub const F4: u32 = 4;
pub const F5: u32 = 5;
pub const F6: u32 = 6;
pub const F7: u32 = 7;
pub const F8: u32 = 8;
pub const F9: u32 = 9;
pub const F10: u32 = 10;

/// Rounding-mode field values.
pub mod rm {
    pub const RNE: u32 = 0;
    pub const RTZ: u32 = 1;
    pub const RDN: u32 = 2;
    pub const RUP: u32 = 3;
    pub const RMM: u32 = 4;
    pub const DYN: u32 = 7;
}

/// CSR numbers used by the tests.
pub mod csr {
    pub const FFLAGS: u32 = 0x001;
    pub const FRM: u32 = 0x002;
    pub const FCSR: u32 = 0x003;
    pub const CYCLE: u32 = 0xc00;
    pub const TIME: u32 = 0xc01;
    pub const INSTRET: u32 = 0xc02;
    pub const SSTATUS: u32 = 0x100;
    pub const SIE: u32 = 0x104;
    pub const STVEC: u32 = 0x105;
    pub const SCOUNTEREN: u32 = 0x106;
    pub const SSCRATCH: u32 = 0x140;
    pub const SEPC: u32 = 0x141;
    pub const SCAUSE: u32 = 0x142;
    pub const STVAL: u32 = 0x143;
    pub const SIP: u32 = 0x144;
    pub const SATP: u32 = 0x180;
    pub const MHARTID: u32 = 0xf14;
    pub const MSTATUS: u32 = 0x300;
    pub const MISA: u32 = 0x301;
    pub const MEDELEG: u32 = 0x302;
    pub const MIDELEG: u32 = 0x303;
    pub const MIE: u32 = 0x304;
    pub const MTVEC: u32 = 0x305;
    pub const MCOUNTEREN: u32 = 0x306;
    pub const MSCRATCH: u32 = 0x340;
    pub const MEPC: u32 = 0x341;
    pub const MCAUSE: u32 = 0x342;
    pub const MTVAL: u32 = 0x343;
    pub const MIP: u32 = 0x344;
    pub const MCYCLE: u32 = 0xb00;
    pub const MINSTRET: u32 = 0xb02;
}

// ---------------------------------------------------------------------------------------------------------------
// Instruction formats
// ---------------------------------------------------------------------------------------------------------------

fn check_reg(r: u32) -> u32 {
    assert!(r < 32, "register {r} out of range");
    r
}

fn check_simm(imm: i64, bits: u32) {
    let lim = 1i64 << (bits - 1);
    assert!((-lim..lim).contains(&imm), "immediate {imm} does not fit {bits} signed bits");
}

pub fn r_type(opcode: u32, f3: u32, f7: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
    (f7 << 25) | (check_reg(rs2) << 20) | (check_reg(rs1) << 15) | (f3 << 12) | (check_reg(rd) << 7) | opcode
}

pub fn i_type(opcode: u32, f3: u32, rd: u32, rs1: u32, imm: i32) -> u32 {
    check_simm(imm as i64, 12);
    (((imm as u32) & 0xfff) << 20) | (check_reg(rs1) << 15) | (f3 << 12) | (check_reg(rd) << 7) | opcode
}

pub fn s_type(opcode: u32, f3: u32, rs2: u32, imm: i32, rs1: u32) -> u32 {
    check_simm(imm as i64, 12);
    let imm = imm as u32;
    (((imm >> 5) & 0x7f) << 25)
        | (check_reg(rs2) << 20)
        | (check_reg(rs1) << 15)
        | (f3 << 12)
        | ((imm & 0x1f) << 7)
        | opcode
}

pub fn b_type(f3: u32, rs1: u32, rs2: u32, off: i32) -> u32 {
    check_simm(off as i64, 13);
    assert!(off % 2 == 0, "branch offset {off} is odd");
    let o = off as u32;
    (((o >> 12) & 1) << 31)
        | (((o >> 5) & 0x3f) << 25)
        | (check_reg(rs2) << 20)
        | (check_reg(rs1) << 15)
        | (f3 << 12)
        | (((o >> 1) & 0xf) << 8)
        | (((o >> 11) & 1) << 7)
        | 0x63
}

/// `imm20` is the 20-bit upper immediate as written in assembly (`lui a0, 0x12345`).
pub fn u_type(opcode: u32, rd: u32, imm20: u32) -> u32 {
    assert!(imm20 < 1 << 20, "upper immediate {imm20:#x} does not fit 20 bits");
    (imm20 << 12) | (check_reg(rd) << 7) | opcode
}

pub fn j_type(rd: u32, off: i32) -> u32 {
    check_simm(off as i64, 21);
    assert!(off % 2 == 0, "jump offset {off} is odd");
    let o = off as u32;
    (((o >> 20) & 1) << 31)
        | (((o >> 1) & 0x3ff) << 21)
        | (((o >> 11) & 1) << 20)
        | (((o >> 12) & 0xff) << 12)
        | (check_reg(rd) << 7)
        | 0x6f
}

// ---------------------------------------------------------------------------------------------------------------
// RV64I
// ---------------------------------------------------------------------------------------------------------------

const OP: u32 = 0x33;
const OP_32: u32 = 0x3b;
const OP_IMM: u32 = 0x13;
const OP_IMM_32: u32 = 0x1b;
const LOAD: u32 = 0x03;
const STORE: u32 = 0x23;

pub fn lui(rd: u32, imm20: u32) -> u32 {
    u_type(0x37, rd, imm20)
}
pub fn auipc(rd: u32, imm20: u32) -> u32 {
    u_type(0x17, rd, imm20)
}
pub fn jal(rd: u32, off: i32) -> u32 {
    j_type(rd, off)
}
pub fn jalr(rd: u32, rs1: u32, off: i32) -> u32 {
    i_type(0x67, 0, rd, rs1, off)
}
pub fn beq(rs1: u32, rs2: u32, off: i32) -> u32 {
    b_type(0, rs1, rs2, off)
}
pub fn bne(rs1: u32, rs2: u32, off: i32) -> u32 {
    b_type(1, rs1, rs2, off)
}
pub fn blt(rs1: u32, rs2: u32, off: i32) -> u32 {
    b_type(4, rs1, rs2, off)
}
pub fn bge(rs1: u32, rs2: u32, off: i32) -> u32 {
    b_type(5, rs1, rs2, off)
}
pub fn bltu(rs1: u32, rs2: u32, off: i32) -> u32 {
    b_type(6, rs1, rs2, off)
}
pub fn bgeu(rs1: u32, rs2: u32, off: i32) -> u32 {
    b_type(7, rs1, rs2, off)
}

pub fn lb(rd: u32, off: i32, rs1: u32) -> u32 {
    i_type(LOAD, 0, rd, rs1, off)
}
pub fn lh(rd: u32, off: i32, rs1: u32) -> u32 {
    i_type(LOAD, 1, rd, rs1, off)
}
pub fn lw(rd: u32, off: i32, rs1: u32) -> u32 {
    i_type(LOAD, 2, rd, rs1, off)
}
pub fn ld(rd: u32, off: i32, rs1: u32) -> u32 {
    i_type(LOAD, 3, rd, rs1, off)
}
pub fn lbu(rd: u32, off: i32, rs1: u32) -> u32 {
    i_type(LOAD, 4, rd, rs1, off)
}
pub fn lhu(rd: u32, off: i32, rs1: u32) -> u32 {
    i_type(LOAD, 5, rd, rs1, off)
}
pub fn lwu(rd: u32, off: i32, rs1: u32) -> u32 {
    i_type(LOAD, 6, rd, rs1, off)
}
pub fn sb(rs2: u32, off: i32, rs1: u32) -> u32 {
    s_type(STORE, 0, rs2, off, rs1)
}
pub fn sh(rs2: u32, off: i32, rs1: u32) -> u32 {
    s_type(STORE, 1, rs2, off, rs1)
}
pub fn sw(rs2: u32, off: i32, rs1: u32) -> u32 {
    s_type(STORE, 2, rs2, off, rs1)
}
pub fn sd(rs2: u32, off: i32, rs1: u32) -> u32 {
    s_type(STORE, 3, rs2, off, rs1)
}

pub fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(OP_IMM, 0, rd, rs1, imm)
}
pub fn slti(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(OP_IMM, 2, rd, rs1, imm)
}
pub fn sltiu(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(OP_IMM, 3, rd, rs1, imm)
}
pub fn xori(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(OP_IMM, 4, rd, rs1, imm)
}
pub fn ori(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(OP_IMM, 6, rd, rs1, imm)
}
pub fn andi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(OP_IMM, 7, rd, rs1, imm)
}
fn shift_imm(opcode: u32, f3: u32, f6: u32, rd: u32, rs1: u32, shamt: u32, max: u32) -> u32 {
    assert!(shamt <= max, "shift amount {shamt} too large");
    (f6 << 26) | (shamt << 20) | (check_reg(rs1) << 15) | (f3 << 12) | (check_reg(rd) << 7) | opcode
}
pub fn slli(rd: u32, rs1: u32, shamt: u32) -> u32 {
    shift_imm(OP_IMM, 1, 0, rd, rs1, shamt, 63)
}
pub fn srli(rd: u32, rs1: u32, shamt: u32) -> u32 {
    shift_imm(OP_IMM, 5, 0, rd, rs1, shamt, 63)
}
pub fn srai(rd: u32, rs1: u32, shamt: u32) -> u32 {
    shift_imm(OP_IMM, 5, 0x10, rd, rs1, shamt, 63)
}
pub fn addiw(rd: u32, rs1: u32, imm: i32) -> u32 {
    i_type(OP_IMM_32, 0, rd, rs1, imm)
}
pub fn slliw(rd: u32, rs1: u32, shamt: u32) -> u32 {
    shift_imm(OP_IMM_32, 1, 0, rd, rs1, shamt, 31)
}
pub fn srliw(rd: u32, rs1: u32, shamt: u32) -> u32 {
    shift_imm(OP_IMM_32, 5, 0, rd, rs1, shamt, 31)
}
pub fn sraiw(rd: u32, rs1: u32, shamt: u32) -> u32 {
    shift_imm(OP_IMM_32, 5, 0x10, rd, rs1, shamt, 31)
}

pub fn add(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 0, 0, rd, rs1, rs2)
}
pub fn sub(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 0, 0x20, rd, rs1, rs2)
}
pub fn sll(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 1, 0, rd, rs1, rs2)
}
pub fn slt(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 2, 0, rd, rs1, rs2)
}
pub fn sltu(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 3, 0, rd, rs1, rs2)
}
pub fn xor(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 4, 0, rd, rs1, rs2)
}
pub fn srl(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 5, 0, rd, rs1, rs2)
}
pub fn sra(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 5, 0x20, rd, rs1, rs2)
}
pub fn or(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 6, 0, rd, rs1, rs2)
}
pub fn and(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 7, 0, rd, rs1, rs2)
}
pub fn addw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP_32, 0, 0, rd, rs1, rs2)
}
pub fn subw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP_32, 0, 0x20, rd, rs1, rs2)
}
pub fn sllw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP_32, 1, 0, rd, rs1, rs2)
}
pub fn srlw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP_32, 5, 0, rd, rs1, rs2)
}
pub fn sraw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP_32, 5, 0x20, rd, rs1, rs2)
}

pub fn nop() -> u32 {
    addi(ZERO, ZERO, 0)
}
pub fn mv(rd: u32, rs: u32) -> u32 {
    addi(rd, rs, 0)
}
pub fn fence() -> u32 {
    0x0ff0_000f
}
pub fn fence_i() -> u32 {
    0x0000_100f
}

// ---------------------------------------------------------------------------------------------------------------
// M
// ---------------------------------------------------------------------------------------------------------------

pub fn mul(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 0, 1, rd, rs1, rs2)
}
pub fn mulh(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 1, 1, rd, rs1, rs2)
}
pub fn mulhsu(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 2, 1, rd, rs1, rs2)
}
pub fn mulhu(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 3, 1, rd, rs1, rs2)
}
pub fn div(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 4, 1, rd, rs1, rs2)
}
pub fn divu(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 5, 1, rd, rs1, rs2)
}
pub fn rem(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 6, 1, rd, rs1, rs2)
}
pub fn remu(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP, 7, 1, rd, rs1, rs2)
}
pub fn mulw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP_32, 0, 1, rd, rs1, rs2)
}
pub fn divw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP_32, 4, 1, rd, rs1, rs2)
}
pub fn divuw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP_32, 5, 1, rd, rs1, rs2)
}
pub fn remw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP_32, 6, 1, rd, rs1, rs2)
}
pub fn remuw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r_type(OP_32, 7, 1, rd, rs1, rs2)
}

// ---------------------------------------------------------------------------------------------------------------
// A (aq = rl = 0)
// ---------------------------------------------------------------------------------------------------------------

/// AMO operation codes (funct5).
pub mod amo_op {
    pub const ADD: u32 = 0x00;
    pub const SWAP: u32 = 0x01;
    pub const LR: u32 = 0x02;
    pub const SC: u32 = 0x03;
    pub const XOR: u32 = 0x04;
    pub const OR: u32 = 0x08;
    pub const AND: u32 = 0x0c;
    pub const MIN: u32 = 0x10;
    pub const MAX: u32 = 0x14;
    pub const MINU: u32 = 0x18;
    pub const MAXU: u32 = 0x1c;
}

/// `op rd, rs2, (rs1)`; `double` selects `.d` over `.w`.
pub fn amo(op: u32, double: bool, rd: u32, rs2: u32, rs1: u32) -> u32 {
    r_type(0x2f, if double { 3 } else { 2 }, op << 2, rd, rs1, rs2)
}
pub fn lr_w(rd: u32, rs1: u32) -> u32 {
    amo(amo_op::LR, false, rd, ZERO, rs1)
}
pub fn lr_d(rd: u32, rs1: u32) -> u32 {
    amo(amo_op::LR, true, rd, ZERO, rs1)
}
pub fn sc_w(rd: u32, rs2: u32, rs1: u32) -> u32 {
    amo(amo_op::SC, false, rd, rs2, rs1)
}
pub fn sc_d(rd: u32, rs2: u32, rs1: u32) -> u32 {
    amo(amo_op::SC, true, rd, rs2, rs1)
}
pub fn amoadd_w(rd: u32, rs2: u32, rs1: u32) -> u32 {
    amo(amo_op::ADD, false, rd, rs2, rs1)
}
pub fn amoadd_d(rd: u32, rs2: u32, rs1: u32) -> u32 {
    amo(amo_op::ADD, true, rd, rs2, rs1)
}
pub fn amoswap_d(rd: u32, rs2: u32, rs1: u32) -> u32 {
    amo(amo_op::SWAP, true, rd, rs2, rs1)
}

// ---------------------------------------------------------------------------------------------------------------
// Zicsr and system
// ---------------------------------------------------------------------------------------------------------------

fn csr_insn(f3: u32, rd: u32, csr: u32, rs1_or_uimm: u32) -> u32 {
    assert!(csr < 4096 && rs1_or_uimm < 32);
    (csr << 20) | (rs1_or_uimm << 15) | (f3 << 12) | (check_reg(rd) << 7) | 0x73
}
pub fn csrrw(rd: u32, csr: u32, rs1: u32) -> u32 {
    csr_insn(1, rd, csr, rs1)
}
pub fn csrrs(rd: u32, csr: u32, rs1: u32) -> u32 {
    csr_insn(2, rd, csr, rs1)
}
pub fn csrrc(rd: u32, csr: u32, rs1: u32) -> u32 {
    csr_insn(3, rd, csr, rs1)
}
pub fn csrrwi(rd: u32, csr: u32, uimm: u32) -> u32 {
    csr_insn(5, rd, csr, uimm)
}
pub fn csrrsi(rd: u32, csr: u32, uimm: u32) -> u32 {
    csr_insn(6, rd, csr, uimm)
}
pub fn csrrci(rd: u32, csr: u32, uimm: u32) -> u32 {
    csr_insn(7, rd, csr, uimm)
}
/// `csrr rd, csr` = `csrrs rd, csr, x0`.
pub fn csrr(rd: u32, csr: u32) -> u32 {
    csrrs(rd, csr, ZERO)
}
/// `csrw csr, rs` = `csrrw x0, csr, rs`.
pub fn csrw(csr: u32, rs: u32) -> u32 {
    csrrw(ZERO, csr, rs)
}
pub fn csrs(csr: u32, rs: u32) -> u32 {
    csrrs(ZERO, csr, rs)
}
pub fn csrc(csr: u32, rs: u32) -> u32 {
    csrrc(ZERO, csr, rs)
}
pub fn csrwi(csr: u32, uimm: u32) -> u32 {
    csrrwi(ZERO, csr, uimm)
}
pub fn csrsi(csr: u32, uimm: u32) -> u32 {
    csrrsi(ZERO, csr, uimm)
}
pub fn csrci(csr: u32, uimm: u32) -> u32 {
    csrrci(ZERO, csr, uimm)
}

pub fn ecall() -> u32 {
    0x0000_0073
}
pub fn ebreak() -> u32 {
    0x0010_0073
}
pub fn sret() -> u32 {
    0x1020_0073
}
pub fn mret() -> u32 {
    0x3020_0073
}
pub fn wfi() -> u32 {
    0x1050_0073
}
pub fn sfence_vma(rs1: u32, rs2: u32) -> u32 {
    r_type(0x73, 0, 0x09, ZERO, rs1, rs2)
}

// ---------------------------------------------------------------------------------------------------------------
// F and D
// ---------------------------------------------------------------------------------------------------------------

const OP_FP: u32 = 0x53;

pub fn flw(rd: u32, off: i32, rs1: u32) -> u32 {
    i_type(0x07, 2, rd, rs1, off)
}
pub fn fld(rd: u32, off: i32, rs1: u32) -> u32 {
    i_type(0x07, 3, rd, rs1, off)
}
pub fn fsw(rs2: u32, off: i32, rs1: u32) -> u32 {
    s_type(0x27, 2, rs2, off, rs1)
}
pub fn fsd(rs2: u32, off: i32, rs1: u32) -> u32 {
    s_type(0x27, 3, rs2, off, rs1)
}

/// An OP-FP instruction with `funct7`, the rounding-mode/funct3 field and operands.
pub fn op_fp(f7: u32, f3_or_rm: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
    assert!(f3_or_rm < 8);
    r_type(OP_FP, f3_or_rm, f7, rd, rs1, rs2)
}
pub fn fadd_s(rd: u32, rs1: u32, rs2: u32, rm: u32) -> u32 {
    op_fp(0x00, rm, rd, rs1, rs2)
}
pub fn fadd_d(rd: u32, rs1: u32, rs2: u32, rm: u32) -> u32 {
    op_fp(0x01, rm, rd, rs1, rs2)
}
pub fn fsub_d(rd: u32, rs1: u32, rs2: u32, rm: u32) -> u32 {
    op_fp(0x05, rm, rd, rs1, rs2)
}
pub fn fmul_s(rd: u32, rs1: u32, rs2: u32, rm: u32) -> u32 {
    op_fp(0x08, rm, rd, rs1, rs2)
}
pub fn fmul_d(rd: u32, rs1: u32, rs2: u32, rm: u32) -> u32 {
    op_fp(0x09, rm, rd, rs1, rs2)
}
pub fn fdiv_s(rd: u32, rs1: u32, rs2: u32, rm: u32) -> u32 {
    op_fp(0x0c, rm, rd, rs1, rs2)
}
pub fn fdiv_d(rd: u32, rs1: u32, rs2: u32, rm: u32) -> u32 {
    op_fp(0x0d, rm, rd, rs1, rs2)
}
pub fn fsqrt_s(rd: u32, rs1: u32, rm: u32) -> u32 {
    op_fp(0x2c, rm, rd, rs1, 0)
}
pub fn fsqrt_d(rd: u32, rs1: u32, rm: u32) -> u32 {
    op_fp(0x2d, rm, rd, rs1, 0)
}
pub fn fsgnj_s(rd: u32, rs1: u32, rs2: u32) -> u32 {
    op_fp(0x10, 0, rd, rs1, rs2)
}
pub fn fsgnj_d(rd: u32, rs1: u32, rs2: u32) -> u32 {
    op_fp(0x11, 0, rd, rs1, rs2)
}
pub fn fsgnjn_d(rd: u32, rs1: u32, rs2: u32) -> u32 {
    op_fp(0x11, 1, rd, rs1, rs2)
}
pub fn fsgnjx_d(rd: u32, rs1: u32, rs2: u32) -> u32 {
    op_fp(0x11, 2, rd, rs1, rs2)
}
pub fn fmin_s(rd: u32, rs1: u32, rs2: u32) -> u32 {
    op_fp(0x14, 0, rd, rs1, rs2)
}
pub fn fmin_d(rd: u32, rs1: u32, rs2: u32) -> u32 {
    op_fp(0x15, 0, rd, rs1, rs2)
}
pub fn fmax_d(rd: u32, rs1: u32, rs2: u32) -> u32 {
    op_fp(0x15, 1, rd, rs1, rs2)
}
pub fn fcvt_s_d(rd: u32, rs1: u32, rm: u32) -> u32 {
    op_fp(0x20, rm, rd, rs1, 1)
}
pub fn fcvt_d_s(rd: u32, rs1: u32) -> u32 {
    op_fp(0x21, 0, rd, rs1, 0)
}
pub fn feq_s(rd: u32, rs1: u32, rs2: u32) -> u32 {
    op_fp(0x50, 2, rd, rs1, rs2)
}
pub fn feq_d(rd: u32, rs1: u32, rs2: u32) -> u32 {
    op_fp(0x51, 2, rd, rs1, rs2)
}
pub fn flt_d(rd: u32, rs1: u32, rs2: u32) -> u32 {
    op_fp(0x51, 1, rd, rs1, rs2)
}
pub fn fle_d(rd: u32, rs1: u32, rs2: u32) -> u32 {
    op_fp(0x51, 0, rd, rs1, rs2)
}
pub fn fcvt_w_s(rd: u32, rs1: u32, rm: u32) -> u32 {
    op_fp(0x60, rm, rd, rs1, 0)
}
pub fn fcvt_w_d(rd: u32, rs1: u32, rm: u32) -> u32 {
    op_fp(0x61, rm, rd, rs1, 0)
}
pub fn fcvt_wu_d(rd: u32, rs1: u32, rm: u32) -> u32 {
    op_fp(0x61, rm, rd, rs1, 1)
}
pub fn fcvt_l_d(rd: u32, rs1: u32, rm: u32) -> u32 {
    op_fp(0x61, rm, rd, rs1, 2)
}
pub fn fcvt_lu_d(rd: u32, rs1: u32, rm: u32) -> u32 {
    op_fp(0x61, rm, rd, rs1, 3)
}
pub fn fcvt_s_w(rd: u32, rs1: u32, rm: u32) -> u32 {
    op_fp(0x68, rm, rd, rs1, 0)
}
pub fn fcvt_d_w(rd: u32, rs1: u32, rm: u32) -> u32 {
    op_fp(0x69, rm, rd, rs1, 0)
}
pub fn fcvt_d_lu(rd: u32, rs1: u32, rm: u32) -> u32 {
    op_fp(0x69, rm, rd, rs1, 3)
}
pub fn fmv_x_w(rd: u32, rs1: u32) -> u32 {
    op_fp(0x70, 0, rd, rs1, 0)
}
pub fn fclass_s(rd: u32, rs1: u32) -> u32 {
    op_fp(0x70, 1, rd, rs1, 0)
}
pub fn fmv_x_d(rd: u32, rs1: u32) -> u32 {
    op_fp(0x71, 0, rd, rs1, 0)
}
pub fn fclass_d(rd: u32, rs1: u32) -> u32 {
    op_fp(0x71, 1, rd, rs1, 0)
}
pub fn fmv_w_x(rd: u32, rs1: u32) -> u32 {
    op_fp(0x78, 0, rd, rs1, 0)
}
pub fn fmv_d_x(rd: u32, rs1: u32) -> u32 {
    op_fp(0x79, 0, rd, rs1, 0)
}

/// Fused multiply-add family: `opcode` is 0x43 (fmadd), 0x47 (fmsub), 0x4b (fnmsub), 0x4f (fnmadd);
/// `double` selects `.d`.
#[allow(clippy::too_many_arguments)]
pub fn fma(opcode: u32, double: bool, rd: u32, rs1: u32, rs2: u32, rs3: u32, rm: u32) -> u32 {
    (check_reg(rs3) << 27) | (u32::from(double) << 25) | r_type(opcode, rm, 0, rd, rs1, rs2)
}
pub fn fmadd_d(rd: u32, rs1: u32, rs2: u32, rs3: u32, rm: u32) -> u32 {
    fma(0x43, true, rd, rs1, rs2, rs3, rm)
}
pub fn fmsub_d(rd: u32, rs1: u32, rs2: u32, rs3: u32, rm: u32) -> u32 {
    fma(0x47, true, rd, rs1, rs2, rs3, rm)
}
pub fn fnmsub_d(rd: u32, rs1: u32, rs2: u32, rs3: u32, rm: u32) -> u32 {
    fma(0x4b, true, rd, rs1, rs2, rs3, rm)
}
pub fn fnmadd_d(rd: u32, rs1: u32, rs2: u32, rs3: u32, rm: u32) -> u32 {
    fma(0x4f, true, rd, rs1, rs2, rs3, rm)
}
pub fn fmadd_s(rd: u32, rs1: u32, rs2: u32, rs3: u32, rm: u32) -> u32 {
    fma(0x43, false, rd, rs1, rs2, rs3, rm)
}

// ---------------------------------------------------------------------------------------------------------------
// C (16-bit). Registers written `rd'`/`rs1'`/`rs2'` in the spec must be x8..x15.
// ---------------------------------------------------------------------------------------------------------------

fn creg(r: u32) -> u16 {
    assert!((8..16).contains(&r), "x{r} is not a compressed register (x8..x15)");
    (r - 8) as u16
}

fn bit(v: u32, n: u32) -> u16 {
    ((v >> n) & 1) as u16
}

fn field(v: u32, hi: u32, lo: u32) -> u16 {
    ((v >> lo) & ((1 << (hi - lo + 1)) - 1)) as u16
}

/// CI format: funct3, imm[5] at bit 12, rd at 11:7, imm[4:0] at 6:2, quadrant.
fn ci(f3: u16, rd: u32, imm6: i32, quadrant: u16) -> u16 {
    check_simm(imm6 as i64, 6);
    let i = imm6 as u32;
    (f3 << 13) | (bit(i, 5) << 12) | ((check_reg(rd) as u16) << 7) | (field(i, 4, 0) << 2) | quadrant
}

pub fn c_nop() -> u16 {
    0x0001
}
pub fn c_addi(rd: u32, imm: i32) -> u16 {
    ci(0, rd, imm, 1)
}
pub fn c_addiw(rd: u32, imm: i32) -> u16 {
    ci(1, rd, imm, 1)
}
pub fn c_li(rd: u32, imm: i32) -> u16 {
    ci(2, rd, imm, 1)
}
/// `c.lui rd, imm` loads `imm << 12` (imm in -32..=31, nonzero).
pub fn c_lui(rd: u32, imm: i32) -> u16 {
    assert!(imm != 0 && rd != 0 && rd != 2);
    ci(3, rd, imm, 1)
}
pub fn c_addi16sp(imm: i32) -> u16 {
    assert!(imm != 0 && imm % 16 == 0);
    check_simm(imm as i64, 10);
    let i = imm as u32;
    (3 << 13)
        | (bit(i, 9) << 12)
        | (2 << 7)
        | (bit(i, 4) << 6)
        | (bit(i, 6) << 5)
        | (field(i, 8, 7) << 3)
        | (bit(i, 5) << 2)
        | 1
}
pub fn c_addi4spn(rd: u32, uimm: u32) -> u16 {
    assert!(uimm != 0 && uimm.is_multiple_of(4) && uimm < 1024);
    (field(uimm, 5, 4) << 11) | (field(uimm, 9, 6) << 7) | (bit(uimm, 2) << 6) | (bit(uimm, 3) << 5) | (creg(rd) << 2)
}
pub fn c_slli(rd: u32, shamt: u32) -> u16 {
    assert!(shamt > 0 && shamt < 64);
    (bit(shamt, 5) << 12) | ((check_reg(rd) as u16) << 7) | (field(shamt, 4, 0) << 2) | 2
}
fn c_shift_or_andi(f2: u16, rd: u32, imm: u32) -> u16 {
    (4 << 13) | (bit(imm, 5) << 12) | (f2 << 10) | (creg(rd) << 7) | (field(imm, 4, 0) << 2) | 1
}
pub fn c_srli(rd: u32, shamt: u32) -> u16 {
    c_shift_or_andi(0, rd, shamt)
}
pub fn c_srai(rd: u32, shamt: u32) -> u16 {
    c_shift_or_andi(1, rd, shamt)
}
pub fn c_andi(rd: u32, imm: i32) -> u16 {
    check_simm(imm as i64, 6);
    c_shift_or_andi(2, rd, imm as u32)
}
fn c_arith(bit12: u16, f2: u16, rd: u32, rs2: u32) -> u16 {
    (4 << 13) | (bit12 << 12) | (3 << 10) | (creg(rd) << 7) | (f2 << 5) | (creg(rs2) << 2) | 1
}
pub fn c_sub(rd: u32, rs2: u32) -> u16 {
    c_arith(0, 0, rd, rs2)
}
pub fn c_xor(rd: u32, rs2: u32) -> u16 {
    c_arith(0, 1, rd, rs2)
}
pub fn c_or(rd: u32, rs2: u32) -> u16 {
    c_arith(0, 2, rd, rs2)
}
pub fn c_and(rd: u32, rs2: u32) -> u16 {
    c_arith(0, 3, rd, rs2)
}
pub fn c_subw(rd: u32, rs2: u32) -> u16 {
    c_arith(1, 0, rd, rs2)
}
pub fn c_addw(rd: u32, rs2: u32) -> u16 {
    c_arith(1, 1, rd, rs2)
}
pub fn c_j(off: i32) -> u16 {
    check_simm(off as i64, 12);
    assert!(off % 2 == 0);
    let o = off as u32;
    (5 << 13)
        | (bit(o, 11) << 12)
        | (bit(o, 4) << 11)
        | (field(o, 9, 8) << 9)
        | (bit(o, 10) << 8)
        | (bit(o, 6) << 7)
        | (bit(o, 7) << 6)
        | (field(o, 3, 1) << 3)
        | (bit(o, 5) << 2)
        | 1
}
fn c_branch(f3: u16, rs1: u32, off: i32) -> u16 {
    check_simm(off as i64, 9);
    assert!(off % 2 == 0);
    let o = off as u32;
    (f3 << 13)
        | (bit(o, 8) << 12)
        | (field(o, 4, 3) << 10)
        | (creg(rs1) << 7)
        | (field(o, 7, 6) << 5)
        | (field(o, 2, 1) << 3)
        | (bit(o, 5) << 2)
        | 1
}
pub fn c_beqz(rs1: u32, off: i32) -> u16 {
    c_branch(6, rs1, off)
}
pub fn c_bnez(rs1: u32, off: i32) -> u16 {
    c_branch(7, rs1, off)
}
pub fn c_lw(rd: u32, uimm: u32, rs1: u32) -> u16 {
    assert!(uimm.is_multiple_of(4) && uimm < 128);
    (2 << 13)
        | (field(uimm, 5, 3) << 10)
        | (creg(rs1) << 7)
        | (bit(uimm, 2) << 6)
        | (bit(uimm, 6) << 5)
        | (creg(rd) << 2)
}
pub fn c_sw(rs2: u32, uimm: u32, rs1: u32) -> u16 {
    (c_lw(rs2, uimm, rs1) & !(7 << 13)) | (6 << 13)
}
pub fn c_ld(rd: u32, uimm: u32, rs1: u32) -> u16 {
    assert!(uimm.is_multiple_of(8) && uimm < 256);
    (3 << 13) | (field(uimm, 5, 3) << 10) | (creg(rs1) << 7) | (field(uimm, 7, 6) << 5) | (creg(rd) << 2)
}
pub fn c_sd(rs2: u32, uimm: u32, rs1: u32) -> u16 {
    (c_ld(rs2, uimm, rs1) & !(7 << 13)) | (7 << 13)
}
pub fn c_fld(rd: u32, uimm: u32, rs1: u32) -> u16 {
    (c_ld(rd, uimm, rs1) & !(7 << 13)) | (1 << 13)
}
pub fn c_fsd(rs2: u32, uimm: u32, rs1: u32) -> u16 {
    (c_ld(rs2, uimm, rs1) & !(7 << 13)) | (5 << 13)
}
pub fn c_lwsp(rd: u32, uimm: u32) -> u16 {
    assert!(rd != 0 && uimm.is_multiple_of(4) && uimm < 256);
    (2 << 13) | (bit(uimm, 5) << 12) | ((rd as u16) << 7) | (field(uimm, 4, 2) << 4) | (field(uimm, 7, 6) << 2) | 2
}
pub fn c_ldsp(rd: u32, uimm: u32) -> u16 {
    assert!(rd != 0 && uimm.is_multiple_of(8) && uimm < 512);
    (3 << 13) | (bit(uimm, 5) << 12) | ((rd as u16) << 7) | (field(uimm, 4, 3) << 5) | (field(uimm, 8, 6) << 2) | 2
}
pub fn c_swsp(rs2: u32, uimm: u32) -> u16 {
    assert!(uimm.is_multiple_of(4) && uimm < 256);
    (6 << 13) | (field(uimm, 5, 2) << 9) | (field(uimm, 7, 6) << 7) | ((check_reg(rs2) as u16) << 2) | 2
}
pub fn c_sdsp(rs2: u32, uimm: u32) -> u16 {
    assert!(uimm.is_multiple_of(8) && uimm < 512);
    (7 << 13) | (field(uimm, 5, 3) << 10) | (field(uimm, 8, 6) << 7) | ((check_reg(rs2) as u16) << 2) | 2
}
pub fn c_jr(rs1: u32) -> u16 {
    assert!(rs1 != 0);
    (4 << 13) | ((check_reg(rs1) as u16) << 7) | 2
}
pub fn c_jalr(rs1: u32) -> u16 {
    c_jr(rs1) | (1 << 12)
}
pub fn c_mv(rd: u32, rs2: u32) -> u16 {
    assert!(rs2 != 0);
    (4 << 13) | ((check_reg(rd) as u16) << 7) | ((check_reg(rs2) as u16) << 2) | 2
}
pub fn c_add(rd: u32, rs2: u32) -> u16 {
    c_mv(rd, rs2) | (1 << 12)
}
pub fn c_ebreak() -> u16 {
    0x9002
}

// ---------------------------------------------------------------------------------------------------------------
// The builder
// ---------------------------------------------------------------------------------------------------------------

type Patch = Box<dyn Fn(i32) -> u32>;

struct Fixup {
    /// Byte offset of the instruction in `bytes`.
    at: usize,
    /// 2 or 4 bytes.
    len: usize,
    label: &'static str,
    encode: Patch,
}

/// Instructions laid out from a guest address, with labels.
pub struct Asm {
    base: u64,
    bytes: Vec<u8>,
    labels: HashMap<&'static str, u64>,
    fixups: Vec<Fixup>,
}

impl Asm {
    pub fn new(base: u64) -> Asm {
        Asm { base, bytes: Vec::new(), labels: HashMap::new(), fixups: Vec::new() }
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    /// Address of the next instruction.
    pub fn pc(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    /// Emits a 32-bit instruction.
    pub fn i(&mut self, insn: u32) -> &mut Asm {
        self.bytes.extend_from_slice(&insn.to_le_bytes());
        self
    }

    /// Emits several 32-bit instructions.
    pub fn all(&mut self, insns: &[u32]) -> &mut Asm {
        for &insn in insns {
            self.i(insn);
        }
        self
    }

    /// Emits a 16-bit (compressed) parcel.
    pub fn c(&mut self, half: u16) -> &mut Asm {
        self.bytes.extend_from_slice(&half.to_le_bytes());
        self
    }

    /// Emits raw data bytes.
    pub fn data(&mut self, bytes: &[u8]) -> &mut Asm {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// Pads with `c.nop` up to guest address `addr`.
    pub fn pad_to(&mut self, addr: u64) -> &mut Asm {
        assert!(addr >= self.pc() && addr.is_multiple_of(2), "cannot pad backwards to {addr:#x}");
        while self.pc() < addr {
            self.c(c_nop());
        }
        self
    }

    pub fn label(&mut self, name: &'static str) -> &mut Asm {
        let prev = self.labels.insert(name, self.pc());
        assert!(prev.is_none(), "label {name} defined twice");
        self
    }

    /// Address of a label (defined so far).
    pub fn addr(&self, name: &str) -> u64 {
        *self.labels.get(name).unwrap_or_else(|| panic!("no label {name}"))
    }

    fn fixup(&mut self, len: usize, label: &'static str, encode: Patch) -> &mut Asm {
        self.fixups.push(Fixup { at: self.bytes.len(), len, label, encode });
        self.bytes.resize(self.bytes.len() + len, 0);
        self
    }

    pub fn beq(&mut self, rs1: u32, rs2: u32, label: &'static str) -> &mut Asm {
        self.fixup(4, label, Box::new(move |off| beq(rs1, rs2, off)))
    }
    pub fn bne(&mut self, rs1: u32, rs2: u32, label: &'static str) -> &mut Asm {
        self.fixup(4, label, Box::new(move |off| bne(rs1, rs2, off)))
    }
    pub fn blt(&mut self, rs1: u32, rs2: u32, label: &'static str) -> &mut Asm {
        self.fixup(4, label, Box::new(move |off| blt(rs1, rs2, off)))
    }
    pub fn bge(&mut self, rs1: u32, rs2: u32, label: &'static str) -> &mut Asm {
        self.fixup(4, label, Box::new(move |off| bge(rs1, rs2, off)))
    }
    pub fn bltu(&mut self, rs1: u32, rs2: u32, label: &'static str) -> &mut Asm {
        self.fixup(4, label, Box::new(move |off| bltu(rs1, rs2, off)))
    }
    pub fn bgeu(&mut self, rs1: u32, rs2: u32, label: &'static str) -> &mut Asm {
        self.fixup(4, label, Box::new(move |off| bgeu(rs1, rs2, off)))
    }
    pub fn jal(&mut self, rd: u32, label: &'static str) -> &mut Asm {
        self.fixup(4, label, Box::new(move |off| jal(rd, off)))
    }
    /// `j label` = `jal x0, label`.
    pub fn j(&mut self, label: &'static str) -> &mut Asm {
        self.jal(ZERO, label)
    }
    pub fn c_j(&mut self, label: &'static str) -> &mut Asm {
        self.fixup(2, label, Box::new(move |off| c_j(off) as u32))
    }
    pub fn c_beqz(&mut self, rs1: u32, label: &'static str) -> &mut Asm {
        self.fixup(2, label, Box::new(move |off| c_beqz(rs1, off) as u32))
    }
    pub fn c_bnez(&mut self, rs1: u32, label: &'static str) -> &mut Asm {
        self.fixup(2, label, Box::new(move |off| c_bnez(rs1, off) as u32))
    }

    /// `li rd, value`: materializes any 64-bit constant (lui/addiw, then shifts and adds for wider values).
    pub fn li(&mut self, rd: u32, value: u64) -> &mut Asm {
        let v = value as i64;
        if v == v as i32 as i64 {
            let lo = ((v << 52) >> 52) as i32; // low 12 bits, sign-extended
            let hi = ((v - lo as i64) >> 12) as u32 & 0xfffff;
            if hi == 0 {
                self.i(addi(rd, ZERO, lo));
            } else {
                self.i(lui(rd, hi));
                if lo != 0 {
                    self.i(addiw(rd, rd, lo));
                }
            }
        } else {
            let lo = ((v << 52) >> 52) as i32;
            let hi = v.wrapping_sub(lo as i64) >> 12;
            self.li(rd, hi as u64);
            self.i(slli(rd, rd, 12));
            if lo != 0 {
                self.i(addi(rd, rd, lo));
            }
        }
        self
    }

    /// The bytes, with all label references resolved.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = self.bytes.clone();
        for f in &self.fixups {
            let target = self.addr(f.label);
            let off = target.wrapping_sub(self.base + f.at as u64) as i64;
            let word = (f.encode)(i32::try_from(off).expect("label out of range"));
            out[f.at..f.at + f.len].copy_from_slice(&word.to_le_bytes()[..f.len]);
        }
        out
    }
}
