//! Instruction-level tests of the RV64GC engine: small programs assembled by `common::asm`, run on a one-hart
//! machine (`common::machine`), with exact assertions on registers, memory, CSRs and traps.

#[path = "../common/mod.rs"]
mod common;

mod atomic;
mod code;
mod compressed;
mod csrs;
mod dirty;
mod float;
mod integer;
mod interrupts;
mod misaligned;
mod mmio;
mod muldiv;
mod paging;
mod privilege;

mod support;

pub use support::*;
