//! A hostile guest: a bare-metal program that programs virtio-blk with rings outside RAM, a request whose
//! buffer lies outside RAM, and a looping descriptor chain. kemari must answer each with a device failure or an
//! I/O error status, log a warning, never touch memory outside the guest, and keep running (the program ends the
//! run itself through HTIF with a code that says which check failed).

#[path = "../../engine/tests/common/asm.rs"]
#[allow(dead_code)]
mod asm;
mod common;
#[path = "common/elf.rs"]
#[allow(dead_code)]
mod elf;

use asm::*;

const RAM: u64 = 0x8000_0000;
const VIRTIO0: u64 = 0x1000_1000;
const DESC: u64 = RAM + 0x2000;
const AVAIL: u64 = RAM + 0x3000;
const USED: u64 = RAM + 0x4000;
const HEADER: u64 = RAM + 0x5000;
const STATUS_BYTE: u64 = RAM + 0x5100;
const OUTSIDE: u64 = 0x2_0000_0000;

// virtio-mmio registers
const R_DRIVER_FEATURES: i32 = 0x20;
const R_DRIVER_FEATURES_SEL: i32 = 0x24;
const R_QUEUE_SEL: i32 = 0x30;
const R_QUEUE_NUM: i32 = 0x38;
const R_QUEUE_READY: i32 = 0x44;
const R_QUEUE_NOTIFY: i32 = 0x50;
const R_STATUS: i32 = 0x70;
const R_DESC: i32 = 0x80;
const R_DRIVER: i32 = 0x90;
const R_DEVICE: i32 = 0xa0;
const NEEDS_RESET: i32 = 0x40;

/// Writes `value` to the register at `off` of the device whose base is in S0.
fn reg(a: &mut Asm, off: i32, value: u64) {
    a.li(T1, value).i(sw(T1, off, S0));
}

/// Resets the device and sets up queue 0 with its rings at `desc`, AVAIL and USED, up to DRIVER_OK.
fn setup(a: &mut Asm, desc: u64) {
    reg(a, R_STATUS, 0);
    reg(a, R_STATUS, 1 | 2);
    reg(a, R_DRIVER_FEATURES_SEL, 1);
    reg(a, R_DRIVER_FEATURES, 1); // VERSION_1
    reg(a, R_STATUS, 1 | 2 | 8);
    reg(a, R_QUEUE_SEL, 0);
    reg(a, R_QUEUE_NUM, 8);
    for (off, addr) in [(R_DESC, desc), (R_DRIVER, AVAIL), (R_DEVICE, USED)] {
        reg(a, off, addr & 0xffff_ffff);
        reg(a, off + 4, addr >> 32);
    }
    reg(a, R_QUEUE_READY, 1);
    reg(a, R_STATUS, 1 | 2 | 8 | 4);
}

/// Ends the run through HTIF `tohost` with `(code << 1) | 1` (code 0 = pass).
fn exit(a: &mut Asm, code: u64) {
    a.li(T0, elf::TOHOST).li(T1, (code << 1) | 1).i(sd(T1, 0, T0));
    a.i(jal(ZERO, 0));
}

fn descriptor(image: &mut [u8], index: usize, addr: u64, len: u32, flags: u16, next: u16) {
    let at = (DESC - RAM) as usize + 16 * index;
    image[at..at + 8].copy_from_slice(&addr.to_le_bytes());
    image[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
    image[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
    image[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
}

fn program() -> Vec<u8> {
    let mut a = Asm::new(RAM);
    a.li(S0, VIRTIO0);

    // 1. Rings outside RAM: the device must fail (DEVICE_NEEDS_RESET), not read or write there.
    setup(&mut a, 0x1_0000_0000);
    reg(&mut a, R_QUEUE_NOTIFY, 0);
    a.i(lw(T2, R_STATUS, S0)).i(andi(T2, T2, NEEDS_RESET)).bne(T2, ZERO, "check2");
    exit(&mut a, 2);

    // 2. A read request whose data buffer lies outside RAM: status IOERR (1), request completed.
    a.label("check2");
    setup(&mut a, DESC);
    a.li(T0, AVAIL).li(T1, 0).i(sh(T1, 4, T0)).li(T1, 1).i(sh(T1, 2, T0)); // ring[0] = desc 0; idx = 1
    reg(&mut a, R_QUEUE_NOTIFY, 0);
    a.li(T0, STATUS_BYTE).i(lbu(T2, 0, T0)).li(T1, 1).beq(T2, T1, "check2b");
    exit(&mut a, 3);
    a.label("check2b");
    a.li(T0, USED).i(lhu(T2, 2, T0)).li(T1, 1).beq(T2, T1, "check3");
    exit(&mut a, 4);

    // 3. A looping chain (desc 3 → 4 → 3): the device fails instead of spinning.
    a.label("check3");
    setup(&mut a, DESC);
    a.li(T0, AVAIL).li(T1, 3).i(sh(T1, 4, T0)).li(T1, 1).i(sh(T1, 2, T0));
    reg(&mut a, R_QUEUE_NOTIFY, 0);
    a.i(lw(T2, R_STATUS, S0)).i(andi(T2, T2, NEEDS_RESET)).bne(T2, ZERO, "pass");
    exit(&mut a, 5);

    a.label("pass");
    exit(&mut a, 0);

    let code = a.bytes();
    let mut image = vec![0u8; 0x6000];
    assert!(code.len() < 0x1000, "program too long");
    image[..code.len()].copy_from_slice(&code);
    // Request for check 2: header (IN, sector 0) → data outside RAM → status.
    image[(HEADER - RAM) as usize..(HEADER - RAM) as usize + 16].fill(0);
    image[(STATUS_BYTE - RAM) as usize] = 0xff;
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    descriptor(&mut image, 0, HEADER, 16, NEXT, 1);
    descriptor(&mut image, 1, OUTSIDE, 512, WRITE | NEXT, 2);
    descriptor(&mut image, 2, STATUS_BYTE, 1, WRITE, 0);
    // Loop for check 3.
    descriptor(&mut image, 3, HEADER, 16, NEXT, 4);
    descriptor(&mut image, 4, RAM + 0x5200, 512, WRITE | NEXT, 3);
    image
}

#[test]
fn misprogrammed_virtio_blk_fails_alone_and_kemari_keeps_running() {
    let dir = std::env::temp_dir().join(format!("kemari-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fw = dir.join("hostile.elf");
    std::fs::write(&fw, elf::build_image(elf::EM_RISCV, &program())).unwrap();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0x5a; 1 << 20]).unwrap();
    let (code, _out, err) =
        common::run_to_end(&["run", "--firmware", fw.to_str().unwrap(), "--disk", disk.to_str().unwrap()]);
    assert_eq!(code, Some(0), "a check failed (HTIF code = check number); stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("WARN"), "the misprogramming is logged: {err}");
    assert_eq!(std::fs::read(&disk).unwrap(), vec![0x5a; 1 << 20], "the disk is untouched");
    let _ = std::fs::remove_dir_all(&dir);
}
