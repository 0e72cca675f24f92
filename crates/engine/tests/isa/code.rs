//! Decoded code: blocks stay coherent with memory (stores by the hart itself, by another hart, writes by the VMM
//! and by devices), survive address-space switches, and keep exceptions, interrupts, the budget and the dirty
//! log exactly as a per-instruction interpreter has them.

use crate::common::*;
use kemari_engine::{irq, Exit, Hart, Privilege};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A function that returns 1 in a0: `addi a0, zero, 1; ret`, on a page of its own.
const FUNC: u64 = RAM_BASE + 0x3000;
/// Code of a second hart, on a page of its own.
const HART1_CODE: u64 = RAM_BASE + 0x5000;
/// Physical pages for S-mode code.
const PHYS_A: u64 = RAM_BASE + 0x20_0000;
const PHYS_B: u64 = RAM_BASE + 0x20_1000;
/// Where a second set of page tables is allocated.
const PT_AREA_2: u64 = PT_AREA + 0x10_0000;
/// An M-mode trap handler (see `switch_spaces`).
const HANDLER: u64 = RAM_BASE + 0x2000;

fn pause(a: &mut Asm) -> &mut Asm {
    a.i(sw(ZERO, PAUSE_MMIO as i32, ZERO))
}

fn returning(value: i32) -> Asm {
    let mut f = Asm::new(FUNC);
    f.i(addi(A0, ZERO, value)).i(jalr(ZERO, RA, 0));
    f
}

#[test]
fn a_store_into_the_running_block_ends_it_and_the_rewritten_instruction_runs() {
    // The loop is one block; each pass stores a new `addi a0, zero, N` over `patch`, later in the same block.
    let mut a = Asm::new(CODE);
    a.li(T2, 2).li(A1, 0);
    a.label("loop")
        .i(sw(T0, 0, T1))
        .label("patch")
        .i(addi(A0, ZERO, 1))
        .i(add(A1, A1, A0))
        .i(addi(T2, T2, -1))
        .li(T0, addi(A0, ZERO, 7) as u64)
        .bne(T2, ZERO, "loop");
    let mut m = Machine::new();
    m.set_x(T0, addi(A0, ZERO, 5) as u64);
    m.set_x(T1, a.addr("patch"));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A1), 5 + 7, "each pass ran the instruction its own store wrote");
}

#[test]
fn a_store_into_another_block_then_fence_i_runs_the_new_code() {
    // FUNC in compressed form: `c.li a0, 1; c.jr ra`; the store rewrites the c.li (RVC is expanded at decode).
    let mut f = Asm::new(FUNC);
    f.c(c_li(A0, 1)).c(c_jr(RA));
    let mut a = Asm::new(CODE);
    a.li(T3, FUNC)
        .i(jalr(RA, T3, 0))
        .i(addi(S2, A0, 0))
        .li(T0, c_li(A0, 2) as u64)
        .i(sh(T0, 0, T3))
        .i(fence_i())
        .i(jalr(RA, T3, 0))
        .i(addi(S3, A0, 0));
    let mut m = Machine::new();
    m.load(&f);
    m.run_to_ecall(&mut a);
    assert_eq!((m.x(S2), m.x(S3)), (1, 2));
}

#[test]
fn vmm_and_device_writes_into_code_between_runs_change_what_runs() {
    let mut a = Asm::new(CODE);
    a.li(T3, FUNC).i(jalr(RA, T3, 0)).i(addi(S2, A0, 0));
    pause(&mut a).i(jalr(RA, T3, 0)).i(addi(S3, A0, 0));
    pause(&mut a).i(jalr(RA, T3, 0)).i(addi(S4, A0, 0)).i(ecall());
    let mut m = Machine::new();
    m.load(&returning(1));
    m.load(&a);
    assert_eq!(m.run(), Outcome::Paused);
    // The VMM rewrites the function.
    m.ram.write(FUNC, &addi(A0, ZERO, 2).to_le_bytes()).unwrap();
    assert_eq!(m.run(), Outcome::Paused);
    // A device writes it through its own view of the same memory, then reports the write.
    let off = FUNC - RAM_BASE;
    let word = addi(A0, ZERO, 3).to_le_bytes();
    // SAFETY: `off + 4` lies inside the RAM mapping (16 MiB); nothing else accesses it meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(word.as_ptr(), m.ram.host_ptr().add(off as usize), 4) };
    m.ram.mark_dirty_range(off, 4);
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!((m.x(S2), m.x(S3), m.x(S4)), (1, 2, 3));
}

