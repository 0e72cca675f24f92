//! Accesses outside RAM: MMIO loads and stores through the Bus, and access faults where nothing answers.

use crate::common::*;
use kemari_engine::Exit;

const NOTHING: u64 = 0x2000_0000;

#[test]
fn mmio_loads_of_every_width() {
    let mut m = Machine::new();
    m.bus.mmio_value = 0x8877_6655_c433_2281;
    m.set_x(T0, MMIO_BASE + 0x40);
    let mut a = Asm::new(CODE);
    a.i(lb(A0, 0, T0)).i(lbu(A1, 0, T0)).i(lh(A2, 0, T0)).i(lw(A3, 0, T0)).i(lwu(A4, 0, T0)).i(ld(A5, 0, T0));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 0xffff_ffff_ffff_ff81);
    assert_eq!(m.x(A1), 0x81);
    assert_eq!(m.x(A2), 0x2281);
    assert_eq!(m.x(A3), 0xffff_ffff_c433_2281);
    assert_eq!(m.x(A4), 0xc433_2281);
    assert_eq!(m.x(A5), 0x8877_6655_c433_2281);
    let a40 = MMIO_BASE + 0x40;
    assert_eq!(m.bus.loads, vec![(a40, 1), (a40, 1), (a40, 2), (a40, 4), (a40, 4), (a40, 8)]);
}

#[test]
fn mmio_stores_reach_the_bus_and_exit() {
    let mut m = Machine::new();
    m.set_x(T0, MMIO_BASE);
    m.set_x(A0, 0x1122_3344_5566_7788);
    let mut a = Asm::new(CODE);
    a.i(sb(A0, 1, T0)).i(sh(A0, 2, T0)).i(sw(A0, 4, T0)).i(sd(A0, 8, T0)).i(ecall());
    m.load(&a);
    // Each store ends the run right after it, with pc on the next instruction.
    for i in 0..4 {
        assert_eq!(m.step(100), Exit::MmioStore);
        assert_eq!(m.state().pc, CODE + 4 * (i + 1));
    }
    let got: Vec<(u64, u8, u64)> = m
        .bus
        .stores
        .iter()
        .map(|&(addr, size, v)| (addr, size, if size == 8 { v } else { v & ((1 << (8 * size)) - 1) }))
        .collect();
    assert_eq!(
        got,
        vec![
            (MMIO_BASE + 1, 1, 0x88),
            (MMIO_BASE + 2, 2, 0x7788),
            (MMIO_BASE + 4, 4, 0x5566_7788),
            (MMIO_BASE + 8, 8, 0x1122_3344_5566_7788)
        ]
    );
}

#[test]
fn fp_store_to_mmio_exits_too() {
    let mut m = Machine::new();
    m.enable_fp();
    m.set_f64(F1, 2.0);
    m.set_x(T0, MMIO_BASE);
    let mut a = Asm::new(CODE);
    a.i(fsd(F1, 0x10, T0)).i(ecall());
    m.load(&a);
    assert_eq!(m.step(100), Exit::MmioStore);
    assert_eq!(m.bus.stores, vec![(MMIO_BASE + 0x10, 8, 2.0f64.to_bits())]);
}

#[test]
fn accesses_where_nothing_answers_are_access_faults() {
    let mut m = Machine::new();
    m.set_x(T0, NOTHING);
    let mut a = Asm::new(CODE);
    a.i(lw(A0, 8, T0));
    assert_eq!(m.run_program(&a), Trap::new(cause::LOAD_ACCESS, NOTHING + 8, CODE));

    let mut m = Machine::new();
    m.set_x(T0, NOTHING);
    let mut a = Asm::new(CODE);
    a.i(sd(A0, 16, T0));
    assert_eq!(m.run_program(&a), Trap::new(cause::STORE_ACCESS, NOTHING + 16, CODE));

    let mut m = Machine::new();
    m.set_x(T0, NOTHING);
    let mut a = Asm::new(CODE);
    a.i(jalr(ZERO, T0, 0));
    assert_eq!(m.run_program(&a), Trap::new(cause::FETCH_ACCESS, NOTHING, NOTHING));
}

#[test]
fn misaligned_mmio_load_faults_without_reaching_the_bus() {
    let mut m = Machine::new();
    m.set_x(T0, MMIO_BASE + 2);
    let mut a = Asm::new(CODE);
    a.i(lw(A0, 0, T0));
    let trap = m.run_program(&a);
    assert!(trap.cause == cause::LOAD_ACCESS || trap.cause == cause::LOAD_MISALIGNED, "cause {}", trap.cause);
    assert_eq!((trap.tval, trap.epc), (MMIO_BASE + 2, CODE));
    assert!(m.bus.loads.is_empty());
}
