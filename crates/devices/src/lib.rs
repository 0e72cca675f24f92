//! kemari-devices: what the guest uses to reach the world (virtio-mmio block, network and entropy devices),
//! and the output gate through which every effect of the guest leaves the VM.
//!
//! Owns: virtio transports and queues, device models, the gate and its host backend (console sink, disk image
//! write path, tap write path).
//!
//! Never does: write to the console, a disk image or a tap except through [`gate::OutputGate`]; touch guest
//! memory except through [`memory::GuestMemory`] (which logs every write for checkpoints); trust anything the
//! guest put in memory (every descriptor chain is validated, a misprogrammed device fails alone).

pub mod gate;
pub mod host;
pub mod memory;
pub mod tap;
pub mod virtio;
