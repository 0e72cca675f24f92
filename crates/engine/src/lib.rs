//! kemari-engine: the RV64GC software CPU.
//!
//! Owns: the architectural state of each hart (integer and FP registers, CSRs, privilege mode, LR/SC
//! reservation, pending interrupts), instruction execution, Sv39/Sv48 translation with a software TLB, and the
//! dirty-page log of guest RAM ([`GuestRam`]).
//!
//! Execution decodes once: instructions are decoded (compressed ones expanded) into blocks of compact ops
//! (`decode.rs`), cached per hart by *physical* address with a jump cache from virtual pc (`block.rs`), and run
//! by one `match` per op (`exec.rs`); on x86-64 hosts hot blocks are also compiled to host code (`jit/`, the
//! default [`Engine`]; the interpreter stays the portable tier and the reference). A block ends at a control transfer, at anything that may change the
//! execution context (every SYSTEM instruction: CSR accesses, xRET, `wfi`, `ecall`/`ebreak`, `sfence.vma`; and
//! `fence.i`), at an illegal instruction and at the end of its page; an MMIO store ends it by leaving `run`.
//! Interrupts, the budget and `instret` are handled per block, with exactly the results of a per-instruction
//! interpreter: interrupts are taken at the same boundaries, the budget is never overshot (a block is cut where
//! it ends), a fault mid-block leaves pc and `instret` at the faulting instruction. Decoded code stays coherent
//! with memory through the code-page tracking of [`GuestRam`] (see the `kemari-memory` crate): any write to a page blocks were
//! decoded from, by a hart, the VMM or a device, invalidates them, and a hart's store into code ends its block
//! right after the store. Blocks survive `satp` writes, `sfence.vma`, privilege changes and checkpoints
//! (`take_dirty`); they are not part of [`HartState`].
//!
//! Never does: device emulation, I/O, or anything with wall-clock effects. Every access outside RAM goes to the
//! caller's [`Bus`]; every SBI call (`ecall` from S-mode when the VMM plays M-mode firmware) and every `wfi`
//! returns to the caller as an [`Exit`]. Nothing above this crate may assume RISC-V software emulation: the
//! board talks to harts only through `run`, `state`/`set_state`, interrupt lines and the dirty log.
//!
//! Invariants:
//! - `run` stops only at instruction boundaries; the state read afterwards is exactly the architectural state.
//! - Every guest store to RAM is preceded by a dirty mark of its page in the current dirty-log generation
//!   (stores go through a store translation that is installed only after marking the page).
//! - No store translation exists for a page decoded blocks come from; every write to such a page moves its
//!   version, and a block runs only while its page has the version it was decoded at.

mod block;
pub mod csr;
mod decode;
mod exec;
pub mod fpu;
mod hart;
mod jit;
mod mmu;
pub mod rvc;

pub use hart::{irq, Bus, Engine, Exit, Hart, HartState, Privilege, DEFAULT_JIT_THRESHOLD};
/// Guest RAM lives in its own crate (a hardware engine shares it); re-exported for the engine's users.
pub use kemari_memory as memory;
pub use kemari_memory::{GuestRam, RamError, PAGE_SIZE};
