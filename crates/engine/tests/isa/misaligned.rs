//! Misaligned accesses: supported in hardware for ordinary loads and stores (also across pages, also when the
//! pages are translated to unrelated frames); LR/SC/AMOs must be aligned.

use crate::common::*;
use kemari_engine::Privilege;

const VA: u64 = 0x4000_0000;

fn fill_pattern(m: &Machine, at: u64) {
    let bytes: Vec<u8> = (0..32).map(|i| 0x80 + i as u8).collect();
    m.write_bytes(at, &bytes);
}

#[test]
fn misaligned_loads_within_a_page() {
    let mut m = Machine::new();
    fill_pattern(&m, DATA);
    m.set_x(T0, DATA);
    let mut a = Asm::new(CODE);
    a.i(lh(A0, 1, T0)).i(lhu(A1, 1, T0)).i(lw(A2, 3, T0)).i(lwu(A3, 3, T0)).i(ld(A4, 5, T0)).i(lw(A5, 0x7e, T0));
    m.write_u32(DATA + 0x7e, 0x1234_5678);
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 0xffff_ffff_ffff_8281);
    assert_eq!(m.x(A1), 0x8281);
    assert_eq!(m.x(A2), 0xffff_ffff_8685_8483);
    assert_eq!(m.x(A3), 0x8685_8483);
    assert_eq!(m.x(A4), 0x8c8b_8a89_8887_8685);
    assert_eq!(m.x(A5), 0x1234_5678);
}

#[test]
fn misaligned_stores_within_a_page() {
    let mut m = Machine::new();
    m.set_x(T0, DATA);
    m.set_x(A0, 0x1122_3344_5566_7788);
    let mut a = Asm::new(CODE);
    a.i(sh(A0, 1, T0)).i(sw(A0, 5, T0)).i(sd(A0, 11, T0));
    m.run_to_ecall(&mut a);
    assert_eq!(
        m.read_bytes::<24>(DATA),
        [
            0x00, 0x88, 0x77, 0x00, 0x00, 0x88, 0x77, 0x66, 0x55, 0x00, 0x00, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22,
            0x11, 0x00, 0x00, 0x00, 0x00, 0x00
        ]
    );
}

#[test]
fn misaligned_accesses_across_a_page_boundary() {
    let mut m = Machine::new();
    fill_pattern(&m, DATA + 0xff0);
    m.set_x(T0, DATA + 0x1000);
    m.set_x(T1, DATA + 0x2000);
    m.set_x(A1, 0x0102_0304_0506_0708);
    let mut a = Asm::new(CODE);
    a.i(ld(A0, -3, T0)).i(sd(A1, -5, T1)).i(lw(A2, -1, T0));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 0x9493_9291_908f_8e8d);
    assert_eq!(m.read_u64(DATA + 0x1ffb), 0x0102_0304_0506_0708);
    assert_eq!(m.x(A2), 0xffff_ffff_9291_908f);
}

#[test]
fn misaligned_accesses_across_pages_mapped_to_unrelated_frames() {
    let first = DATA + 0x7000;
    let second = DATA + 0x2000;
    let mut m = Machine::new();
    m.write_u64(first + 0xff8, 0x8877_6655_4433_2211);
    m.write_u64(second, 0xffee_ddcc_bbaa_9900);
    let mut pt = PageTables::new(&m, Mode::Sv39);
    pt.map_code(&m, false);
    pt.map(&m, VA, first, pte::RW_AD);
    pt.map(&m, VA + PAGE, second, pte::RW_AD);
    let mut g = Asm::new(GUEST_CODE);
    g.li(T0, VA + 0xffc).i(ld(A0, 0, T0)).li(A1, 0x0102_0304_0506_0708).i(sd(A1, -2, T0));
    let end = g.pc();
    g.i(ecall());
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::ecall(cause::ECALL_S, end));
    assert_eq!(m.x(A0), 0xbbaa_9900_8877_6655);
    assert_eq!(m.read_bytes::<8>(first + 0xff8), [0x11, 0x22, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03]);
    assert_eq!(m.read_bytes::<4>(second), [0x02, 0x01, 0xaa, 0xbb]);
}

