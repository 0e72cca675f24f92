//! The F and D extensions: arithmetic, rounding modes, NaN boxing, exception flags, signed zeros,
//! conversions, classification, comparisons and the mstatus.FS state.

use crate::common::*;

const NX: u64 = fflags::NX;
const UF: u64 = fflags::UF;
const OF: u64 = fflags::OF;
const DZ: u64 = fflags::DZ;
const NV: u64 = fflags::NV;

const QNAN_D: u64 = 0x7ff8_0000_0000_0000;
const SNAN_D: u64 = 0x7ff0_0000_0000_0001;
const QNAN_S: u64 = 0xffff_ffff_7fc0_0000;
const SNAN_S: u64 = 0xffff_ffff_7f80_0001;
const NEG_ZERO_D: u64 = 0x8000_0000_0000_0000;

/// An f64 as register bits.
fn d(v: f64) -> u64 {
    v.to_bits()
}

/// An f32 NaN-boxed into register bits.
fn s(v: f32) -> u64 {
    0xffff_ffff_0000_0000 | v.to_bits() as u64
}

/// 2^e as an f64.
fn pow2(e: i32) -> f64 {
    2f64.powi(e)
}

/// What one FP instruction left behind.
#[derive(Debug, PartialEq, Eq)]
struct Out {
    /// f0 (the destination of FP results) or a0 (integer results), depending on the instruction.
    f0: u64,
    a0: u64,
    flags: u64,
}

fn fp_machine() -> Machine {
    let mut m = Machine::new();
    m.enable_fp();
    m
}

/// Runs `insn` with f1, f2, f3 = `srcs` and a1 = `x`, fflags clear and frm = `frm`.
fn fp_run(insn: u32, srcs: [u64; 3], x: u64, frm: u64) -> Out {
    let mut m = fp_machine();
    m.set_f(F1, srcs[0]);
    m.set_f(F2, srcs[1]);
    m.set_f(F3, srcs[2]);
    m.set_x(A1, x);
    m.edit(|s| s.fcsr = frm << 5);
    let mut a = Asm::new(CODE);
    a.i(insn);
    m.run_to_ecall(&mut a);
    Out { f0: m.f(F0), a0: m.x(A0), flags: m.fflags() }
}

/// Result bits and flags of an FP → FP instruction (destination f0).
fn f_op(insn: u32, srcs: [u64; 3]) -> (u64, u64) {
    let o = fp_run(insn, srcs, 0, 0);
    (o.f0, o.flags)
}

/// Result and flags of an FP → integer instruction (destination a0).
fn x_op(insn: u32, srcs: [u64; 3]) -> (u64, u64) {
    let o = fp_run(insn, srcs, 0, 0);
    (o.a0, o.flags)
}

fn assert_illegal(m: &Machine, trap: Trap, insn: u32, pc: u64) {
    assert_eq!((trap.cause, trap.epc), (cause::ILLEGAL, pc), "{}", m.describe());
    assert!(trap.tval == 0 || trap.tval == insn as u64, "mtval {:#x} is neither 0 nor the instruction", trap.tval);
}

#[test]
fn fadd_single_and_double() {
    assert_eq!(f_op(fadd_s(F0, F1, F2, rm::RNE), [s(1.5), s(2.25), 0]), (s(3.75), 0));
    assert_eq!(f_op(fadd_d(F0, F1, F2, rm::RNE), [d(1.5), d(2.25), 0]), (d(3.75), 0));
    assert_eq!(f_op(fsub_d(F0, F1, F2, rm::RNE), [d(1.5), d(2.25), 0]), (d(-0.75), 0));
    assert_eq!(f_op(fmul_d(F0, F1, F2, rm::RNE), [d(1.5), d(-4.0), 0]), (d(-6.0), 0));
    assert_eq!(f_op(fmul_s(F0, F1, F2, rm::RNE), [s(1.5), s(-4.0), 0]), (s(-6.0), 0));
    assert_eq!(f_op(fdiv_s(F0, F1, F2, rm::RNE), [s(1.0), s(4.0), 0]), (s(0.25), 0));
    assert_eq!(f_op(fsqrt_d(F0, F1, rm::RNE), [d(6.25), 0, 0]), (d(2.5), 0));
    assert_eq!(f_op(fsqrt_s(F0, F1, rm::RNE), [s(0.25), 0, 0]), (s(0.5), 0));
}

