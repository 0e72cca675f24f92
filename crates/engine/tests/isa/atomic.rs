//! The A extension: LR/SC reservations and every AMO in both widths.

use crate::common::*;

const WORD_SENTINEL: u32 = 0x1122_3344;

#[test]
fn lr_sc_pair_succeeds() {
    let mut m = Machine::new();
    m.write_u64(DATA, 41);
    m.set_x(T0, DATA);
    let mut a = Asm::new(CODE);
    a.i(lr_d(A0, T0)).i(addi(A1, A0, 1)).i(sc_d(A2, A1, T0));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 41);
    assert_eq!(m.x(A2), 0, "sc succeeded");
    assert_eq!(m.read_u64(DATA), 42);
}

#[test]
fn lr_w_sign_extends_and_sc_w_writes_one_word() {
    let mut m = Machine::new();
    m.write_u32(DATA, 0x8000_0000);
    m.write_u32(DATA + 4, WORD_SENTINEL);
    m.set_x(T0, DATA);
    m.set_x(A1, 0xffff_ffff_0000_0007);
    let mut a = Asm::new(CODE);
    a.i(lr_w(A0, T0)).i(sc_w(A2, A1, T0));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 0xffff_ffff_8000_0000);
    assert_eq!(m.x(A2), 0);
    assert_eq!(m.read_u32(DATA), 7);
    assert_eq!(m.read_u32(DATA + 4), WORD_SENTINEL);
}

#[test]
fn sc_without_reservation_fails_and_leaves_memory() {
    let mut m = Machine::new();
    m.write_u64(DATA, 5);
    m.set_x(T0, DATA);
    m.set_x(A1, 99);
    let mut a = Asm::new(CODE);
    a.i(sc_d(A2, A1, T0));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A2), 1);
    assert_eq!(m.read_u64(DATA), 5);
}

#[test]
fn sc_to_another_address_fails() {
    let mut m = Machine::new();
    m.write_u64(DATA, 5);
    m.write_u64(DATA + 64, 6);
    m.set_x(T0, DATA);
    m.set_x(T1, DATA + 64);
    m.set_x(A1, 99);
    let mut a = Asm::new(CODE);
    a.i(lr_d(A0, T0)).i(sc_d(A2, A1, T1));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A2), 1);
    assert_eq!(m.read_u64(DATA + 64), 6);
    assert_eq!(m.read_u64(DATA), 5);
}

#[test]
fn second_sc_after_a_successful_one_fails() {
    let mut m = Machine::new();
    m.set_x(T0, DATA);
    m.set_x(A1, 1);
    m.set_x(A3, 2);
    let mut a = Asm::new(CODE);
    a.i(lr_d(A0, T0)).i(sc_d(A2, A1, T0)).i(sc_d(A4, A3, T0));
    m.run_to_ecall(&mut a);
    assert_eq!((m.x(A2), m.x(A4)), (0, 1));
    assert_eq!(m.read_u64(DATA), 1);
}

#[test]
fn a_trap_between_lr_and_sc_drops_the_reservation() {
    // lr; ecall to M (the handler is our boot code's mtvec replacement: it returns with mret); sc fails.
    let mut m = Machine::new();
    m.set_x(T0, DATA);
    m.set_x(A1, 9);
    let handler = RAM_BASE + 0x800;
    let mut h = Asm::new(handler);
    h.i(csrr(T6, csr::MEPC)).i(addi(T6, T6, 4)).i(csrw(csr::MEPC, T6)).i(mret());
    m.load(&h);
    let mut a = Asm::new(CODE);
    a.li(T6, handler).i(csrw(csr::MTVEC, T6)).i(lr_d(A0, T0)).i(ecall()).i(sc_d(A2, A1, T0));
    a.li(T6, HALT_VECTOR).i(csrw(csr::MTVEC, T6));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A2), 1);
    assert_eq!(m.read_u64(DATA), 0);
}

struct AmoCase {
    name: &'static str,
    op: u32,
    /// (old memory, rs2, new memory)
    d: (u64, u64, u64),
    w: (u32, u64, u32),
}

