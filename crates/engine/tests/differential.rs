//! Differential tests: the interpreter and the JIT run the same program in lockstep, a few dozen instructions
//! at a time (budgets that cut blocks in the middle), and after every step their hart states, the MMIO
//! accesses they made, their dirty logs (taken at every step, as checkpoints do) and the contents of the pages
//! written must be identical; at the end, the whole of RAM too. Programs: seeded random integer instruction
//! streams (M-mode without translation and S-mode under Sv39; the seed is in every failure message, and
//! `KEMARI_DIFF_SEED=N` runs that one seed), a loop of one block, self-modifying code, code written by a device (`GuestRam::write`) and by another hart (with `fence.i`), a page fault in the middle of a compiled
//! block, an interrupt raised during a long block, LR/SC across checkpoints. Besides, dirty logging under the
//! JIT alone: a hot, compiled loop writes a known set of pages between two `take_dirty` calls.

#[path = "common/mod.rs"]
mod common;

use common::*;
use kemari_engine::{irq, Engine, Exit, Hart};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A program run by both engines.
struct Pair {
    interp: Machine,
    jit: Machine,
    /// Printed with every mismatch (the seed, the test).
    what: String,
}

impl Pair {
    /// Two machines prepared alike by `setup`; the JIT compiles a block the second time it runs (so both tiers
    /// and the switch between them are exercised).
    fn new(what: String, setup: impl Fn(&mut Machine)) -> Pair {
        let mut interp = Machine::new();
        let mut jit = Machine::new();
        interp.hart.set_engine(Engine::Interp);
        jit.hart.set_engine(Engine::Jit);
        jit.hart.set_jit_threshold(1);
        setup(&mut interp);
        setup(&mut jit);
        Pair { interp, jit, what }
    }

    /// Both machines, for changes made to both alike between steps.
    fn both(&mut self, f: impl Fn(&mut Machine)) {
        f(&mut self.interp);
        f(&mut self.jit);
    }

    /// Runs both for `budget` instructions and compares everything; returns the exit.
    fn step(&mut self, budget: u64, n: usize) -> Exit {
        let a = self.interp.step(budget);
        let b = self.jit.step(budget);
        let what = format!("{}, step {n}", self.what);
        assert_eq!(a, b, "exits differ; {what}");
        assert_eq!(self.interp.state(), self.jit.state(), "hart states differ; {what}");
        assert_eq!(self.interp.bus.loads, self.jit.bus.loads, "MMIO loads differ; {what}");
        assert_eq!(self.interp.bus.stores, self.jit.bus.stores, "MMIO stores differ; {what}");
        let dirty = self.interp.ram.take_dirty();
        assert_eq!(dirty, self.jit.ram.take_dirty(), "dirty logs differ; {what}");
        for page in dirty {
            let addr = RAM_BASE + page * PAGE;
            assert!(self.page(addr), "page {addr:#x} differs; {what}");
        }
        a
    }

    fn page(&self, addr: u64) -> bool {
        let (mut a, mut b) = (vec![0u8; PAGE as usize], vec![0u8; PAGE as usize]);
        self.interp.ram.read(addr, &mut a).expect("RAM page");
        self.jit.ram.read(addr, &mut b).expect("RAM page");
        a == b
    }

    /// Steps both to the halt store (at most `max_steps` steps of `budget`), then compares all of RAM.
    /// Returns how many steps it took.
    fn run_to_halt(&mut self, budget: u64, max_steps: usize) -> usize {
        for n in 0..max_steps {
            match self.step(budget, n) {
                Exit::Budget => {}
                Exit::MmioStore if self.interp.bus.halted => {
                    self.compare_ram();
                    return n;
                }
                Exit::MmioStore => {}
                other => panic!("unexpected exit {other:?}; {}", self.what),
            }
        }
        panic!("no halt after {max_steps} steps; {}", self.what);
    }

