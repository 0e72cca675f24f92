//! Dirty-page tracking: every store (plain, FP, compressed, AMO, SC, through page tables, by the page-table
//! walker) marks exactly the RAM pages it writes, in the current generation; loads mark nothing.

use crate::common::*;
use kemari_engine::Privilege;

/// Index of the RAM page holding `addr` (what `GuestRam::take_dirty` reports).
fn page_of(addr: u64) -> u64 {
    (addr - RAM_BASE) / PAGE
}

fn pages(addrs: &[u64]) -> Vec<u64> {
    let mut v: Vec<u64> = addrs.iter().map(|&a| page_of(a)).collect();
    v.sort();
    v.dedup();
    v
}

/// A machine with `a` loaded and the dirty log emptied.
fn loaded(a: &Asm) -> Machine {
    let mut m = Machine::new();
    m.load(a);
    m.ram.take_dirty();
    m
}

fn pause(a: &mut Asm) {
    a.i(sw(ZERO, PAUSE_MMIO as i32, ZERO));
}

#[test]
fn stores_mark_exactly_the_pages_they_write() {
    let mut a = Asm::new(CODE);
    a.li(T0, DATA)
        .li(A0, 0x1234)
        .i(sd(A0, 0, T0))
        .li(T1, DATA + 5 * PAGE)
        .i(sb(A0, 7, T1))
        .li(T2, DATA + 3 * PAGE - 2)
        .i(sw(A0, 0, T2)) // crosses into page 3
        .li(T1, DATA + 7 * PAGE)
        .i(ld(A1, 0, T1)) // a load: not dirty
        .i(ecall());
    let mut m = loaded(&a);
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.ram.take_dirty(), pages(&[DATA, DATA + 5 * PAGE, DATA + 2 * PAGE, DATA + 3 * PAGE]));
}

#[test]
fn loads_and_fetches_mark_nothing() {
    let mut a = Asm::new(CODE);
    a.li(T0, DATA).i(ld(A0, 0, T0)).i(lw(A1, 0x100, T0)).i(lr_d(A2, T0)).i(ecall());
    let mut m = loaded(&a);
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.ram.take_dirty(), Vec::<u64>::new());
}

#[test]
fn a_page_is_marked_again_after_the_log_is_taken() {
    let mut a = Asm::new(CODE);
    a.li(T0, DATA).i(sd(T0, 0, T0));
    pause(&mut a);
    a.i(sd(T0, 8, T0)); // same page, whose store translation is cached from the first store
    pause(&mut a);
    a.i(ld(A0, 8, T0)).i(ecall()); // nothing written in the last phase
    let mut m = loaded(&a);
    assert_eq!(m.run(), Outcome::Paused);
    assert_eq!(m.ram.take_dirty(), pages(&[DATA]));
    assert_eq!(m.run(), Outcome::Paused);
    assert_eq!(m.ram.take_dirty(), pages(&[DATA]), "the second store must be seen in the new generation");
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.ram.take_dirty(), Vec::<u64>::new());
}

#[test]
fn only_pages_written_in_this_generation_are_reported() {
    let mut a = Asm::new(CODE);
    a.li(T0, DATA).li(T1, DATA + 9 * PAGE).i(sd(T0, 0, T0)).i(sd(T0, 0, T1));
    pause(&mut a);
    a.i(sd(T0, 16, T1)).i(ecall());
    let mut m = loaded(&a);
    assert_eq!(m.run(), Outcome::Paused);
    assert_eq!(m.ram.take_dirty(), pages(&[DATA, DATA + 9 * PAGE]));
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.ram.take_dirty(), pages(&[DATA + 9 * PAGE]));
}

#[test]
fn amos_and_sc_mark_their_page_in_every_generation() {
    let mut a = Asm::new(CODE);
    a.li(T0, DATA + 2 * PAGE).li(T1, DATA + 4 * PAGE).i(amoadd_d(A0, T0, T0)).i(lr_d(A1, T1)).i(sc_d(A2, T0, T1));
    pause(&mut a);
    a.i(amoadd_d(A0, T0, T0)).i(lr_d(A1, T1)).i(sc_d(A3, T0, T1)).i(ecall());
    let mut m = loaded(&a);
    assert_eq!(m.run(), Outcome::Paused);
    assert_eq!(m.x(A2), 0, "sc succeeded");
    assert_eq!(m.ram.take_dirty(), pages(&[DATA + 2 * PAGE, DATA + 4 * PAGE]));
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.x(A3), 0, "sc succeeded");
    assert_eq!(m.ram.take_dirty(), pages(&[DATA + 2 * PAGE, DATA + 4 * PAGE]));
}