#[test]
fn every_amo_in_both_widths() {
    const D_OLD: u64 = 0x8000_0000_0000_0005;
    const W_OLD: u32 = 0x8000_0005;
    // rs2 for .w carries garbage in the upper half, which must be ignored.
    const W_SRC: u64 = 0xdead_beef_0000_0003;
    let cases = [
        AmoCase { name: "swap", op: amo_op::SWAP, d: (D_OLD, 3, 3), w: (W_OLD, W_SRC, 3) },
        AmoCase { name: "add", op: amo_op::ADD, d: (D_OLD, 3, 0x8000_0000_0000_0008), w: (W_OLD, W_SRC, 0x8000_0008) },
        AmoCase { name: "xor", op: amo_op::XOR, d: (D_OLD, 3, 0x8000_0000_0000_0006), w: (W_OLD, W_SRC, 0x8000_0006) },
        AmoCase { name: "and", op: amo_op::AND, d: (D_OLD, 3, 1), w: (W_OLD, W_SRC, 1) },
        AmoCase { name: "or", op: amo_op::OR, d: (D_OLD, 3, 0x8000_0000_0000_0007), w: (W_OLD, W_SRC, 0x8000_0007) },
        AmoCase { name: "min", op: amo_op::MIN, d: (D_OLD, 3, D_OLD), w: (W_OLD, W_SRC, W_OLD) },
        AmoCase { name: "max", op: amo_op::MAX, d: (D_OLD, 3, 3), w: (W_OLD, W_SRC, 3) },
        AmoCase { name: "minu", op: amo_op::MINU, d: (D_OLD, 3, 3), w: (W_OLD, W_SRC, 3) },
        AmoCase { name: "maxu", op: amo_op::MAXU, d: (D_OLD, 3, D_OLD), w: (W_OLD, W_SRC, W_OLD) },
        // Unsigned comparisons of the .w forms use 32 bits: 0xffff_ffff is the largest word.
        AmoCase {
            name: "maxu (all ones)",
            op: amo_op::MAXU,
            d: (u64::MAX, 1, u64::MAX),
            w: (0xffff_ffff, 1, 0xffff_ffff),
        },
        AmoCase {
            name: "min (negatives)",
            op: amo_op::MIN,
            d: (u64::MAX, u64::MAX - 1, u64::MAX - 1),
            w: (0xffff_ffff, 0xffff_fffe, 0xffff_fffe),
        },
    ];
    for c in cases {
        // .d
        let mut m = Machine::new();
        m.write_u64(DATA, c.d.0);
        m.write_u64(DATA + 8, u64::MAX);
        m.set_x(T0, DATA);
        m.set_x(A1, c.d.1);
        let mut a = Asm::new(CODE);
        a.i(amo(c.op, true, A0, A1, T0));
        m.run_to_ecall(&mut a);
        assert_eq!(m.read_u64(DATA), c.d.2, "amo{}.d memory", c.name);
        assert_eq!(m.x(A0), c.d.0, "amo{}.d returns the old value", c.name);
        assert_eq!(m.read_u64(DATA + 8), u64::MAX, "amo{}.d neighbour", c.name);

        // .w
        let mut m = Machine::new();
        m.write_u32(DATA, c.w.0);
        m.write_u32(DATA + 4, WORD_SENTINEL);
        m.set_x(T0, DATA);
        m.set_x(A1, c.w.1);
        let mut a = Asm::new(CODE);
        a.i(amo(c.op, false, A0, A1, T0));
        m.run_to_ecall(&mut a);
        assert_eq!(m.read_u32(DATA), c.w.2, "amo{}.w memory", c.name);
        assert_eq!(m.x(A0), c.w.0 as i32 as i64 as u64, "amo{}.w returns the sign-extended old word", c.name);
        assert_eq!(m.read_u32(DATA + 4), WORD_SENTINEL, "amo{}.w neighbour", c.name);
    }
}

#[test]
fn amo_with_rd_equal_rs2_returns_old_value() {
    let mut m = Machine::new();
    m.write_u64(DATA, 10);
    m.set_x(T0, DATA);
    m.set_x(A1, 5);
    let mut a = Asm::new(CODE);
    a.i(amoadd_d(A1, A1, T0));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A1), 10);
    assert_eq!(m.read_u64(DATA), 15);
}

#[test]
fn misaligned_amo_is_a_store_misaligned_fault() {
    for (double, addr) in [(false, DATA + 2), (true, DATA + 4), (true, DATA + 1)] {
        let mut m = Machine::new();
        m.write_u64(DATA, 0x1111);
        m.write_u64(DATA + 8, 0x2222);
        m.set_x(T0, addr);
        m.set_x(A1, 0xff);
        let mut a = Asm::new(CODE);
        let pc = a.pc();
        a.i(amo(amo_op::ADD, double, A0, A1, T0));
        assert_eq!(m.run_program(&a), Trap::new(cause::STORE_MISALIGNED, addr, pc), "double={double} at {addr:#x}");
        assert_eq!((m.read_u64(DATA), m.read_u64(DATA + 8)), (0x1111, 0x2222));
        assert_eq!(m.x(A0), 0, "rd not written");
    }
}

#[test]
fn misaligned_sc_is_a_store_misaligned_fault() {
    let mut m = Machine::new();
    m.set_x(T0, DATA + 4);
    let mut a = Asm::new(CODE);
    let pc = a.pc();
    a.i(sc_d(A0, A1, T0));
    assert_eq!(m.run_program(&a), Trap::new(cause::STORE_MISALIGNED, DATA + 4, pc));
}

#[test]
fn amo_to_mmio_is_an_access_fault() {
    let mut m = Machine::new();
    m.set_x(T0, MMIO_BASE);
    let mut a = Asm::new(CODE);
    let pc = a.pc();
    a.i(amoadd_w(A0, A1, T0));
    assert_eq!(m.run_program(&a), Trap::new(cause::STORE_ACCESS, MMIO_BASE, pc));
    assert!(m.bus.stores.is_empty() && m.bus.loads.is_empty());
}
