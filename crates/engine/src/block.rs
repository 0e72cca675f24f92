//! The decode-once cache: blocks of decoded instructions keyed by *physical* address, and a per-hart jump
//! cache from virtual pc to block.
//!
//! A block is the run of instructions from its first one to the first that ends it (a control transfer, a
//! SYSTEM instruction, `fence.i`, an illegal instruction) or to the end of its page; a 32-bit instruction that
//! straddles two pages is decoded each time it runs and never cached. Blocks hold no virtual address and
//! nothing of the execution context (pc-relative values are computed from the virtual pc when they run; every
//! privilege or `mstatus` check happens when the instruction runs), so they stay valid across `satp` writes,
//! `sfence.vma` and privilege changes, and serve every virtual address that maps their physical page.
//!
//! Coherence with memory: a block records the write version of its RAM page (`kemari-memory`) and is used only
//! while the version is unchanged; otherwise it is decoded again. Decoding first makes its page a code page,
//! which keeps store translations away from it, so every write to it (by any hart, the VMM or a device) moves
//! the version.
//!
//! A block also holds its JIT state (`jit/mod.rs`): runs so far, or its compiled code, which is dropped with it
//! (decoded again: cold again; the cache cleared: the code buffer cleared).
//!
//! The jump cache maps a virtual pc to a block, without the version check (the fast path of every block). An
//! entry also holds the RAM offset its pc translated to, and is used only while the fetch TLB translates the pc
//! (at the current privilege) to that same offset: so `satp` writes, `sfence.vma` and privilege changes need
//! not drop it (they drop or do not match TLB entries, which are refilled one walk per page, after which the
//! jump entries of the page serve again). It depends on the code too, so it is dropped whenever a code page is
//! written (`kemari-memory`): in O(1), by moving an epoch that every entry must match.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::decode::{decode, Op};
use crate::hart::{cause, Exception, Hart};
use crate::jit::{CompileError, Jit, JitCode};
use crate::memory::{GuestRam, PAGE_SHIFT};
use crate::mmu::read_ram;
use crate::rvc;

const JUMP_SIZE: usize = 16384;
/// Decoded instructions kept per hart (16 bytes each) before the whole cache is dropped and refilled.
const MAX_OPS: usize = 1 << 19;
/// The most instructions one block can hold (a page of compressed instructions).
const MAX_BLOCK_OPS: usize = 2048;

/// A block as the jump cache holds it: where it was found and where its instructions are.
#[derive(Clone, Copy)]
struct JumpEntry {
    /// Virtual pc (never odd, so 1 marks an empty entry).
    vpc: u64,
    /// RAM offset `vpc` translated to.
    off: u64,
    /// `Hart::jump_epoch` when the entry was made.
    epoch: u64,
    /// Index of the block in `CodeCache::blocks`.
    id: u32,
    start: u32,
    len: u32,
}

const NO_JUMP: JumpEntry = JumpEntry { vpc: 1, off: 0, epoch: 0, id: 0, start: 0, len: 0 };

struct Block {
    /// Its instructions are `ops[start..start + len]`.
    start: u32,
    len: u32,
    /// The write version of its RAM page it was decoded at.
    version: u64,
    /// Byte offset of its first instruction in its page.
    page_off: u16,
    /// Its host code, or how often it ran without (see `jit/mod.rs`).
    jit: JitCode,
}

/// A multiplicative hash of RAM offsets (trusted keys: no need for SipHash's cost).
#[derive(Default)]
struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    fn write_u64(&mut self, v: u64) {
        let x = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 29);
    }
}

/// An exit of compiled code that went to `pc` in its own page and can be linked there (see `jit/mod.rs`).
pub(crate) struct PendingLink {
    /// Where its jump ends (`JitCtx::link`).
    pub at: u64,
    pub pc: u64,
    /// `Jit::generation` when it was taken.
    pub generation: u64,
}

