//! CSR access rules (privilege, read-only, unknown), the S-level views of M-level registers, identification
//! registers and the counters.

use crate::common::*;
use kemari_engine::{Hart, Privilege};

const MARKER: u64 = 0x5555;

fn assert_illegal_at(m: &Machine, trap: Trap, insn: u32, pc: u64) {
    assert_eq!((trap.cause, trap.epc), (cause::ILLEGAL, pc), "{}", m.describe());
    assert!(trap.tval == 0 || trap.tval == insn as u64, "mtval {:#x} is neither 0 nor the instruction", trap.tval);
}

/// Runs one instruction at GUEST_CODE in `mode` (bare translation) followed by `ecall`; returns the trap.
fn run_in(m: &mut Machine, mode: Privilege, insn: u32) -> Trap {
    let mut guest = Asm::new(GUEST_CODE);
    guest.i(insn).i(ecall());
    m.run_guest(mode, 0, &guest)
}

fn ecall_cause(mode: Privilege) -> u64 {
    match mode {
        Privilege::User => cause::ECALL_U,
        Privilege::Supervisor => cause::ECALL_S,
        Privilege::Machine => cause::ECALL_M,
    }
}

#[test]
fn machine_csrs_are_illegal_below_m_mode() {
    for (mode, csr_num) in [
        (Privilege::Supervisor, csr::MSTATUS),
        (Privilege::Supervisor, csr::MSCRATCH),
        (Privilege::Supervisor, csr::MHARTID),
        (Privilege::User, csr::MSTATUS),
        (Privilege::User, csr::SSTATUS),
        (Privilege::User, csr::SATP),
    ] {
        let mut m = Machine::new();
        m.set_x(A0, MARKER);
        let insn = csrr(A0, csr_num);
        let trap = run_in(&mut m, mode, insn);
        assert_illegal_at(&m, trap, insn, GUEST_CODE);
        assert_eq!(m.x(A0), MARKER, "rd is not written by a trapping CSR access");
    }
}

#[test]
fn supervisor_csrs_are_accessible_from_s_mode() {
    let mut m = Machine::new();
    m.edit(|s| s.sscratch = 0x1234);
    assert_eq!(
        run_in(&mut m, Privilege::Supervisor, csrrw(A0, csr::SSCRATCH, ZERO)),
        Trap::ecall(cause::ECALL_S, GUEST_CODE + 4)
    );
    assert_eq!(m.x(A0), 0x1234);
    assert_eq!(m.state().sscratch, 0);
}

#[test]
fn writes_to_read_only_csrs_are_illegal() {
    for insn in [
        csrw(csr::CYCLE, T0),
        csrw(csr::MHARTID, T0),
        csrrs(A0, csr::MHARTID, T0),
        csrrc(A0, csr::TIME, T0),
        csrrsi(A0, csr::INSTRET, 1),
        csrrwi(A0, csr::CYCLE, 0),
        csrrs(A0, csr::CYCLE, T1), // t1 == 0, but rs1 is not x0: it is still a write
    ] {
        let mut m = Machine::new();
        m.set_x(T0, 1);
        m.set_x(A0, MARKER);
        let mut a = Asm::new(CODE);
        a.i(insn);
        let trap = m.run_program(&a);
        assert_illegal_at(&m, trap, insn, CODE);
        assert_eq!(m.x(A0), MARKER);
    }
}

#[test]
fn reading_read_only_csrs_without_writing_is_fine() {
    let mut m = Machine::with_hart(Hart::new(3, false));
    let mut a = Asm::new(CODE);
    a.i(csrrs(A0, csr::MHARTID, ZERO)).i(csrrc(A1, csr::MHARTID, ZERO)).i(csrrsi(A2, csr::MHARTID, 0)).i(csrrci(
        A3,
        csr::CYCLE,
        0,
    ));
    m.run_to_ecall(&mut a);
    assert_eq!((m.x(A0), m.x(A1), m.x(A2)), (3, 3, 3));
}

#[test]
fn unknown_csrs_are_illegal() {
    for insn in [csrr(A0, 0x0ff), csrw(0x7c0, T0), csrr(A0, 0x5ff), csrr(A0, 0xfff)] {
        let mut m = Machine::new();
        let mut a = Asm::new(CODE);
        a.i(insn);
        let trap = m.run_program(&a);
        assert_illegal_at(&m, trap, insn, CODE);
    }
}

