//! RV64I: arithmetic, shifts, comparisons, upper immediates, W ops, control transfer, loads and stores.

use crate::common::*;
use crate::compute;

const MIN: u64 = i64::MIN as u64;
const MAX: u64 = i64::MAX as u64;

#[test]
fn li_materializes_constants() {
    let values = [
        0u64,
        1,
        0x7ff,
        0x800,
        0xffff_ffff_ffff_f800,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        u64::MAX,
        MIN,
        MAX,
        0x1234_5678_9abc_def0,
        0xdead_beef_0000_0fff,
    ];
    for v in values {
        let mut m = Machine::new();
        let mut a = Asm::new(CODE);
        a.li(A0, v);
        m.run_to_ecall(&mut a);
        assert_eq!(m.x(A0), v, "li {v:#x}");
    }
}

#[test]
fn add_and_sub_wrap_around() {
    assert_eq!(compute(add(A0, A1, A2), MAX, 1), MIN);
    assert_eq!(compute(add(A0, A1, A2), u64::MAX, 2), 1);
    assert_eq!(compute(sub(A0, A1, A2), 0, 1), u64::MAX);
    assert_eq!(compute(sub(A0, A1, A2), MIN, 1), MAX);
    assert_eq!(compute(addi(A0, A1, -2048), 0, 0), (-2048i64) as u64);
}

#[test]
fn x0_ignores_writes() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.i(addi(ZERO, ZERO, 5)).i(lui(ZERO, 0x12345)).i(add(A0, ZERO, ZERO));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(ZERO), 0);
    assert_eq!(m.x(A0), 0);
}

#[test]
fn logic_immediates_are_sign_extended() {
    assert_eq!(compute(andi(A0, A1, -16), u64::MAX, 0), 0xffff_ffff_ffff_fff0);
    assert_eq!(compute(xori(A0, A1, -1), 0x0f0f, 0), !0x0f0fu64);
    assert_eq!(compute(ori(A0, A1, -2048), 1, 0), 0xffff_ffff_ffff_f801);
    assert_eq!(compute(and(A0, A1, A2), 0xff00_ff00, 0x0ff0_0ff0), 0x0f00_0f00);
    assert_eq!(compute(or(A0, A1, A2), 0xff00_0000_0000_0000, 0xff), 0xff00_0000_0000_00ff);
    assert_eq!(compute(xor(A0, A1, A2), u64::MAX, 0xff), 0xffff_ffff_ffff_ff00);
}

#[test]
fn immediate_shifts_up_to_63() {
    assert_eq!(compute(slli(A0, A1, 63), 3, 0), MIN);
    assert_eq!(compute(srli(A0, A1, 63), MIN, 0), 1);
    assert_eq!(compute(srai(A0, A1, 63), MIN, 0), u64::MAX);
    assert_eq!(compute(srai(A0, A1, 4), 0xf000_0000_0000_0000, 0), 0xff00_0000_0000_0000);
    assert_eq!(compute(srli(A0, A1, 4), 0xf000_0000_0000_0000, 0), 0x0f00_0000_0000_0000);
    assert_eq!(compute(slli(A0, A1, 0), 0x1234, 0), 0x1234);
}

#[test]
fn register_shifts_use_the_low_six_bits() {
    assert_eq!(compute(sll(A0, A1, A2), 1, 63), MIN);
    assert_eq!(compute(sll(A0, A1, A2), 1, 64 + 4), 16);
    assert_eq!(compute(srl(A0, A1, A2), MIN, 0xffff_ffff_ffff_ff3f), 1);
    assert_eq!(compute(sra(A0, A1, A2), MIN, 63), u64::MAX);
    assert_eq!(compute(sra(A0, A1, A2), MIN, 128), MIN);
}

