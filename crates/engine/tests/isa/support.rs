//! Helpers shared by the ISA test modules (`crate::compute` and friends), for both test binaries.

use crate::common::*;

/// Runs the single instruction `insn` in M-mode with a1 = `a`, a2 = `b` and returns a0.
pub fn compute(insn: u32, a: u64, b: u64) -> u64 {
    let mut m = Machine::new();
    m.set_x(A1, a);
    m.set_x(A2, b);
    let mut prog = Asm::new(CODE);
    prog.i(insn);
    m.run_to_ecall(&mut prog);
    m.x(A0)
}

/// `mstatus_value` with its MPP field set to `mode`.
pub fn with_mpp(mstatus_value: u64, mode: kemari_engine::Privilege) -> u64 {
    (mstatus_value & !mstatus::MPP) | ((mode as u64) << mstatus::MPP_SHIFT)
}
