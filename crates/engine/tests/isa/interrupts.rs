//! Interrupts: enabling rules per privilege, delegation, vectored mode, priorities, and wfi.

use crate::common::*;
use kemari_engine::{irq, Hart, Privilege};

fn bit(i: u32) -> u64 {
    1 << i
}

#[test]
fn machine_timer_interrupt_is_taken_once_enabled() {
    let mut m = Machine::new();
    m.hart.set_irq_line(irq::MTI, true);
    m.set_x(T0, bit(irq::MTI));
    let mut a = Asm::new(CODE);
    a.i(csrw(csr::MIE, T0)).i(addi(A0, ZERO, 1)).i(csrsi(csr::MSTATUS, mstatus::MIE as u32));
    let next = a.pc();
    a.i(addi(A1, ZERO, 2)).i(ecall());
    assert_eq!(m.run_program(&a), Trap::interrupt(irq::MTI as u64, next));
    assert_eq!(m.state().mcause, 0x8000_0000_0000_0007);
    assert_eq!((m.x(A0), m.x(A1)), (1, 0));
    let st = m.state().mstatus;
    assert_eq!(st & (mstatus::MIE | mstatus::MPIE), mstatus::MPIE);
    assert_eq!(st & mstatus::MPP, mstatus::MPP, "came from M");
}

#[test]
fn m_mode_interrupts_are_masked_by_mie_in_m_mode() {
    let mut m = Machine::new();
    m.hart.set_irq_line(irq::MTI, true);
    m.edit(|s| s.mie = bit(irq::MTI));
    let mut a = Asm::new(CODE);
    a.i(nop()).i(nop());
    m.run_to_ecall(&mut a);
}

#[test]
fn m_mode_interrupts_are_taken_in_s_and_u_regardless_of_mie() {
    for mode in [Privilege::Supervisor, Privilege::User] {
        let mut m = Machine::new();
        m.hart.set_irq_line(irq::MTI, true);
        m.edit(|s| s.mie = bit(irq::MTI));
        let mut g = Asm::new(GUEST_CODE);
        g.i(nop()).i(ecall());
        assert_eq!(m.run_guest(mode, 0, &g), Trap::interrupt(irq::MTI as u64, GUEST_CODE), "{mode:?}");
        assert_eq!((m.state().mstatus & mstatus::MPP) >> mstatus::MPP_SHIFT, mode as u64);
    }
}

#[test]
fn an_interrupt_is_not_taken_unless_enabled_in_mie() {
    let mut m = Machine::new();
    m.hart.set_irq_line(irq::MTI, true);
    m.edit(|s| s.mstatus |= mstatus::MIE);
    let mut a = Asm::new(CODE);
    a.i(nop());
    m.run_to_ecall(&mut a);
}

#[test]
fn line_raised_between_runs_is_noticed() {
    let mut m = Machine::new();
    m.edit(|s| {
        s.mie = bit(irq::MEI);
        s.mstatus |= mstatus::MIE;
    });
    let mut a = Asm::new(CODE);
    a.label("spin").j("spin");
    m.load(&a);
    assert_eq!(m.step(50), kemari_engine::Exit::Budget);
    m.hart.set_irq_line(irq::MEI, true);
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.m_trap(), Trap::interrupt(irq::MEI as u64, CODE));
}

#[test]
fn delegated_supervisor_timer_goes_to_s_once_sie_is_set() {
    let mut m = Machine::new();
    m.hart.set_irq_line(irq::STI, true);
    m.edit(|s| {
        s.mideleg = bit(irq::STI);
        s.mie = bit(irq::STI);
        s.stvec = S_ESCALATE;
    });
    let mut g = Asm::new(GUEST_CODE);
    g.i(addi(A0, ZERO, 1)).i(csrsi(csr::SSTATUS, mstatus::SIE as u32));
    let next = g.pc();
    g.i(addi(A1, ZERO, 1)).i(ecall());
    assert_eq!(m.run_guest(Privilege::Supervisor, 0, &g), Trap::ecall(cause::ECALL_S, S_ESCALATE));
    assert_eq!(m.s_trap(), Trap::interrupt(irq::STI as u64, next));
    assert_eq!((m.x(A0), m.x(A1)), (1, 0));
    let st = m.state().mstatus;
    assert_eq!(st & (mstatus::SIE | mstatus::SPIE | mstatus::SPP), mstatus::SPIE | mstatus::SPP);
}

