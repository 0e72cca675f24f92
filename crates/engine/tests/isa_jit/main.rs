//! The instruction-level tests of `tests/isa`, run again under the JIT: the test machine (`common::machine`)
//! picks the engine from the name of the test binary, and here every block is compiled the first time it runs,
//! so each test checks the compiled code (and its fallbacks into the interpreter) against the same exact
//! expectations as the interpreter.

#[path = "../common/mod.rs"]
mod common;

#[path = "../isa/atomic.rs"]
mod atomic;
#[path = "../isa/code.rs"]
mod code;
#[path = "../isa/compressed.rs"]
mod compressed;
#[path = "../isa/csrs.rs"]
mod csrs;
#[path = "../isa/dirty.rs"]
mod dirty;
#[path = "../isa/float.rs"]
mod float;
#[path = "../isa/integer.rs"]
mod integer;
#[path = "../isa/interrupts.rs"]
mod interrupts;
#[path = "../isa/misaligned.rs"]
mod misaligned;
#[path = "../isa/mmio.rs"]
mod mmio;
#[path = "../isa/muldiv.rs"]
mod muldiv;
#[path = "../isa/paging.rs"]
mod paging;
#[path = "../isa/privilege.rs"]
mod privilege;
#[path = "../isa/support.rs"]
mod support;

pub use support::*;