/// A hart's decoded blocks.
pub(crate) struct CodeCache {
    /// The RAM the blocks were decoded from.
    ram_id: u64,
    jump: Box<[JumpEntry; JUMP_SIZE]>,
    blocks: Vec<Block>,
    /// Block of each RAM offset a block starts at.
    by_offset: HashMap<u64, u32, BuildHasherDefault<OffsetHasher>>,
    ops: Vec<Op>,
    /// Host code of the compiled blocks.
    pub(crate) jit: Jit,
    /// The last exit taken by compiled code, if it can be linked to the next block.
    pub(crate) pending_link: Option<PendingLink>,
    /// Blocks decoded so far (statistics, for tests and benchmarks).
    pub(crate) decoded: u64,
}

impl Default for CodeCache {
    fn default() -> CodeCache {
        let jump = vec![NO_JUMP; JUMP_SIZE].into_boxed_slice().try_into().unwrap_or_else(|_| unreachable!());
        CodeCache {
            ram_id: 0,
            jump,
            blocks: Vec::new(),
            by_offset: HashMap::default(),
            ops: Vec::new(),
            jit: Jit::default(),
            pending_link: None,
            decoded: 0,
        }
    }
}

impl CodeCache {
    /// Drops every block and its host code (the counters stay).
    fn clear(&mut self) {
        self.jump.fill(NO_JUMP);
        self.blocks.clear();
        self.by_offset.clear();
        self.ops.clear();
        self.jit.clear();
    }

    /// Makes sure the blocks come from `ram` (a hart may be run on another RAM, e.g. after a restore).
    pub(crate) fn bind(&mut self, ram: &GuestRam) -> bool {
        if self.ram_id == ram.id() {
            return false;
        }
        self.clear();
        self.ram_id = ram.id();
        true
    }

    /// The instructions `range` of a [`Fetched::Block`].
    #[inline(always)]
    pub(crate) fn ops(&self, start: usize, end: usize) -> &[Op] {
        &self.ops[start..end]
    }

    /// The host code of block `id` (offset, instructions it covers), compiled now if the block ran `threshold`
    /// times before.
    #[inline(always)]
    pub(crate) fn compiled(&mut self, id: u32, threshold: u32) -> Option<JitCode> {
        match self.blocks[id as usize].jit {
            code @ JitCode::Compiled { .. } => Some(code),
            JitCode::Never => None,
            JitCode::Cold(runs) if runs < threshold => {
                self.blocks[id as usize].jit = JitCode::Cold(runs + 1);
                None
            }
            JitCode::Cold(_) => self.compile(id),
        }
    }

    /// Where the instructions of block `id` are (`ops(start, end)`).
    pub(crate) fn block_ops(&self, id: u32) -> (usize, usize) {
        let b = &self.blocks[id as usize];
        (b.start as usize, (b.start + b.len) as usize)
    }

    #[inline(never)]
    fn compile(&mut self, id: u32) -> Option<JitCode> {
        let b = &self.blocks[id as usize];
        let ops = &self.ops[b.start as usize..(b.start + b.len) as usize];
        let page_off = b.page_off as u64;
        let code = match self.jit.compile(ops, id, page_off) {
            Err(CompileError::Full) => {
                // Start the buffer afresh: every block goes cold again.
                for b in &mut self.blocks {
                    b.jit = JitCode::Cold(0);
                }
                self.jit.clear();
                self.jit.compile(ops, id, page_off).unwrap_or(JitCode::Never)
            }
            r => r.unwrap_or(JitCode::Never),
        };
        self.blocks[id as usize].jit = code;
        matches!(code, JitCode::Compiled { .. }).then_some(code)
    }
}

/// What to run at a pc.
pub(crate) enum Fetched {
    /// A cached block (its index, and its instructions are `CodeCache::ops(start, end)`).
    Block(u32, usize, usize),
    /// One instruction across a page boundary, decoded for this time only.
    Single(Op),
}

#[inline(always)]
fn jump_index(pc: u64) -> usize {
    ((pc >> 1) as usize) & (JUMP_SIZE - 1)
}

impl Hart {
    /// Finds (or decodes) what to run at `pc`; a fault is the fetch fault of the instruction at `pc`.
    #[inline(always)]
    pub(crate) fn lookup(&mut self, code: &mut CodeCache, ram: &GuestRam, pc: u64) -> Result<Fetched, Exception> {
        let j = code.jump[jump_index(pc)];
        if j.vpc == pc && j.epoch == self.jump_epoch && self.fetch_cached(pc) == Some(j.off) {
            return Ok(Fetched::Block(j.id, j.start as usize, (j.start + j.len) as usize));
        }
        self.lookup_slow(code, ram, pc)
    }