#[test]
fn a_32_bit_instruction_across_a_page_boundary_runs_and_sees_rewrites() {
    let at = FUNC + 0xffe;
    let mut f = Asm::new(at);
    f.i(addi(A0, ZERO, 1)).i(jalr(ZERO, RA, 0));
    let mut a = Asm::new(CODE);
    a.li(T3, at).i(jalr(RA, T3, 0)).i(addi(S2, A0, 0));
    pause(&mut a).i(jalr(RA, T3, 0)).i(addi(S3, A0, 0)).i(ecall());
    let mut m = Machine::new();
    m.load(&f);
    m.load(&a);
    assert_eq!(m.run(), Outcome::Paused);
    m.ram.write(at, &addi(A0, ZERO, 2).to_le_bytes()).unwrap();
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!((m.x(S2), m.x(S3)), (1, 2));
}

/// Runs `hart` on `m`'s memory and bus for exactly `budget` instructions.
fn run_other(m: &mut Machine, hart: &mut Hart, budget: u64) {
    assert_eq!(hart.run(&m.ram, &mut m.bus, budget), Exit::Budget);
}

#[test]
fn a_second_hart_storing_into_code_the_first_has_cached_is_seen() {
    // Hart 1 stores t0 at t1 in a loop (one block of 2 instructions, decoded in its first run).
    let mut h1_code = Asm::new(HART1_CODE);
    h1_code.label("loop").i(sd(T0, 0, T1)).j("loop");
    // Hart 0 calls FUNC, pauses, calls it again.
    let mut a = Asm::new(CODE);
    a.li(T3, FUNC).i(jalr(RA, T3, 0)).i(addi(S2, A0, 0));
    pause(&mut a).i(jalr(RA, T3, 0)).i(addi(S3, A0, 0)).i(ecall());
    let mut m = Machine::new();
    m.load(&returning(1));
    m.load(&a);
    m.load(&h1_code);
    let mut h1 = Hart::new(1, false);
    configure_engine(&mut h1);
    let mut s = h1.state().clone();
    s.pc = HART1_CODE;
    s.mtvec = HALT_VECTOR;
    h1.set_state(s);

    // Hart 1 writes data into FUNC's page before it holds code: it gets a store translation for the page.
    h1.set_reg(T1 as usize, FUNC + 0x100);
    run_other(&mut m, &mut h1, 10);
    // Hart 0 runs (and caches) FUNC.
    assert_eq!(m.run(), Outcome::Paused);
    // Hart 1 rewrites FUNC's first instruction from its cached loop (no decode of its own comes first to drop
    // its store translations): the translation it had for the page must be gone, so that the write is seen.
    h1.set_reg(T0 as usize, (jalr(ZERO, RA, 0) as u64) << 32 | addi(A0, ZERO, 2) as u64);
    h1.set_reg(T1 as usize, FUNC);
    run_other(&mut m, &mut h1, 10);
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!((m.x(S2), m.x(S3)), (1, 2));
}

/// An M-mode program that enters S-mode at `va1` under `satp1`; the S code ends with `ecall`, whose handler
/// (at [`HANDLER`]) keeps a0 in s4, switches to `satp2` and enters S-mode again at `va2`; the second `ecall`
/// halts. Returns (a0 of the first visit, a0 of the second, blocks decoded).
fn switch_spaces(m: &mut Machine, satp1: u64, va1: u64, satp2: u64, va2: u64) -> (u64, u64, u64) {
    let mut h = Asm::new(HANDLER);
    h.bne(S3, ZERO, "done")
        .i(addi(S3, ZERO, 1))
        .i(addi(S4, A0, 0))
        .i(csrw(csr::SATP, S5))
        .i(csrw(csr::MEPC, T4))
        .i(mret())
        .label("done")
        .i(sw(ZERO, HALT_MMIO as i32, ZERO));
    let mut a = Asm::new(CODE);
    a.li(T0, HANDLER).i(csrw(csr::MTVEC, T0)).li(T6, satp1).i(csrw(csr::SATP, T6));
    enter_with_mret(&mut a, Privilege::Supervisor, va1);
    m.load(&h);
    m.set_x(S5, satp2);
    m.set_x(T4, va2);
    m.load(&a);
    assert_eq!(m.run(), Outcome::Halted, "{}", m.describe());
    assert_eq!(m.state().mcause, cause::ECALL_S);
    (m.x(S4), m.x(A0), m.hart.decoded_blocks())
}