#[test]
fn fp_and_compressed_stores_mark_their_pages() {
    let mut a = Asm::new(CODE);
    a.li(S0, DATA + 6 * PAGE).li(T0, DATA + 8 * PAGE).c(c_sd(S0, 0, S0)).i(fsd(F0, 0, T0));
    pause(&mut a);
    a.c(c_sw(S0, 4, S0)).i(fsw(F0, 8, T0)).i(ecall());
    let mut m = loaded(&a);
    m.enable_fp();
    assert_eq!(m.run(), Outcome::Paused);
    assert_eq!(m.ram.take_dirty(), pages(&[DATA + 6 * PAGE, DATA + 8 * PAGE]));
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.ram.take_dirty(), pages(&[DATA + 6 * PAGE, DATA + 8 * PAGE]));
}

#[test]
fn mmio_stores_mark_nothing() {
    let mut a = Asm::new(CODE);
    a.li(T0, MMIO_BASE).i(sw(T0, 0, T0)).i(ecall());
    let mut m = loaded(&a);
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.ram.take_dirty(), Vec::<u64>::new());
    assert_eq!(m.bus.stores.len(), 1);
}

#[test]
fn stores_through_page_tables_mark_the_physical_page() {
    const VA: u64 = 0x4000_0000;
    let frame = DATA + 11 * PAGE;
    let mut m = Machine::new();
    let mut pt = PageTables::new(&m, Mode::Sv39);
    pt.map_code(&m, false);
    pt.map(&m, VA, frame, pte::RW_AD); // A and D already set: the walker writes nothing
    let mut g = Asm::new(GUEST_CODE);
    g.li(T0, VA).i(sd(T0, 0x10, T0)).i(ld(A0, 0x10, T0));
    pause(&mut g);
    g.i(sd(T0, 0x20, T0)).i(ecall());
    let mut boot = Asm::new(CODE);
    boot.li(T6, pt.satp()).i(csrw(csr::SATP, T6));
    enter_with_mret(&mut boot, Privilege::Supervisor, GUEST_CODE);
    m.load(&boot);
    m.load(&g);
    // The guest's pause store goes to MMIO address 0x108: map it for S-mode.
    pt.map(&m, 0, 0, pte::RW_AD);
    m.ram.take_dirty();
    assert_eq!(m.run(), Outcome::Paused);
    assert_eq!(m.x(A0), VA);
    assert_eq!(m.ram.take_dirty(), pages(&[frame]));
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.ram.take_dirty(), pages(&[frame]));
    assert_eq!(m.read_u64(frame + 0x20), VA);
}

#[test]
fn walker_updates_of_accessed_and_dirty_bits_mark_the_page_table() {
    const VA: u64 = 0x4000_0000;
    let frame = DATA + 12 * PAGE;
    let mut m = Machine::new();
    let mut pt = PageTables::new(&m, Mode::Sv39);
    pt.map_code(&m, false);
    pt.map(&m, VA, frame, pte::R | pte::W); // no A, no D
    let leaf_table = pt.leaf_slot(&m, VA, 0);
    let mut g = Asm::new(GUEST_CODE);
    g.li(T0, VA).i(sd(T0, 0, T0)).i(ecall());
    let mut boot = Asm::new(CODE);
    boot.li(T6, pt.satp()).i(csrw(csr::SATP, T6));
    enter_with_mret(&mut boot, Privilege::Supervisor, GUEST_CODE);
    m.load(&boot);
    m.load(&g);
    m.ram.take_dirty();
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.ram.take_dirty(), pages(&[frame, leaf_table]));
}

#[test]
fn failed_sc_marks_nothing() {
    let mut a = Asm::new(CODE);
    a.li(T0, DATA + 3 * PAGE).i(sc_d(A0, T0, T0)).i(ecall());
    let mut m = loaded(&a);
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.x(A0), 1, "sc failed");
    assert_eq!(m.ram.take_dirty(), Vec::<u64>::new());
}