#[test]
fn set_less_than_signed_and_unsigned() {
    assert_eq!(compute(slt(A0, A1, A2), u64::MAX, 1), 1, "-1 < 1 signed");
    assert_eq!(compute(sltu(A0, A1, A2), u64::MAX, 1), 0, "MAX > 1 unsigned");
    assert_eq!(compute(slt(A0, A1, A2), MIN, MAX), 1);
    assert_eq!(compute(sltu(A0, A1, A2), MIN, MAX), 0);
    assert_eq!(compute(sltu(A0, A1, A2), 5, 5), 0);
    // snez: sltu rd, x0, rs
    assert_eq!(compute(sltu(A0, ZERO, A2), 0, 5), 1);
    assert_eq!(compute(sltu(A0, ZERO, A2), 0, 0), 0);
    // sltiu compares against the sign-extended immediate as an unsigned number: seqz and "!= MAX".
    assert_eq!(compute(sltiu(A0, A1, 1), 0, 0), 1);
    assert_eq!(compute(sltiu(A0, A1, 1), 7, 0), 0);
    assert_eq!(compute(sltiu(A0, A1, -1), u64::MAX - 1, 0), 1);
    assert_eq!(compute(sltiu(A0, A1, -1), u64::MAX, 0), 0);
    assert_eq!(compute(slti(A0, A1, -1), MIN, 0), 1);
    assert_eq!(compute(slti(A0, A1, -1), 0, 0), 0);
}

#[test]
fn lui_and_auipc_sign_extend() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.i(lui(A0, 0x80000)).i(lui(A1, 0x7ffff));
    let auipc_pc = a.pc();
    a.i(auipc(A2, 0x80000)).i(auipc(A3, 0x00001)).i(auipc(A4, 0));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 0xffff_ffff_8000_0000);
    assert_eq!(m.x(A1), 0x7fff_f000);
    assert_eq!(m.x(A2), auipc_pc.wrapping_add(0xffff_ffff_8000_0000));
    assert_eq!(m.x(A3), auipc_pc + 4 + 0x1000);
    assert_eq!(m.x(A4), auipc_pc + 8);
}

#[test]
fn addiw_and_addw_wrap_at_32_bits_and_sign_extend() {
    assert_eq!(compute(addiw(A0, A1, 1), 0x7fff_ffff, 0), 0xffff_ffff_8000_0000);
    assert_eq!(compute(addiw(A0, A1, 0), 0x1_0000_0000, 0), 0, "sext.w drops the upper half");
    assert_eq!(compute(addiw(A0, A1, 0), 0x1234_5678_8000_0000, 0), 0xffff_ffff_8000_0000);
    assert_eq!(compute(addw(A0, A1, A2), 0xffff_ffff, 1), 0);
    assert_eq!(compute(subw(A0, A1, A2), 0, 1), u64::MAX);
    assert_eq!(compute(subw(A0, A1, A2), 0x8000_0000, 1), 0x7fff_ffff);
}

#[test]
fn w_shifts_operate_on_the_low_word() {
    // sraw: the low word 0xfffffff8 is -8.
    assert_eq!(compute(sraw(A0, A1, A2), 0x1234_5678_ffff_fff8, 1), (-4i64) as u64);
    assert_eq!(compute(sraw(A0, A1, A2), 0x8000_0000, 31 + 32), u64::MAX, "shift amount uses 5 bits");
    // srliw of a negative word: zero-filled from bit 31, then sign-extended from the (now clear) bit 31.
    assert_eq!(compute(srliw(A0, A1, 1), 0xffff_ffff_8000_0000, 0), 0x4000_0000);
    assert_eq!(compute(srliw(A0, A1, 0), 0x8000_0000, 0), 0xffff_ffff_8000_0000);
    assert_eq!(compute(srlw(A0, A1, A2), 0xffff_ffff, 4), 0x0fff_ffff);
    assert_eq!(compute(sraiw(A0, A1, 31), 0x8000_0000, 0), u64::MAX);
    assert_eq!(compute(slliw(A0, A1, 31), 1, 0), 0xffff_ffff_8000_0000);
    assert_eq!(compute(sllw(A0, A1, A2), 3, 30), 0xffff_ffff_c000_0000);
}

#[test]
fn conditional_branches_taken_and_not_taken() {
    type Branch = for<'a> fn(&'a mut Asm, u32, u32, &'static str) -> &'a mut Asm;
    let cases: &[(&str, Branch, u64, u64, bool)] = &[
        ("beq", Asm::beq, 5, 5, true),
        ("beq", Asm::beq, 5, 6, false),
        ("bne", Asm::bne, 5, 6, true),
        ("bne", Asm::bne, 5, 5, false),
        ("blt", Asm::blt, u64::MAX, 0, true),
        ("blt", Asm::blt, 0, u64::MAX, false),
        ("blt", Asm::blt, 3, 3, false),
        ("bge", Asm::bge, 3, 3, true),
        ("bge", Asm::bge, 0, u64::MAX, true),
        ("bge", Asm::bge, MIN, MAX, false),
        ("bltu", Asm::bltu, 0, u64::MAX, true),
        ("bltu", Asm::bltu, u64::MAX, 0, false),
        ("bgeu", Asm::bgeu, u64::MAX, 0, true),
        ("bgeu", Asm::bgeu, 7, 7, true),
        ("bgeu", Asm::bgeu, 0, 1, false),
    ];
    for &(name, branch, x, y, taken) in cases {
        let mut m = Machine::new();
        m.set_x(T0, x);
        m.set_x(T1, y);
        let mut a = Asm::new(CODE);
        branch(&mut a, T0, T1, "taken");
        a.i(addi(A0, ZERO, 1)).j("end").label("taken").i(addi(A0, ZERO, 2)).label("end");
        m.run_to_ecall(&mut a);
        assert_eq!(m.x(A0), if taken { 2 } else { 1 }, "{name} {x:#x}, {y:#x}");
    }
}

