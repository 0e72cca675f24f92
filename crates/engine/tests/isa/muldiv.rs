//! The M extension: products, high products of every signedness, division edge cases, W forms.

use crate::common::*;
use crate::compute;

const MIN: u64 = i64::MIN as u64;
const MAX: u64 = i64::MAX as u64;
const NEG1: u64 = u64::MAX;

fn neg(v: i64) -> u64 {
    v as u64
}

#[test]
fn mul_keeps_the_low_64_bits() {
    assert_eq!(compute(mul(A0, A1, A2), MIN, NEG1), MIN);
    assert_eq!(compute(mul(A0, A1, A2), MAX, MAX), 1);
    assert_eq!(compute(mul(A0, A1, A2), neg(-3), 7), neg(-21));
    assert_eq!(compute(mul(A0, A1, A2), 0x1_0000_0001, 0x1_0000_0001), 0x2_0000_0001);
}

#[test]
fn mulh_signed_times_signed() {
    assert_eq!(compute(mulh(A0, A1, A2), MIN, MIN), 0x4000_0000_0000_0000);
    assert_eq!(compute(mulh(A0, A1, A2), MIN, NEG1), 0, "2^63 fits in the low half");
    assert_eq!(compute(mulh(A0, A1, A2), NEG1, NEG1), 0);
    assert_eq!(compute(mulh(A0, A1, A2), MAX, MAX), 0x3fff_ffff_ffff_ffff);
    assert_eq!(compute(mulh(A0, A1, A2), MIN, MAX), 0xc000_0000_0000_0000);
    assert_eq!(compute(mulh(A0, A1, A2), neg(-1), 1), NEG1);
}

#[test]
fn mulhu_unsigned_times_unsigned() {
    assert_eq!(compute(mulhu(A0, A1, A2), NEG1, NEG1), 0xffff_ffff_ffff_fffe);
    assert_eq!(compute(mulhu(A0, A1, A2), NEG1, 1), 0);
    assert_eq!(compute(mulhu(A0, A1, A2), MIN, 4), 2);
}

#[test]
fn mulhsu_signed_times_unsigned() {
    assert_eq!(compute(mulhsu(A0, A1, A2), NEG1, 1), NEG1, "-1 * 1 = -1");
    assert_eq!(compute(mulhsu(A0, A1, A2), NEG1, NEG1), NEG1, "-1 * (2^64-1)");
    assert_eq!(compute(mulhsu(A0, A1, A2), MIN, NEG1), MIN, "-2^63 * (2^64-1) = -2^127 + 2^63");
    assert_eq!(compute(mulhsu(A0, A1, A2), MAX, NEG1), 0x7fff_ffff_ffff_fffe);
    assert_eq!(compute(mulhsu(A0, A1, A2), 1, NEG1), 0);
}

#[test]
fn division_rounds_towards_zero() {
    assert_eq!(compute(div(A0, A1, A2), neg(-7), 2), neg(-3));
    assert_eq!(compute(rem(A0, A1, A2), neg(-7), 2), neg(-1));
    assert_eq!(compute(div(A0, A1, A2), 7, neg(-2)), neg(-3));
    assert_eq!(compute(rem(A0, A1, A2), 7, neg(-2)), 1);
    assert_eq!(compute(divu(A0, A1, A2), neg(-7), 2), 0x7fff_ffff_ffff_fffc);
    assert_eq!(compute(remu(A0, A1, A2), neg(-7), 2), 1);
}

#[test]
fn division_by_zero() {
    assert_eq!(compute(div(A0, A1, A2), 7, 0), NEG1);
    assert_eq!(compute(div(A0, A1, A2), neg(-7), 0), NEG1);
    assert_eq!(compute(divu(A0, A1, A2), 7, 0), NEG1);
    assert_eq!(compute(rem(A0, A1, A2), neg(-7), 0), neg(-7));
    assert_eq!(compute(remu(A0, A1, A2), MIN, 0), MIN);
}

#[test]
fn signed_division_overflow() {
    assert_eq!(compute(div(A0, A1, A2), MIN, NEG1), MIN);
    assert_eq!(compute(rem(A0, A1, A2), MIN, NEG1), 0);
}

#[test]
fn mulw_sign_extends_the_low_word() {
    assert_eq!(compute(mulw(A0, A1, A2), 0x7fff_ffff, 2), neg(-2));
    assert_eq!(compute(mulw(A0, A1, A2), 0x1_0000_0003, 0xf_0000_0005), 15);
    assert_eq!(compute(mulw(A0, A1, A2), 0x1_0000, 0x8000), 0xffff_ffff_8000_0000);
}

#[test]
fn divw_and_remw() {
    // Upper halves of the operands are ignored.
    assert_eq!(compute(divw(A0, A1, A2), 0x5_0000_000a, 0x9_0000_0002), 5);
    assert_eq!(compute(divw(A0, A1, A2), 0xdead_beef_8000_0000, NEG1), 0xffff_ffff_8000_0000, "overflow");
    assert_eq!(compute(remw(A0, A1, A2), 0x8000_0000, 0xffff_ffff), 0, "overflow");
    assert_eq!(compute(divw(A0, A1, A2), 1234, 0x1_0000_0000), NEG1, "low word of divisor is 0");
    assert_eq!(compute(remw(A0, A1, A2), 0x1_8000_0001, 0), 0xffff_ffff_8000_0001);
    assert_eq!(compute(remw(A0, A1, A2), neg(-7), 2), neg(-1));
}

#[test]
fn divuw_and_remuw() {
    assert_eq!(compute(divuw(A0, A1, A2), 0xffff_fffe, 1), 0xffff_ffff_ffff_fffe, "result is sign-extended");
    assert_eq!(compute(divuw(A0, A1, A2), 0xffff_ffff_8000_0000, 2), 0x4000_0000);
    assert_eq!(compute(divuw(A0, A1, A2), 5, 0), NEG1);
    assert_eq!(compute(remuw(A0, A1, A2), 0x8000_0001, 0), 0xffff_ffff_8000_0001);
    assert_eq!(compute(remuw(A0, A1, A2), 0xffff_ffff, 0x10), 0xf);
}