    fn compare_ram(&self) {
        for addr in (RAM_BASE..RAM_BASE + RAM_SIZE).step_by(PAGE as usize) {
            assert!(self.page(addr), "page {addr:#x} differs at the end; {}", self.what);
        }
        assert!(self.jit.hart.compiled_blocks() > 0, "the JIT compiled nothing; {}", self.what);
    }
}

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn imm12(&mut self) -> i32 {
        self.below(4096) as i32 - 2048
    }
}

/// Registers with a fixed role in random programs: data base, MMIO base, loop counter.
const DATA_BASE: u32 = S0;
const MMIO_REG: u32 = S1;
const COUNTER: u32 = 27;

fn free_reg(r: &mut Rng) -> u32 {
    loop {
        let x = 1 + r.below(31) as u32;
        if ![DATA_BASE, MMIO_REG, COUNTER].contains(&x) {
            return x;
        }
    }
}

fn src_reg(r: &mut Rng) -> u32 {
    if r.below(8) == 0 {
        ZERO
    } else {
        free_reg(r)
    }
}

/// Values that hit the corner cases of division, shifts and sign extension.
fn interesting(r: &mut Rng) -> u64 {
    match r.below(8) {
        0 => 0,
        1 => u64::MAX,
        2 => i64::MIN as u64,
        3 => i32::MIN as i64 as u64,
        4 => 0x7fff_ffff,
        5 => r.below(64),
        _ => r.next(),
    }
}

/// Appends one random instruction (or a few: jumps skip over random ones) to `out`. `scratch` is a CSR the
/// mode may access.
fn random_insns(r: &mut Rng, out: &mut Vec<u32>, depth: u32, scratch: u32) {
    let (rd, rs1, rs2) = (free_reg(r), src_reg(r), src_reg(r));
    let mem_off = |r: &mut Rng| if r.below(2) == 0 { r.below(33) as i32 - 16 } else { r.imm12() };
    match r.below(100) {
        0..=29 => {
            let f = r.pick(&[
                add, sub, sll, slt, sltu, xor, srl, sra, or, and, addw, subw, sllw, srlw, sraw, mul, mulh, mulhsu,
                mulhu, div, divu, rem, remu, mulw, divw, divuw, remw, remuw,
            ]);
            out.push(f(rd, rs1, rs2));
        }
        30..=44 => {
            let f = r.pick(&[addi, slti, sltiu, xori, ori, andi, addiw]);
            out.push(f(rd, rs1, r.imm12()));
        }
        45..=52 => {
            let f = r.pick(&[slli, srli, srai]);
            out.push(f(rd, rs1, r.below(64) as u32));
            let f = r.pick(&[slliw, srliw, sraiw]);
            out.push(f(rd, rs1, r.below(32) as u32));
        }
        53..=56 => {
            let f = r.pick(&[lui, auipc]);
            out.push(f(rd, r.below(1 << 20) as u32));
        }
        57..=70 => {
            let f = r.pick(&[lb, lh, lw, ld, lbu, lhu, lwu]);
            out.push(f(if r.below(10) == 0 { ZERO } else { rd }, mem_off(r), DATA_BASE));
        }
        71..=82 => {
            let f = r.pick(&[sb, sh, sw, sd]);
            out.push(f(rs2, mem_off(r), DATA_BASE));
        }
        83..=92 if depth < 2 => {
            // Jump forward over 0 to 3 random instructions (each may be a jump itself).
            let mut body = Vec::new();
            for _ in 0..r.below(4) {
                random_insns(r, &mut body, depth + 1, scratch);
            }
            let len = 4 * body.len() as i32;
            match r.below(4) {
                0 => {
                    let f = r.pick(&[beq, bne, blt, bge, bltu, bgeu]);
                    out.push(f(rs1, rs2, 4 + len));
                }
                1 => out.push(jal(rd, 4 + len)),
                _ => {
                    // auipc + jalr: a computed jump (the target's low bit set sometimes: jalr clears it).
                    out.push(auipc(rd, 0));
                    out.push(jalr(free_reg(r), rd, 8 + len + r.below(2) as i32));
                }
            }
            out.extend(body);
        }
        93..=94 => out.push(lw(rd, 0, MMIO_REG)),
        95..=96 => out.push(csrrw(rd, scratch, rs1)),
        97 => out.push(amoadd_d(rd, rs2, DATA_BASE)),
        98 => out.push(fence_i()),
        _ => out.push(addi(rd, rs1, 1)),
    }
}