#[test]
fn delegated_interrupt_is_taken_in_u_regardless_of_sie() {
    let mut m = Machine::new();
    m.hart.set_irq_line(irq::SEI, true);
    m.edit(|s| {
        s.mideleg = bit(irq::SEI);
        s.mie = bit(irq::SEI);
        s.stvec = S_ESCALATE;
    });
    let mut g = Asm::new(GUEST_CODE);
    g.i(ecall());
    m.run_guest(Privilege::User, 0, &g);
    assert_eq!(m.s_trap(), Trap::interrupt(irq::SEI as u64, GUEST_CODE));
    assert_eq!(m.state().mstatus & mstatus::SPP, 0);
}

#[test]
fn delegated_interrupts_are_never_taken_in_m_mode() {
    let mut m = Machine::new();
    m.hart.set_irq_line(irq::STI, true);
    m.edit(|s| {
        s.mideleg = bit(irq::STI);
        s.mie = bit(irq::STI);
        s.mstatus |= mstatus::MIE | mstatus::SIE;
    });
    let mut a = Asm::new(CODE);
    a.i(nop());
    m.run_to_ecall(&mut a);
}

#[test]
fn undelegated_supervisor_interrupt_goes_to_m() {
    let mut m = Machine::new();
    m.hart.set_irq_line(irq::STI, true);
    m.edit(|s| {
        s.mie = bit(irq::STI);
        s.mstatus |= mstatus::MIE;
    });
    let mut a = Asm::new(CODE);
    a.i(nop());
    assert_eq!(m.run_program(&a), Trap::interrupt(irq::STI as u64, CODE));
}

#[test]
fn supervisor_software_interrupt_set_through_sip() {
    let mut m = Machine::new();
    m.edit(|s| {
        s.mideleg = bit(irq::SSI);
        s.mie = bit(irq::SSI);
        s.stvec = S_ESCALATE;
    });
    let mut g = Asm::new(GUEST_CODE);
    g.i(csrsi(csr::SSTATUS, mstatus::SIE as u32)).i(csrsi(csr::SIP, bit(irq::SSI) as u32));
    let next = g.pc();
    g.i(ecall());
    m.run_guest(Privilege::Supervisor, 0, &g);
    assert_eq!(m.s_trap(), Trap::interrupt(irq::SSI as u64, next));
}

#[test]
fn vectored_mtvec_jumps_to_base_plus_four_times_cause() {
    let table = RAM_BASE + 0x400;
    let mut vectors = Asm::new(table);
    for _ in 0..16 {
        vectors.jal(A5, "common");
    }
    vectors.label("common").i(sw(ZERO, HALT_MMIO as i32, ZERO)).label("spin").j("spin");

    // Interrupt: base + 4 * 7.
    let mut m = Machine::new();
    m.load(&vectors);
    m.hart.set_irq_line(irq::MTI, true);
    m.edit(|s| {
        s.mtvec = table | 1;
        s.mie = bit(irq::MTI);
    });
    let mut a = Asm::new(CODE);
    a.i(csrsi(csr::MSTATUS, mstatus::MIE as u32)).i(nop());
    assert_eq!(m.run_program(&a), Trap::interrupt(irq::MTI as u64, CODE + 4));
    assert_eq!(m.x(A5), table + 4 * 7 + 4, "entered at slot 7");

    // Exceptions still go to the base.
    let mut m = Machine::new();
    m.load(&vectors);
    m.edit(|s| s.mtvec = table | 1);
    let mut a = Asm::new(CODE);
    a.i(ecall());
    assert_eq!(m.run_program(&a), Trap::ecall(cause::ECALL_M, CODE));
    assert_eq!(m.x(A5), table + 4, "entered at slot 0");
}

