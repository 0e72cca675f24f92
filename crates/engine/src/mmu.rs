//! Address translation (bare, Sv39, Sv48) and the software TLB.
//!
//! The TLB caches, per access kind, virtual page → RAM offset. Its tag includes the translation context (the
//! effective privilege and the SUM/MXR bits), so privilege changes and the kernel toggling SUM need no flush;
//! `satp` writes and `sfence.vma` flush everything. Only RAM pages are cached: MMIO always takes the slow path.
//! A store entry is installed only after its page was marked dirty in the current dirty-log generation, which
//! is what makes dirty tracking exact (see `kemari-memory`), and never for a code page (a page decoded blocks come
//! from): a store to one takes the slow path, which bumps the page's write version so that the blocks are
//! decoded again, and asks the running block to end after the store.

use crate::csr::mstatus;
use crate::hart::{cause, Bus, Exception, Hart, Privilege, Stop};
use crate::memory::{GuestRam, PAGE_SHIFT};

pub(crate) const TLB_SIZE: usize = 512;
const INVALID: u64 = 1 << 63;

#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Entry {
    tag: u64,
    /// Offset into RAM of the start of the page.
    ram_off: u64,
}

/// Bytes per entry (compiled code indexes the arrays itself).
pub(crate) const TLB_ENTRY_SIZE: usize = std::mem::size_of::<Entry>();

const EMPTY: Entry = Entry { tag: INVALID, ram_off: 0 };

pub(crate) struct Tlb {
    fetch: [Entry; TLB_SIZE],
    load: [Entry; TLB_SIZE],
    store: [Entry; TLB_SIZE],
}

impl Default for Tlb {
    fn default() -> Tlb {
        Tlb { fetch: [EMPTY; TLB_SIZE], load: [EMPTY; TLB_SIZE], store: [EMPTY; TLB_SIZE] }
    }
}

impl Tlb {
    pub(crate) fn flush_all(&mut self) {
        self.fetch = [EMPTY; TLB_SIZE];
        self.load = [EMPTY; TLB_SIZE];
        self.store = [EMPTY; TLB_SIZE];
    }

    pub(crate) fn flush_stores(&mut self) {
        self.store = [EMPTY; TLB_SIZE];
    }

    /// The load entries, for compiled code.
    pub(crate) fn load_entries(&self) -> *const u8 {
        self.load.as_ptr() as *const u8
    }