#[test]
fn static_rounding_modes() {
    let one_up = d(1.0) + 1; // 1 + 2^-52
    let tiny = d(pow2(-60));
    for (mode, expected) in
        [(rm::RNE, d(1.0)), (rm::RTZ, d(1.0)), (rm::RDN, d(1.0)), (rm::RUP, one_up), (rm::RMM, d(1.0))]
    {
        assert_eq!(f_op(fadd_d(F0, F1, F2, mode), [d(1.0), tiny, 0]), (expected, NX), "1 + 2^-60, rm {mode}");
    }
    let neg_tiny = d(-pow2(-60));
    assert_eq!(f_op(fadd_d(F0, F1, F2, rm::RDN), [d(-1.0), neg_tiny, 0]), (d(-1.0) + 1, NX));
    assert_eq!(f_op(fadd_d(F0, F1, F2, rm::RUP), [d(-1.0), neg_tiny, 0]), (d(-1.0), NX));
    // An exact tie: 1 + 2^-53 is halfway between 1 and 1 + 2^-52.
    let half_ulp = d(pow2(-53));
    assert_eq!(f_op(fadd_d(F0, F1, F2, rm::RNE), [d(1.0), half_ulp, 0]), (d(1.0), NX), "ties to even");
    assert_eq!(f_op(fadd_d(F0, F1, F2, rm::RMM), [d(1.0), half_ulp, 0]), (one_up, NX), "ties away from zero");
}

#[test]
fn dynamic_rounding_mode_comes_from_frm() {
    let tiny = d(pow2(-60));
    let insn = fadd_d(F0, F1, F2, rm::DYN);
    assert_eq!(fp_run(insn, [d(1.0), tiny, 0], 0, 3).f0, d(1.0) + 1, "frm = RUP");
    assert_eq!(fp_run(insn, [d(1.0), tiny, 0], 0, 2).f0, d(1.0), "frm = RDN");

    // frm written by the program, read back through fcsr.
    let mut m = fp_machine();
    m.set_f64(F1, 1.0);
    m.set_f(F2, tiny);
    let mut a = Asm::new(CODE);
    a.i(csrwi(csr::FRM, 3)).i(fadd_d(F0, F1, F2, rm::DYN)).i(csrr(A0, csr::FCSR)).i(csrr(A1, csr::FRM));
    m.run_to_ecall(&mut a);
    assert_eq!(m.f(F0), d(1.0) + 1);
    assert_eq!(m.x(A0), (3 << 5) | NX);
    assert_eq!(m.x(A1), 3);
}

#[test]
fn reserved_rounding_modes_are_illegal() {
    for mode in [5, 6] {
        let mut m = fp_machine();
        let insn = fadd_d(F0, F1, F2, mode);
        let mut a = Asm::new(CODE);
        a.i(insn);
        let trap = m.run_program(&a);
        assert_illegal(&m, trap, insn, CODE);
    }
    for frm in [5, 6, 7] {
        let mut m = fp_machine();
        m.edit(|s| s.fcsr = frm << 5);
        let insn = fadd_d(F0, F1, F2, rm::DYN);
        let mut a = Asm::new(CODE);
        a.i(insn);
        let trap = m.run_program(&a);
        assert_illegal(&m, trap, insn, CODE);
    }
}

#[test]
fn improperly_boxed_singles_read_as_canonical_nan() {
    let unboxed_one = 0x0000_0000_3f80_0000;
    let almost_boxed = 0xffff_fffe_3f80_0000;
    assert_eq!(f_op(fadd_s(F0, F1, F2, rm::RNE), [unboxed_one, s(1.0), 0]), (QNAN_S, 0));
    assert_eq!(f_op(fadd_s(F0, F1, F2, rm::RNE), [almost_boxed, s(1.0), 0]), (QNAN_S, 0));
    assert_eq!(f_op(fadd_s(F0, F1, F2, rm::RNE), [s(1.0), s(1.0), 0]), (s(2.0), 0));
}

