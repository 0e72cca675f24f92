//! The guest-physical memory map: QEMU `virt`'s, so a stock kernel needs nothing special.

pub const RAM_BASE: u64 = 0x8000_0000;
/// SiFive test device ("sifive,test0"): firmware powers the machine off or resets it by writing here.
pub const TEST_BASE: u64 = 0x10_0000;
pub const TEST_SIZE: u64 = 0x1000;
pub const UART_BASE: u64 = 0x1000_0000;
pub const UART_SIZE: u64 = 0x100;
pub const UART_IRQ: u32 = 10;
pub const VIRTIO_BASE: u64 = 0x1000_1000;
pub const VIRTIO_SIZE: u64 = 0x1000;
pub const VIRTIO_SLOTS: usize = 8;
/// PLIC source of virtio slot `i` is `VIRTIO_IRQ_BASE + i`.
pub const VIRTIO_IRQ_BASE: u32 = 1;
/// `time`/`mtime` tick rate.
pub const TIMEBASE_HZ: u64 = 10_000_000;
/// A 64-bit Linux `Image` is loaded this far into RAM.
pub const KERNEL_OFFSET: u64 = 0x20_0000;
pub const MAX_HARTS: usize = 8;
