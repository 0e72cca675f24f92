//! kemari-engine: the RV64GC software CPU.
//!
//! Owns: the architectural state of each hart (integer and FP registers, CSRs, privilege mode, LR/SC
//! reservation, pending interrupts), instruction execution, Sv39/Sv48 translation with a software TLB, and the
//! dirty-page log of guest RAM ([`GuestRam`]).
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

pub mod csr;
mod exec;
pub mod fpu;
mod hart;
pub mod memory;
mod mmu;
pub mod rvc;

pub use hart::{irq, Bus, Exit, Hart, HartState, Privilege};
pub use memory::{GuestRam, RamError, PAGE_SIZE};
