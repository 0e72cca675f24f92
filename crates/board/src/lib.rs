//! kemari-board: the virtual machine a guest sees, built around the engine's harts.
//!
//! Owns: the memory map (QEMU `virt`), RAM contents at boot (kernel, initrd, device tree, firmware), the CLINT,
//! PLIC and 16550 UART, the SBI implementation, guest time, and the loop that runs harts and devices.
//!
//! Never does: write to the host's terminal, disks or network itself. Console bytes go to the sink it is
//! given (the output gate's entry point once fault tolerance is on).
//!
//! Invariants: the device tree describes exactly the devices that exist; guest time never runs backwards.

pub mod clint;
pub mod console;
pub mod fdt;
pub mod hart;
pub mod layout;
pub mod loader;
pub mod machine;
pub mod persist;
pub mod plic;
pub mod sbi;
mod seam;
pub mod uart;

pub use kemari_engine::Engine;
pub use kemari_machine::{log, say};
pub use machine::{
    check_shape, receiver_ram, BuildError, DiskConfig, Machine, MachineConfig, NetConfig, Round, RunOutcome,
};
pub use persist::ARCH;
