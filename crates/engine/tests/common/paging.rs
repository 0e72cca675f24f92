//! A builder for Sv39/Sv48 page tables in guest RAM.

use super::machine::{Machine, GUEST_CODE, PT_AREA, RAM_BASE};

/// PTE bits.
pub mod pte {
    pub const V: u64 = 1;
    pub const R: u64 = 2;
    pub const W: u64 = 4;
    pub const X: u64 = 8;
    pub const U: u64 = 16;
    pub const G: u64 = 32;
    pub const A: u64 = 64;
    pub const D: u64 = 128;
    /// Readable, writable, accessed and dirty: a data page the walker need not update.
    pub const RW_AD: u64 = R | W | A | D;
    pub const RX_A: u64 = R | X | A;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Sv39,
    Sv48,
}

impl Mode {
    fn levels(self) -> u32 {
        match self {
            Mode::Sv39 => 3,
            Mode::Sv48 => 4,
        }
    }

    fn satp_mode(self) -> u64 {
        match self {
            Mode::Sv39 => 8,
            Mode::Sv48 => 9,
        }
    }
}

pub const PAGE: u64 = 4096;
pub const MEGAPAGE: u64 = 2 << 20;

/// Page tables rooted at [`PT_AREA`]; intermediate tables are allocated after the root.
pub struct PageTables {
    mode: Mode,
    root: u64,
    next_free: u64,
}

impl PageTables {
    pub fn new(m: &Machine, mode: Mode) -> PageTables {
        PageTables::new_at(m, mode, PT_AREA)
    }

    /// Tables allocated from `area` instead (for a second address space).
    pub fn new_at(m: &Machine, mode: Mode, area: u64) -> PageTables {
        let mut pt = PageTables { mode, root: 0, next_free: area };
        pt.root = pt.alloc(m);
        pt
    }

    /// The `satp` value selecting these tables (ASID 0).
    pub fn satp(&self) -> u64 {
        (self.mode.satp_mode() << 60) | (self.root >> 12)
    }

    fn alloc(&mut self, m: &Machine) -> u64 {
        let table = self.next_free;
        self.next_free += PAGE;
        m.write_bytes(table, &[0; PAGE as usize]);
        table
    }

    fn index(va: u64, level: u32) -> u64 {
        (va >> (12 + 9 * level)) & 0x1ff
    }

    /// Address of the PTE for `va` at `level` (0 = 4 KiB leaf), creating intermediate tables as needed.
    fn pte_slot(&mut self, m: &Machine, va: u64, level: u32) -> u64 {
        let mut table = self.root;
        for l in (level + 1..self.mode.levels()).rev() {
            let slot = table + 8 * Self::index(va, l);
            let entry = m.read_u64(slot);
            table = if entry & pte::V != 0 {
                assert!(entry & (pte::R | pte::X) == 0, "va {va:#x} already has a leaf at level {l}");
                (entry >> 10) << 12
            } else {
                let t = self.alloc(m);
                m.write_u64(slot, ((t >> 12) << 10) | pte::V);
                t
            };
        }
        table + 8 * Self::index(va, level)
    }

    /// Maps the 4 KiB page at `va` to `pa` with `flags` (V is added).
    pub fn map(&mut self, m: &Machine, va: u64, pa: u64, flags: u64) {
        self.map_at_level(m, 0, va, pa, flags);
    }

    /// Installs a leaf PTE at `level` (1 = 2 MiB megapage, 2 = 1 GiB gigapage). `pa` is not checked for
    /// alignment, so misaligned superpages can be built on purpose.
    pub fn map_at_level(&mut self, m: &Machine, level: u32, va: u64, pa: u64, flags: u64) {
        let slot = self.pte_slot(m, va, level);
        m.write_u64(slot, ((pa >> 12) << 10) | flags | pte::V);
    }

    /// Address of the leaf PTE (at `level`) for `va`.
    pub fn leaf_slot(&mut self, m: &Machine, va: u64, level: u32) -> u64 {
        self.pte_slot(m, va, level)
    }

    /// The 4 KiB leaf PTE currently in RAM for `va`.
    pub fn leaf(&mut self, m: &Machine, va: u64) -> u64 {
        let slot = self.pte_slot(m, va, 0);
        m.read_u64(slot)
    }

    /// Maps the vectors page (HALT_VECTOR, S_ESCALATE) and 8 pages of [`GUEST_CODE`] at their physical
    /// addresses, readable and executable; `user` adds U to the code pages (never to the vectors page).
    pub fn map_code(&mut self, m: &Machine, user: bool) {
        self.map(m, RAM_BASE, RAM_BASE, pte::RX_A);
        let u = if user { pte::U } else { 0 };
        for i in 0..8 {
            let a = GUEST_CODE + i * PAGE;
            self.map(m, a, a, pte::RX_A | u);
        }
    }
}