#[test]
fn interrupt_priorities() {
    // (pending, expected) with everything enabled and nothing delegated.
    let cases: &[(&[u32], u32)] = &[
        (&[irq::MTI, irq::MEI], irq::MEI),
        (&[irq::MTI, irq::MSI], irq::MSI),
        (&[irq::MTI, irq::SEI], irq::MTI),
        (&[irq::SEI, irq::SSI], irq::SEI),
        (&[irq::SSI, irq::STI], irq::SSI),
        (&[irq::STI, irq::MEI, irq::SSI, irq::MSI], irq::MEI),
    ];
    for &(pending, expected) in cases {
        let mut m = Machine::new();
        for &i in pending {
            m.hart.set_irq_line(i, true);
        }
        m.edit(|s| {
            s.mie = 0xaaa;
            s.mstatus |= mstatus::MIE;
        });
        let mut a = Asm::new(CODE);
        a.i(nop());
        assert_eq!(m.run_program(&a), Trap::interrupt(expected as u64, CODE), "pending {pending:?}");
    }
}

#[test]
fn m_level_interrupt_preempts_a_delegated_one_in_s_mode() {
    let mut m = Machine::new();
    m.hart.set_irq_line(irq::STI, true);
    m.hart.set_irq_line(irq::MTI, true);
    m.edit(|s| {
        s.mideleg = bit(irq::STI);
        s.mie = bit(irq::STI) | bit(irq::MTI);
        s.mstatus |= mstatus::SIE;
        s.stvec = S_ESCALATE;
    });
    let mut g = Asm::new(GUEST_CODE);
    g.i(ecall());
    assert_eq!(m.run_guest(Privilege::Supervisor, 0, &g), Trap::interrupt(irq::MTI as u64, GUEST_CODE));
}

#[test]
fn wfi_waits_until_a_line_is_raised() {
    let mut m = Machine::new();
    m.edit(|s| s.mie = bit(irq::MTI)); // enabled in mie, but MIE = 0: wake up without trapping
    let mut a = Asm::new(CODE);
    a.i(wfi()).i(addi(A0, ZERO, 5)).i(ecall());
    m.load(&a);
    assert_eq!(m.run(), Outcome::Wfi);
    assert_eq!(m.state().pc, CODE + 4);
    assert_eq!(m.run(), Outcome::Wfi, "still nothing pending");
    assert_eq!(m.x(A0), 0);
    m.hart.set_irq_line(irq::MTI, true);
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.m_trap(), Trap::ecall(cause::ECALL_M, CODE + 8));
    assert_eq!(m.x(A0), 5);
}

#[test]
fn wfi_wakes_into_the_interrupt_handler_when_enabled() {
    let mut m = Machine::new();
    m.edit(|s| {
        s.mie = bit(irq::MEI);
        s.mstatus |= mstatus::MIE;
    });
    let mut a = Asm::new(CODE);
    a.i(wfi()).i(addi(A0, ZERO, 5)).i(ecall());
    m.load(&a);
    assert_eq!(m.run(), Outcome::Wfi);
    m.hart.set_irq_line(irq::MEI, true);
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.m_trap(), Trap::interrupt(irq::MEI as u64, CODE + 4));
    assert_eq!(m.x(A0), 0);
}

#[test]
fn wfi_ignores_pending_but_disabled_interrupts() {
    let mut m = Machine::new();
    m.hart.set_irq_line(irq::MTI, true);
    let mut a = Asm::new(CODE);
    a.i(wfi()).i(ecall());
    m.load(&a);
    assert_eq!(m.run(), Outcome::Wfi);
}

#[test]
fn wfi_with_an_enabled_pending_interrupt_does_not_wait() {
    let mut m = Machine::new();
    m.hart.set_irq_line(irq::MTI, true);
    m.edit(|s| s.mie = bit(irq::MTI));
    let mut a = Asm::new(CODE);
    a.i(wfi()).i(addi(A0, ZERO, 5));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), 5);
}

#[test]
fn vmm_hart_takes_supervisor_timer_interrupts() {
    let mut m = Machine::with_hart(Hart::new(0, true));
    m.edit(|s| {
        s.stvec = S_ESCALATE;
        s.mstatus |= mstatus::SIE;
    });
    let mut a = Asm::new(CODE);
    a.label("spin").j("spin");
    m.load(&a);
    assert_eq!(m.step(10), kemari_engine::Exit::Budget);
    m.hart.set_irq_line(irq::STI, true);
    assert_eq!(m.run(), Outcome::Sbi, "the S handler's ecall");
    assert_eq!(m.s_trap(), Trap::interrupt(irq::STI as u64, CODE));
}
