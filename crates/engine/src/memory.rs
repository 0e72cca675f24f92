//! Guest RAM and its dirty-page log.
//!
//! RAM is one anonymous mapping at a fixed guest-physical base. Every page that is written after the last
//! [`GuestRam::take_dirty`] is recorded in a bitmap: harts mark a page when they install a store translation for
//! it (so only the first store to a page per checkpoint pays), and the VMM marks pages it writes itself through
//! [`GuestRam::write`]. Taking the log bumps a generation number; harts compare it before running and drop
//! their store translations, so the next store to any page is seen again.

use std::sync::atomic::{AtomicU64, Ordering};

/// Guest page size used for dirty tracking and translation.
pub const PAGE_SIZE: u64 = 4096;
pub const PAGE_SHIFT: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum RamError {
    #[error("cannot map guest RAM: {0}")]
    Map(std::io::Error),
    #[error("guest RAM size {0:#x} is not a positive multiple of 4 KiB")]
    BadSize(u64),
}

/// Guest RAM: `size` bytes at guest-physical `base`.
pub struct GuestRam {
    base: u64,
    size: u64,
    host: *mut u8,
    dirty: Box<[AtomicU64]>,
    /// Pages ever marked dirty (never cleared): a page not in it was never written and holds zeros, so a full
    /// scan need not read it (reading untouched anonymous memory costs a page fault each).
    touched: Box<[AtomicU64]>,
    generation: AtomicU64,
}

// SAFETY: the mapping lives as long as the struct; concurrent access to guest memory from the VMM's threads is
// the same contract every VMM has with its guest (bytes may change under a reader; no Rust references into the
// mapping are ever handed out, only copies).
unsafe impl Send for GuestRam {}
// SAFETY: see above; the dirty bitmap and generation are atomics.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    pub fn new(base: u64, size: u64) -> Result<GuestRam, RamError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
            return Err(RamError::BadSize(size));
        }
        // SAFETY: anonymous private mapping with no address hint; the result is checked below.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(RamError::Map(std::io::Error::last_os_error()));
        }
        let pages = size / PAGE_SIZE;
        let words = pages.div_ceil(64) as usize;
        let bitmap = || (0..words).map(|_| AtomicU64::new(0)).collect();
        Ok(GuestRam {
            base,
            size,
            host: host as *mut u8,
            dirty: bitmap(),
            touched: bitmap(),
            generation: AtomicU64::new(0),
        })
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address of the start of RAM (for the engine's translation cache and for device memory views).
    pub fn host_ptr(&self) -> *mut u8 {
        self.host
    }

    /// Offset into RAM of `len` bytes at guest-physical `addr`, if they lie entirely inside RAM.
    #[inline]
    pub fn offset_of(&self, addr: u64, len: u64) -> Option<u64> {
        let off = addr.checked_sub(self.base)?;
        (off.checked_add(len)? <= self.size).then_some(off)
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

    /// Copies into guest memory and records the pages as dirty. Fails if the range is not entirely RAM.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<()> {
        let off = self.offset_of(addr, data.len() as u64)?;
        // SAFETY: the range was checked to lie inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.host.add(off as usize), data.len()) };
        self.mark_dirty_range(off, data.len() as u64);
        Some(())
    }

    /// Marks RAM pages covering `[off, off+len)` (offsets into RAM) as dirty.
    pub fn mark_dirty_range(&self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = off >> PAGE_SHIFT;
        let last = (off + len - 1) >> PAGE_SHIFT;
        for page in first..=last {
            self.mark_dirty_page(page);
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

    /// Number of pages currently marked dirty.
    pub fn dirty_count(&self) -> u64 {
        self.dirty.iter().map(|w| w.load(Ordering::Relaxed).count_ones() as u64).sum()
    }

    /// Current dirty-log generation.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
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