#[test]
fn sign_injection_checks_nan_boxing() {
    // fmv.s (fsgnj.s rd, rs, rs) of an unboxed value produces the boxed canonical NaN.
    assert_eq!(f_op(fsgnj_s(F0, F1, F1), [0x0000_0000_bf80_0000, 0, 0]).0, QNAN_S);
    assert_eq!(f_op(fsgnj_s(F0, F1, F2), [s(2.0), s(-0.0), 0]).0, s(-2.0));
}

#[test]
fn transfers_ignore_or_create_boxing() {
    let mut m = fp_machine();
    m.write_u32(DATA, 0x3f80_0000);
    m.set_x(T0, DATA);
    m.set_f(F1, 0x0000_0000_4000_0000); // unboxed 2.0
    m.set_f(F2, 0xffff_ffff_8000_0001);
    m.set_f(F3, 0x1234_5678_7f80_0000); // unboxed
    m.set_x(A3, 0xdead_beef_c000_0000);
    let mut a = Asm::new(CODE);
    a.i(flw(F5, 0, T0)).i(fsw(F1, 8, T0)).i(fmv_x_w(A0, F2)).i(fmv_x_w(A1, F3)).i(fmv_w_x(F6, A3)).i(fmv_x_d(A2, F3));
    m.run_to_ecall(&mut a);
    assert_eq!(m.f(F5), 0xffff_ffff_3f80_0000, "flw boxes");
    assert_eq!(m.read_u32(DATA + 8), 0x4000_0000, "fsw stores the low bits unchanged");
    assert_eq!(m.x(A0), 0xffff_ffff_8000_0001, "fmv.x.w sign-extends");
    assert_eq!(m.x(A1), 0x7f80_0000, "fmv.x.w ignores the upper half");
    assert_eq!(m.f(F6), 0xffff_ffff_c000_0000, "fmv.w.x boxes");
    assert_eq!(m.x(A2), 0x1234_5678_7f80_0000);
}

#[test]
fn double_loads_and_stores_move_raw_bits() {
    let mut m = fp_machine();
    m.write_u64(DATA, SNAN_D);
    m.set_x(T0, DATA);
    let mut a = Asm::new(CODE);
    a.i(fld(F1, 0, T0)).i(fsd(F1, 8, T0)).i(fmv_d_x(F2, T0)).i(fsd(F2, 16, T0));
    m.run_to_ecall(&mut a);
    assert_eq!(m.f(F1), SNAN_D);
    assert_eq!(m.read_u64(DATA + 8), SNAN_D, "no canonicalization on transfers");
    assert_eq!(m.read_u64(DATA + 16), DATA);
    assert_eq!(m.fflags(), 0);
}

