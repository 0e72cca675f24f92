//! Sv39/Sv48 translation: page faults and their tval/epc, permission bits (R/W/X/U, SUM, MXR), hardware A/D
//! updates, superpages, canonical addresses, sfence.vma and MPRV.

use crate::common::*;
use crate::with_mpp;
use kemari_engine::Privilege;

/// A virtual page mapped (by each test) to `DATA`.
const VA: u64 = 0x4000_0000;
const VALUE: u64 = 0x0123_4567_89ab_cdef;
const PAGE_FAULTS: u64 = (1 << cause::FETCH_PAGE) | (1 << cause::LOAD_PAGE) | (1 << cause::STORE_PAGE);

/// Page tables mapping the test code for S-mode (`user` = false) or U-mode (`user` = true).
fn tables(m: &Machine, mode: Mode, user: bool) -> PageTables {
    let mut pt = PageTables::new(m, mode);
    pt.map_code(m, user);
    pt
}

/// A guest program at GUEST_CODE ending in `ecall`; returns it with the address of that ecall.
fn guest(build: impl FnOnce(&mut Asm)) -> (Asm, u64) {
    let mut g = Asm::new(GUEST_CODE);
    build(&mut g);
    let end = g.pc();
    g.i(ecall());
    (g, end)
}

fn machine_with_data() -> Machine {
    let m = Machine::new();
    m.write_u64(DATA, VALUE);
    m
}