#[test]
fn sstatus_is_a_restricted_view_of_mstatus() {
    let mut m = Machine::new();
    let visible = mstatus::SIE | mstatus::SPIE | mstatus::SPP | mstatus::SUM | mstatus::MXR;
    let hidden =
        mstatus::MIE | mstatus::MPIE | mstatus::MPP | mstatus::TVM | mstatus::TW | mstatus::TSR | mstatus::MPRV;
    m.set_x(T0, visible | hidden);
    m.set_x(T1, u64::MAX);
    let mut a = Asm::new(CODE);
    a.i(csrw(csr::MSTATUS, T0))
        .i(csrr(A0, csr::SSTATUS))
        .i(csrw(csr::MSTATUS, ZERO))
        .i(csrw(csr::SSTATUS, T1))
        .i(csrr(A1, csr::MSTATUS))
        .i(csrr(A2, csr::SSTATUS));
    m.run_to_ecall(&mut a);
    let uxl = 2u64 << 32;
    let sxl = 2u64 << 34;
    assert_eq!(m.x(A0), visible | uxl, "sstatus shows only the S fields (and UXL)");
    let after = visible | mstatus::FS | mstatus::SD;
    assert_eq!(m.x(A1), after | uxl | sxl, "writing all ones to sstatus sets only the S fields of mstatus");
    assert_eq!(m.x(A2), after | uxl);
}

#[test]
fn sie_and_sip_are_masked_by_mideleg() {
    let mut m = Machine::new();
    m.set_x(T0, 1 << 5); // STI
    m.set_x(T1, 0x888); // MSIE | MTIE | MEIE
    m.set_x(T2, u64::MAX);
    m.hart.set_irq_line(kemari_engine::irq::STI, true);
    m.hart.set_irq_line(kemari_engine::irq::MTI, true);
    m.hart.set_irq_line(kemari_engine::irq::SEI, true);
    let mut a = Asm::new(CODE);
    a.i(csrw(csr::MIDELEG, T0))
        .i(csrw(csr::MIE, T1))
        .i(csrr(A0, csr::SIE))
        .i(csrw(csr::SIE, T2))
        .i(csrr(A1, csr::MIE))
        .i(csrr(A2, csr::SIE))
        .i(csrr(A3, csr::SIP))
        .i(csrr(A4, csr::MIP))
        .i(csrw(csr::SIE, ZERO))
        .i(csrr(A5, csr::MIE));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 0, "MTIE is not visible in sie");
    assert_eq!(m.x(A1), 0x8a8, "sie writes reach only delegated bits");
    assert_eq!(m.x(A2), 0x20);
    assert_eq!(m.x(A3), 0x20, "sip shows only delegated pending bits");
    assert_eq!(m.x(A4), 0x2a0);
    assert_eq!(m.x(A5), 0x888);
}

#[test]
fn mideleg_holds_only_supervisor_interrupts_and_medeleg_not_ecall_from_m() {
    let mut m = Machine::new();
    m.set_x(T0, u64::MAX);
    let mut a = Asm::new(CODE);
    a.i(csrw(csr::MIDELEG, T0)).i(csrr(A0, csr::MIDELEG)).i(csrw(csr::MEDELEG, T0)).i(csrr(A1, csr::MEDELEG));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 0x222);
    assert_eq!(m.x(A1) & (1 << cause::ECALL_M), 0, "ecall from M cannot be delegated");
    for c in [cause::ILLEGAL, cause::ECALL_U, cause::FETCH_PAGE, cause::LOAD_PAGE, cause::STORE_PAGE] {
        assert_ne!(m.x(A1) & (1 << c), 0, "cause {c} is delegable");
    }
}

#[test]
fn misa_reports_rv64imafdcsu() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.i(csrr(A0, csr::MISA));
    m.run_to_ecall(&mut a);
    let letters: u64 = "IMAFDCSU".bytes().map(|c| 1u64 << (c - b'A')).sum();
    assert_eq!(m.x(A0), (2 << 62) | letters);
}