    /// The store entries, for compiled code.
    pub(crate) fn store_entries(&self) -> *const u8 {
        self.store.as_ptr() as *const u8
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Access {
    Fetch,
    Load,
    Store,
}

impl Access {
    fn page_fault(self) -> u64 {
        match self {
            Access::Fetch => cause::FETCH_PAGE,
            Access::Load => cause::LOAD_PAGE,
            Access::Store => cause::STORE_PAGE,
        }
    }

    pub(crate) fn access_fault(self) -> u64 {
        match self {
            Access::Fetch => cause::FETCH_ACCESS,
            Access::Load => cause::LOAD_ACCESS,
            Access::Store => cause::STORE_ACCESS,
        }
    }
}

const PTE_V: u64 = 1;
const PTE_R: u64 = 2;
const PTE_W: u64 = 4;
const PTE_X: u64 = 8;
const PTE_U: u64 = 16;
const PTE_A: u64 = 64;
const PTE_D: u64 = 128;

#[inline(always)]
fn tlb_index(vaddr: u64) -> usize {
    ((vaddr >> PAGE_SHIFT) as usize) & (TLB_SIZE - 1)
}

impl Hart {
    /// Translation context tag bits for data accesses (effective privilege under MPRV, SUM, MXR).
    #[inline(always)]
    fn data_ctx(&self) -> (Privilege, u64) {
        let st = self.s.mstatus;
        let mut p = self.s.privilege;
        if p == Privilege::Machine && st & mstatus::MPRV != 0 {
            p = Privilege::from_bits((st & mstatus::MPP) >> mstatus::MPP_SHIFT).unwrap_or(Privilege::User);
        }
        let ctx = (p as u64) | ((st >> 18) & 1) << 2 | ((st >> 19) & 1) << 3;
        (p, ctx << 56)
    }

    /// The TLB tag bits of data accesses now.
    #[inline(always)]
    pub(crate) fn data_tag(&self) -> u64 {
        self.data_ctx().1
    }

    #[inline(always)]
    fn fetch_ctx(&self) -> u64 {
        (self.s.privilege as u64) << 56
    }

    /// Translates `vaddr` for `access` at privilege `p`; returns the physical address.
    pub(crate) fn translate(
        &mut self,
        ram: &GuestRam,
        vaddr: u64,
        access: Access,
        p: Privilege,
    ) -> Result<u64, Exception> {
        let mode = self.s.satp >> 60;
        if p == Privilege::Machine || mode == 0 {
            return Ok(vaddr);
        }
        let levels: u32 = if mode == 8 { 3 } else { 4 };
        let va_bits = 12 + 9 * levels;
        let fault = Exception { cause: access.page_fault(), tval: vaddr };
        // The upper bits must be a sign extension of the top translated bit.
        let top = ((vaddr as i64) >> (va_bits - 1)) as u64;
        if top != 0 && top != u64::MAX {
            return Err(fault);
        }
        let mut table = (self.s.satp & ((1 << 44) - 1)) << PAGE_SHIFT;
        let st = self.s.mstatus;
        for level in (0..levels).rev() {
            let vpn = (vaddr >> (12 + 9 * level)) & 0x1ff;
            let pte_addr = table + vpn * 8;
            let mut buf = [0u8; 8];
            ram.read(pte_addr, &mut buf).ok_or(Exception { cause: access.access_fault(), tval: vaddr })?;
            let mut pte = u64::from_le_bytes(buf);
            if pte & PTE_V == 0 || (pte & PTE_R == 0 && pte & PTE_W != 0) || pte >> 54 != 0 {
                return Err(fault);
            }
            let ppn = (pte >> 10) & ((1 << 44) - 1);
            if pte & (PTE_R | PTE_X) == 0 {
                if level == 0 {
                    return Err(fault);
                }
                table = ppn << PAGE_SHIFT;
                continue;
            }
            // Leaf: permissions.
            let allowed = match access {
                Access::Fetch => pte & PTE_X != 0,
                Access::Load => pte & PTE_R != 0 || (st & mstatus::MXR != 0 && pte & PTE_X != 0),
                Access::Store => pte & PTE_W != 0,
            };
            let user_ok = match p {
                Privilege::User => pte & PTE_U != 0,
                _ => pte & PTE_U == 0 || (access != Access::Fetch && st & mstatus::SUM != 0),
            };
            if !allowed || !user_ok {
                return Err(fault);
            }
            // Superpages must be aligned.
            let low_mask = (1u64 << (9 * level)) - 1;
            if ppn & low_mask != 0 {
                return Err(fault);
            }
            // Hardware A/D update.
            let want = PTE_A | if access == Access::Store { PTE_D } else { 0 };
            if pte & want != want {
                pte |= want;
                ram.write(pte_addr, &pte.to_le_bytes())
                    .ok_or(Exception { cause: access.access_fault(), tval: vaddr })?;
                // Page tables are no code, but should the guest execute from one, no jump to it may stay.
                self.sync_code_writes(ram);
            }
            let page_off_mask = (1u64 << (12 + 9 * level)) - 1;
            return Ok(((ppn << PAGE_SHIFT) & !page_off_mask) | (vaddr & page_off_mask));
        }
        Err(fault)
    }

    /// Slow path of a data access to one page: translate, fill the TLB, and return the RAM offset or `None` for
    /// MMIO (with the physical address).
    fn data_slow(&mut self, ram: &GuestRam, vaddr: u64, access: Access) -> Result<(Option<u64>, u64), Exception> {
        let (p, ctx) = self.data_ctx();
        let paddr = self.translate(ram, vaddr, access, p)?;
        let Some(off) = ram.offset_of(paddr, 1) else { return Ok((None, paddr)) };
        let page_off = off & !((1 << PAGE_SHIFT) - 1);
        let idx = tlb_index(vaddr);
        let e = Entry { tag: (vaddr >> PAGE_SHIFT) | ctx, ram_off: page_off };
        match access {
            Access::Load => self.tlb.load[idx] = e,
            Access::Store => {
                let page = page_off >> PAGE_SHIFT;
                ram.mark_dirty_page(page);
                // The caller writes right after: no decode can come in between.
                if ram.code_written(page) {
                    self.end_block = true;
                    self.sync_code_writes(ram);
                } else {
                    self.tlb.store[idx] = e;
                }
            }
            Access::Fetch => unreachable!("fetches use fetch_off"),
        }
        Ok((Some(off), paddr))
    }

    /// Loads `N` bytes (1, 2, 4, 8) at `vaddr`, zero-extended. Misaligned accesses are supported.
    #[inline(always)]
    pub(crate) fn load<const N: usize>(
        &mut self,
        ram: &GuestRam,
        bus: &mut dyn Bus,
        vaddr: u64,
    ) -> Result<u64, Exception> {
        let ctx = self.data_tag();
        self.load_in::<N>(ram, bus, vaddr, ctx)
    }

    /// [`Hart::load`] with the translation context already computed by [`Hart::data_tag`] (it cannot change
    /// within a block).
    #[inline(always)]
    pub(crate) fn load_in<const N: usize>(
        &mut self,
        ram: &GuestRam,
        bus: &mut dyn Bus,
        vaddr: u64,
        ctx: u64,
    ) -> Result<u64, Exception> {
        let e = self.tlb.load[tlb_index(vaddr)];
        let in_page = vaddr & 0xfff;
        if e.tag == (vaddr >> PAGE_SHIFT) | ctx && in_page + N as u64 <= 4096 {
            return Ok(read_ram::<N>(ram, e.ram_off + in_page));
        }
        self.load_slow::<N>(ram, bus, vaddr)
    }

    #[inline(never)]
    fn load_slow<const N: usize>(&mut self, ram: &GuestRam, bus: &mut dyn Bus, vaddr: u64) -> Result<u64, Exception> {
        if (vaddr & 0xfff) + N as u64 > 4096 {
            // Crosses a page: byte by byte, each translated on its own.
            let mut v = 0u64;
            for i in 0..N as u64 {
                v |= self.load::<1>(ram, bus, vaddr.wrapping_add(i))? << (8 * i);
            }
            return Ok(v);
        }
        match self.data_slow(ram, vaddr, Access::Load)? {
            (Some(off), _) => Ok(read_ram::<N>(ram, off)),
            (None, paddr) => {
                if paddr % N as u64 != 0 {
                    return Err(Exception { cause: cause::LOAD_ACCESS, tval: vaddr });
                }
                bus.load(self.s.id as usize, paddr, N as u8).ok_or(Exception { cause: cause::LOAD_ACCESS, tval: vaddr })
            }
        }
    }

    /// Stores the low `N` bytes of `value` at `vaddr`. Returns true if the store went to MMIO.
    #[inline(always)]
    pub(crate) fn store<const N: usize>(
        &mut self,
        ram: &GuestRam,
        bus: &mut dyn Bus,
        vaddr: u64,
        value: u64,
    ) -> Result<bool, Exception> {
        let ctx = self.data_tag();
        self.store_in::<N>(ram, bus, vaddr, value, ctx)
    }

    /// [`Hart::store`] with the translation context already computed by [`Hart::data_tag`].
    #[inline(always)]
    pub(crate) fn store_in<const N: usize>(
        &mut self,
        ram: &GuestRam,
        bus: &mut dyn Bus,
        vaddr: u64,
        value: u64,
        ctx: u64,
    ) -> Result<bool, Exception> {
        let e = self.tlb.store[tlb_index(vaddr)];
        let in_page = vaddr & 0xfff;
        if e.tag == (vaddr >> PAGE_SHIFT) | ctx && in_page + N as u64 <= 4096 {
            write_ram::<N>(ram, e.ram_off + in_page, value);
            return Ok(false);
        }
        self.store_slow::<N>(ram, bus, vaddr, value)
    }

    #[inline(never)]
    fn store_slow<const N: usize>(
        &mut self,
        ram: &GuestRam,
        bus: &mut dyn Bus,
        vaddr: u64,
        value: u64,
    ) -> Result<bool, Exception> {
        if (vaddr & 0xfff) + N as u64 > 4096 {
            // Translate both pages before writing anything, so a fault leaves memory untouched.
            let second = (vaddr | 0xfff).wrapping_add(1);
            self.data_slow(ram, vaddr, Access::Store)?;
            self.data_slow(ram, second, Access::Store)?;
            let mut mmio = false;
            for i in 0..N as u64 {
                mmio |= self.store::<1>(ram, bus, vaddr.wrapping_add(i), value >> (8 * i))?;
            }
            return Ok(mmio);
        }
        match self.data_slow(ram, vaddr, Access::Store)? {
            (Some(off), _) => {
                write_ram::<N>(ram, off, value);
                Ok(false)
            }
            (None, paddr) => {
                if paddr % N as u64 != 0 || !bus.store(self.s.id as usize, paddr, N as u8, value) {
                    return Err(Exception { cause: cause::STORE_ACCESS, tval: vaddr });
                }
                Ok(true)
            }
        }
    }

    /// Translates an aligned atomic access (AMO, LR, SC) to a RAM offset; atomics to MMIO are access faults.
    pub(crate) fn atomic_target(&mut self, ram: &GuestRam, vaddr: u64, size: u64, access: Access) -> Result<u64, Stop> {
        if !vaddr.is_multiple_of(size) {
            let c = if access == Access::Load { cause::LOAD_MISALIGNED } else { cause::STORE_MISALIGNED };
            return Err(Exception { cause: c, tval: vaddr }.into());
        }
        let (_, ctx) = self.data_ctx();
        let idx = tlb_index(vaddr);
        let e = if access == Access::Load { self.tlb.load[idx] } else { self.tlb.store[idx] };
        if e.tag == (vaddr >> PAGE_SHIFT) | ctx {
            return Ok(e.ram_off + (vaddr & 0xfff));
        }
        match self.data_slow(ram, vaddr, access)? {
            (Some(off), _) => Ok(off),
            (None, _) => Err(Exception { cause: access.access_fault(), tval: vaddr }.into()),
        }
    }

    /// The RAM offset of the instruction at `vaddr` (translated with the fetch TLB).
    #[inline(always)]
    pub(crate) fn fetch_off(&mut self, ram: &GuestRam, vaddr: u64) -> Result<u64, Exception> {
        let e = self.tlb.fetch[tlb_index(vaddr)];
        if e.tag == (vaddr >> PAGE_SHIFT) | self.fetch_ctx() {
            return Ok(e.ram_off + (vaddr & 0xfff));
        }
        self.fetch_slow(ram, vaddr)
    }

    /// The RAM offset of the instruction at `vaddr` if the fetch TLB has its translation.
    #[inline(always)]
    pub(crate) fn fetch_cached(&self, vaddr: u64) -> Option<u64> {
        let e = self.tlb.fetch[tlb_index(vaddr)];
        (e.tag == (vaddr >> PAGE_SHIFT) | self.fetch_ctx()).then_some(e.ram_off + (vaddr & 0xfff))
    }

    /// Fetches the 16-bit parcel at `vaddr`.
    pub(crate) fn fetch16(&mut self, ram: &GuestRam, vaddr: u64) -> Result<u16, Exception> {
        let off = self.fetch_off(ram, vaddr)?;
        Ok(read_ram::<2>(ram, off) as u16)
    }

    #[inline(never)]
    fn fetch_slow(&mut self, ram: &GuestRam, vaddr: u64) -> Result<u64, Exception> {
        let p = self.s.privilege;
        let paddr = self.translate(ram, vaddr, Access::Fetch, p)?;
        let off = ram.offset_of(paddr, 2).ok_or(Exception { cause: cause::FETCH_ACCESS, tval: vaddr })?;
        let e = Entry { tag: (vaddr >> PAGE_SHIFT) | self.fetch_ctx(), ram_off: off & !0xfff };
        self.tlb.fetch[tlb_index(vaddr)] = e;
        Ok(off)
    }
}

#[inline(always)]
pub(crate) fn read_ram<const N: usize>(ram: &GuestRam, off: u64) -> u64 {
    debug_assert!(off + N as u64 <= ram.size());
    // SAFETY: callers derive `off` from a translation that checked the page lies in RAM and that the access
    // does not cross the page, so `off + N` is inside the mapping. Unaligned reads are explicit.
    unsafe {
        let p = ram.host_ptr().add(off as usize);
        match N {
            1 => *p as u64,
            2 => (p as *const u16).read_unaligned() as u64,
            4 => (p as *const u32).read_unaligned() as u64,
            _ => (p as *const u64).read_unaligned(),
        }
    }
}

#[inline(always)]
pub(crate) fn write_ram<const N: usize>(ram: &GuestRam, off: u64, v: u64) {
    debug_assert!(off + N as u64 <= ram.size());
    // SAFETY: as in `read_ram`; the page was marked dirty when its store translation was installed.
    unsafe {
        let p = ram.host_ptr().add(off as usize);
        match N {
            1 => *p = v as u8,
            2 => (p as *mut u16).write_unaligned(v as u16),
            4 => (p as *mut u32).write_unaligned(v as u32),
            _ => (p as *mut u64).write_unaligned(v),
        }
    }
}
