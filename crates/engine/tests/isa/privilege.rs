//! Privilege transitions: mret/sret, ecall causes, exception delegation, and the trap bits TSR/TW.

use crate::common::*;
use crate::with_mpp;
use kemari_engine::{Exit, Privilege};

fn assert_illegal_at(m: &Machine, trap: Trap, insn: u32, pc: u64) {
    assert_eq!((trap.cause, trap.epc), (cause::ILLEGAL, pc), "{}", m.describe());
    assert!(trap.tval == 0 || trap.tval == insn as u64, "mtval {:#x} is neither 0 nor the instruction", trap.tval);
}

fn mpp(m: &Machine) -> u64 {
    (m.state().mstatus & mstatus::MPP) >> mstatus::MPP_SHIFT
}

/// A machine about to execute `insn` at CODE in `mode`, with `mstatus` and the xEPCs given.
fn single(mode: Privilege, mstatus_value: u64, insn: u32) -> Machine {
    let mut m = Machine::new();
    m.edit(|s| {
        s.privilege = mode;
        s.mstatus = mstatus_value | (s.mstatus & (0xf << 32));
        s.mepc = GUEST_CODE;
        s.sepc = GUEST_CODE + 0x100;
    });
    let mut a = Asm::new(CODE);
    a.i(insn);
    m.load(&a);
    m
}

#[test]
fn mret_to_s_enables_mie_from_mpie_and_resets_mpp() {
    let mut m = single(Privilege::Machine, with_mpp(mstatus::MPIE, Privilege::Supervisor), mret());
    assert_eq!(m.step(1), Exit::Budget);
    assert_eq!(m.privilege(), Privilege::Supervisor);
    assert_eq!(m.state().pc, GUEST_CODE);
    let st = m.state().mstatus;
    assert_ne!(st & mstatus::MIE, 0, "MIE = old MPIE");
    assert_ne!(st & mstatus::MPIE, 0, "MPIE = 1");
    assert_eq!(mpp(&m), 0, "MPP = U");
}

#[test]
fn mret_to_u_with_mpie_clear_leaves_mie_clear() {
    let mut m = single(Privilege::Machine, with_mpp(mstatus::MIE, Privilege::User), mret());
    m.step(1);
    assert_eq!(m.privilege(), Privilege::User);
    let st = m.state().mstatus;
    assert_eq!(st & mstatus::MIE, 0);
    assert_ne!(st & mstatus::MPIE, 0);
}

#[test]
fn mret_clears_mprv_only_when_leaving_m() {
    let mut m = single(Privilege::Machine, with_mpp(mstatus::MPRV, Privilege::Supervisor), mret());
    m.step(1);
    assert_eq!(m.state().mstatus & mstatus::MPRV, 0);

    let mut m = single(Privilege::Machine, with_mpp(mstatus::MPRV, Privilege::Machine), mret());
    m.step(1);
    assert_eq!(m.privilege(), Privilege::Machine);
    assert_ne!(m.state().mstatus & mstatus::MPRV, 0);
    assert_eq!(mpp(&m), 0);
}

#[test]
fn sret_to_u_restores_sie_from_spie() {
    let mut m = single(Privilege::Supervisor, mstatus::SPIE, sret());
    m.step(1);
    assert_eq!(m.privilege(), Privilege::User);
    assert_eq!(m.state().pc, GUEST_CODE + 0x100);
    let st = m.state().mstatus;
    assert_ne!(st & mstatus::SIE, 0, "SIE = old SPIE");
    assert_ne!(st & mstatus::SPIE, 0, "SPIE = 1");
    assert_eq!(st & mstatus::SPP, 0, "SPP = U");
}

#[test]
fn sret_to_s_with_spie_clear() {
    let mut m = single(Privilege::Supervisor, mstatus::SPP | mstatus::SIE, sret());
    m.step(1);
    assert_eq!(m.privilege(), Privilege::Supervisor);
    let st = m.state().mstatus;
    assert_eq!(st & (mstatus::SIE | mstatus::SPIE | mstatus::SPP), mstatus::SPIE);
}

#[test]
fn sret_from_m_mode_is_allowed() {
    let mut m = single(Privilege::Machine, mstatus::SPP | mstatus::MPRV, sret());
    m.step(1);
    assert_eq!(m.privilege(), Privilege::Supervisor);
    assert_eq!(m.state().mstatus & mstatus::MPRV, 0, "leaving M clears MPRV");
}