#[test]
fn mapped_load_and_store_reach_the_physical_page() {
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::RW_AD);
    let (g, end) = guest(|g| {
        g.li(T0, VA + 8).i(ld(A0, -8, T0)).i(addi(A1, ZERO, 77)).i(sd(A1, 8, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::ecall(cause::ECALL_S, end));
    assert_eq!(m.x(A0), VALUE);
    assert_eq!(m.read_u64(DATA + 16), 77);
}

#[test]
fn load_from_unmapped_page_is_a_load_page_fault_delegated_to_s() {
    let mut m = machine_with_data();
    m.edit(|s| {
        s.medeleg = PAGE_FAULTS;
        s.stvec = S_ESCALATE;
    });
    let pt = tables(&m, Mode::Sv39, false);
    m.set_x(A0, 0x5555);
    let mut fault_pc = 0;
    let (g, _) = guest(|g| {
        g.li(T0, VA + 0x123);
        fault_pc = g.pc();
        g.i(ld(A0, 0, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::ecall(cause::ECALL_S, S_ESCALATE));
    assert_eq!(m.s_trap(), Trap::new(cause::LOAD_PAGE, VA + 0x123, fault_pc));
    assert_ne!(m.state().mstatus & mstatus::SPP, 0);
    assert_eq!(m.x(A0), 0x5555, "rd untouched");
}

#[test]
fn undelegated_page_fault_goes_to_m() {
    let mut m = machine_with_data();
    let pt = tables(&m, Mode::Sv39, false);
    let mut fault_pc = 0;
    let (g, _) = guest(|g| {
        g.li(T0, VA);
        fault_pc = g.pc();
        g.i(sw(ZERO, 4, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::new(cause::STORE_PAGE, VA + 4, fault_pc));
}

#[test]
fn store_to_read_only_page_faults_and_leaves_memory() {
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::R | pte::A | pte::D);
    let mut fault_pc = 0;
    let (g, _) = guest(|g| {
        g.li(T0, VA).i(ld(A0, 0, T0)).i(addi(A1, ZERO, 1));
        fault_pc = g.pc();
        g.i(sd(A1, 0, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::new(cause::STORE_PAGE, VA, fault_pc));
    assert_eq!(m.x(A0), VALUE, "loads are allowed");
    assert_eq!(m.read_u64(DATA), VALUE);
}

#[test]
fn amo_on_read_only_page_is_a_store_page_fault() {
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::R | pte::A | pte::D);
    let mut fault_pc = 0;
    let (g, _) = guest(|g| {
        g.li(T0, VA);
        fault_pc = g.pc();
        g.i(amoadd_d(A0, T0, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::new(cause::STORE_PAGE, VA, fault_pc));
    assert_eq!(m.read_u64(DATA), VALUE);
}

#[test]
fn fetch_from_non_executable_page_faults() {
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::RW_AD);
    let (g, _) = guest(|g| {
        g.li(T0, VA + 0x40).i(jalr(RA, T0, 0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::new(cause::FETCH_PAGE, VA + 0x40, VA + 0x40));
}

#[test]
fn fetch_from_unmapped_page_faults() {
    let mut m = Machine::new();
    let pt = tables(&m, Mode::Sv39, false);
    let (g, _) = guest(|g| {
        g.li(T0, 0x7000_0000).i(jalr(ZERO, T0, 0));
    });
    assert_eq!(
        m.run_guest(Privilege::Supervisor, pt.satp(), &g),
        Trap::new(cause::FETCH_PAGE, 0x7000_0000, 0x7000_0000)
    );
}

#[test]
fn user_mode_cannot_touch_supervisor_pages() {
    // Load.
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, true);
    pt.map(&m, VA, DATA, pte::RW_AD);
    let mut fault_pc = 0;
    let (g, _) = guest(|g| {
        g.li(T0, VA);
        fault_pc = g.pc();
        g.i(ld(A0, 0, T0));
    });
    assert_eq!(m.run_guest(Privilege::User, pt.satp(), &g), Trap::new(cause::LOAD_PAGE, VA, fault_pc));
    assert_eq!(m.x(A0), 0);

    // Fetch: the vectors page is supervisor-only.
    let mut m = Machine::new();
    let pt = tables(&m, Mode::Sv39, true);
    let (g, _) = guest(|g| {
        g.li(T0, S_ESCALATE).i(jalr(ZERO, T0, 0));
    });
    assert_eq!(m.run_guest(Privilege::User, pt.satp(), &g), Trap::new(cause::FETCH_PAGE, S_ESCALATE, S_ESCALATE));
}

#[test]
fn user_mode_uses_user_pages() {
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, true);
    pt.map(&m, VA, DATA, pte::RW_AD | pte::U);
    let (g, end) = guest(|g| {
        g.li(T0, VA).i(ld(A0, 0, T0)).i(sd(T0, 8, T0));
    });
    assert_eq!(m.run_guest(Privilege::User, pt.satp(), &g), Trap::ecall(cause::ECALL_U, end));
    assert_eq!(m.x(A0), VALUE);
    assert_eq!(m.read_u64(DATA + 8), VA);
}

#[test]
fn supervisor_access_to_user_pages_needs_sum() {
    // Without SUM: fault.
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::RW_AD | pte::U);
    let mut fault_pc = 0;
    let (g, _) = guest(|g| {
        g.li(T0, VA);
        fault_pc = g.pc();
        g.i(ld(A0, 0, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::new(cause::LOAD_PAGE, VA, fault_pc));

    // With SUM (set by the guest through sstatus): loads and stores work.
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::RW_AD | pte::U);
    let (g, end) = guest(|g| {
        g.li(T1, mstatus::SUM).i(csrs(csr::SSTATUS, T1)).li(T0, VA).i(ld(A0, 0, T0)).i(sd(T1, 8, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::ecall(cause::ECALL_S, end));
    assert_eq!(m.x(A0), VALUE);
    assert_eq!(m.read_u64(DATA + 8), mstatus::SUM);
}

#[test]
fn sum_is_checked_again_after_it_is_cleared() {
    // The same access faults once SUM is cleared again (no stale translation survives the change).
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::RW_AD | pte::U);
    let mut fault_pc = 0;
    let (g, _) = guest(|g| {
        g.li(T1, mstatus::SUM).i(csrs(csr::SSTATUS, T1)).li(T0, VA).i(ld(A0, 0, T0)).i(csrc(csr::SSTATUS, T1));
        fault_pc = g.pc();
        g.i(ld(A1, 0, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::new(cause::LOAD_PAGE, VA, fault_pc));
    assert_eq!(m.x(A0), VALUE);
}

#[test]
fn supervisor_cannot_execute_user_pages_even_with_sum() {
    let mut m = Machine::new();
    m.edit(|s| s.mstatus |= mstatus::SUM);
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::RX_A | pte::U);
    let (g, _) = guest(|g| {
        g.li(T0, VA).i(jalr(ZERO, T0, 0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::new(cause::FETCH_PAGE, VA, VA));
}

#[test]
fn mxr_makes_execute_only_pages_readable() {
    for mxr in [false, true] {
        let mut m = machine_with_data();
        let mut pt = tables(&m, Mode::Sv39, false);
        pt.map(&m, VA, DATA, pte::X | pte::A);
        let mut load_pc = 0;
        let (g, end) = guest(|g| {
            if mxr {
                g.li(T1, mstatus::MXR).i(csrs(csr::SSTATUS, T1));
            }
            g.li(T0, VA);
            load_pc = g.pc();
            g.i(ld(A0, 0, T0));
        });
        let trap = m.run_guest(Privilege::Supervisor, pt.satp(), &g);
        if mxr {
            assert_eq!(trap, Trap::ecall(cause::ECALL_S, end));
            assert_eq!(m.x(A0), VALUE);
        } else {
            assert_eq!(trap, Trap::new(cause::LOAD_PAGE, VA, load_pc));
        }
    }
}

#[test]
fn write_without_read_is_a_reserved_encoding() {
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::W | pte::A | pte::D);
    let mut fault_pc = 0;
    let (g, _) = guest(|g| {
        g.li(T0, VA);
        fault_pc = g.pc();
        g.i(sd(ZERO, 0, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::new(cause::STORE_PAGE, VA, fault_pc));
}

#[test]
fn pointer_pte_at_the_last_level_faults() {
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::RW_AD);
    let slot = pt.leaf_slot(&m, VA, 0);
    m.write_u64(slot, ((DATA >> 12) << 10) | pte::V); // V without R/W/X: a pointer where a leaf must be
    let mut fault_pc = 0;
    let (g, _) = guest(|g| {
        g.li(T0, VA);
        fault_pc = g.pc();
        g.i(ld(A0, 0, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::new(cause::LOAD_PAGE, VA, fault_pc));
}

#[test]
fn walker_sets_accessed_and_dirty_bits() {
    // A load sets A only.
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::R | pte::W);
    let (g, end) = guest(|g| {
        g.li(T0, VA).i(ld(A0, 0, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::ecall(cause::ECALL_S, end));
    let entry = pt.leaf(&m, VA);
    assert_eq!(entry & (pte::A | pte::D), pte::A, "load: A set, D clear");

    // A store sets A and D.
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::R | pte::W);
    let (g, end) = guest(|g| {
        g.li(T0, VA).i(sd(ZERO, 0, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::ecall(cause::ECALL_S, end));
    let entry = pt.leaf(&m, VA);
    assert_eq!(entry & (pte::A | pte::D), pte::A | pte::D, "store: A and D set");
    assert_eq!(entry & !(pte::A | pte::D), ((DATA >> 12) << 10) | pte::R | pte::W | pte::V, "nothing else changes");

    // A load followed by a store: D is set by the store even though the load already cached the page.
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::R | pte::W);
    let (g, _) = guest(|g| {
        g.li(T0, VA).i(ld(A0, 0, T0)).i(sd(ZERO, 8, T0));
    });
    m.run_guest(Privilege::Supervisor, pt.satp(), &g);
    assert_eq!(pt.leaf(&m, VA) & (pte::A | pte::D), pte::A | pte::D);
}

#[test]
fn walker_sets_accessed_on_fetch() {
    let mut m = Machine::new();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::R | pte::X);
    let mut target = Asm::new(DATA);
    target.i(addi(A0, ZERO, 5)).i(ecall());
    m.load(&target);
    let (g, _) = guest(|g| {
        g.li(T0, VA).i(jalr(ZERO, T0, 0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::ecall(cause::ECALL_S, VA + 4));
    assert_eq!(m.x(A0), 5);
    assert_eq!(pt.leaf(&m, VA) & (pte::A | pte::D), pte::A);
}

#[test]
fn sv48_translates_addresses_beyond_sv39() {
    const VA48: u64 = 0x0000_1234_5678_9000;
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv48, false);
    pt.map(&m, VA48, DATA, pte::RW_AD);
    let (g, end) = guest(|g| {
        g.li(T0, VA48).i(ld(A0, 0, T0)).i(sd(T0, 8, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::ecall(cause::ECALL_S, end));
    assert_eq!(m.x(A0), VALUE);
    assert_eq!(m.read_u64(DATA + 8), VA48);
}

#[test]
fn sv48_rejects_non_canonical_addresses() {
    let mut m = machine_with_data();
    let pt = tables(&m, Mode::Sv48, false);
    let bad = 0x0000_8000_0000_0000; // bit 47 set, upper bits clear
    let mut fault_pc = 0;
    let (g, _) = guest(|g| {
        g.li(T0, bad);
        fault_pc = g.pc();
        g.i(ld(A0, 0, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::new(cause::LOAD_PAGE, bad, fault_pc));
}

#[test]
fn sv39_rejects_non_canonical_addresses() {
    for bad in [0x0000_0040_0000_0000u64, 0xffff_ffbf_ffff_f000, 0x0000_1234_5678_9000] {
        let mut m = machine_with_data();
        let mut pt = tables(&m, Mode::Sv39, false);
        // Map the address as Sv39 would see it if the upper bits were ignored.
        pt.map(&m, bad & ((1 << 39) - 1), DATA, pte::RW_AD);
        let mut fault_pc = 0;
        let (g, _) = guest(|g| {
            g.li(T0, bad);
            fault_pc = g.pc();
            g.i(sd(ZERO, 0, T0));
        });
        assert_eq!(
            m.run_guest(Privilege::Supervisor, pt.satp(), &g),
            Trap::new(cause::STORE_PAGE, bad, fault_pc),
            "{bad:#x}"
        );
        assert_eq!(m.read_u64(DATA), VALUE);
    }
}

#[test]
fn negative_canonical_addresses_translate() {
    const HIGH: u64 = 0xffff_ffc0_0000_0000; // the lowest address of the upper half in Sv39
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, HIGH + 0x3000, DATA, pte::RW_AD);
    let (g, end) = guest(|g| {
        g.li(T0, HIGH + 0x3000).i(ld(A0, 0, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::ecall(cause::ECALL_S, end));
    assert_eq!(m.x(A0), VALUE);
}

#[test]
fn megapage_maps_two_mebibytes() {
    const MEGA_VA: u64 = 0x4020_0000;
    let mega_pa = RAM_BASE + MEGAPAGE; // 2 MiB aligned
    let mut m = Machine::new();
    m.write_u64(mega_pa + 0x12_3458, VALUE);
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map_at_level(&m, 1, MEGA_VA, mega_pa, pte::RW_AD);
    let (g, end) = guest(|g| {
        g.li(T0, MEGA_VA + 0x12_3458).i(ld(A0, 0, T0)).li(T1, MEGA_VA + MEGAPAGE - 8).i(sd(T0, 0, T1));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::ecall(cause::ECALL_S, end));
    assert_eq!(m.x(A0), VALUE);
    assert_eq!(m.read_u64(mega_pa + MEGAPAGE - 8), MEGA_VA + 0x12_3458);
}

#[test]
fn gigapage_identity_maps_ram() {
    let mut m = machine_with_data();
    let mut pt = PageTables::new(&m, Mode::Sv39);
    pt.map_at_level(&m, 2, RAM_BASE, RAM_BASE, pte::R | pte::W | pte::X | pte::A | pte::D);
    let (g, end) = guest(|g| {
        g.li(T0, DATA).i(ld(A0, 0, T0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::ecall(cause::ECALL_S, end));
    assert_eq!(m.x(A0), VALUE);
}

#[test]
fn misaligned_megapage_is_a_page_fault() {
    const MEGA_VA: u64 = 0x4020_0000;
    let mut m = Machine::new();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map_at_level(&m, 1, MEGA_VA, RAM_BASE + MEGAPAGE + PAGE, pte::RW_AD); // PPN[0] != 0
    let mut fault_pc = 0;
    let (g, _) = guest(|g| {
        g.li(T0, MEGA_VA + 0x10);
        fault_pc = g.pc();
        g.i(ld(A0, 0, T0));
    });
    assert_eq!(
        m.run_guest(Privilege::Supervisor, pt.satp(), &g),
        Trap::new(cause::LOAD_PAGE, MEGA_VA + 0x10, fault_pc)
    );
}

#[test]
fn sfence_vma_makes_a_changed_pte_visible() {
    const PT_VA: u64 = 0x5000_0000;
    let other = DATA + 0x3000;
    for by_address in [false, true] {
        let mut m = machine_with_data();
        m.write_u64(other, 222);
        let mut pt = tables(&m, Mode::Sv39, false);
        pt.map(&m, VA, DATA, pte::RW_AD);
        let slot = pt.leaf_slot(&m, VA, 0);
        // Let the guest write the leaf table through PT_VA.
        pt.map(&m, PT_VA, slot & !0xfff, pte::RW_AD);
        let new_pte = ((other >> 12) << 10) | pte::RW_AD | pte::V;
        let (g, end) = guest(|g| {
            g.li(T0, VA)
                .i(ld(A0, 0, T0))
                .li(T1, PT_VA + (slot & 0xfff))
                .li(T2, new_pte)
                .i(sd(T2, 0, T1))
                .i(if by_address { sfence_vma(T0, ZERO) } else { sfence_vma(ZERO, ZERO) })
                .i(ld(A1, 0, T0));
        });
        assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::ecall(cause::ECALL_S, end));
        assert_eq!((m.x(A0), m.x(A1)), (VALUE, 222), "sfence by address: {by_address}");
    }
}

#[test]
fn mprv_translates_m_mode_data_accesses_with_mpp() {
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::RW_AD);
    m.set_x(T0, VA);
    m.set_x(T1, pt.satp());
    m.set_x(T2, with_mpp(mstatus::MPRV, Privilege::Supervisor));
    let mut a = Asm::new(CODE);
    a.i(csrw(csr::SATP, T1)).i(csrs(csr::MSTATUS, T2)).i(ld(A0, 0, T0)).i(sd(T1, 8, T0)).i(csrc(csr::MSTATUS, T2));
    m.run_to_ecall(&mut a);
    assert_eq!(m.x(A0), VALUE);
    assert_eq!(m.read_u64(DATA + 8), pt.satp());
}

#[test]
fn without_mprv_m_mode_ignores_satp() {
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::RW_AD);
    m.set_x(T0, VA);
    m.set_x(T1, pt.satp());
    let mut a = Asm::new(CODE);
    a.i(csrw(csr::SATP, T1)).i(ld(A0, 0, T0));
    // VA is not a physical address of anything: an access fault, not a page fault.
    assert_eq!(m.run_program(&a), Trap::new(cause::LOAD_ACCESS, VA, CODE + 4));
}

#[test]
fn jalr_links_even_when_its_target_faults() {
    let mut m = Machine::new();
    let pt = tables(&m, Mode::Sv39, false);
    let mut jalr_pc = 0;
    let (g, _) = guest(|g| {
        g.li(T0, VA);
        jalr_pc = g.pc();
        g.i(jalr(RA, T0, 0));
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::new(cause::FETCH_PAGE, VA, VA));
    assert_eq!(m.x(RA), jalr_pc + 4);
}

#[test]
fn cached_supervisor_translation_does_not_leak_to_user_mode() {
    // S reads VA (a supervisor page), then drops to U with sret, and U reads the same VA: that must fault.
    let mut m = machine_with_data();
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::RW_AD);
    let user_code = DATA + 0x8000;
    pt.map(&m, user_code, user_code, pte::RX_A | pte::U);
    let mut user = Asm::new(user_code);
    user.i(ld(A1, 0, T0)).i(ecall());
    m.load(&user);
    let (g, _) = guest(|g| {
        g.li(T0, VA)
            .i(ld(A0, 0, T0))
            .li(T1, user_code)
            .i(csrw(csr::SEPC, T1))
            .li(T1, mstatus::SPP)
            .i(csrc(csr::SSTATUS, T1))
            .i(sret());
    });
    assert_eq!(m.run_guest(Privilege::Supervisor, pt.satp(), &g), Trap::new(cause::LOAD_PAGE, VA, user_code));
    assert_eq!(m.x(A0), VALUE, "S could read it");
    assert_eq!(m.x(A1), 0);
}

#[test]
fn page_table_outside_ram_is_an_access_fault() {
    let mut m = Machine::new();
    // Root table at physical 0x2000_0000, where nothing answers.
    let satp = (8 << 60) | (0x2000_0000 >> 12);
    let mut boot = Asm::new(CODE);
    boot.li(T6, satp).i(csrw(csr::SATP, T6)).li(T0, VA);
    // M-mode with MPRV = 1, MPP = S: the load is translated (the fetch is not).
    boot.li(T6, crate::with_mpp(mstatus::MPRV, Privilege::Supervisor)).i(csrs(csr::MSTATUS, T6));
    let load_pc = boot.pc();
    boot.i(ld(A0, 0, T0));
    assert_eq!(m.run_program(&boot), Trap::new(cause::LOAD_ACCESS, VA, load_pc));
}

#[test]
fn flush_tlb_makes_vmm_page_table_changes_visible() {
    let other = DATA + 0x3000;
    let mut m = machine_with_data();
    m.write_u64(other, 222);
    let mut pt = tables(&m, Mode::Sv39, false);
    pt.map(&m, VA, DATA, pte::RW_AD);
    pt.map(&m, 0, 0, pte::RW_AD); // lets S store to PAUSE_MMIO
    let (g, end) = guest(|g| {
        g.li(T0, VA).i(ld(A0, 0, T0)).i(sw(ZERO, PAUSE_MMIO as i32, ZERO)).i(ld(A1, 0, T0));
    });
    let mut boot = Asm::new(CODE);
    boot.li(T6, pt.satp()).i(csrw(csr::SATP, T6));
    enter_with_mret(&mut boot, Privilege::Supervisor, GUEST_CODE);
    m.load(&boot);
    m.load(&g);
    assert_eq!(m.run(), Outcome::Paused);
    let slot = pt.leaf_slot(&m, VA, 0);
    m.write_u64(slot, ((other >> 12) << 10) | pte::RW_AD | pte::V);
    m.hart.flush_tlb();
    assert_eq!(m.run(), Outcome::Halted);
    assert_eq!(m.m_trap(), Trap::ecall(cause::ECALL_S, end));
    assert_eq!((m.x(A0), m.x(A1)), (VALUE, 222));
}
