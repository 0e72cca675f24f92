//! The C extension: expansion of the common compressed instructions, link values, mixing with 32-bit
//! instructions, fetch across page boundaries and illegal encodings.

use crate::common::*;

fn run_c(m: &mut Machine, build: impl FnOnce(&mut Asm)) {
    let mut a = Asm::new(CODE);
    build(&mut a);
    m.run_to_ecall(&mut a);
}

#[test]
fn immediate_forms() {
    let mut m = Machine::new();
    m.set_x(A0, 10);
    m.set_x(A1, 0x7fff_ffff);
    run_c(&mut m, |a| {
        a.c(c_addi(A0, -32))
            .c(c_li(A2, -1))
            .c(c_li(A3, 31))
            .c(c_lui(A4, -1))
            .c(c_lui(A5, 31))
            .c(c_addiw(A1, 1))
            .c(c_li(S1, -16))
            .c(c_srli(S1, 60))
            .c(c_li(T0, -16))
            .c(c_mv(T1, T0))
            .c(c_li(A6, 0))
            .c(c_addi(A6, 31))
            .c(c_li(A7, 0x1f))
            .c(c_li(T2, 0))
            .c(c_mv(T2, A7));
        a.c(c_li(S0, 0)).c(c_addi(S0, 15)).c(c_andi(S0, -4));
    });
    assert_eq!(m.x(A0), (-22i64) as u64);
    assert_eq!(m.x(A2), u64::MAX);
    assert_eq!(m.x(A3), 31);
    assert_eq!(m.x(A4), 0xffff_ffff_ffff_f000, "c.lui sign-extends");
    assert_eq!(m.x(A5), 0x1f000);
    assert_eq!(m.x(A1), 0xffff_ffff_8000_0000, "c.addiw sign-extends the word");
    assert_eq!(m.x(S1), 0xf, "c.srli is logical");
    assert_eq!(m.x(T1), (-16i64) as u64);
    assert_eq!(m.x(A6), 31);
    assert_eq!(m.x(T2), 0x1f);
    assert_eq!(m.x(S0), 12, "c.andi with a sign-extended immediate");
}

#[test]
fn c_slli_reaches_bit_63() {
    let mut m = Machine::new();
    m.set_x(A0, 3);
    run_c(&mut m, |a| {
        a.c(c_slli(A0, 63));
    });
    assert_eq!(m.x(A0), 1 << 63);
}

#[test]
fn c_srai_is_arithmetic() {
    let mut m = Machine::new();
    m.set_x(A0, 0x8000_0000_0000_0000);
    run_c(&mut m, |a| {
        a.c(c_srai(A0, 63));
    });
    assert_eq!(m.x(A0), u64::MAX);
}

#[test]
fn register_forms() {
    let mut m = Machine::new();
    m.set_x(S0, 100);
    m.set_x(S1, 58);
    m.set_x(A0, 0xff00);
    m.set_x(A1, 0x0ff0);
    m.set_x(A2, 0x7fff_ffff);
    m.set_x(A3, 1);
    m.set_x(A4, 0xffff_0000);
    m.set_x(A5, 0xf0f0);
    m.set_x(T2, 5);
    run_c(&mut m, |a| {
        a.c(c_sub(S0, S1)) // 42
            .c(c_xor(A0, A1)) // 0xf0f0
            .c(c_addw(A2, A3)) // 0x8000_0000 sign-extended
            .c(c_and(A4, A5)) // 0xf0f0 & 0xffff0000 = 0
            .c(c_or(A5, A1)) // 0xfff0
            .c(c_add(T2, S0)); // 47
    });
    assert_eq!(m.x(S0), 42);
    assert_eq!(m.x(A0), 0xf0f0);
    assert_eq!(m.x(A2), 0xffff_ffff_8000_0000);
    assert_eq!(m.x(A4), 0);
    assert_eq!(m.x(A5), 0xfff0);
    assert_eq!(m.x(T2), 47);
}

#[test]
fn c_subw_wraps_to_a_sign_extended_word() {
    let mut m = Machine::new();
    m.set_x(A0, 0);
    m.set_x(A1, 1);
    run_c(&mut m, |a| {
        a.c(c_subw(A0, A1));
    });
    assert_eq!(m.x(A0), u64::MAX);
}

#[test]
fn stack_pointer_forms() {
    let mut m = Machine::new();
    m.set_x(SP, DATA);
    m.write_u64(DATA + 8, 0x8000_0000_ffff_fff0);
    m.set_x(T3, 0x1122_3344_5566_7788);
    run_c(&mut m, |a| {
        a.c(c_lwsp(A0, 8))
            .c(c_ldsp(A1, 8))
            .c(c_swsp(T3, 16))
            .c(c_sdsp(T3, 32))
            .c(c_addi16sp(-64))
            .c(c_addi4spn(S0, 16));
    });
    assert_eq!(m.x(A0), 0xffff_ffff_ffff_fff0, "c.lwsp sign-extends");
    assert_eq!(m.x(A1), 0x8000_0000_ffff_fff0);
    assert_eq!(m.read_u64(DATA + 16), 0x5566_7788, "c.swsp stores one word");
    assert_eq!(m.read_u64(DATA + 32), 0x1122_3344_5566_7788);
    assert_eq!(m.x(SP), DATA - 64);
    assert_eq!(m.x(S0), DATA - 48);
}