#[test]
fn blocks_survive_a_satp_switch_to_a_space_mapping_the_same_code_elsewhere() {
    const VA1: u64 = 0x4000_0000;
    const VA2: u64 = 0x5000_0000;
    let run = |second_space: bool| {
        let mut m = Machine::new();
        let mut s = Asm::new(PHYS_A);
        s.i(auipc(A0, 0)).i(addi(A1, A1, 1)).i(ecall());
        m.load(&s);
        let mut a = PageTables::new(&m, Mode::Sv39);
        a.map(&m, VA1, PHYS_A, pte::RX_A);
        let mut b = PageTables::new_at(&m, Mode::Sv39, PT_AREA_2);
        b.map(&m, VA2, PHYS_A, pte::RX_A);
        if second_space {
            switch_spaces(&mut m, a.satp(), VA1, b.satp(), VA2)
        } else {
            switch_spaces(&mut m, a.satp(), VA1, a.satp(), VA1)
        }
    };
    let (first, second, decoded) = run(true);
    assert_eq!((first, second), (VA1, VA2), "auipc sees the virtual pc it runs at");
    let (_, _, decoded_same_space) = run(false);
    assert_eq!(decoded, decoded_same_space, "the code decoded under the first satp served the second");
}

#[test]
fn after_a_satp_switch_the_code_of_the_new_space_runs_at_the_same_address() {
    const VA: u64 = 0x4000_0000;
    // Not at the start of the page: the jump cache slot of VA is not shared with the handler's.
    const AT: u64 = 0x40;
    let mut m = Machine::new();
    let mut one = Asm::new(PHYS_A + AT);
    one.i(addi(A0, ZERO, 1)).i(ecall());
    let mut two = Asm::new(PHYS_B + AT);
    two.i(addi(A0, ZERO, 2)).i(ecall());
    m.load(&one);
    m.load(&two);
    let mut a = PageTables::new(&m, Mode::Sv39);
    a.map(&m, VA, PHYS_A, pte::RX_A);
    let mut b = PageTables::new_at(&m, Mode::Sv48, PT_AREA_2);
    b.map(&m, VA, PHYS_B, pte::RX_A);
    let (first, second, _) = switch_spaces(&mut m, a.satp(), VA + AT, b.satp(), VA + AT);
    assert_eq!((first, second), (1, 2));
}

#[test]
fn a_fault_in_the_middle_of_a_block_is_precise() {
    const NOWHERE: u64 = 0x2000_0000;
    // The handler reads minstret first thing, then halts.
    let mut h = Asm::new(HANDLER);
    h.i(csrr(S3, csr::MINSTRET)).i(sw(ZERO, HALT_MMIO as i32, ZERO));
    let mut a = Asm::new(CODE);
    a.li(T0, HANDLER).i(csrw(csr::MTVEC, T0)).li(T0, NOWHERE);
    // A block: csrr ends the one before it.
    a.i(csrr(S2, csr::MINSTRET)).i(addi(A0, ZERO, 1)).i(addi(A1, ZERO, 2)).c(c_addi(A0, 3)).i(add(A2, A0, A1));
    let faulting = a.pc();
    a.i(ld(A3, 8, T0)).i(addi(A4, ZERO, 9)).i(ecall());
    let mut m = Machine::new();
    m.load(&h);
    m.run_program(&a);
    assert_eq!(m.m_trap(), Trap::new(cause::LOAD_ACCESS, NOWHERE + 8, faulting));
    assert_eq!(m.x(S3) - m.x(S2), 5, "csrr and the 4 instructions before the load retired");
    assert_eq!((m.x(A2), m.x(A4)), (6, 0));
    assert_eq!(m.state().instret, m.x(S3) + 2, "then the handler's csrr and halt store");
}