/// A random loop body of `len` instruction groups, run `iterations` times, then `ecall`. Registers start with
/// interesting values; `data` (mapped, with a page boundary at `data + 4096`) and `mmio` are the bases.
fn random_program(r: &mut Rng, base: u64, data: u64, mmio: u64, scratch: u32) -> Asm {
    let mut a = Asm::new(base);
    for x in 1..32 {
        if ![DATA_BASE, MMIO_REG, COUNTER].contains(&x) {
            a.li(x, interesting(r));
        }
    }
    a.li(DATA_BASE, data + 4096).li(MMIO_REG, mmio).li(COUNTER, 3 + r.below(6));
    a.label("loop");
    let mut body = Vec::new();
    for _ in 0..40 + r.below(80) {
        random_insns(r, &mut body, 0, scratch);
    }
    for insn in body {
        a.i(insn);
    }
    a.i(addi(COUNTER, COUNTER, -1)).bne(COUNTER, ZERO, "loop").i(ecall());
    a
}

fn seeds(default: std::ops::Range<u64>) -> Vec<u64> {
    match std::env::var("KEMARI_DIFF_SEED") {
        Ok(s) => vec![s.parse().expect("KEMARI_DIFF_SEED is a number")],
        Err(_) => default.collect(),
    }
}

#[test]
fn random_streams_in_m_mode() {
    for seed in seeds(1..61) {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let prog = random_program(&mut r, CODE, DATA, MMIO_BASE, csr::MSCRATCH);
        let budget = 1 + r.below(60);
        let mut pair = Pair::new(format!("seed {seed} (M-mode, budget {budget})"), |m| {
            m.bus.mmio_value = 0x1234_5678_9abc_def0;
            m.load(&prog);
        });
        pair.run_to_halt(budget, 100_000);
    }
}

#[test]
fn random_streams_in_s_mode_under_sv39() {
    const VDATA: u64 = 0x4000_0000;
    const VMMIO: u64 = 0x5000_0000;
    for seed in seeds(1001..1031) {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let prog = random_program(&mut r, GUEST_CODE, VDATA, VMMIO, csr::SSCRATCH);
        let budget = 1 + r.below(60);
        let mut pair = Pair::new(format!("seed {seed} (S-mode Sv39, budget {budget})"), |m| {
            m.bus.mmio_value = 0x0bad_cafe;
            let mut pt = PageTables::new(m, Mode::Sv39);
            pt.map_code(m, false);
            // Virtually adjacent, physically apart: an access across the boundary must be split.
            pt.map(m, VDATA, DATA, pte::RW_AD);
            pt.map(m, VDATA + PAGE, DATA + 7 * PAGE, pte::RW_AD);
            pt.map(m, VDATA + 2 * PAGE, DATA + 14 * PAGE, pte::RW_AD & !pte::D);
            pt.map(m, VMMIO, MMIO_BASE, pte::RW_AD);
            let mut boot = Asm::new(CODE);
            boot.li(T6, pt.satp()).i(csrw(csr::SATP, T6));
            enter_with_mret(&mut boot, kemari_engine::Privilege::Supervisor, GUEST_CODE);
            m.load(&boot);
            m.load(&prog);
        });
        pair.run_to_halt(budget, 100_000);
    }
}

