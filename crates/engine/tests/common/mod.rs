//! Test support shared by the integration tests: an assembler, a one-hart test machine, a page-table builder.
//!
//! Each test binary uses a different subset, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod asm;
pub mod machine;
pub mod paging;

#[allow(unused_imports)]
pub use asm::*;
#[allow(unused_imports)]
pub use machine::*;
#[allow(unused_imports)]
pub use paging::*;
