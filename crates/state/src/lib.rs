//! kemari-state: the single encoding of machine state, used by snapshots, live migration and fault tolerance.
//!
//! ```text
//!  file / stream
//!  ┌────────────┬─────────┬──────┬──────────┐ ┌─────────┬─────────┬─────┬─────────┬───────┐     ┌──────────┐
//!  │ "KEMARIST" │ version │ arch │ sections │ │ tag [4] │ version │ len │ payload │ crc32 │ ... │ crc32 of │
//!  │  magic 8   │  u32=2  │ [4]  │  u32     │ │         │  u16    │ u32 │ len B   │  u32  │     │ all above│
//!  └────────────┴─────────┴──────┴──────────┘ └─────────┴─────────┴─────┴─────────┴───────┘     └──────────┘
//!        header                                 one section (repeated)                     trailer
//! ```
//!
//! The architecture ("RV64", "X64_") names the kind of machine the sections describe; a board refuses a
//! stream of another. Version 1 streams (no architecture field; all of RISC-V machines) are still read.
//! All integers are little-endian. Each section type has a length cap, so a hostile length cannot make the
//! reader allocate without bound; each section has its own CRC (a corrupt section is named in the error) and the
//! trailer covers the whole stream (truncation or reordering is caught). Decoding validates every value before
//! anything is built from it: a state stream is untrusted input.
//!
//! Invariant: encoding is deterministic, so save → restore → save yields identical bytes.

mod codec;

pub use codec::{Arch, Encoder, Reader, Section, StateError, StateFile, Writer, FORMAT_VERSION, MAGIC, MAX_SECTIONS};