    #[inline(never)]
    fn lookup_slow(&mut self, code: &mut CodeCache, ram: &GuestRam, pc: u64) -> Result<Fetched, Exception> {
        if pc & 1 != 0 {
            return Err(Exception { cause: cause::FETCH_MISALIGNED, tval: pc });
        }
        let off = self.fetch_off(ram, pc)?;
        // The translation was just refilled (after a flush): the entry may still be good.
        let j = code.jump[jump_index(pc)];
        if j.vpc == pc && j.epoch == self.jump_epoch && j.off == off {
            return Ok(Fetched::Block(j.id, j.start as usize, (j.start + j.len) as usize));
        }
        let lo = read_ram::<2>(ram, off) as u32;
        if lo & 3 == 3 && off & 0xfff == 0xffe {
            // Its upper half is in the next page, with a translation of its own.
            let hi = self.fetch16(ram, pc.wrapping_add(2))? as u32;
            let insn = (hi << 16) | lo;
            return Ok(Fetched::Single(decode(insn, insn, 4, 0)));
        }
        if code.ops.len() + MAX_BLOCK_OPS > MAX_OPS {
            code.clear();
        }
        let page = off >> PAGE_SHIFT;
        let id = match code.by_offset.get(&off).copied() {
            Some(id) if code.blocks[id as usize].version == ram.page_version(page) => id,
            stale => {
                let block = self.decode_block(code, ram, off);
                match stale {
                    Some(id) => {
                        code.blocks[id as usize] = block;
                        id
                    }
                    None => {
                        code.blocks.push(block);
                        let id = (code.blocks.len() - 1) as u32;
                        code.by_offset.insert(off, id);
                        id
                    }
                }
            }
        };
        let b = &code.blocks[id as usize];
        code.jump[jump_index(pc)] = JumpEntry { vpc: pc, off, epoch: self.jump_epoch, id, start: b.start, len: b.len };
        Ok(Fetched::Block(id, b.start as usize, (b.start + b.len) as usize))
    }

    /// Decodes the block at RAM offset `off` into `code.ops`.
    fn decode_block(&mut self, code: &mut CodeCache, ram: &GuestRam, off: u64) -> Block {
        let page = off >> PAGE_SHIFT;
        // First make it a code page, and drop the store translations that may be left for it: from now on every
        // write to the page moves its version.
        ram.mark_code(page);
        self.sync_code_epoch(ram);
        let version = ram.page_version(page);
        let start = code.ops.len();
        let end = (off | 0xfff) + 1;
        let mut a = off;
        while a < end {
            let rel = (a - off) as u16;
            let lo = read_ram::<2>(ram, a) as u32;
            let op = if lo & 3 == 3 {
                if a + 4 > end {
                    break; // across the page boundary: runs on its own (see `lookup_slow`)
                }
                let insn = read_ram::<4>(ram, a) as u32;
                decode(insn, insn, 4, rel)
            } else {
                match rvc::expand(lo as u16) {
                    Some(insn) => decode(insn, lo, 2, rel),
                    None => Op::illegal(lo, 2, rel),
                }
            };
            code.ops.push(op);
            a += op.len as u64;
            if op.ends_block() {
                break;
            }
        }
        code.decoded += 1;
        Block {
            start: start as u32,
            len: (code.ops.len() - start) as u32,
            version,
            page_off: (off & 0xfff) as u16,
            jit: JitCode::Cold(0),
        }
    }

    /// Drops the store translations if a page became a code page since this hart last looked.
    #[inline]
    pub(crate) fn sync_code_epoch(&mut self, ram: &GuestRam) {
        let epoch = ram.code_epoch();
        if epoch != self.code_epoch {
            self.tlb.flush_stores();
            self.code_epoch = epoch;
        }
    }

    /// Drops the jump cache if a code page was written since this hart last looked.
    #[inline]
    pub(crate) fn sync_code_writes(&mut self, ram: &GuestRam) {
        let writes = ram.code_writes();
        if writes != self.code_writes {
            self.jump_epoch += 1;
            self.code_writes = writes;
        }
    }
}