#[test]
fn a_store_fault_in_the_middle_of_a_block_under_sv39_is_precise() {
    const VA: u64 = 0x4000_0000;
    let mut m = Machine::new();
    let mut pt = PageTables::new(&m, Mode::Sv39);
    pt.map_code(&m, false);
    pt.map(&m, VA, DATA, pte::R | pte::A); // read-only
    let mut g = Asm::new(GUEST_CODE);
    g.li(T0, VA).i(ld(A0, 0, T0)).i(addi(A1, ZERO, 1));
    let faulting = g.pc();
    g.i(sd(A1, 16, T0)).i(addi(A2, ZERO, 1)).i(ecall());
    m.edit(|s| s.medeleg = 1 << cause::STORE_PAGE);
    m.edit(|s| s.stvec = S_ESCALATE);
    let before = m.state().instret;
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::ecall(cause::ECALL_S, S_ESCALATE));
    assert_eq!(m.s_trap(), Trap::new(cause::STORE_PAGE, VA + 16, faulting));
    assert_eq!(m.x(A2), 0);
    assert_eq!(m.read_u64(DATA + 16), 0);
    // Boot code, then li (lui + addiw... as assembled), ld, addi; the store traps; S_ESCALATE's ecall traps;
    // the halt store retires.
    let boot_len = {
        let mut boot = Asm::new(CODE);
        boot.li(T6, pt.satp()).i(csrw(csr::SATP, T6));
        enter_with_mret(&mut boot, Privilege::Supervisor, GUEST_CODE);
        (boot.pc() - CODE) / 4
    };
    let guest_before_store = (faulting - GUEST_CODE) / 4;
    assert_eq!(m.state().instret - before, boot_len + guest_before_store + 1);
}

#[test]
fn a_checkpoint_between_runs_logs_the_next_store_and_keeps_decoded_code() {
    let mut a = Asm::new(CODE);
    a.li(S0, DATA).label("loop").i(sd(T0, 0, S0)).i(addi(T0, T0, 1));
    pause(&mut a).j("loop");
    let mut m = Machine::new();
    m.load(&a);
    m.ram.take_dirty();
    let page = (DATA - RAM_BASE) / PAGE;
    assert_eq!(m.run(), Outcome::Paused);
    assert_eq!(m.ram.take_dirty(), vec![page]);
    // The second pass decodes `j loop` (run for the first time), nothing after that.
    assert_eq!(m.run(), Outcome::Paused);
    assert_eq!(m.ram.take_dirty(), vec![page], "the store after the checkpoint is logged");
    let decoded = m.hart.decoded_blocks();
    for _ in 0..3 {
        assert_eq!(m.run(), Outcome::Paused);
        assert_eq!(m.ram.take_dirty(), vec![page], "the store after the checkpoint is logged");
    }
    assert_eq!(m.hart.decoded_blocks(), decoded, "checkpoints left the decoded blocks alone");
    assert_eq!(m.read_u64(DATA), 4);
}

#[test]
fn an_interrupt_raised_between_runs_is_taken_where_the_budget_cut_the_block() {
    let mut m = Machine::new();
    m.edit(|s| {
        s.mie = 1 << irq::MTI;
        s.mstatus |= mstatus::MIE;
    });
    let mut a = Asm::new(CODE);
    a.label("loop").i(addi(A0, A0, 1)).i(addi(A1, A1, 1)).i(addi(A2, A2, 1)).i(addi(A3, A3, 1)).j("loop");
    m.load(&a);
    // One pass (5 instructions) and 2 of the next: the budget ends inside the block.
    assert_eq!(m.step(7), Exit::Budget);
    assert_eq!(m.state().pc, CODE + 8);
    assert_eq!((m.x(A0), m.x(A1), m.x(A2)), (2, 2, 1));
    m.hart.set_irq_line(irq::MTI, true);
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.m_trap(), Trap::interrupt(irq::MTI as u64, CODE + 8));
    assert_eq!((m.x(A0), m.x(A1), m.x(A2)), (2, 2, 1));
}

