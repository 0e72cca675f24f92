//! The code buffer of the JIT and the call into generated code: the only unsafe code of the JIT.
//!
//! One fixed-size mapping per hart, never moved. Its pages are either writable or executable but never both
//! (W^X): only the pages a new block (or a patched jump) touches are made writable while it is copied in, then
//! executable again. (Changing the protection of the whole mapping instead costs about as much as the block
//! it adds, for every block: the boot of a kernel compiles tens of thousands.) Blocks are appended; when the
//! buffer is full the owner drops every compiled block and starts again from offset 0 ([`CodeBuffer::clear`]).
//!
//! The calling convention of a compiled block is `extern "sysv64" fn(*mut JitCtx) -> u64` (see `emit.rs` for
//! what the code may touch).

use super::JitCtx;

const PAGE: usize = 4096;

/// Executable memory for one hart's compiled blocks.
pub(crate) struct CodeBuffer {
    /// The mapping (`size` bytes, page-aligned), or null if mapping it failed: the JIT is then off for good.
    base: *mut u8,
    size: usize,
    /// Bytes used.
    used: usize,
}

// SAFETY: the buffer is owned by one hart's code cache and only used through `&mut`/`&` of that owner; the
// raw pointer is what makes it `!Send` by default.
unsafe impl Send for CodeBuffer {}

impl CodeBuffer {
    pub(crate) fn new(size: usize) -> CodeBuffer {
        let size = size.next_multiple_of(PAGE);
        // SAFETY: a fresh anonymous private mapping; nothing else refers to it. Pages are touched only as code
        // is added (MAP_NORESERVE: the size is address space, not memory).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return CodeBuffer { base: std::ptr::null_mut(), size: 0, used: 0 };
        }
        CodeBuffer { base: base.cast(), size, used: 0 }
    }

    /// Address the next block will be copied to (its code is assembled for that address).
    pub(crate) fn next_addr(&self) -> usize {
        self.base as usize + self.used
    }

    /// Forgets every block (the caller dropped all references to them).
    pub(crate) fn clear(&mut self) {
        self.used = 0;
    }

    /// Writes `bytes` at offset `at` (inside the mapping), making just the pages they cover writable for the
    /// copy. False if the protection could not be changed (the pages are then left as they were, or the
    /// buffer is switched off).
    fn write(&mut self, at: usize, bytes: &[u8]) -> bool {
        let first = at / PAGE * PAGE;
        let len = (at + bytes.len()).next_multiple_of(PAGE) - first;
        // SAFETY: [first, first + len) lies inside the mapping (`at + bytes.len() <= size`, size page-aligned).
        // No compiled code runs while this hart's buffer is written (the owner holds it by `&mut`).
        unsafe {
            let pages = self.base.add(first).cast();
            if libc::mprotect(pages, len, libc::PROT_READ | libc::PROT_WRITE) != 0 {
                return false;
            }
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(at), bytes.len());
            if libc::mprotect(pages, len, libc::PROT_READ | libc::PROT_EXEC) != 0 {
                // Writable but not executable: running any block would fault. Switch the JIT off instead.
                libc::munmap(self.base.cast(), self.size);
                self.base = std::ptr::null_mut();
                self.size = 0;
                self.used = 0;
                return false;
            }
        }
        true
    }

    /// Copies `code` in; returns its offset, or `None` when it does not fit (or the buffer is broken).
    pub(crate) fn add(&mut self, code: &[u8]) -> Option<usize> {
        if self.base.is_null() || self.used + code.len() > self.size {
            return None;
        }
        let at = self.used;
        if !self.write(at, code) {
            return None;
        }
        self.used += code.len();
        Some(at)
    }

    /// Patches the rel32 of the jump that ends at address `link` (inside a block copied in) to reach the code
    /// at offset `target`. Leaves the buffer as it was if that fails (the exit then simply stays unlinked).
    pub(crate) fn link(&mut self, link: usize, target: usize) {
        let at = link.wrapping_sub(self.base as usize);
        if self.base.is_null() || at < 4 || at > self.used || target >= self.used {
            return;
        }
        let rel = (target as i64 - at as i64) as i32;
        self.write(at - 4, &rel.to_le_bytes());
    }

    /// Runs the block at `offset` on `ctx`; returns its exit code.
    pub(crate) fn call(&self, offset: usize, ctx: &mut JitCtx) -> u64 {
        assert!(!self.base.is_null() && offset < self.used, "a compiled block exists only in a working buffer");
        // SAFETY: `offset` is the start of a block that `emit::compile` generated and `add` copied in (the owner
        // forgets offsets on `clear`), and its pages are executable now. Such code, and the code it chains to
        // (only through jumps `link` patched to the chained entry of a block of the same generation), follows
        // the SysV ABI (restores every callee-saved register, leaves the stack as it found it) and touches
        // memory only through `ctx`'s pointers, which the caller (`Hart::run_compiled`) set from live objects it
        // holds for the whole call: the 32 integer registers, the load and store TLB arrays (`TLB_SIZE` entries
        // each), and guest RAM, where it accesses only `ram_off + in-page offset` of a TLB entry that matched,
        // with the access inside the page (checked in the code), and TLB entries point to pages inside RAM.
        unsafe {
            let f: extern "sysv64" fn(*mut JitCtx) -> u64 = std::mem::transmute(self.base.add(offset));
            f(ctx)
        }
    }
}

impl Drop for CodeBuffer {
    fn drop(&mut self) {
        if !self.base.is_null() {
            // SAFETY: the mapping made in `new`, unmapped once; no code of it runs (its owner is going away).
            unsafe { libc::munmap(self.base.cast(), self.size) };
        }
    }
}
