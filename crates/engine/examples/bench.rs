//! Engine speed: a hand-assembled CPU-bound loop (integer ALU, loads and stores, branches, calls and returns,
//! compressed instructions) run for a fixed number of instructions, in M-mode without translation and in S-mode
//! under Sv39, driven like the board drives a hart (`Hart::run` in slices of 20,000 instructions), by the
//! interpreter and by the JIT (its default threshold) in the same run. Prints MIPS and the JIT/interpreter
//! ratio. Figures only, nothing asserted.
//!
//!     cargo run --release -p kemari-engine --example bench [-- ROUNDS]

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use common::*;
use kemari_engine::{Engine, Exit, Privilege};
use std::time::Instant;

/// The board's slice.
const SLICE: u64 = 20_000;
/// Loop iterations per run.
const ITERATIONS: u64 = 4_000_000;

/// The loop at `base`, working on `data`; ends with the halt store. The instruction count of one iteration is
/// fixed (the branch inside goes either way, both paths have the same length).
fn program(base: u64, data: u64) -> Asm {
    let mut a = Asm::new(base);
    a.li(S1, ITERATIONS).li(S0, data).li(A0, 1).li(A5, 3);
    a.label("loop")
        // Integer ALU.
        .i(add(A0, A0, S1))
        .i(xor(A1, A1, A0))
        .i(slli(A2, A0, 3))
        .i(srli(A3, A1, 5))
        .i(sub(A4, A2, A3))
        .i(mul(T1, A0, A1))
        .i(addiw(T2, T1, 7))
        // Compressed ALU.
        .c(c_addi(A5, 1))
        .c(c_add(A0, A5))
        .c(c_mv(A2, A0))
        .c(c_srli(A3, 2))
        // Loads and stores, 32- and 16-bit forms.
        .i(sd(A0, 0, S0))
        .i(ld(A6, 8, S0))
        .i(sw(A1, 16, S0))
        .i(lw(A7, 16, S0))
        .c(c_sd(A2, 24, S0))
        .c(c_ld(A3, 24, S0))
        .i(sb(A4, 32, S0))
        .i(lbu(T3, 32, S0))
        // A data-dependent branch: both paths are 2 instructions long.
        .i(andi(T0, A0, 1))
        .beq(T0, ZERO, "even")
        .i(addi(A4, A4, 1))
        .j("join")
        .label("even")
        .i(addi(A4, A4, -1))
        .c(c_nop())
        .label("join")
        // A call and a return.
        .jal(RA, "func")
        .i(addi(S1, S1, -1))
        .bne(S1, ZERO, "loop")
        .i(sw(ZERO, HALT_MMIO as i32, ZERO))
        .label("spin")
        .j("spin");
    a.label("func").c(c_addi(A6, 1)).i(add(A7, A7, A6)).c(c_jr(RA));
    a
}

/// Instructions in one iteration: 7 ALU + 4 compressed + 8 memory + andi + branch + 2 (either path) + jal +
/// 3 (func) + addi + bne.
const PER_ITERATION: u64 = 7 + 4 + 8 + 1 + 1 + 2 + 1 + 3 + 1 + 1;

/// Runs the machine to its halt store the way the board does; returns (instructions, seconds).
fn drive(m: &mut Machine) -> (u64, f64) {
    let before = m.state().instret;
    let start = Instant::now();
    loop {
        match m.hart.run(&m.ram, &mut m.bus, SLICE) {
            Exit::Budget => {}
            Exit::MmioStore if m.bus.halted => break,
            other => panic!("unexpected exit {other:?}: {}", m.describe()),
        }
    }
    (m.state().instret - before, start.elapsed().as_secs_f64())
}

fn bare() -> Machine {
    let mut m = Machine::new();
    m.load(&program(CODE, DATA));
    m
}

fn sv39() -> Machine {
    const VA_DATA: u64 = 0x4000_0000;
    let mut m = Machine::new();
    let mut pt = PageTables::new(&m, Mode::Sv39);
    pt.map_code(&m, false);
    pt.map(&m, VA_DATA, DATA, pte::RW_AD);
    // The halt store goes to MMIO address 0x100.
    pt.map(&m, 0, 0, pte::RW_AD);
    m.load(&program(GUEST_CODE, VA_DATA));
    let mut boot = Asm::new(CODE);
    boot.li(T6, pt.satp()).i(csrw(csr::SATP, T6));
    enter_with_mret(&mut boot, Privilege::Supervisor, GUEST_CODE);
    m.load(&boot);
    m
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    println!("engine bench: {ITERATIONS} iterations x {PER_ITERATION} instructions, slices of {SLICE}");
    for (name, make) in [("M-mode, bare", bare as fn() -> Machine), ("S-mode, Sv39", sv39)] {
        let mut medians = Vec::new();
        for engine in [Engine::Interp, Engine::Jit] {
            let mut mips = Vec::new();
            for _ in 0..rounds {
                let mut m = make();
                m.hart.set_engine(engine);
                m.hart.set_jit_threshold(kemari_engine::DEFAULT_JIT_THRESHOLD);
                let (n, secs) = drive(&mut m);
                assert!(n >= ITERATIONS * PER_ITERATION, "ran {n} instructions");
                mips.push(n as f64 / secs / 1e6);
            }
            mips.sort_by(f64::total_cmp);
            let runs: Vec<String> = mips.iter().map(|v| format!("{v:.0}")).collect();
            let median = mips[mips.len() / 2];
            println!("{name:14} {engine:6} median {median:7.1} MIPS  (runs: {})", runs.join(", "));
            medians.push(median);
        }
        println!("{name:14} jit/interp {:.2}x", medians[1] / medians[0]);
    }
}