#[test]
fn page_crossing_store_faulting_on_the_second_page() {
    let first = DATA + 0x7000;
    let mut m = Machine::new();
    let mut pt = PageTables::new(&m, Mode::Sv39);
    pt.map_code(&m, false);
    pt.map(&m, VA, first, pte::RW_AD);
    pt.map(&m, VA + PAGE, DATA, pte::R | pte::A); // read-only
    let mut g = Asm::new(GUEST_CODE);
    g.li(T0, VA + 0xffc).li(A1, u64::MAX);
    let fault_pc = g.pc();
    g.i(sd(A1, 0, T0));
    let trap = m.run_guest(Privilege::Supervisor, pt.satp(), &g);
    assert_eq!((trap.cause, trap.epc), (cause::STORE_PAGE, fault_pc));
    assert!(
        trap.tval == VA + 0xffc || (VA + PAGE..VA + PAGE + 4).contains(&trap.tval),
        "tval {:#x} is neither the access nor the faulting part",
        trap.tval
    );
    // The engine translates both pages before writing: the first page is untouched.
    assert_eq!(m.read_u32(first + 0xffc), 0);
}

#[test]
fn page_crossing_load_faulting_on_the_second_page() {
    let mut m = Machine::new();
    let mut pt = PageTables::new(&m, Mode::Sv39);
    pt.map_code(&m, false);
    pt.map(&m, VA, DATA, pte::RW_AD);
    let mut g = Asm::new(GUEST_CODE);
    g.li(T0, VA + 0xffe);
    let pc = g.pc();
    g.i(lw(A0, 0, T0));
    let trap = m.run_guest(Privilege::Supervisor, pt.satp(), &g);
    assert_eq!((trap.cause, trap.epc), (cause::LOAD_PAGE, pc));
    assert!(trap.tval == VA + 0xffe || (VA + PAGE..VA + PAGE + 2).contains(&trap.tval), "tval {:#x}", trap.tval);
    assert_eq!(m.x(A0), 0);
}

#[test]
fn misaligned_fp_loads_and_stores() {
    let mut m = Machine::new();
    m.enable_fp();
    m.write_u64(DATA + 3, 1.25f64.to_bits());
    m.set_x(T0, DATA);
    let mut a = Asm::new(CODE);
    a.i(fld(F1, 3, T0)).i(fsd(F1, 0x21, T0)).i(fsw(F1, 0x31, T0));
    m.run_to_ecall(&mut a);
    assert_eq!(m.f(F1), 1.25f64.to_bits());
    assert_eq!(m.read_u64(DATA + 0x21), 1.25f64.to_bits());
    assert_eq!(m.read_u32(DATA + 0x31), 1.25f64.to_bits() as u32);
}

#[test]
fn misaligned_lr_is_a_load_misaligned_fault() {
    for (insn, addr) in [(lr_w(A0, T0), DATA + 2), (lr_d(A0, T0), DATA + 4), (lr_d(A0, T0), DATA + 1)] {
        let mut m = Machine::new();
        m.set_x(T0, addr);
        let mut a = Asm::new(CODE);
        a.i(insn);
        assert_eq!(m.run_program(&a), Trap::new(cause::LOAD_MISALIGNED, addr, CODE), "{addr:#x}");
        assert_eq!(m.state().reservation, None);
    }
}

#[test]
fn misaligned_amo_is_a_store_misaligned_fault() {
    let mut m = Machine::new();
    m.set_x(T0, DATA + 0xffe);
    let mut a = Asm::new(CODE);
    a.i(amo(amo_op::SWAP, false, A0, A1, T0));
    assert_eq!(m.run_program(&a), Trap::new(cause::STORE_MISALIGNED, DATA + 0xffe, CODE));
}