#[test]
fn each_exception_flag() {
    let inf = d(f64::INFINITY);
    let cases: &[(&str, u32, [u64; 3], u64, u64)] = &[
        ("1/3", fdiv_d(F0, F1, F2, rm::RNE), [d(1.0), d(3.0), 0], d(1.0 / 3.0), NX),
        ("1/0", fdiv_d(F0, F1, F2, rm::RNE), [d(1.0), d(0.0), 0], inf, DZ),
        ("-1/0", fdiv_s(F0, F1, F2, rm::RNE), [s(-1.0), s(0.0), 0], s(f32::NEG_INFINITY), DZ),
        ("sqrt(-1)", fsqrt_d(F0, F1, rm::RNE), [d(-1.0), 0, 0], QNAN_D, NV),
        ("sqrt(-0)", fsqrt_d(F0, F1, rm::RNE), [NEG_ZERO_D, 0, 0], NEG_ZERO_D, 0),
        ("0*inf+1", fmadd_d(F0, F1, F2, F3, rm::RNE), [d(0.0), inf, d(1.0)], QNAN_D, NV),
        ("inf*0+qNaN", fmadd_d(F0, F1, F2, F3, rm::RNE), [inf, d(0.0), QNAN_D], QNAN_D, NV),
        ("inf-inf", fadd_d(F0, F1, F2, rm::RNE), [inf, d(f64::NEG_INFINITY), 0], QNAN_D, NV),
        ("0/0", fdiv_d(F0, F1, F2, rm::RNE), [d(0.0), d(0.0), 0], QNAN_D, NV),
        ("MAX*2", fmul_d(F0, F1, F2, rm::RNE), [d(f64::MAX), d(2.0), 0], inf, OF | NX),
        ("MAX*2 rtz", fmul_d(F0, F1, F2, rm::RTZ), [d(f64::MAX), d(2.0), 0], d(f64::MAX), OF | NX),
        ("1e-300^2", fmul_d(F0, F1, F2, rm::RNE), [d(1e-300), d(1e-300), 0], d(0.0), UF | NX),
        (
            "exact subnormal",
            fmul_d(F0, F1, F2, rm::RNE),
            [d(f64::MIN_POSITIVE), d(0.5), 0],
            d(f64::MIN_POSITIVE / 2.0),
            0,
        ),
        ("sNaN+1", fadd_d(F0, F1, F2, rm::RNE), [SNAN_D, d(1.0), 0], QNAN_D, NV),
        ("qNaN+1", fadd_d(F0, F1, F2, rm::RNE), [0x7ff8_0000_dead_beef, d(1.0), 0], QNAN_D, 0),
        ("sNaN+1 single", fadd_s(F0, F1, F2, rm::RNE), [SNAN_S, s(1.0), 0], QNAN_S, NV),
    ];
    for &(name, insn, srcs, result, flags) in cases {
        assert_eq!(f_op(insn, srcs), (result, flags), "{name}");
    }
}

#[test]
fn flags_accumulate_until_cleared() {
    let mut m = fp_machine();
    m.set_f64(F1, 1.0);
    m.set_f64(F2, 3.0);
    m.set_f64(F3, 0.0);
    m.set_f64(F4, -1.0);
    m.set_f64(F5, f64::MAX);
    m.set_f64(F6, 1e-300);
    let mut a = Asm::new(CODE);
    a.i(fdiv_d(F0, F1, F2, rm::RNE)) // NX
        .i(csrr(A0, csr::FFLAGS))
        .i(fdiv_d(F0, F1, F3, rm::RNE)) // DZ
        .i(csrr(A1, csr::FFLAGS))
        .i(fsqrt_d(F0, F4, rm::RNE)) // NV
        .i(csrr(A2, csr::FFLAGS))
        .i(fmul_d(F0, F5, F5, rm::RNE)) // OF NX
        .i(fmul_d(F0, F6, F6, rm::RNE)) // UF NX
        .i(csrr(A3, csr::FFLAGS))
        .i(csrrw(A4, csr::FFLAGS, ZERO))
        .i(csrr(A5, csr::FFLAGS))
        .i(csrr(A6, csr::FCSR));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), NX);
    assert_eq!(m.x(A1), NX | DZ);
    assert_eq!(m.x(A2), NX | DZ | NV);
    assert_eq!(m.x(A3), 0x1f);
    assert_eq!(m.x(A4), 0x1f, "csrrw returns the old flags");
    assert_eq!(m.x(A5), 0, "and clears them");
    assert_eq!(m.x(A6), 0);
}

#[test]
fn sign_injection_on_doubles() {
    assert_eq!(f_op(fsgnj_d(F0, F1, F2), [d(1.0), NEG_ZERO_D, 0]).0, d(-1.0));
    assert_eq!(f_op(fsgnjn_d(F0, F1, F2), [d(1.0), NEG_ZERO_D, 0]).0, d(1.0));
    assert_eq!(f_op(fsgnjn_d(F0, F1, F1), [d(2.5), 0, 0]).0, d(-2.5), "fneg");
    assert_eq!(f_op(fsgnjx_d(F0, F1, F1), [d(-2.5), 0, 0]).0, d(2.5), "fabs");
    assert_eq!(f_op(fsgnjx_d(F0, F1, F2), [d(-2.0), d(1.0), 0]).0, d(-2.0));
    // Sign injection never canonicalizes or signals, even on a signaling NaN.
    assert_eq!(f_op(fsgnjn_d(F0, F1, F1), [SNAN_D, 0, 0]), (SNAN_D | (1 << 63), 0));
}

