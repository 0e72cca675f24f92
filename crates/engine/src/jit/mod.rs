//! The block JIT (x86-64 hosts): hot decoded blocks compiled to host code.
//!
//! The interpreter (`exec.rs`) stays the reference and the portable tier; the JIT only speeds up what it runs.
//! A block the interpreter ran `Hart::jit_threshold` times is compiled (`emit.rs`) from the same decoded ops,
//! up to its first op the JIT does not handle (FP, AMO, SYSTEM, illegal): compiled code stops *before* such an
//! op, and the interpreter runs the rest of the block. The JIT handles the integer core: ALU, M extension,
//! loads and stores, branches and jumps, `fence.i`.
//!
//! What keeps it exact (the same invariants as the interpreter, by construction):
//! - Compiled code never raises an exception and never calls back into Rust. A load or store whose page is not
//!   in the hart's load/store TLB (for the current translation context), or that crosses its page, *falls
//!   back*: the code writes the registers back and returns the index of that op; the interpreter then runs the
//!   op and the rest of the block, with its slow paths (page walk, fault, MMIO, code-page writes, dirty
//!   marking). So every store the JIT performs itself hits a store-TLB entry, which exists only for a page
//!   already marked dirty in the current generation and never for a code page: dirty logging stays exact, and
//!   a store into code always reaches the interpreter, which ends the block after it.
//! - A compiled block runs only when its whole compiled part fits in the budget (otherwise the interpreter
//!   runs it, cut where the budget ends); it returns how many instructions retired, so `instret` and the pc
//!   are exact at every exit.
//! - Interrupts: nothing compiled code runs can make one pending (interrupt lines change between runs, and
//!   CSR writes, xRET and traps are never compiled), so blocks may run one after another without the
//!   dispatcher's check in between.
//!
//! Chaining: a block whose exit has a static target in its own page (a branch either way, `jal`) jumps straight
//! into the target's compiled code once the dispatcher has *linked* the exit (it patches the exit's jump the
//! first time it sees the exit taken to a compiled block). The target's entry checks the exit word and that
//! its compiled part fits in what is left of the budget, else it returns to the dispatcher. Both blocks come
//! from the same physical page (the virtual page is the same, so is its translation), so they are decoded
//! again together when the page is written and a link never outlives either; clearing the buffer bumps
//! [`Jit::generation`], so no link is made into or from dropped code.
//! - Coherence: compiled code belongs to its decoded block (`block.rs`) and goes with it: a block decoded again
//!   because its page was written starts cold; dropping the decoded blocks (a full cache, another RAM) drops the
//!   compiled code too. Nothing here depends on the hart's state, so `set_state`, checkpoints and `take_dirty`
//!   leave it alone.
//!
//! Guest registers used by a block live in host registers while it runs and are written back at every exit
//! (the ones it wrote). Each block starts by reading the hart's *exit word*: when set, it returns at once, so
//! whoever holds the word can stop a hart between two blocks, also in a chain that loops.

#[cfg(target_arch = "x86_64")]
mod buffer;
#[cfg(target_arch = "x86_64")]
mod emit;

use std::sync::atomic::AtomicBool;

use crate::decode::{Kind, Op};

/// Bytes of host code per hart (address space only: pages are touched as code is added).
#[cfg(target_arch = "x86_64")]
const BUFFER_SIZE: usize = 16 << 20;

/// What compiled code reads and writes: the interface between `exec.rs` and generated code (field offsets are
/// used by `emit.rs`).
#[repr(C)]
pub(crate) struct JitCtx {
    /// The hart's 32 integer registers.
    pub x: *mut u64,
    /// Host address of guest RAM offset 0.
    pub ram: *mut u8,
    /// The hart's load and store TLBs (`mmu::TLB_SIZE` entries of (tag, RAM offset of the page)).
    pub load_tlb: *const u8,
    pub store_tlb: *const u8,
    /// TLB tag bits of data accesses now (`Hart::data_tag`).
    pub tag: u64,
    /// Virtual pc of the block's first instruction.
    pub vpc: u64,
    /// The exit word.
    pub exit: *const AtomicBool,
    /// Instructions the call may retire (chained blocks run only if all of their compiled part fits).
    pub left: u64,
    /// Out (in: 0): instructions retired, over all the blocks of a chain.
    pub retired: u64,
    /// Out: the next pc (after [`DONE`]).
    pub pc: u64,
    /// Out: the block running last (its id in `CodeCache::blocks`); `vpc` is its virtual pc.
    pub block: u64,
    /// Out: after [`FALLBACK`], the index in that block of the op the interpreter goes on with.
    pub index: u64,
    /// Out: after [`DONE`], the address of the exit's jump to patch to link it to the block at `pc`, or 0.
    pub link: u64,
}

