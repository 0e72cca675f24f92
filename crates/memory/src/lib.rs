//! kemari-memory: guest RAM, its dirty-page log, and the code-page tracking that keeps decoded blocks coherent.
//!
//! RAM is one anonymous host mapping. The guest sees it as one or more guest-physical *regions*, laid out one
//! after the other in the mapping (a RISC-V board has one; an x86 machine needs two around the hole below
//! 4 GiB). Page indices, the dirty log and the state format all work on *RAM offsets*, so a checkpoint or a
//! migration never depends on where the regions sit.
//!
//! Every page that is written after the last [`GuestRam::take_dirty`] is recorded in a bitmap: software harts
//! mark a page when they install a store translation for it (so only the first store to a page per checkpoint
//! pays), and the VMM marks pages it writes itself through [`GuestRam::write`] or
//! [`GuestRam::mark_dirty_range`] (devices, through their `vm-memory` view). A log harvested elsewhere (a
//! hardware engine's, e.g. KVM's) is folded in with [`GuestRam::merge_dirty`]. Taking the log bumps a
//! generation number; harts compare it before running and drop their store translations, so the next store to
//! any page is seen again. Taking the log does not touch decoded code.
//!
//! Code pages (for engines that decode guest code themselves). Harts cache instructions decoded from RAM. A page
//! some hart decoded a block from is a *code page*; each page also has a *write version*. The rules:
//! - a hart never installs a store translation for a code page, so every hart store to one takes the slow path,
//!   which bumps the page's version (and clears its code bit: the page holds no valid block any more, and the
//!   next stores may go fast again until a hart decodes from it anew);
//! - when a page becomes a code page the *code epoch* is bumped; harts compare it when they start running (and
//!   after their own decodes) and drop their store translations, so none survives for a new code page;
//! - writes by the VMM and devices ([`GuestRam::write`], [`GuestRam::mark_dirty_range`],
//!   [`GuestRam::merge_dirty`]) bump the version of the code pages they touch;
//! - a decoded block remembers the version of its page and is decoded again when it differs; a hart's jump
//!   cache (virtual pc to block), which skips that check, is dropped whenever any code page is written (a
//!   counter of such writes, compared when the hart starts running; the hart's own stores drop it at once).
//!
//! Harts run round-robin on one thread and the VMM writes guest memory between their slices, so no write can
//! slip between a hart's version check and the instructions it executes.

use std::sync::atomic::{AtomicU64, Ordering};

/// Tells guest RAM objects apart (a hart's decoded blocks belong to one).
static NEXT_RAM_ID: AtomicU64 = AtomicU64::new(1);

/// Guest page size used for dirty tracking and translation.
pub const PAGE_SIZE: u64 = 4096;
pub const PAGE_SHIFT: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum RamError {
    #[error("cannot map guest RAM: {0}")]
    Map(std::io::Error),
    #[error("guest RAM size {0:#x} is not a positive multiple of 4 KiB")]
    BadSize(u64),
    #[error("guest RAM region at {base:#x} is not page-aligned, overlaps another or wraps around")]
    BadRegion { base: u64 },
}

/// A guest-physical range backed by RAM: `size` bytes at `base`, found at `offset` in the host mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub base: u64,
    pub size: u64,
    pub offset: u64,
}

/// Guest RAM: one host mapping of `size` bytes, seen by the guest as its regions.
pub struct GuestRam {
    /// In guest-physical order, laid out one after the other in the mapping.
    regions: Vec<Region>,
    size: u64,
    host: *mut u8,
    dirty: Box<[AtomicU64]>,
    /// Pages ever marked dirty (never cleared): a page not in it was never written and holds zeros, so a full
    /// scan need not read it (reading untouched anonymous memory costs a page fault each).
    touched: Box<[AtomicU64]>,
    generation: AtomicU64,
    /// Pages some hart decoded instructions from (and that were not written since).
    code: Box<[AtomicU64]>,
    /// Per page: bumped by every write to the page while it is a code page.
    versions: Box<[AtomicU64]>,
    /// Bumped whenever a page becomes a code page.
    code_epoch: AtomicU64,
    /// Bumped by every write to a code page.
    code_writes: AtomicU64,
    id: u64,
}