#[test]
fn signed_zero_arithmetic() {
    assert_eq!(f_op(fadd_d(F0, F1, F2, rm::RNE), [NEG_ZERO_D, d(0.0), 0]).0, d(0.0));
    assert_eq!(f_op(fadd_d(F0, F1, F2, rm::RDN), [NEG_ZERO_D, d(0.0), 0]).0, NEG_ZERO_D);
    assert_eq!(f_op(fsub_d(F0, F1, F2, rm::RNE), [d(3.0), d(3.0), 0]).0, d(0.0));
    assert_eq!(f_op(fsub_d(F0, F1, F2, rm::RDN), [d(3.0), d(3.0), 0]).0, NEG_ZERO_D);
    assert_eq!(f_op(fadd_d(F0, F1, F2, rm::RNE), [NEG_ZERO_D, NEG_ZERO_D, 0]).0, NEG_ZERO_D);
}

#[test]
fn min_and_max() {
    assert_eq!(f_op(fmin_d(F0, F1, F2), [NEG_ZERO_D, d(0.0), 0]), (NEG_ZERO_D, 0));
    assert_eq!(f_op(fmin_d(F0, F1, F2), [d(0.0), NEG_ZERO_D, 0]), (NEG_ZERO_D, 0));
    assert_eq!(f_op(fmax_d(F0, F1, F2), [NEG_ZERO_D, d(0.0), 0]), (d(0.0), 0));
    assert_eq!(f_op(fmax_d(F0, F1, F2), [d(0.0), NEG_ZERO_D, 0]), (d(0.0), 0));
    assert_eq!(f_op(fmin_d(F0, F1, F2), [QNAN_D, d(1.0), 0]), (d(1.0), 0), "a quiet NaN is ignored");
    assert_eq!(f_op(fmax_d(F0, F1, F2), [d(-1.0), SNAN_D, 0]), (d(-1.0), NV), "a signaling NaN is ignored but signals");
    assert_eq!(f_op(fmin_d(F0, F1, F2), [SNAN_D, QNAN_D, 0]), (QNAN_D, NV), "two NaNs give the canonical NaN");
    assert_eq!(f_op(fmin_s(F0, F1, F2), [s(-3.0), s(2.0), 0]), (s(-3.0), 0));
}