#[test]
fn register_based_loads_and_stores() {
    let mut m = Machine::new();
    m.set_x(S1, DATA);
    m.write_u64(DATA, 0x0123_4567_89ab_cdef);
    m.write_u64(DATA + 120, 0xffff_ffff_8000_0000);
    m.set_x(A5, 0xaaaa_bbbb_cccc_dddd);
    run_c(&mut m, |a| {
        a.c(c_lw(A0, 0, S1)).c(c_lw(A1, 120, S1)).c(c_ld(A2, 0, S1)).c(c_sw(A5, 64, S1)).c(c_sd(A5, 248, S1));
    });
    assert_eq!(m.x(A0), 0xffff_ffff_89ab_cdef);
    assert_eq!(m.x(A1), 0xffff_ffff_8000_0000);
    assert_eq!(m.x(A2), 0x0123_4567_89ab_cdef);
    assert_eq!(m.read_u64(DATA + 64), 0xcccc_dddd);
    assert_eq!(m.read_u64(DATA + 248), 0xaaaa_bbbb_cccc_dddd);
}

#[test]
fn compressed_fp_loads_and_stores() {
    let mut m = Machine::new();
    m.enable_fp();
    m.set_x(A0, DATA);
    m.write_u64(DATA + 16, 2.5f64.to_bits());
    run_c(&mut m, |a| {
        a.c(c_fld(F8, 16, A0)).c(c_fsd(F8, 200, A0));
    });
    assert_eq!(m.f(F8), 2.5f64.to_bits());
    assert_eq!(m.read_u64(DATA + 200), 2.5f64.to_bits());
}

#[test]
fn jumps_and_branches() {
    let mut m = Machine::new();
    m.set_x(S0, 0);
    m.set_x(S1, 3);
    run_c(&mut m, |a| {
        a.c_j("forward")
            .c(c_li(A0, 1)) // skipped
            .label("back")
            .c(c_li(A1, 2))
            .c_j("done")
            .label("forward")
            .c_bnez(S0, "wrong") // not taken
            .c_beqz(S1, "wrong") // not taken
            .c_beqz(S0, "back") // taken, backwards
            .label("wrong")
            .c(c_li(A2, 3))
            .label("done");
    });
    assert_eq!(m.x(A0), 0);
    assert_eq!(m.x(A1), 2);
    assert_eq!(m.x(A2), 0);
}

#[test]
fn c_bnez_loop() {
    let mut m = Machine::new();
    run_c(&mut m, |a| {
        a.c(c_li(S0, 7)).c(c_li(A0, 0)).label("loop").c(c_addi(A0, 2)).c(c_addi(S0, -1)).c_bnez(S0, "loop");
    });
    assert_eq!(m.x(A0), 14);
}

#[test]
fn c_jr_and_c_jalr_link_pc_plus_2() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.i(auipc(T0, 0)).i(addi(T0, T0, 14)); // t0 = CODE + 14
    let jalr_pc = a.pc();
    a.c(c_jalr(T0)); // CODE + 8, links CODE + 10
    a.c(c_li(A0, 1)); // CODE + 10, skipped
    a.c(c_li(A0, 2)); // CODE + 12, skipped
    assert_eq!(a.pc(), CODE + 14);
    a.c(c_li(A1, 5));
    a.i(auipc(T1, 0)).i(addi(T1, T1, 12)); // CODE + 16: t1 = CODE + 28
    a.c(c_jr(T1)); // CODE + 24
    a.c(c_li(A2, 1)); // skipped
    assert_eq!(a.pc(), CODE + 28);
    a.c(c_li(A3, 6));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(RA), jalr_pc + 2);
    assert_eq!((m.x(A0), m.x(A1), m.x(A2), m.x(A3)), (0, 5, 0, 6));
}

#[test]
fn c_jalr_through_ra_uses_the_old_value() {
    let mut m = Machine::new();
    m.set_x(RA, CODE + 6);
    let mut a = Asm::new(CODE);
    a.c(c_jalr(RA)).c(c_li(A0, 1)).c(c_li(A0, 2)).c(c_li(A1, 3));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(RA), CODE + 2);
    assert_eq!((m.x(A0), m.x(A1)), (0, 3));
}

#[test]
fn mixed_widths_and_unaligned_32_bit_instructions() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.c(c_li(A0, 1)); // CODE
    a.i(addi(A0, A0, 100)); // CODE + 2: a 32-bit instruction at a 2-mod-4 address
    a.c(c_addi(A0, 1)); // CODE + 6
    a.i(lui(A1, 1)); // CODE + 8
    a.c(c_nop());
    let ecall_pc = a.pc();
    assert_eq!(ecall_pc % 4, 2);
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 102);
    assert_eq!(m.x(A1), 0x1000);
    assert_eq!(m.state().mepc, ecall_pc);
}