// SAFETY: the mapping lives as long as the struct; concurrent access to guest memory from the VMM's threads is
// the same contract every VMM has with its guest (bytes may change under a reader; no Rust references into the
// mapping are ever handed out, only copies).
unsafe impl Send for GuestRam {}
// SAFETY: see above; the dirty bitmap and generation are atomics.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// RAM of `size` bytes at guest-physical `base`, one region.
    pub fn new(base: u64, size: u64) -> Result<GuestRam, RamError> {
        GuestRam::with_regions(&[(base, size)])
    }

    /// RAM seen by the guest as these `(base, size)` ranges, in ascending order, none overlapping.
    pub fn with_regions(ranges: &[(u64, u64)]) -> Result<GuestRam, RamError> {
        let mut regions = Vec::with_capacity(ranges.len());
        let mut size = 0u64;
        for &(base, len) in ranges {
            if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
                return Err(RamError::BadSize(len));
            }
            // Translations map whole guest pages to whole RAM pages.
            let after_last = regions.last().map_or(0, |r: &Region| r.base + r.size);
            if !base.is_multiple_of(PAGE_SIZE) || base < after_last || base.checked_add(len).is_none() {
                return Err(RamError::BadRegion { base });
            }
            regions.push(Region { base, size: len, offset: size });
            size = size.checked_add(len).ok_or(RamError::BadSize(len))?;
        }
        if regions.is_empty() {
            return Err(RamError::BadSize(0));
        }
        let host = map_huge_aligned(size as usize).map_err(RamError::Map)?;
        let pages = size / PAGE_SIZE;
        let words = pages.div_ceil(64) as usize;
        let zeros = |n: u64| (0..n).map(|_| AtomicU64::new(0)).collect();
        Ok(GuestRam {
            regions,
            size,
            host,
            dirty: zeros(words as u64),
            touched: zeros(words as u64),
            generation: AtomicU64::new(0),
            code: zeros(words as u64),
            versions: zeros(pages),
            code_epoch: AtomicU64::new(0),
            code_writes: AtomicU64::new(0),
            id: NEXT_RAM_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Guest-physical address of the first byte of RAM (the first region's base).
    pub fn base(&self) -> u64 {
        self.regions[0].base
    }

    /// Bytes of RAM, all regions together.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The guest-physical ranges backed by RAM.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Guest-physical address of RAM offset `off` (which must be inside RAM).
    pub fn address_of(&self, off: u64) -> u64 {
        let r = self.regions.iter().rev().find(|r| r.offset <= off).expect("offsets start at 0");
        debug_assert!(off < r.offset + r.size, "offset {off:#x} beyond RAM");
        r.base + (off - r.offset)
    }

    /// Host address of the start of RAM (for the engine's translation cache and for device memory views).
    pub fn host_ptr(&self) -> *mut u8 {
        self.host
    }

    /// Offset into RAM of `len` bytes at guest-physical `addr`, if they lie entirely inside RAM.
    #[inline]
    pub fn offset_of(&self, addr: u64, len: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = addr.checked_sub(r.base)?;
            (off.checked_add(len)? <= r.size).then_some(r.offset + off)
        })
    }

    /// Copies guest memory out. Fails (returns None) if the range is not entirely RAM.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Option<()> {
        let off = self.offset_of(addr, buf.len() as u64)?;
        // SAFETY: the range was checked to lie inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.host.add(off as usize), buf.as_mut_ptr(), buf.len()) };
        Some(())
    }

    /// Appends `len` bytes of guest memory at `addr` to `out` (no intermediate buffer). Fails if the range is
    /// not entirely RAM.
    pub fn append_to(&self, addr: u64, len: usize, out: &mut Vec<u8>) -> Option<()> {
        let off = self.offset_of(addr, len as u64)?;
        out.reserve(len);
        // SAFETY: the source range was checked to lie inside the mapping; `reserve` made room for `len` bytes
        // after the vector's end, which the copy initialises before the length covers them.
        unsafe {
            std::ptr::copy_nonoverlapping(self.host.add(off as usize), out.as_mut_ptr().add(out.len()), len);
            out.set_len(out.len() + len);
        }
        Some(())
    }

    /// Whether RAM page `page` (an index, which must be inside RAM) holds only zeros. A page never written is;
    /// others are read in place, a cache line at a time, so that scanning a guest runs at memory speed.
    pub fn page_is_zero(&self, page: u64) -> bool {
        assert!(page < self.size / PAGE_SIZE, "page {page} beyond RAM");
        if self.touched[(page / 64) as usize].load(Ordering::Relaxed) & (1 << (page % 64)) == 0 {
            return true;
        }
        let words = (PAGE_SIZE / 8) as usize;
        // SAFETY: the page lies inside the mapping (checked above), which is page-aligned, so every u64 read is
        // aligned and in bounds. Bytes may change under the read (the guest may run); a torn value only
        // decides whether a page is sent now, and a page written meanwhile is in the dirty log anyway.
        unsafe {
            let p = self.host.add((page * PAGE_SIZE) as usize) as *const u64;
            (0..words).step_by(8).all(|i| (0..8).fold(0u64, |acc, j| acc | p.add(i + j).read()) == 0)
        }
    }

    /// Faults every page of RAM in now, so that later writes (a migration's incoming pages, the guest's first
    /// touches) find memory already there: first-touch faults are most of the cost of receiving pages into a
    /// fresh machine. Contents stay as they are (zeros, or what others write meanwhile: this is safe while
    /// other threads write to RAM) and nothing is marked dirty. Works in 64 MiB steps; fails on kernels
    /// without MADV_POPULATE_WRITE (before Linux 5.14) or when the host cannot back the memory.
    pub fn prefault(&self) -> std::io::Result<()> {
        const STEP: u64 = 64 << 20;
        let mut off = 0;
        while off < self.size {
            let len = STEP.min(self.size - off);
            // SAFETY: the range lies inside our mapping; MADV_POPULATE_WRITE only faults pages in (as a write
            // fault that stores nothing would), it never changes their contents.
            let r = unsafe {
                libc::madvise(self.host.add(off as usize) as *mut libc::c_void, len as usize, libc::MADV_POPULATE_WRITE)
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            off += len;
        }
        Ok(())
    }

    /// Copies into guest memory, records the pages as dirty and invalidates instructions harts decoded from them.
    /// Fails if the range is not entirely RAM.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<()> {
        let off = self.offset_of(addr, data.len() as u64)?;
        // SAFETY: the range was checked to lie inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.host.add(off as usize), data.len()) };
        self.mark_dirty_range(off, data.len() as u64);
        Some(())
    }

    /// Records a write by the VMM or a device to RAM pages covering `[off, off+len)` (offsets into RAM), made
    /// just before: marks them dirty, and invalidates the instructions harts decoded from them.
    pub fn mark_dirty_range(&self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = off >> PAGE_SHIFT;
        let last = (off + len - 1) >> PAGE_SHIFT;
        for page in first..=last {
            self.mark_dirty_page(page);
            self.code_written(page);
        }
    }

    #[inline]
    pub fn mark_dirty_page(&self, page: u64) {
        let word = &self.dirty[(page / 64) as usize];
        let bit = 1u64 << (page % 64);
        // Relaxed load first: the common case (already dirty) does not need a locked RMW.
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_or(bit, Ordering::Relaxed);
            let touched = &self.touched[(page / 64) as usize];
            if touched.load(Ordering::Relaxed) & bit == 0 {
                touched.fetch_or(bit, Ordering::Relaxed);
            }
        }
    }

    pub fn is_dirty(&self, page: u64) -> bool {
        self.dirty[(page / 64) as usize].load(Ordering::Relaxed) & (1 << (page % 64)) != 0
    }

    /// Returns the indices of the pages written since the last call and starts a new log. Harts notice the new
    /// generation before their next instruction and forget their store translations.
    pub fn take_dirty(&self) -> Vec<u64> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut pages = Vec::new();
        for (i, word) in self.dirty.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::SeqCst);
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                pages.push(i as u64 * 64 + b);
                bits &= bits - 1;
            }
        }
        pages
    }

    /// Folds in a dirty log harvested elsewhere (a hardware engine's): bit `i` of `bitmap` (64 pages per word,
    /// in RAM offset order) marks page `i` as written, exactly as [`GuestRam::mark_dirty_range`] would. Words
    /// beyond RAM are ignored.
    pub fn merge_dirty(&self, bitmap: &[u64]) {
        let pages = self.size / PAGE_SIZE;
        for (i, &word) in bitmap.iter().enumerate().take(self.dirty.len()) {
            let mut bits = word;
            while bits != 0 {
                let page = i as u64 * 64 + bits.trailing_zeros() as u64;
                bits &= bits - 1;
                if page < pages {
                    self.mark_dirty_page(page);
                    self.code_written(page);
                }
            }
        }
    }

    /// Number of pages currently marked dirty.
    pub fn dirty_count(&self) -> u64 {
        self.dirty.iter().map(|w| w.load(Ordering::Relaxed).count_ones() as u64).sum()
    }

    /// Current dirty-log generation.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Identity of this RAM object (unique in the process).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Write version of RAM page `page` (see the module docs).
    #[inline(always)]
    pub fn page_version(&self, page: u64) -> u64 {
        self.versions[page as usize].load(Ordering::Acquire)
    }

    #[inline(always)]
    pub fn is_code(&self, page: u64) -> bool {
        self.code[(page / 64) as usize].load(Ordering::Relaxed) & (1 << (page % 64)) != 0
    }

    /// Makes `page` a code page (a hart is about to decode from it). Returns true if it was not one, in which case
    /// the code epoch moved: every hart must drop its store translations before it stores again.
    pub fn mark_code(&self, page: u64) -> bool {
        let bit = 1u64 << (page % 64);
        if self.code[(page / 64) as usize].fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            return false;
        }
        self.code_epoch.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Records a write to `page`, made just before: if it is a code page, bumps its version and makes it an
    /// ordinary page again. Returns whether it was a code page.
    #[inline]
    pub fn code_written(&self, page: u64) -> bool {
        if !self.is_code(page) {
            return false;
        }
        self.versions[page as usize].fetch_add(1, Ordering::AcqRel);
        self.code[(page / 64) as usize].fetch_and(!(1u64 << (page % 64)), Ordering::AcqRel);
        self.code_writes.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Moves with every write to a code page.
    #[inline]
    pub fn code_writes(&self) -> u64 {
        self.code_writes.load(Ordering::Acquire)
    }

    /// Moves whenever a page becomes a code page.
    #[inline]
    pub fn code_epoch(&self) -> u64 {
        self.code_epoch.load(Ordering::Acquire)
    }
}