#[test]
fn float_to_int_conversions_saturate() {
    let max_w = 0x7fff_ffffu64;
    let min_w = 0xffff_ffff_8000_0000u64;
    let nan = QNAN_D;
    let cases: &[(&str, u32, u64, u64, u64)] = &[
        ("w 3e9", fcvt_w_d(A0, F1, rm::RTZ), d(3e9), max_w, NV),
        ("w -3e9", fcvt_w_d(A0, F1, rm::RTZ), d(-3e9), min_w, NV),
        ("w NaN", fcvt_w_d(A0, F1, rm::RTZ), nan, max_w, NV),
        ("w sNaN", fcvt_w_d(A0, F1, rm::RTZ), SNAN_D, max_w, NV),
        ("w -NaN", fcvt_w_d(A0, F1, rm::RTZ), nan | (1 << 63), max_w, NV),
        ("w +inf", fcvt_w_d(A0, F1, rm::RTZ), d(f64::INFINITY), max_w, NV),
        ("w -inf", fcvt_w_d(A0, F1, rm::RTZ), d(f64::NEG_INFINITY), min_w, NV),
        ("w -1", fcvt_w_d(A0, F1, rm::RTZ), d(-1.0), u64::MAX, 0),
        ("w 2.5 rne", fcvt_w_d(A0, F1, rm::RNE), d(2.5), 2, NX),
        ("w 2.5 rmm", fcvt_w_d(A0, F1, rm::RMM), d(2.5), 3, NX),
        ("w 2.5 rup", fcvt_w_d(A0, F1, rm::RUP), d(2.5), 3, NX),
        ("w -2.5 rdn", fcvt_w_d(A0, F1, rm::RDN), d(-2.5), (-3i64) as u64, NX),
        ("w -2.5 rtz", fcvt_w_d(A0, F1, rm::RTZ), d(-2.5), (-2i64) as u64, NX),
        ("w -2^31-0.5 rtz", fcvt_w_d(A0, F1, rm::RTZ), d(-2147483648.5), min_w, NX),
        ("w -2^31-0.5 rdn", fcvt_w_d(A0, F1, rm::RDN), d(-2147483648.5), min_w, NV),
        ("wu -1", fcvt_wu_d(A0, F1, rm::RTZ), d(-1.0), 0, NV),
        ("wu -0.5 rtz", fcvt_wu_d(A0, F1, rm::RTZ), d(-0.5), 0, NX),
        ("wu 2^32-1", fcvt_wu_d(A0, F1, rm::RTZ), d(4294967295.0), u64::MAX, 0),
        ("wu 2^32", fcvt_wu_d(A0, F1, rm::RTZ), d(4294967296.0), u64::MAX, NV),
        ("wu NaN", fcvt_wu_d(A0, F1, rm::RTZ), nan, u64::MAX, NV),
        ("l NaN", fcvt_l_d(A0, F1, rm::RTZ), nan, i64::MAX as u64, NV),
        ("l 2^63", fcvt_l_d(A0, F1, rm::RTZ), d(pow2(63)), i64::MAX as u64, NV),
        ("l -2^63", fcvt_l_d(A0, F1, rm::RTZ), d(-pow2(63)), i64::MIN as u64, 0),
        ("lu NaN", fcvt_lu_d(A0, F1, rm::RTZ), nan, u64::MAX, NV),
        ("lu -1", fcvt_lu_d(A0, F1, rm::RTZ), d(-1.0), 0, NV),
        ("lu 2^64-2048", fcvt_lu_d(A0, F1, rm::RTZ), d(18446744073709549568.0), 0xffff_ffff_ffff_f800, 0),
        ("w.s 1.5 rne", fcvt_w_s(A0, F1, rm::RNE), s(1.5), 2, NX),
        ("w.s unboxed", fcvt_w_s(A0, F1, rm::RNE), 0x3f80_0000, max_w, NV),
    ];
    for &(name, insn, src, expected, flags) in cases {
        assert_eq!(x_op(insn, [src, 0, 0]), (expected, flags), "fcvt.{name}");
    }
}

#[test]
fn int_to_float_conversions() {
    let run = |insn: u32, x: u64| {
        let o = fp_run(insn, [0; 3], x, 0);
        (o.f0, o.flags)
    };
    assert_eq!(run(fcvt_d_w(F0, A1, rm::RNE), 0x1_ffff_ffff), (d(-1.0), 0), "only the low word counts");
    assert_eq!(run(fcvt_s_w(F0, A1, rm::RNE), 16_777_217), (s(16_777_216.0), NX));
    assert_eq!(run(fcvt_s_w(F0, A1, rm::RUP), 16_777_217), (s(16_777_218.0), NX));
    assert_eq!(run(fcvt_d_lu(F0, A1, rm::RNE), u64::MAX), (d(pow2(64)), NX));
    assert_eq!(run(fcvt_d_lu(F0, A1, rm::RTZ), u64::MAX), (d(pow2(64)) - 1, NX));
}