#[test]
fn ecall_cause_depends_on_the_privilege() {
    for (mode, expected) in [(Privilege::User, cause::ECALL_U), (Privilege::Supervisor, cause::ECALL_S)] {
        let mut m = Machine::new();
        m.edit(|s| s.mstatus |= mstatus::MIE);
        let mut guest = Asm::new(GUEST_CODE);
        guest.i(nop()).i(ecall());
        assert_eq!(m.run_guest(mode, 0, &guest), Trap::ecall(expected, GUEST_CODE + 4));
        assert_eq!(m.privilege(), Privilege::Machine);
        assert_eq!(mpp(&m), mode as u64, "MPP records where the trap came from");
    }
    let mut m = Machine::new();
    m.edit(|s| s.mstatus |= mstatus::MIE);
    let mut a = Asm::new(CODE);
    a.i(nop());
    m.run_to_ecall(&mut a);
    assert_eq!(mpp(&m), 3);
    let st = m.state().mstatus;
    assert_eq!(st & (mstatus::MIE | mstatus::MPIE), mstatus::MPIE, "MPIE = old MIE, MIE cleared");
}

#[test]
fn delegated_u_ecall_goes_to_s() {
    let mut m = Machine::new();
    m.edit(|s| {
        s.medeleg = 1 << cause::ECALL_U;
        s.stvec = S_ESCALATE;
        s.mstatus |= mstatus::SIE | mstatus::SPP;
    });
    let mut guest = Asm::new(GUEST_CODE);
    guest.i(nop()).i(ecall());
    // S_ESCALATE then ecalls from S, which is not delegated.
    assert_eq!(m.run_guest(Privilege::User, 0, &guest), Trap::ecall(cause::ECALL_S, S_ESCALATE));
    assert_eq!(m.s_trap(), Trap::ecall(cause::ECALL_U, GUEST_CODE + 4));
    let st = m.state().mstatus;
    assert_eq!(st & mstatus::SPP, 0, "SPP = U");
    assert_ne!(st & mstatus::SPIE, 0, "SPIE = old SIE");
    assert_eq!(st & mstatus::SIE, 0, "SIE cleared");
}

#[test]
fn delegated_exception_in_s_mode_stays_in_s() {
    let mut m = Machine::new();
    m.edit(|s| {
        s.medeleg = 1 << cause::ILLEGAL;
        s.stvec = S_ESCALATE;
    });
    let mut guest = Asm::new(GUEST_CODE);
    guest.i(csrr(A0, csr::MSTATUS));
    m.run_guest(Privilege::Supervisor, 0, &guest);
    assert_eq!((m.state().scause, m.state().sepc), (cause::ILLEGAL, GUEST_CODE));
    assert_ne!(m.state().mstatus & mstatus::SPP, 0, "SPP = S");
    assert_eq!(m.m_trap(), Trap::ecall(cause::ECALL_S, S_ESCALATE));
}

#[test]
fn undelegated_u_ecall_goes_to_m() {
    let mut m = Machine::new();
    m.edit(|s| {
        s.medeleg = 1 << cause::ILLEGAL;
        s.stvec = S_ESCALATE;
    });
    let mut guest = Asm::new(GUEST_CODE);
    guest.i(ecall());
    assert_eq!(m.run_guest(Privilege::User, 0, &guest), Trap::ecall(cause::ECALL_U, GUEST_CODE));
    assert_eq!(m.state().scause, 0, "S saw nothing");
}

#[test]
fn m_mode_exceptions_are_never_delegated() {
    let mut m = Machine::new();
    m.edit(|s| {
        s.medeleg = 0xb3ff;
        s.stvec = S_ESCALATE;
    });
    let mut a = Asm::new(CODE);
    a.i(csrr(A0, 0x0ff));
    let trap = m.run_program(&a);
    assert_eq!((trap.cause, trap.epc), (cause::ILLEGAL, CODE));
    assert_eq!(m.state().scause, 0);
}

#[test]
fn ebreak_is_a_breakpoint() {
    let mut m = Machine::new();
    let mut a = Asm::new(CODE);
    a.i(nop()).i(ebreak());
    let trap = m.run_program(&a);
    assert_eq!((trap.cause, trap.epc), (cause::BREAKPOINT, CODE + 4));
    assert!(trap.tval == 0 || trap.tval == CODE + 4);
}

#[test]
fn tsr_makes_sret_illegal_in_s_mode() {
    let mut m = single(Privilege::Supervisor, mstatus::TSR, sret());
    m.run();
    assert_illegal_at(&m, m.m_trap(), sret(), CODE);
    assert_eq!(mpp(&m), 1);
}