#[test]
fn mhartid_is_the_hart_id() {
    let mut m = Machine::with_hart(Hart::new(7, false));
    let mut a = Asm::new(CODE);
    a.i(csrr(A0, csr::MHARTID));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 7);
}

#[test]
fn mepc_and_sepc_clear_bit_zero_and_satp_ignores_unsupported_modes() {
    let mut m = Machine::new();
    m.set_x(T0, 0x8000_1003);
    m.set_x(T1, (10 << 60) | 0x1234); // Sv57: not supported
    m.set_x(T2, (8 << 60) | 0x80400);
    let mut a = Asm::new(CODE);
    a.i(csrw(csr::MEPC, T0))
        .i(csrr(A0, csr::MEPC))
        .i(csrw(csr::SEPC, T0))
        .i(csrr(A1, csr::SEPC))
        .i(csrw(csr::SATP, T2))
        .i(csrw(csr::SATP, T1))
        .i(csrr(A2, csr::SATP));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 0x8000_1002);
    assert_eq!(m.x(A1), 0x8000_1002);
    assert_eq!(m.x(A2), (8 << 60) | 0x80400, "a write with an unsupported mode has no effect");
}

#[test]
fn instret_counts_retired_instructions() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.i(csrr(A0, csr::INSTRET)).i(nop()).i(nop()).i(nop()).i(csrr(A1, csr::INSTRET)).i(csrr(A2, csr::MINSTRET));
    a.i(csrr(A3, csr::CYCLE)).i(nop()).i(csrr(A4, csr::CYCLE)).i(csrr(A5, csr::MCYCLE));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A1) - m.x(A0), 4);
    assert_eq!(m.x(A2) - m.x(A1), 1);
    assert!(m.x(A4) > m.x(A3), "cycle advances");
    assert!(m.x(A5) > m.x(A4), "mcycle advances");
}

#[test]
fn trapping_instructions_do_not_retire() {
    let mut m = Machine::new();
    let before = m.state().instret;
    let mut a = Asm::new(CODE);
    a.i(nop()).i(nop()).i(ecall());
    m.run_program(&a);
    // nop, nop, (ecall traps), then the halt vector's store retires.
    assert_eq!(m.state().instret - before, 3);
}

#[test]
fn minstret_write_is_what_the_next_instruction_reads() {
    let mut m = Machine::new();
    m.set_x(T0, 1000);
    let mut a = Asm::new(CODE);
    a.i(csrw(csr::MINSTRET, T0)).i(csrr(A0, csr::MINSTRET));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 1000);
}

#[test]
fn time_reads_the_bus_time_base() {
    let mut m = Machine::new();
    m.bus.time = 0x1234_5678_9abc;
    let mut a = Asm::new(CODE);
    a.i(csrr(A0, csr::TIME));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 0x1234_5678_9abc);
}

#[test]
fn counter_access_below_m_is_gated_by_counteren() {
    const CY: u64 = 1;
    const TM: u64 = 2;
    const IR: u64 = 4;
    let cases: &[(Privilege, u64, u64, u32, bool)] = &[
        (Privilege::Supervisor, 0, 0, csr::CYCLE, false),
        (Privilege::Supervisor, 0, 0, csr::TIME, false),
        (Privilege::Supervisor, 0, 0, csr::INSTRET, false),
        (Privilege::Supervisor, CY | TM | IR, 0, csr::CYCLE, true),
        (Privilege::Supervisor, TM, 0, csr::TIME, true),
        (Privilege::Supervisor, TM, 0, csr::CYCLE, false),
        (Privilege::Supervisor, IR, 0, csr::INSTRET, true),
        (Privilege::Supervisor, 1 << 3, 0, 0xc03, true),
        (Privilege::Supervisor, 0, 0, 0xc03, false),
        (Privilege::User, CY | TM | IR, 0, csr::CYCLE, false),
        (Privilege::User, 0, CY | TM | IR, csr::CYCLE, false),
        (Privilege::User, CY | TM | IR, CY | TM | IR, csr::CYCLE, true),
        (Privilege::User, TM, TM, csr::TIME, true),
        (Privilege::User, TM, TM, csr::INSTRET, false),
    ];
    for &(mode, mcounteren, scounteren, counter, allowed) in cases {
        let mut m = Machine::new();
        m.bus.time = 77;
        m.edit(|s| {
            s.mcounteren = mcounteren;
            s.scounteren = scounteren;
        });
        let insn = csrr(A0, counter);
        let trap = run_in(&mut m, mode, insn);
        let what = format!("{mode:?} mcounteren={mcounteren:#x} scounteren={scounteren:#x} csr {counter:#x}");
        if allowed {
            assert_eq!(trap, Trap::ecall(ecall_cause(mode), GUEST_CODE + 4), "{what}: {}", m.describe());
            if counter == csr::TIME {
                assert_eq!(m.x(A0), 77, "{what}");
            }
        } else {
            assert_illegal_at(&m, trap, insn, GUEST_CODE);
        }
    }
}