#[test]
fn single_double_conversions() {
    let just_above_one = d(1.0 + pow2(-30));
    assert_eq!(f_op(fcvt_s_d(F0, F1, rm::RNE), [just_above_one, 0, 0]), (s(1.0), NX));
    assert_eq!(f_op(fcvt_s_d(F0, F1, rm::RUP), [just_above_one, 0, 0]), (s(1.0 + f32::EPSILON), NX));
    assert_eq!(f_op(fcvt_s_d(F0, F1, rm::RNE), [d(f64::MAX), 0, 0]), (s(f32::INFINITY), OF | NX));
    assert_eq!(f_op(fcvt_s_d(F0, F1, rm::RNE), [SNAN_D, 0, 0]), (QNAN_S, NV));
    assert_eq!(f_op(fcvt_d_s(F0, F1), [s(1.5), 0, 0]), (d(1.5), 0));
    assert_eq!(f_op(fcvt_d_s(F0, F1), [0x3fc0_0000, 0, 0]), (QNAN_D, 0), "unboxed input");
}

#[test]
fn fused_multiply_add_family() {
    let srcs = [d(2.0), d(3.0), d(1.0)];
    assert_eq!(f_op(fmadd_d(F0, F1, F2, F3, rm::RNE), srcs), (d(7.0), 0));
    assert_eq!(f_op(fmsub_d(F0, F1, F2, F3, rm::RNE), srcs), (d(5.0), 0));
    assert_eq!(f_op(fnmsub_d(F0, F1, F2, F3, rm::RNE), srcs), (d(-5.0), 0));
    assert_eq!(f_op(fnmadd_d(F0, F1, F2, F3, rm::RNE), srcs), (d(-7.0), 0));
    assert_eq!(f_op(fmadd_s(F0, F1, F2, F3, rm::RNE), [s(2.0), s(3.0), s(1.0)]), (s(7.0), 0));
    // One rounding only: (1 + 2^-52)(1 - 2^-52) - 1 = -2^-104 exactly (a separate multiply would give 0).
    let a = d(1.0 + pow2(-52));
    let b = d(1.0 - pow2(-52));
    assert_eq!(f_op(fmsub_d(F0, F1, F2, F3, rm::RNE), [a, b, d(1.0)]), (d(-pow2(-104)), 0));
}

#[test]
fn classification() {
    let cases: &[(u64, u64)] = &[
        (d(f64::NEG_INFINITY), 1 << 0),
        (d(-1.0), 1 << 1),
        (d(-f64::MIN_POSITIVE / 2.0), 1 << 2),
        (NEG_ZERO_D, 1 << 3),
        (d(0.0), 1 << 4),
        (d(f64::MIN_POSITIVE / 2.0), 1 << 5),
        (d(1.0), 1 << 6),
        (d(f64::INFINITY), 1 << 7),
        (SNAN_D, 1 << 8),
        (QNAN_D, 1 << 9),
    ];
    for &(v, class) in cases {
        assert_eq!(x_op(fclass_d(A0, F1), [v, 0, 0]), (class, 0), "fclass.d {v:#x}");
    }
    assert_eq!(x_op(fclass_s(A0, F1), [s(-0.0), 0, 0]).0, 1 << 3);
    assert_eq!(x_op(fclass_s(A0, F1), [SNAN_S, 0, 0]).0, 1 << 8);
    assert_eq!(x_op(fclass_s(A0, F1), [0x0000_0000_3f80_0000, 0, 0]).0, 1 << 9, "unboxed reads as qNaN");
}

#[test]
fn comparisons_quiet_and_signaling() {
    assert_eq!(x_op(feq_d(A0, F1, F2), [QNAN_D, d(1.0), 0]), (0, 0), "feq is quiet on qNaN");
    assert_eq!(x_op(flt_d(A0, F1, F2), [QNAN_D, d(1.0), 0]), (0, NV), "flt signals on qNaN");
    assert_eq!(x_op(fle_d(A0, F1, F2), [d(1.0), QNAN_D, 0]), (0, NV), "fle signals on qNaN");
    assert_eq!(x_op(feq_d(A0, F1, F2), [SNAN_D, d(1.0), 0]), (0, NV), "feq signals on sNaN");
    assert_eq!(x_op(feq_d(A0, F1, F2), [NEG_ZERO_D, d(0.0), 0]), (1, 0));
    assert_eq!(x_op(flt_d(A0, F1, F2), [NEG_ZERO_D, d(0.0), 0]), (0, 0));
    assert_eq!(x_op(fle_d(A0, F1, F2), [NEG_ZERO_D, d(0.0), 0]), (1, 0));
    assert_eq!(x_op(flt_d(A0, F1, F2), [d(-1.0), d(1.0), 0]), (1, 0));
    assert_eq!(x_op(feq_s(A0, F1, F2), [s(1.0), s(1.0), 0]), (1, 0));
    assert_eq!(x_op(feq_s(A0, F1, F2), [0x3f80_0000, 0x3f80_0000, 0]), (0, 0), "unboxed operands are qNaN");
}