#[test]
fn backward_branch_loops() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.i(addi(T0, ZERO, 5))
        .i(addi(A0, ZERO, 0))
        .label("loop")
        .i(addi(A0, A0, 3))
        .i(addi(T0, T0, -1))
        .bne(T0, ZERO, "loop");
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 15);
    assert_eq!(m.x(T0), 0);
}

#[test]
fn jal_links_the_next_instruction() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    let jal_pc = a.pc();
    a.jal(RA, "target").i(addi(A0, ZERO, 1)).label("target").i(addi(A1, ZERO, 2));
    // Backward jal as well.
    a.j("over").label("back").i(addi(A2, ZERO, 3)).j("done").label("over");
    let back_jal = a.pc();
    a.jal(T0, "back").label("done");
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(RA), jal_pc + 4);
    assert_eq!(m.x(A0), 0, "the instruction after jal was skipped");
    assert_eq!(m.x(A1), 2);
    assert_eq!(m.x(A2), 3);
    assert_eq!(m.x(T0), back_jal + 4);
}

#[test]
fn jalr_clears_bit_zero_and_links_after_reading_rs1() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    // rs1 + offset = CODE + 25 (odd); the target is CODE + 24.
    a.i(auipc(T0, 0)).i(addi(T0, T0, 26)).i(jalr(RA, T0, -1));
    a.i(addi(A0, ZERO, 1)).i(addi(A0, ZERO, 1)).i(addi(A0, ZERO, 1));
    assert_eq!(a.pc(), CODE + 24);
    a.i(addi(A1, ZERO, 7));
    // rd == rs1: the target comes from the old value (CODE + 44), the link is CODE + 40.
    a.i(auipc(T1, 0)).i(addi(T1, T1, 16)).i(jalr(T1, T1, 0));
    a.i(addi(A2, ZERO, 1));
    assert_eq!(a.pc(), CODE + 44);
    a.i(addi(A3, ZERO, 9));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(RA), CODE + 12, "link = jalr pc + 4");
    assert_eq!(m.x(A0), 0, "skipped");
    assert_eq!(m.x(A1), 7);
    assert_eq!(m.x(T1), CODE + 40);
    assert_eq!(m.x(A2), 0, "skipped");
    assert_eq!(m.x(A3), 9);
}

#[test]
fn loads_sign_and_zero_extend() {
    let mut m = Machine::new();
    m.write_u64(DATA, 0xf1f2_f3f4_8586_8788);
    m.write_u64(DATA + 8, 0x0000_0000_7f7e_7d7c);
    m.set_x(T0, DATA);
    let mut a = Asm::new(CODE);
    a.i(lb(A0, 0, T0))
        .i(lbu(A1, 0, T0))
        .i(lh(A2, 0, T0))
        .i(lhu(A3, 0, T0))
        .i(lw(A4, 0, T0))
        .i(lwu(A5, 0, T0))
        .i(ld(A6, 0, T0))
        .i(lb(S2, 8, T0))
        .i(lh(S3, 8, T0))
        .i(lw(S4, 8, T0))
        .i(lw(S5, 4, T0))
        .i(addi(T1, T0, 16))
        .i(lbu(T2, -1, T1));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 0xffff_ffff_ffff_ff88);
    assert_eq!(m.x(A1), 0x88);
    assert_eq!(m.x(A2), 0xffff_ffff_ffff_8788);
    assert_eq!(m.x(A3), 0x8788);
    assert_eq!(m.x(A4), 0xffff_ffff_8586_8788);
    assert_eq!(m.x(A5), 0x8586_8788);
    assert_eq!(m.x(A6), 0xf1f2_f3f4_8586_8788);
    assert_eq!(m.x(S2), 0x7c);
    assert_eq!(m.x(S3), 0x7d7c);
    assert_eq!(m.x(S4), 0x7f7e_7d7c);
    assert_eq!(m.x(S5), 0xffff_ffff_f1f2_f3f4);
    assert_eq!(m.x(T2), 0);
}