/// Transparent huge pages back guest RAM where the host allows them (as QEMU asks for its RAM blocks): fewer
/// host TLB misses and page faults for the guest, and a process that dies unmaps its RAM several times faster.
/// That matters for failover: a SIGKILLed primary's sockets close only after its memory is gone, and until
/// then its standby cannot know (7 ms for 128 MiB of small pages on our hosts, under 2 ms with huge pages).
const HUGE_PAGE: usize = 2 << 20;

/// An anonymous private mapping of `size` bytes whose start is aligned to [`HUGE_PAGE`], advised to use
/// transparent huge pages (ignored where THP is off).
fn map_huge_aligned(size: usize) -> std::io::Result<*mut u8> {
    let len = size + HUGE_PAGE;
    // SAFETY: anonymous private mapping with no address hint; the result is checked below.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let raw = raw as usize;
    let start = raw.next_multiple_of(HUGE_PAGE);
    let (head, tail) = (start - raw, raw + len - (start + size));
    // SAFETY: both ranges lie inside the mapping just made and outside [start, start + size), which is kept;
    // munmap of a zero-length range is skipped. madvise only changes how the kept range is backed.
    unsafe {
        if head > 0 {
            libc::munmap(raw as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((start + size) as *mut libc::c_void, tail);
        }
        libc::madvise(start as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
    }
    Ok(start as *mut u8)
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `new`; no references into it outlive `self`.
        unsafe { libc::munmap(self.host as *mut libc::c_void, self.size as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_writes_are_logged_and_log_resets() {
        let ram = GuestRam::new(0x8000_0000, 64 * PAGE_SIZE).unwrap();
        ram.write(0x8000_0000 + 5 * PAGE_SIZE + 4090, &[1u8; 10]).unwrap();
        assert_eq!(ram.take_dirty(), vec![5, 6]);
        assert!(ram.take_dirty().is_empty());
        assert!(ram.write(0x8000_0000 + 64 * PAGE_SIZE - 2, &[0; 4]).is_none());
        assert!(ram.read(0x7fff_ffff, &mut [0; 2]).is_none());
    }

    #[test]
    fn writes_to_code_pages_bump_their_version_and_end_their_code_state() {
        let ram = GuestRam::new(0x8000_0000, 64 * PAGE_SIZE).unwrap();
        let epoch = ram.code_epoch();
        assert!(ram.mark_code(3));
        assert!(!ram.mark_code(3), "already a code page");
        assert_eq!(ram.code_epoch(), epoch + 1, "only a new code page moves the epoch");
        let v = ram.page_version(3);
        ram.write(0x8000_0000 + 2 * PAGE_SIZE, &[1; 8]).unwrap();
        assert_eq!(ram.page_version(2), 0, "not a code page");
        assert_eq!(ram.page_version(3), v);
        ram.write(0x8000_0000 + 4 * PAGE_SIZE - 1, &[1; 2]).unwrap();
        assert_eq!(ram.page_version(3), v + 1);
        assert!(!ram.is_code(3), "a written page holds no decoded code");
        ram.mark_dirty_range(3 * PAGE_SIZE, 1);
        assert_eq!(ram.page_version(3), v + 1, "ordinary pages keep their version");
        assert!(ram.mark_code(3));
        ram.take_dirty();
        assert!(ram.is_code(3), "a checkpoint leaves code alone");
        ram.mark_dirty_range(3 * PAGE_SIZE + 8, 4);
        assert_eq!(ram.page_version(3), v + 2);
        assert_ne!(GuestRam::new(0x8000_0000, PAGE_SIZE).unwrap().id(), ram.id());
    }

    #[test]
    fn regions_sit_one_after_the_other_in_ram() {
        // An x86-like layout: 3 GiB-ish below a hole, the rest above 4 GiB (scaled down).
        let ram = GuestRam::with_regions(&[(0, 16 * PAGE_SIZE), (0x1_0000_0000, 8 * PAGE_SIZE)]).unwrap();
        assert_eq!(ram.size(), 24 * PAGE_SIZE);
        assert_eq!(ram.offset_of(0x1_0000_0000 + 8, 8), Some(16 * PAGE_SIZE + 8));
        assert_eq!(ram.offset_of(16 * PAGE_SIZE - 4, 8), None, "a range may not run into the hole");
        assert_eq!(ram.offset_of(16 * PAGE_SIZE, 1), None, "the hole is not RAM");
        assert_eq!(ram.address_of(17 * PAGE_SIZE), 0x1_0000_0000 + PAGE_SIZE);
        assert_eq!(ram.address_of(3 * PAGE_SIZE), 3 * PAGE_SIZE);
        ram.write(0x1_0000_0000 + PAGE_SIZE, b"high").unwrap();
        assert_eq!(ram.take_dirty(), vec![17]);
        let mut buf = [0u8; 4];
        ram.read(0x1_0000_0000 + PAGE_SIZE, &mut buf).unwrap();
        assert_eq!(&buf, b"high");
        assert!(GuestRam::with_regions(&[(0, 2 * PAGE_SIZE), (PAGE_SIZE, PAGE_SIZE)]).is_err(), "overlap");
        assert!(GuestRam::with_regions(&[(0x1000, PAGE_SIZE), (0, PAGE_SIZE)]).is_err(), "out of order");
        assert!(GuestRam::with_regions(&[(0x800, PAGE_SIZE)]).is_err(), "unaligned");
        assert!(GuestRam::with_regions(&[]).is_err());
    }

    #[test]
    fn a_foreign_dirty_log_merges_into_ours() {
        let ram = GuestRam::new(0x8000_0000, 130 * PAGE_SIZE).unwrap();
        ram.write(0x8000_0000 + 2 * PAGE_SIZE, &[1]).unwrap();
        assert!(ram.mark_code(65));
        let v = ram.page_version(65);
        // Pages 0 and 65 from elsewhere; bits beyond RAM (page 130 on) are ignored.
        ram.merge_dirty(&[1, 1 << 1, !0, !0]);
        assert_eq!(ram.take_dirty(), vec![0, 2, 65, 128, 129]);
        assert_eq!(ram.page_version(65), v + 1, "a merged write to code invalidates it");
    }

    #[test]
    fn prefault_keeps_contents_and_logs_nothing() {
        let ram = GuestRam::new(0x8000_0000, 256 * PAGE_SIZE).unwrap();
        ram.write(0x8000_0000 + 7 * PAGE_SIZE, b"kept").unwrap();
        ram.take_dirty();
        ram.prefault().unwrap();
        assert!(ram.take_dirty().is_empty());
        let mut buf = [0u8; 4];
        ram.read(0x8000_0000 + 7 * PAGE_SIZE, &mut buf).unwrap();
        assert_eq!(&buf, b"kept");
        assert!((0..256).filter(|&p| p != 7).all(|p| ram.page_is_zero(p)));
    }
}
