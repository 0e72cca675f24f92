//! The code buffer of the JIT and the call into generated code: the only unsafe code of the JIT.
//!
//! One fixed-size mapping per hart, never moved, either writable or executable but never both (W^X: it is made
//! writable only while a compiled block is copied in). Blocks are appended; when the buffer is full the owner
//! drops every compiled block and starts again from offset 0 ([`CodeBuffer::clear`]).
//!
//! The calling convention of a compiled block is `extern "sysv64" fn(*mut JitCtx) -> u64` (see `emit.rs` for
//! what the code may touch).

use dynasmrt::mmap::ExecutableBuffer;
use dynasmrt::AssemblyOffset;

use super::JitCtx;

/// Executable memory for one hart's compiled blocks.
pub(crate) struct CodeBuffer {
    /// `None` only if making the mapping writable or executable failed: the JIT is then off for good.
    buf: Option<ExecutableBuffer>,
    /// Bytes used.
    used: usize,
}

impl CodeBuffer {
    pub(crate) fn new(size: usize) -> CodeBuffer {
        CodeBuffer { buf: ExecutableBuffer::new(size).ok(), used: 0 }
    }

    /// Address the next block will be copied to (its code is assembled for that address).
    pub(crate) fn next_addr(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.as_ptr() as usize + self.used)
    }

    /// Forgets every block (the caller dropped all references to them).
    pub(crate) fn clear(&mut self) {
        self.used = 0;
    }

    /// Copies `code` in; returns its offset, or `None` when it does not fit (or the buffer is broken).
    pub(crate) fn add(&mut self, code: &[u8]) -> Option<usize> {
        let buf = self.buf.take()?;
        if self.used + code.len() > buf.size() {
            self.buf = Some(buf);
            return None;
        }
        let mut w = buf.make_mut().ok()?;
        let at = self.used;
        w.set_len(at + code.len());
        w[at..at + code.len()].copy_from_slice(code);
        self.buf = Some(w.make_exec().ok()?);
        self.used += code.len();
        Some(at)
    }

    /// Patches the rel32 of the jump that ends at address `link` (inside a block copied in) to reach the code
    /// at offset `target`. Leaves the buffer as it was if that fails (the exit then simply stays unlinked).
    pub(crate) fn link(&mut self, link: usize, target: usize) {
        let Some(buf) = self.buf.take() else { return };
        let base = buf.as_ptr() as usize;
        let at = link.wrapping_sub(base);
        if at < 4 || at > self.used || target >= self.used {
            self.buf = Some(buf);
            return;
        }
        let rel = (target as i64 - at as i64) as i32;
        let Ok(mut w) = buf.make_mut() else { return };
        w[at - 4..at].copy_from_slice(&rel.to_le_bytes());
        self.buf = w.make_exec().ok();
    }

    /// Runs the block at `offset` on `ctx`; returns its exit code.
    pub(crate) fn call(&self, offset: usize, ctx: &mut JitCtx) -> u64 {
        let buf = self.buf.as_ref().expect("a compiled block exists only in a working buffer");
        assert!(offset < self.used);
        let entry = buf.ptr(AssemblyOffset(offset));
        // SAFETY: `offset` is the start of a block that `emit::compile` generated and `add` copied in (the owner
        // forgets offsets on `clear`), and the mapping is executable now. Such code, and the code it chains to
        // (only through jumps `link` patched to the chained entry of a block of the same generation), follows
        // the SysV ABI
        // (restores every callee-saved register, leaves the stack as it found it) and touches memory only through
        // `ctx`'s pointers, which the caller (`Hart::run_compiled`) set from live objects it holds for the
        // whole call: the 32 integer registers, the load and store TLB arrays (`TLB_SIZE` entries each), and
        // guest RAM, where it accesses only `ram_off + in-page offset` of a TLB entry that matched, with the
        // access inside the page (checked in the code), and TLB entries point to pages inside RAM.
        unsafe {
            let f: extern "sysv64" fn(*mut JitCtx) -> u64 = std::mem::transmute(entry);
            f(ctx)
        }
    }
}