/// A mixed program (ALU, RVC, loads and stores, a store into its own code, FP, an AMO, CSR reads of instret,
/// a fault and its handler) that ends by halting.
fn mixed_program(m: &mut Machine) {
    let mut h = Asm::new(HANDLER);
    // Skip the faulting instruction (4 bytes) and go on.
    h.i(csrr(T6, csr::MEPC)).i(addi(T6, T6, 4)).i(csrw(csr::MEPC, T6)).i(addi(S4, S4, 1)).i(mret());
    let mut a = Asm::new(CODE);
    a.li(T0, HANDLER).i(csrw(csr::MTVEC, T0)).li(S0, DATA).li(S1, 5).li(T2, 0x2000_0000);
    a.label("loop")
        .i(addi(A0, A0, 3))
        .c(c_addi(A1, 1))
        .i(mul(A2, A0, A1))
        .c(c_sd(A2, 8, S0))
        .i(ld(A3, 8, S0))
        .i(remw(A4, A3, S1))
        .i(fmv_d_x(F1, A3))
        .i(fadd_d(F2, F1, F1, rm::RNE))
        .i(amoadd_d(A5, A0, S0))
        .i(csrr(A6, csr::INSTRET))
        .i(add(A7, A7, A6))
        .i(ld(T3, 0, T2)) // faults: the handler skips it
        .i(xor(T4, T4, T5))
        .i(sw(T4, 0, T1)) // rewrites `patch`: alternately +2 and +1
        .label("patch")
        .i(addi(S2, S2, 1))
        .c(c_addi(S1, -1))
        .c_bnez(S1, "loop")
        .i(sw(ZERO, HALT_MMIO as i32, ZERO));
    m.load(&h);
    m.load(&a);
    m.enable_fp();
    m.set_x(T1, a.addr("patch"));
    m.set_x(T4, addi(S2, S2, 1) as u64);
    m.set_x(T5, (addi(S2, S2, 1) ^ addi(S2, S2, 2)) as u64);
}

#[test]
fn running_in_blocks_matches_running_one_instruction_at_a_time() {
    // With a budget of 1 every run executes a single instruction: a per-instruction interpreter.
    let mut stepped = Machine::new();
    mixed_program(&mut stepped);
    let mut steps = 0;
    while !stepped.bus.halted {
        stepped.step(1);
        steps += 1;
        assert!(steps < 10_000, "did not halt: {}", stepped.describe());
    }
    let mut blocks = Machine::new();
    mixed_program(&mut blocks);
    assert_eq!(blocks.run(), Outcome::Halted);
    assert_eq!(blocks.state(), stepped.state());
    assert_eq!(blocks.read_bytes::<16>(DATA), stepped.read_bytes::<16>(DATA));
    assert_eq!(blocks.read_u32(CODE + 0x100), stepped.read_u32(CODE + 0x100));
    assert_eq!(blocks.x(S4), 5, "five faults handled");
    assert_eq!(blocks.x(S2), 2 + 1 + 2 + 1 + 2, "each pass ran the instruction it wrote");
}

#[test]
fn code_cached_in_s_mode_is_not_run_by_u_mode_without_execute_permission() {
    // S-mode calls `func` (on a supervisor-only page), then returns to U-mode at `func` itself: the fetch
    // must fault although S-mode just ran the very block.
    let mut m = Machine::new();
    let mut pt = PageTables::new(&m, Mode::Sv39);
    pt.map_code(&m, false);
    let func = GUEST_CODE + 0x100;
    let mut g = Asm::new(GUEST_CODE);
    g.li(T0, func)
        .i(jalr(RA, T0, 0))
        .i(csrw(csr::SEPC, T0))
        .li(T1, mstatus::SPP)
        .i(csrc(csr::SSTATUS, T1))
        .i(sret())
        .pad_to(func)
        .i(addi(A0, A0, 1))
        .i(jalr(ZERO, RA, 0));
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::new(cause::FETCH_PAGE, func, func));
    assert_eq!(m.x(A0), 1, "S-mode ran it once");
}

#[test]
fn a_set_exit_word_stops_the_hart_at_the_next_block() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.label("loop").i(addi(A0, A0, 1)).i(addi(A1, A1, 1)).j("loop");
    m.load(&a);
    let word = Arc::new(AtomicBool::new(false));
    m.hart.set_exit_word(word.clone());
    assert_eq!(m.step(999), Exit::Budget);
    assert_eq!(m.state().instret, 999);
    word.store(true, Ordering::Relaxed);
    assert_eq!(m.step(1000), Exit::Budget);
    assert_eq!(m.state().instret, 999, "nothing ran while the word was set");
    word.store(false, Ordering::Relaxed);
    assert_eq!(m.step(1000), Exit::Budget);
    assert_eq!(m.state().instret, 1999);
}