/// The block ran to its end (or a chained block did not start: the exit word, the budget); `pc` says where it
/// went on.
pub(crate) const DONE: u64 = 0;
/// The last block stopped before op `index`, which the interpreter must run.
pub(crate) const FALLBACK: u64 = 1;

/// Whether compiled code can run `op` (otherwise a compiled block ends before it).
pub(crate) fn compiles(op: &Op) -> bool {
    !matches!(op.kind, Kind::Fp | Kind::Amo | Kind::System | Kind::Illegal)
}

/// The compiled state of a decoded block.
#[derive(Clone, Copy, Debug)]
pub(crate) enum JitCode {
    /// Not compiled (yet): counts the runs so far.
    Cold(u32),
    /// Host code at `offset` in the hart's buffer (entered from the dispatcher; chained blocks jump to
    /// `chained`), covering the block's first `ops` instructions.
    Compiled { offset: u32, chained: u32, ops: u32 },
    /// Nothing to compile (its first op is one the JIT does not handle).
    Never,
}

/// Why [`Jit::compile`] gave no code.
pub(crate) enum CompileError {
    /// The buffer is full: drop every compiled block and try again.
    Full,
    /// This block cannot be compiled.
    Refused,
}

/// A hart's compiled code.
#[derive(Default)]
pub(crate) struct Jit {
    #[cfg(target_arch = "x86_64")]
    buffer: Option<buffer::CodeBuffer>,
    /// Blocks compiled so far (statistics, for tests and benchmarks).
    pub compiled: u64,
    /// Moves whenever the buffer is cleared (links are made only within one generation).
    pub generation: u64,
}

impl Jit {
    /// Forgets all compiled code (the caller dropped every [`JitCode::Compiled`]).
    pub(crate) fn clear(&mut self) {
        self.generation += 1;
        #[cfg(target_arch = "x86_64")]
        if let Some(b) = &mut self.buffer {
            b.clear();
        }
    }

    /// Compiles the beginning of `ops` that the JIT handles: block `id`, starting at byte `page_off` of its page.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn compile(&mut self, ops: &[Op], id: u32, page_off: u64) -> Result<JitCode, CompileError> {
        let n = ops.iter().take_while(|op| compiles(op)).count();
        if n == 0 {
            return Err(CompileError::Refused);
        }
        let buffer = self.buffer.get_or_insert_with(|| buffer::CodeBuffer::new(BUFFER_SIZE));
        let (code, chained) =
            emit::compile(&ops[..n], ops.len(), buffer.next_addr(), id, page_off).ok_or(CompileError::Refused)?;
        let offset = buffer.add(&code).ok_or(CompileError::Full)?;
        self.compiled += 1;
        Ok(JitCode::Compiled { offset: offset as u32, chained: (offset + chained) as u32, ops: n as u32 })
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(crate) fn compile(&mut self, _ops: &[Op], _id: u32, _page_off: u64) -> Result<JitCode, CompileError> {
        Err(CompileError::Refused)
    }

    /// Makes the exit whose jump ends at address `link` (from [`JitCtx::link`]) jump to the code at offset
    /// `chained` (a [`JitCode::Compiled`] of this generation).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn link(&mut self, link: u64, chained: u32) {
        if let Some(b) = &mut self.buffer {
            b.link(link as usize, chained as usize);
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(crate) fn link(&mut self, _link: u64, _chained: u32) {}

    /// Runs compiled code at `offset`; returns [`DONE`] or [`FALLBACK`].
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn call(&self, offset: u32, ctx: &mut JitCtx) -> u64 {
        self.buffer.as_ref().expect("compiled code has a buffer").call(offset as usize, ctx)
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(crate) fn call(&self, _offset: u32, _ctx: &mut JitCtx) -> u64 {
        unreachable!("nothing is compiled on this host")
    }
}