#[test]
fn self_modifying_code_is_seen_at_once() {
    // A loop that rewrites an instruction of a function (`addi a0, a0, K` with K = the iteration number) before
    // calling it: the new instruction must run at once, compiled or not.
    let mut prog = Asm::new(CODE);
    prog.li(S2, 20).li(A0, 0).li(T3, 0).li(S3, CODE + 0x1000).li(S4, CODE + 0x1000);
    prog.label("loop")
        .i(addi(T3, T3, 1))
        .i(slli(T4, T3, 20))
        .li(T5, 0x0005_0513)
        .i(or(T4, T4, T5))
        // Read the old instruction first: the page then has a load translation (never a store one).
        .i(lw(T6, 0, S3))
        .i(sw(T4, 0, S3))
        .i(jalr(RA, S4, 0))
        .i(addi(S2, S2, -1))
        .bne(S2, ZERO, "loop")
        .i(ecall());
    let mut slot = Asm::new(CODE + 0x1000);
    slot.i(nop()).i(add(A1, A1, A0)).i(jalr(ZERO, RA, 0));
    let mut pair = Pair::new("self-modifying code".into(), |m| {
        m.load(&prog);
        m.load(&slot);
    });
    pair.run_to_halt(7, 10_000);
    // a0 = 1 + 2 + ... + 20
    assert_eq!(pair.jit.x(A0), 210);
}

/// Hart 0's loop: calls the function at `slot` (`addi a0, a0, K; ret`), stores to the pause register (a step
/// ends there, so the test can change the function between calls), ten times.
fn call_slot_ten_times(slot: u64) -> (Asm, Asm) {
    let mut prog = Asm::new(CODE);
    prog.li(S2, 10).li(A0, 0).li(S4, slot);
    prog.label("loop")
        .i(jalr(RA, S4, 0))
        .i(sw(ZERO, PAUSE_MMIO as i32, ZERO))
        .i(addi(S2, S2, -1))
        .bne(S2, ZERO, "loop")
        .i(ecall());
    let mut func = Asm::new(slot);
    func.i(addi(A0, A0, 0)).i(jalr(ZERO, RA, 0));
    (prog, func)
}

/// Steps both machines to hart 0's next MMIO store; true if it was the halt.
fn to_next_store(pair: &mut Pair, n: &mut usize) -> bool {
    loop {
        *n += 1;
        match pair.step(1000, *n) {
            Exit::Budget => {}
            Exit::MmioStore => return pair.interp.bus.halted,
            other => panic!("unexpected exit {other:?}; {}", pair.what),
        }
    }
}

#[test]
fn code_written_by_a_device_runs_at_once() {
    // Between two calls, a device (here the test, through `GuestRam::write`, the path of virtio DMA) rewrites
    // the compiled function: `addi a0, a0, K` with K the number of calls so far.
    let slot = CODE + 0x1000;
    let (prog, func) = call_slot_ten_times(slot);
    let mut pair = Pair::new("device write into code".into(), |m| {
        m.load(&prog);
        m.load(&func);
    });
    let (mut n, mut calls) = (0, 0u32);
    while !to_next_store(&mut pair, &mut n) {
        calls += 1;
        let insn = addi(A0, A0, calls as i32).to_le_bytes();
        pair.both(|m| m.write_bytes(slot, &insn));
    }
    pair.compare_ram();
    assert_eq!(calls, 10);
    assert_eq!(pair.jit.x(A0), (0..10).sum::<u64>(), "every call runs what the device wrote last");
}