#[test]
fn satp_is_illegal_in_s_mode_under_tvm() {
    for insn in [csrr(A0, csr::SATP), csrw(csr::SATP, ZERO), sfence_vma(ZERO, ZERO)] {
        let mut m = Machine::new();
        m.edit(|s| s.mstatus |= mstatus::TVM);
        let trap = run_in(&mut m, Privilege::Supervisor, insn);
        assert_illegal_at(&m, trap, insn, GUEST_CODE);
    }
    // Without TVM they are fine.
    for insn in [csrr(A0, csr::SATP), sfence_vma(ZERO, ZERO)] {
        let mut m = Machine::new();
        assert_eq!(run_in(&mut m, Privilege::Supervisor, insn), Trap::ecall(cause::ECALL_S, GUEST_CODE + 4));
    }
    // TVM does not restrict M-mode.
    let mut m = Machine::new();
    m.edit(|s| s.mstatus |= mstatus::TVM);
    let mut a = Asm::new(CODE);
    a.i(csrr(A0, csr::SATP)).i(sfence_vma(ZERO, ZERO));
    m.run_to_ecall(&mut a);
}

#[test]
fn mstatus_mpp_is_warl_and_misa_ignores_writes() {
    let mut m = Machine::new();
    m.set_x(T0, 2 << mstatus::MPP_SHIFT); // the reserved encoding
    let mut a = Asm::new(CODE);
    a.i(csrc(csr::MSTATUS, ZERO))
        .li(T1, mstatus::MPP)
        .i(csrc(csr::MSTATUS, T1))
        .i(csrs(csr::MSTATUS, T0))
        .i(csrr(A0, csr::MSTATUS))
        .i(csrr(A1, csr::MISA))
        .i(csrw(csr::MISA, ZERO))
        .i(csrr(A2, csr::MISA));
    m.run_to_ecall(&mut a);
    let mpp = (m.x(A0) & mstatus::MPP) >> mstatus::MPP_SHIFT;
    assert_ne!(mpp, 2, "MPP never holds the reserved value");
    assert_eq!(m.x(A1), m.x(A2));
}

/// Sdtrig discovery, as M-mode firmware probes for triggers: write 0 to tselect and read it back, then read
/// tdata1's type (and tinfo). No exception, and every answer says "no triggers": tselect holds 0, tdata1 is
/// type 0 whatever was written to it, tinfo offers only type 0.
#[test]
fn debug_triggers_report_that_none_exist() {
    let mut m = Machine::new();
    m.set_x(A1, u64::MAX);
    let mut a = Asm::new(CODE);
    a.i(csrw(0x7a0, ZERO))
        .i(csrr(A0, 0x7a0))
        .i(csrw(0x7a1, A1))
        .i(csrr(A2, 0x7a1))
        .i(csrr(A3, 0x7a4))
        .i(csrw(0x7a0, A1))
        .i(csrr(A4, 0x7a0));
    m.run_to_ecall(&mut a);
    assert_eq!((m.x(A0), m.x(A2) >> 60, m.x(A3), m.x(A4)), (0, 0, 1, 0), "{}", m.describe());
    // Below M-mode they are not there at all (debug-mode and M-mode CSRs).
    let mut m = Machine::new();
    let trap = run_in(&mut m, Privilege::Supervisor, csrr(A0, 0x7a0));
    assert_illegal_at(&m, trap, csrr(A0, 0x7a0), GUEST_CODE);
}