#[test]
fn instruction_straddling_a_page_boundary_in_bare_mode() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.pad_to(CODE + 0xffe);
    a.i(lui(A0, 0x12345)); // bytes CODE+0xffe .. CODE+0x1002
    a.i(addi(A0, A0, 0x678));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 0x1234_5678);
}

#[test]
fn instruction_straddling_pages_mapped_far_apart() {
    // Two consecutive virtual pages backed by physical pages that are not adjacent.
    const VA: u64 = 0x4000_0000;
    let first = DATA + 0x5000;
    let second = DATA + 0x2000;
    let mut m = Machine::new();
    let mut pt = PageTables::new(&m, Mode::Sv39);
    pt.map_code(&m, false);
    pt.map(&m, VA, first, pte::RX_A);
    pt.map(&m, VA + PAGE, second, pte::RX_A);
    let insn = lui(A0, 0xabcde);
    let mut tail = Asm::new(second);
    tail.c((insn >> 16) as u16).i(addi(A1, ZERO, 1)).i(ecall());
    m.load(&tail);
    let mut head = Asm::new(first + 0xffe);
    head.c(insn as u16);
    m.load(&head);

    let mut boot = Asm::new(CODE);
    boot.li(T6, pt.satp()).i(csrw(csr::SATP, T6));
    enter_with_mret(&mut boot, kemari_engine::Privilege::Supervisor, VA + 0xffe);
    let trap = m.run_program(&boot);
    assert_eq!(trap, Trap::ecall(cause::ECALL_S, VA + PAGE + 6), "{}", m.describe());
    assert_eq!(m.x(A0), 0xffff_ffff_abcd_e000);
    assert_eq!(m.x(A1), 1);
}

#[test]
fn second_half_of_a_straddling_instruction_faults_with_its_own_address() {
    const VA: u64 = 0x4000_0000;
    let mut m = Machine::new();
    let mut pt = PageTables::new(&m, Mode::Sv39);
    pt.map_code(&m, false);
    pt.map(&m, VA, DATA, pte::RX_A); // VA + PAGE unmapped
    let mut head = Asm::new(DATA + 0xffe);
    head.c(lui(A0, 1) as u16);
    m.load(&head);
    let mut boot = Asm::new(CODE);
    boot.li(T6, pt.satp()).i(csrw(csr::SATP, T6));
    enter_with_mret(&mut boot, kemari_engine::Privilege::Supervisor, VA + 0xffe);
    assert_eq!(m.run_program(&boot), Trap::new(cause::FETCH_PAGE, VA + PAGE, VA + 0xffe));
}

#[test]
fn all_zero_halfword_is_illegal() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.c(c_li(A0, 1)).c(0x0000);
    let trap = m.run_program(&a);
    assert_eq!(trap, Trap::new(cause::ILLEGAL, 0, CODE + 2));
    assert_eq!(m.x(A0), 1);
}

#[test]
fn reserved_compressed_encodings_are_illegal() {
    // c.addi4spn with a zero immediate, c.lui with a zero immediate, c.jr x0, c.addiw x0, c.lwsp x0,
    // c.ldsp x0, the reserved quadrant-1 ALU slot (funct6 100111, funct2 10), quadrant 0 funct3 100.
    for half in [0x0004u16, 0x6501, 0x8002, 0x2001, 0x4002, 0x6002, 0x9c41, 0x8000] {
        let mut m = Machine::new();
        let mut a = Asm::new(CODE);
        a.c(half);
        let trap = m.run_program(&a);
        assert_eq!((trap.cause, trap.epc), (cause::ILLEGAL, CODE), "{half:#06x}");
        assert!(trap.tval == 0 || trap.tval == half as u64, "{half:#06x}: tval {:#x}", trap.tval);
    }
}

#[test]
fn c_ebreak_is_a_breakpoint_at_its_own_pc() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.c(c_nop()).c(c_ebreak());
    let trap = m.run_program(&a);
    assert_eq!((trap.cause, trap.epc), (cause::BREAKPOINT, CODE + 2));
    assert!(trap.tval == 0 || trap.tval == CODE + 2, "tval {:#x}", trap.tval);
}

#[test]
fn instructions_at_the_end_of_a_page() {
    // A 32-bit instruction in the last 4-byte slot, then a compressed one in the last parcel of the next page,
    // then a 32-bit instruction at the start of the page after.
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.pad_to(CODE + 0xffc);
    a.i(lui(A0, 0x11111));
    a.pad_to(CODE + 0x1ffe);
    a.c(c_li(A1, 7));
    assert_eq!(a.pc(), CODE + 0x2000);
    a.i(lui(A2, 0x22222));
    m.run_to_ecall(&mut a);
    assert_eq!((m.x(A0), m.x(A1), m.x(A2)), (0x1111_1000, 7, 0x2222_2000));
}

#[test]
fn jumping_back_into_a_cached_page_decodes_full_instructions() {
    // The second pass over the loop hits the fetch translation cache.
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.i(addi(T0, ZERO, 3)).label("loop").i(lui(T1, 0x1)).i(add(A0, A0, T1)).c(c_addi(T0, -1)).bne(T0, ZERO, "loop");
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 0x3000);
}