#[test]
fn code_written_by_another_hart_runs_after_its_fence_i() {
    // Hart 1 rewrites the function hart 0 calls (compiled), then runs `fence.i`. Before hart 0 first runs it,
    // hart 1 stores to the function's page, so it holds a store translation for the page when the page
    // becomes code: that translation must not let its later stores past the code cache.
    let slot = CODE + 0x1000;
    let writer_code = CODE + 0x2000;
    let (prog, func) = call_slot_ten_times(slot);
    let mut writer = Asm::new(writer_code);
    writer.i(sw(ZERO, 0x7f8, S3)).i(sw(ZERO, PAUSE_MMIO as i32, ZERO));
    writer
        .label("again")
        .i(addi(T3, T3, 1))
        .i(slli(T4, T3, 20))
        .i(or(T4, T4, T5))
        .i(sw(T4, 0, S3))
        .i(fence_i())
        .i(sw(ZERO, PAUSE_MMIO as i32, ZERO))
        .j("again");
    let mut pair = Pair::new("code written by another hart".into(), |m| {
        m.load(&prog);
        m.load(&func);
        m.load(&writer);
    });
    let mut writers = [Engine::Interp, Engine::Jit].map(|engine| {
        let mut h = Hart::new(1, false);
        h.set_engine(engine);
        h.set_jit_threshold(1);
        h.set_pc(writer_code);
        h.set_reg(S3 as usize, slot);
        h.set_reg(T5 as usize, addi(A0, A0, 0) as u64);
        h
    });
    // Runs hart 1 on both machines to its next pause.
    let write = |pair: &mut Pair, writers: &mut [Hart; 2]| {
        let a = writers[0].run(&pair.interp.ram, &mut pair.interp.bus, 1000);
        let b = writers[1].run(&pair.jit.ram, &mut pair.jit.bus, 1000);
        assert_eq!((a, b), (Exit::MmioStore, Exit::MmioStore), "hart 1 did not reach its pause");
        assert_eq!(writers[0].state(), writers[1].state(), "hart 1 differs; {}", pair.what);
    };
    write(&mut pair, &mut writers);
    // The first call without a dirty-log harvest after it (a harvest drops every store translation, the stale
    // one too), then hart 1 writes.
    let first = (pair.interp.step(1000), pair.jit.step(1000));
    assert_eq!(first, (Exit::MmioStore, Exit::MmioStore), "hart 0 did not reach its first pause");
    write(&mut pair, &mut writers);
    let (mut n, mut calls) = (0, 1u32);
    while !to_next_store(&mut pair, &mut n) {
        calls += 1;
        write(&mut pair, &mut writers);
    }
    pair.compare_ram();
    assert_eq!(calls, 10);
    assert_eq!(pair.jit.x(A0), (0..10).sum::<u64>(), "every call runs what hart 1 wrote last");
}

#[test]
fn a_store_into_the_running_compiled_block_ends_it() {
    // The store rewrites the very next instruction of its own block, which is already compiled (threshold 0).
    let mut prog = Asm::new(CODE);
    prog.li(S2, 5).li(A0, 0).li(T5, addi(A0, A0, 0) as u64);
    // auipc + 24 is the `addi a0, a0, 1` after the store.
    prog.label("loop");
    // Each iteration writes `addi a0, a0, s2` (s2 counts down from 5).
    prog.i(auipc(S3, 0))
        .i(addi(S3, S3, 24))
        .i(lw(T6, 0, S3))
        .i(slli(T4, S2, 20))
        .i(or(T4, T4, T5))
        .i(sw(T4, 0, S3))
        .i(addi(A0, A0, 1))
        .i(addi(S2, S2, -1));
    prog.bne(S2, ZERO, "loop").i(ecall());
    let mut pair = Pair::new("store into the running block".into(), |m| {
        m.load(&prog);
        m.hart.set_jit_threshold(0);
    });
    pair.run_to_halt(1000, 100);
    assert_eq!(pair.jit.x(A0), 5 + 4 + 3 + 2 + 1, "every iteration runs the instruction it just wrote");
}