#[test]
fn fp_instructions_are_illegal_when_fs_is_off() {
    let insns = [
        fadd_d(F0, F1, F2, rm::RNE),
        fld(F0, 0, T0),
        fsd(F0, 0, T0),
        fmv_x_d(A0, F1),
        fmv_d_x(F0, A1),
        fsgnj_d(F0, F1, F1),
        fmadd_d(F0, F1, F2, F3, rm::RNE),
        csrr(A0, csr::FFLAGS),
        csrr(A0, csr::FCSR),
        csrwi(csr::FRM, 1),
    ];
    for insn in insns {
        let mut m = Machine::new();
        m.set_x(T0, DATA);
        assert_eq!(m.state().mstatus & mstatus::FS, 0, "FS is Off at reset");
        let mut a = Asm::new(CODE);
        a.i(insn);
        let trap = m.run_program(&a);
        assert_illegal(&m, trap, insn, CODE);
        assert_eq!(m.state().mstatus & mstatus::FS, 0);
    }
}

#[test]
fn writing_fp_state_makes_fs_dirty() {
    let mut m = fp_machine();
    m.set_x(A1, 0x4000_0000_0000_0000);
    let mut a = Asm::new(CODE);
    a.i(csrr(A2, csr::MSTATUS)).i(fmv_d_x(F1, A1)).i(csrr(A3, csr::MSTATUS));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A2) & (mstatus::FS | mstatus::SD), mstatus::FS_INITIAL);
    assert_eq!(m.x(A3) & (mstatus::FS | mstatus::SD), mstatus::FS_DIRTY | mstatus::SD);
    assert_eq!(m.f(F1), 0x4000_0000_0000_0000);
}

#[test]
fn arithmetic_makes_fs_dirty_and_sets_sd() {
    let mut m = fp_machine();
    m.set_f64(F1, 1.0);
    let mut a = Asm::new(CODE);
    a.i(fadd_d(F0, F1, F1, rm::RNE)).i(csrr(A0, csr::MSTATUS)).i(csrr(A1, csr::SSTATUS));
    m.run_to_ecall(&mut a);
    assert_eq!(m.f(F0), d(2.0));
    assert_eq!(m.x(A0) & (mstatus::FS | mstatus::SD), mstatus::FS_DIRTY | mstatus::SD);
    assert_eq!(m.x(A1) & (mstatus::FS | mstatus::SD), mstatus::FS_DIRTY | mstatus::SD, "sstatus shows FS and SD");
}

#[test]
fn fcsr_fields_and_writes_dirty_the_fp_state() {
    let mut m = fp_machine();
    m.set_x(T0, u64::MAX);
    let mut a = Asm::new(CODE);
    a.i(csrw(csr::FCSR, T0))
        .i(csrr(A0, csr::FCSR))
        .i(csrr(A1, csr::FFLAGS))
        .i(csrr(A2, csr::FRM))
        .i(csrr(A3, csr::MSTATUS))
        .i(csrwi(csr::FFLAGS, 0b00110))
        .i(csrr(A4, csr::FCSR));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 0xff, "fcsr holds frm and fflags only");
    assert_eq!(m.x(A1), 0x1f);
    assert_eq!(m.x(A2), 7);
    assert_eq!(m.x(A3) & (mstatus::FS | mstatus::SD), mstatus::FS_DIRTY | mstatus::SD);
    assert_eq!(m.x(A4), 0xe6, "an fflags write keeps frm");
}