#[test]
fn tsr_does_not_restrict_m_mode() {
    let mut m = single(Privilege::Machine, mstatus::TSR | mstatus::SPP, sret());
    m.step(1);
    assert_eq!(m.privilege(), Privilege::Supervisor);
}

#[test]
fn tw_makes_wfi_illegal_in_s_mode() {
    let mut m = single(Privilege::Supervisor, mstatus::TW, wfi());
    m.run();
    assert_illegal_at(&m, m.m_trap(), wfi(), CODE);
}

#[test]
fn wfi_in_s_mode_without_tw_waits() {
    let mut m = single(Privilege::Supervisor, 0, wfi());
    assert_eq!(m.run(), Outcome::Wfi);
    assert_eq!(m.state().pc, CODE + 4);
}

#[test]
fn xret_below_its_level_is_illegal() {
    for (mode, insn) in [(Privilege::Supervisor, mret()), (Privilege::User, mret()), (Privilege::User, sret())] {
        let mut m = single(mode, 0, insn);
        m.run();
        assert_illegal_at(&m, m.m_trap(), insn, CODE);
        assert_eq!(mpp(&m), mode as u64, "{mode:?}");
    }
}

#[test]
fn sfence_vma_is_illegal_in_u_mode() {
    let mut m = single(Privilege::User, 0, sfence_vma(ZERO, ZERO));
    m.run();
    assert_illegal_at(&m, m.m_trap(), sfence_vma(ZERO, ZERO), CODE);
}

#[test]
fn vmm_hart_exits_on_s_mode_ecall_and_complete_sbi_resumes() {
    let mut m = Machine::new_vmm();
    assert_eq!(m.privilege(), Privilege::Supervisor);
    let mut a = Asm::new(CODE);
    a.i(addi(A7, ZERO, 0x10)).i(addi(A6, ZERO, 3)).i(ecall()).i(addi(A2, A1, 1)).i(ecall());
    m.load(&a);
    assert_eq!(m.run(), Outcome::Sbi);
    assert_eq!(m.state().pc, CODE + 8, "pc at the ecall");
    assert_eq!((m.x(A7), m.x(A6)), (0x10, 3));
    m.hart.complete_sbi(-2, 41);
    assert_eq!((m.x(A0), m.x(A1)), ((-2i64) as u64, 41));
    assert_eq!(m.state().pc, CODE + 12);
    assert_eq!(m.run(), Outcome::Sbi);
    assert_eq!(m.x(A2), 42);
    assert_eq!(m.state().pc, CODE + 16);
}

#[test]
fn vmm_hart_reports_traps_that_target_m_mode() {
    let mut m = Machine::new_vmm();
    m.edit(|s| s.medeleg = 0);
    let mut a = Asm::new(CODE);
    a.i(nop()).i(csrr(A0, 0x0ff));
    m.load(&a);
    match m.run() {
        Outcome::MachineTrap { cause: c, pc, .. } => assert_eq!((c, pc), (cause::ILLEGAL, CODE + 4)),
        other => panic!("expected a machine trap, got {other:?}"),
    }
}

#[test]
fn vmm_hart_delegates_u_ecall_to_s() {
    let mut m = Machine::new_vmm();
    m.edit(|s| {
        s.stvec = S_ESCALATE;
        s.privilege = Privilege::User;
        s.pc = GUEST_CODE;
    });
    let mut guest = Asm::new(GUEST_CODE);
    guest.i(ecall());
    m.load(&guest);
    assert_eq!(m.run(), Outcome::Sbi, "U ecall → S handler → its ecall is an SBI call");
    assert_eq!(m.s_trap(), Trap::ecall(cause::ECALL_U, GUEST_CODE));
    assert_eq!(m.state().pc, S_ESCALATE);
}

#[test]
fn stopped_hart_does_not_run_until_hsm_start() {
    let mut m = Machine::new_vmm();
    m.hart.set_stopped(true);
    let mut a = Asm::new(GUEST_CODE);
    a.i(addi(A2, A1, 1)).i(ecall());
    m.load(&a);
    assert_eq!(m.run(), Outcome::Wfi);
    assert_eq!(m.state().instret, 0);
    m.edit(|s| s.satp = 8 << 60);
    m.hart.hsm_start(GUEST_CODE, 0x77);
    assert!(!m.hart.is_stopped());
    assert_eq!(m.run(), Outcome::Sbi);
    assert_eq!(m.privilege(), Privilege::Supervisor);
    assert_eq!((m.x(A0), m.x(A1), m.x(A2)), (0, 0x77, 0x78));
    assert_eq!(m.state().satp, 0, "translation off");
}