#[test]
fn a_page_fault_in_the_middle_of_a_compiled_block() {
    // A loop of loads under Sv39: once hot, the page of the third load is unmapped behind the hart's back
    // (then its TLB flushed, as sfence.vma would): the fault must come from the middle of the compiled block
    // with the exact sepc, stval and instret.
    const V: u64 = 0x4000_0000;
    let mut g = Asm::new(GUEST_CODE);
    g.li(S0, V).li(S1, V + PAGE).li(S2, 1000);
    g.label("loop").i(ld(A0, 0, S0)).i(addi(A1, A1, 1)).i(ld(A2, 8, S0));
    let fault_pc = g.pc();
    g.i(ld(A3, 16, S1)) // the second page
        .i(addi(A4, A4, 1))
        .i(addi(S2, S2, -1))
        .bne(S2, ZERO, "loop")
        .i(ecall());
    let slots = std::cell::Cell::new(0);
    let mut pair = Pair::new("page fault mid-block".into(), |m| {
        let mut pt = PageTables::new(m, Mode::Sv39);
        pt.map_code(m, false);
        pt.map(m, V, DATA, pte::RW_AD);
        pt.map(m, V + PAGE, DATA + PAGE, pte::RW_AD);
        slots.set(pt.leaf_slot(m, V + PAGE, 0));
        let mut boot = Asm::new(CODE);
        boot.li(T6, pt.satp()).i(csrw(csr::SATP, T6));
        // Page faults from S go to M (not delegated): the halt vector ends the run.
        enter_with_mret(&mut boot, kemari_engine::Privilege::Supervisor, GUEST_CODE);
        m.load(&boot);
        m.load(&g);
    });
    for n in 0..20 {
        assert_eq!(pair.step(97, n), Exit::Budget);
    }
    pair.both(|m| {
        m.write_u64(slots.get(), 0);
        m.hart.flush_tlb();
    });
    pair.run_to_halt(13, 1000);
    assert_eq!(pair.jit.m_trap(), Trap::new(cause::LOAD_PAGE, V + PAGE + 16, fault_pc));
}

#[test]
fn an_interrupt_raised_during_a_long_block() {
    // A long straight block in a loop; the machine timer line rises between two steps that cut the block
    // in the middle: both engines take the interrupt at the same instruction.
    let mut prog = Asm::new(CODE);
    prog.li(T6, 1 << irq::MTI).i(csrw(csr::MIE, T6)).li(T6, mstatus::MIE).i(csrs(csr::MSTATUS, T6));
    prog.li(S2, 1_000_000);
    prog.label("loop");
    for i in 0..300 {
        prog.i(addi(A0 + (i % 6), A0 + (i % 6), i as i32));
    }
    prog.i(addi(S2, S2, -1)).bne(S2, ZERO, "loop").i(ecall());
    let mut pair = Pair::new("interrupt in a long block".into(), |m| m.load(&prog));
    for n in 0..50 {
        assert_eq!(pair.step(1000 + n as u64, n), Exit::Budget);
    }
    pair.both(|m| m.hart.set_irq_line(irq::MTI, true));
    assert_eq!(pair.step(1000, 50), Exit::MmioStore, "the trap reached the halt vector");
    let trap = pair.jit.m_trap();
    assert_eq!(trap.cause, cause::INTERRUPT | irq::MTI as u64);
    assert!(pair.jit.hart.compiled_blocks() > 0);
}

#[test]
fn lr_sc_across_checkpoints() {
    // LR/SC loops (with ordinary stores between them) stepped with a dirty-log take at every step: a
    // reservation never survives the end of a run, the SC results and the dirty marks must agree.
    let mut prog = Asm::new(CODE);
    prog.li(S0, DATA).li(S1, DATA + PAGE).li(S2, 300);
    prog.label("loop")
        .i(lr_d(A0, S0))
        .i(addi(A0, A0, 1))
        .i(sd(A0, 64, S0))
        .i(sc_d(A1, A0, S0))
        .i(add(A2, A2, A1))
        .i(sd(A2, 0, S1))
        .i(addi(S2, S2, -1))
        .bne(S2, ZERO, "loop")
        .i(ecall());
    for budget in [1, 2, 3, 5, 8, 13] {
        let mut pair = Pair::new(format!("LR/SC, budget {budget}"), |m| m.load(&prog));
        pair.run_to_halt(budget, 100_000);
    }
}

