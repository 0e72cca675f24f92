//! The real guest (Linux 6.1 + busybox, built by scripts/guest-build) boots on our engine and its shell works.

mod common;
use common::Vm;

#[test]
fn guest_shell_computes_and_powers_off_cleanly() {
    let mut vm = Vm::boot(1);
    assert_eq!(vm.sh("echo $((6*7))"), "42");
    assert_eq!(vm.sh("cat /proc/sys/kernel/ostype"), "Linux");
    // A user program: integer ALU (checksum from a model of the loop) and clock_gettime through the vDSO, which
    // reads the `time` CSR in U-mode.
    let line = vm.sh("cpuloop 100000");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "unexpected cpuloop output {line:?}");
    assert_eq!((fields[0], fields[1], fields[3]), ("CPULOOP", "100000", "0ed5355095c46bb1"));
    assert!(fields[2].parse::<u64>().unwrap() > 0, "guest clock did not advance: {line:?}");
    vm.send("poweroff -f");
    let status = vm.wait();
    assert_eq!(status.code(), Some(0), "poweroff must end kemari with 0; stderr: {}", vm.stderr());
}

fn harts_seen_by_guest(cpus: usize) -> usize {
    let mut vm = Vm::boot(cpus);
    let out = vm.sh("grep -c ^processor /proc/cpuinfo");
    out.parse().unwrap_or_else(|_| panic!("unexpected cpuinfo count {out:?}"))
}

#[test]
fn guest_sees_one_hart() {
    assert_eq!(harts_seen_by_guest(1), 1);
}

#[test]
fn guest_sees_two_harts() {
    assert_eq!(harts_seen_by_guest(2), 2);
}

#[test]
fn guest_sees_four_harts() {
    assert_eq!(harts_seen_by_guest(4), 4);
}

#[test]
fn guest_boots_under_opensbi_firmware() {
    // Cross-check of the built-in SBI: Debian's OpenSBI (fw_jump) runs in M-mode on our engine and boots the same
    // kernel through its own SBI implementation.
    let fw = std::path::Path::new("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.elf");
    assert!(fw.exists(), "{} missing: scripts/guest-build installs the opensbi package", fw.display());
    let kernel = common::guest_file("Image");
    let initrd = common::guest_file("initramfs.cpio.gz");
    let mut vm = Vm::start(&[
        "run",
        "--firmware",
        fw.to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cpus",
        "2",
    ]);
    vm.expect("OpenSBI");
    vm.expect("KEMARI-GUEST-READY");
    assert_eq!(vm.sh("echo $((6*7))"), "42");
    assert_eq!(vm.sh("grep -c ^processor /proc/cpuinfo"), "2");
    vm.send("poweroff -f");
    assert_eq!(vm.wait().code(), Some(0), "stderr: {}", vm.stderr());
}

#[test]
fn guest_kernel_panic_ends_the_run_with_an_error() {
    let kernel = common::guest_file("Image");
    let initrd = common::guest_file("initramfs.cpio.gz");
    // No init in the initramfs and no root device: the kernel panics.
    let mut vm = Vm::start(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--append",
        "console=ttyS0 rdinit=/does-not-exist",
    ]);
    let status = vm.wait();
    assert_eq!(status.code(), Some(1), "console: {}", vm.output());
    let err = vm.stderr();
    assert!(err.contains("guest crashed: guest kernel panic: Kernel panic - not syncing"), "stderr: {err}");
}

#[test]
fn guest_reads_entropy_from_virtio_rng() {
    let mut vm = Vm::boot(1);
    assert_eq!(vm.sh("cat /sys/class/misc/hw_random/rng_current"), "virtio_rng.0");
    // 4 KiB of entropy: all distinct 16-byte lines (od prints '*' for repeated lines; zeros would repeat).
    let lines = vm.sh("dd if=/dev/hwrng bs=4096 count=1 2>/dev/null | od -An -tx1 -v | sort -u | wc -l");
    assert_eq!(lines, "256", "expected 256 distinct 16-byte rows of random data");
    vm.send("poweroff -f");
    assert_eq!(vm.wait().code(), Some(0));
}