#[test]
fn stores_write_exactly_their_width() {
    let mut m = Machine::new();
    for i in 0..4 {
        m.write_u64(DATA + 8 * i, 0xaaaa_aaaa_aaaa_aaaa);
    }
    m.set_x(T0, DATA);
    m.set_x(A0, 0x1122_3344_5566_7788);
    let mut a = Asm::new(CODE);
    a.i(sb(A0, 0, T0)).i(sh(A0, 8, T0)).i(sw(A0, 16, T0)).i(sd(A0, 24, T0)).i(addi(T1, T0, 8)).i(sb(A0, -5, T1));
    m.run_to_ecall(&mut a);
    assert_eq!(m.read_u64(DATA), 0xaaaa_aaaa_88aa_aa88, "sb at +0 and +3");
    assert_eq!(m.read_u64(DATA + 8), 0xaaaa_aaaa_aaaa_7788);
    assert_eq!(m.read_u64(DATA + 16), 0xaaaa_aaaa_5566_7788);
    assert_eq!(m.read_u64(DATA + 24), 0x1122_3344_5566_7788);
}

#[test]
fn first_instruction_fetched_on_a_translation_miss_is_complete() {
    // The very first fetch from a page has no cached translation; all 32 bits must still be decoded.
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.i(lui(A0, 0x12345));
    a.pad_to(CODE + PAGE);
    a.i(lui(A1, 0xfedcb));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 0x1234_5000);
    assert_eq!(m.x(A1), 0xffff_ffff_fedc_b000);
}

#[test]
fn stores_to_code_are_seen_after_fence_i() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.li(T0, addi(A0, ZERO, 42) as u64).i(auipc(T1, 0));
    let patch_base = a.pc() - 4;
    a.i(sw(T0, 16, T1)).i(fence_i()).i(nop());
    assert_eq!(a.pc(), patch_base + 16);
    a.i(nop()); // overwritten with addi a0, zero, 42 (at patch_base + 16)
    assert_eq!(a.pc(), patch_base + 20);
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 42);
}

#[test]
fn reserved_encodings_are_illegal() {
    let cases: &[(&str, u32)] = &[
        ("all ones", 0xffff_ffff),
        ("slliw with shamt[5]", slliw(A0, A1, 0) | (1 << 25)),
        ("sraiw with shamt[5]", sraiw(A0, A1, 0) | (1 << 25)),
        ("slli with funct6 = 1", slli(A0, A1, 0) | (1 << 26)),
        ("jalr funct3 = 1", jalr(RA, A0, 0) | (1 << 12)),
        ("branch funct3 = 2", beq(A0, A1, 8) | (2 << 12)),
        ("load funct3 = 7", ld(A0, 0, A1) | (7 << 12)),
        ("store funct3 = 4", s_type(0x23, 4, A0, 0, A1)),
        ("OP funct7 = 0x20 with sll", sll(A0, A1, A2) | (0x20 << 25)),
        ("OP-32 funct7 = 0x20 with sllw", sllw(A0, A1, A2) | (0x20 << 25)),
        ("lr.d with rs2 != 0", lr_d(A0, A1) | (A2 << 20)),
        ("AMO funct3 = 4", amoadd_w(A0, A1, A2) & !(7 << 12) | (4 << 12)),
        ("AMO unknown funct5", amo(0x1f, true, A0, A1, A2)),
        ("ecall with rd", ecall() | (A0 << 7)),
        ("mret with rs1", mret() | (A0 << 15)),
        ("unknown major opcode", 0x0000_007b),
    ];
    for &(name, insn) in cases {
        let mut m = Machine::new();
        m.set_x(A1, DATA);
        m.set_x(A2, DATA);
        let mut a = Asm::new(CODE);
        a.i(insn);
        let trap = m.run_program(&a);
        assert_eq!((trap.cause, trap.epc), (cause::ILLEGAL, CODE), "{name} ({insn:#010x}): {}", m.describe());
        assert!(trap.tval == 0 || trap.tval == insn as u64, "{name}: tval {:#x}", trap.tval);
        assert_eq!(m.x(A0), 0, "{name}: nothing written");
    }
}