#[test]
fn dirty_log_under_the_jit_is_exact() {
    // A compiled loop stores to every page listed in a table; between two take_dirty calls exactly those pages
    // (and nothing else) must be in the log, also when the same compiled code runs again with another table.
    const TABLE: u64 = DATA;
    let mut prog = Asm::new(CODE);
    prog.li(S0, TABLE);
    prog.label("loop")
        .i(ld(T0, 0, S0))
        .beq(T0, ZERO, "done")
        // A load first: the page has a load translation when the store comes.
        .i(ld(T1, 8, T0))
        .i(sd(S0, 8, T0))
        .i(addi(S0, S0, 8))
        .j("loop")
        .label("done")
        .i(sw(ZERO, PAUSE_MMIO as i32, ZERO))
        .j("top")
        .label("top")
        .li(S0, TABLE)
        .j("loop");
    let mut m = Machine::new();
    m.hart.set_engine(Engine::Jit);
    m.hart.set_jit_threshold(0);
    m.load(&prog);
    let table_page = (TABLE - RAM_BASE) / PAGE;
    for (round, pages) in [vec![20u64, 21, 40, 300], vec![21, 22, 500, 501, 502], vec![300]].iter().enumerate() {
        for (i, p) in pages.iter().enumerate() {
            m.write_u64(TABLE + 8 * i as u64, DATA + p * PAGE);
        }
        m.write_u64(TABLE + 8 * pages.len() as u64, 0);
        m.ram.take_dirty();
        assert_eq!(m.run(), Outcome::Paused, "round {round}");
        let mut want: Vec<u64> = pages.iter().map(|p| (DATA - RAM_BASE) / PAGE + p).collect();
        want.sort();
        let got = m.ram.take_dirty();
        assert_eq!(got, want, "round {round}: the log holds exactly the pages written (table page {table_page})");
    }
    assert!(m.hart.compiled_blocks() > 0);
}

#[test]
fn a_loop_of_one_block_goes_round_in_compiled_code() {
    // The block at `loop` branches back to its own start: compiled, it goes round with the guest registers in
    // host registers, and must leave them right wherever it stops (the budget, a fallback, the end).
    let mut prog = Asm::new(CODE);
    prog.li(S2, 300).li(A0, 0).li(A1, 1).li(S0, DATA);
    prog.label("loop")
        .i(add(A0, A0, A1))
        .i(xor(A1, A1, A0))
        .i(slli(A2, A1, 3))
        .i(sd(A0, 0, S0))
        .i(ld(A3, 0, S0))
        .i(add(A4, A4, A3))
        // A new page every other time round: its first store falls back to the interpreter in the middle of
        // a compiled run of the loop, with registers the last time round changed.
        .i(addi(S0, S0, 2040))
        .i(addi(S2, S2, -1))
        .bne(S2, ZERO, "loop")
        .i(ecall());
    for budget in [1, 5, 7, 8, 9, 100, 1_000_000] {
        let mut pair = Pair::new(format!("a loop of one block, budget {budget}"), |m| m.load(&prog));
        pair.run_to_halt(budget, 10_000);
        assert_eq!(pair.jit.x(S2), 0, "the loop ran to its end");
    }
}

#[test]
fn the_exit_word_stops_a_chained_loop_from_another_thread() {
    // A one-block loop that chains to itself: once linked, it runs in host code until the budget ends, unless
    // the exit word stops it (checked at every chained entry). The budget here lasts for many seconds.
    const BUDGET: u64 = 20_000_000_000;
    let mut prog = Asm::new(CODE);
    prog.label("loop").i(addi(A0, A0, 1)).i(addi(A1, A1, 2)).j("loop");
    let mut m = Machine::new();
    m.hart.set_engine(Engine::Jit);
    m.hart.set_jit_threshold(0);
    m.load(&prog);
    let word = Arc::new(AtomicBool::new(false));
    m.hart.set_exit_word(word.clone());
    assert_eq!(m.step(99), Exit::Budget, "compiled and linked");
    let setter = {
        let word = word.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            word.store(true, Ordering::Relaxed);
        })
    };
    assert_eq!(m.step(BUDGET), Exit::Budget);
    setter.join().expect("setter thread");
    let ran = m.state().instret - 99;
    assert!(ran < BUDGET, "the word stopped the loop before its budget");
    assert_eq!(ran % 3, 0, "stopped at a block boundary");
    assert_eq!(m.x(A0) * 2, m.x(A1));
}
