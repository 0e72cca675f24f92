//! virtio-blk end to end: the real guest uses a raw image file through `--disk`, and the host checks the file.
//!
//! Host tools: `e2fsck` and `debugfs` from e2fsprogs (scripts/guest-build installs the package), `sha256sum`.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{debugfs_cat, e2fs_tool, guest_file, Vm};

const IMAGE_BYTES: u64 = 64 << 20;

/// A fresh directory under the system temp dir, removed with everything in it on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("kemari-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// A sparse raw image of `IMAGE_BYTES` bytes in the directory.
    fn image(&self) -> PathBuf {
        let p = self.0.join("disk.img");
        let f = std::fs::File::create(&p).expect("create image");
        f.set_len(IMAGE_BYTES).expect("size image");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Boots the guest with `disk` (a `--disk` argument).
fn boot_with_disk(disk: &str) -> Vm {
    let kernel = guest_file("Image");
    let initrd = guest_file("initramfs.cpio.gz");
    let mut vm = Vm::start(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cpus",
        "1",
        "--memory",
        "256",
        "--disk",
        disk,
    ]);
    vm.expect("KEMARI-GUEST-READY");
    // The machine has no RTC: guest time starts at the epoch. ext4 records a deleted inode's deletion time, and
    // a deletion in the guest's first second records 0, which e2fsck reads as "deleted inode with zero dtime".
    // Set the clock, as a real guest's NTP would.
    vm.sh("date -s '2026-12-07 12:00:00' >/dev/null");
    vm
}

/// Runs `cmd` in the guest and returns the exit status it printed (plus its output, for messages).
fn guest_rc(vm: &mut Vm, cmd: &str) -> (i32, String) {
    let out = vm.sh(&format!("{cmd}; echo RC=$?"));
    let rc = out
        .rsplit_once("RC=")
        .and_then(|(_, rc)| rc.trim().parse().ok())
        .unwrap_or_else(|| panic!("no exit status in {out:?}"));
    (rc, out)
}

/// Runs `cmd` in the guest and insists that it succeeds.
fn guest_ok(vm: &mut Vm, cmd: &str) -> String {
    let (rc, out) = guest_rc(vm, cmd);
    assert_eq!(rc, 0, "guest command failed: {cmd}\n{out}");
    out
}

fn poweroff(mut vm: Vm) {
    vm.send("poweroff -f");
    let status = vm.wait();
    assert_eq!(status.code(), Some(0), "poweroff must end kemari with 0; stderr: {}", vm.stderr());
    // A well-behaved driver never makes the device complain (refused or malformed requests are logged).
    assert!(!vm.stderr().contains("virtio-blk"), "device warnings in a clean run: {}", vm.stderr());
}

fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child =
        Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run host sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

/// What `seq 1 n` prints.
fn seq_text(n: u32) -> Vec<u8> {
    (1..=n).map(|i| format!("{i}\n")).collect::<String>().into_bytes()
}

fn read_at(image: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(image).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// The guest's `sha256sum` line for a file: the hash alone.
fn first_word(s: &str) -> String {
    s.split_whitespace().next().unwrap_or_default().to_string()
}

#[test]
fn ext4_made_in_the_guest_survives_a_reboot_and_checks_clean_on_the_host() {
    let dir = TempDir::new("ext4");
    let image = dir.image();
    let disk = image.to_str().unwrap();

    // First boot: make the file system, fill it, unmount cleanly.
    let mut vm = boot_with_disk(disk);
    assert_eq!(vm.sh("cat /sys/block/vda/size"), (IMAGE_BYTES / 512).to_string());
    assert_eq!(vm.sh("cat /sys/block/vda/ro"), "0");
    guest_ok(&mut vm, "mkfs.ext4 -q -F /dev/vda");
    guest_ok(&mut vm, "mount -t ext4 /dev/vda /mnt");
    guest_ok(&mut vm, "echo hello from the guest > /mnt/hello.txt");
    guest_ok(&mut vm, "seq 1 20000 > /mnt/seq.txt");
    // A larger file (about 2.6 MiB) in a subdirectory, written in big blocks: multi-segment requests.
    guest_ok(&mut vm, "mkdir /mnt/dir && for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22; do cat /mnt/seq.txt; done > /mnt/dir/big.txt");
    guest_ok(&mut vm, "dd if=/mnt/dir/big.txt of=/mnt/dir/copy.bin bs=1M conv=fsync 2>/dev/null");
    let sums1 = vm.sh("cd /mnt && sha256sum hello.txt seq.txt dir/big.txt dir/copy.bin && cd /");
    guest_ok(&mut vm, "sync");
    guest_ok(&mut vm, "umount /mnt");
    poweroff(vm);

    // The host sees a clean file system with exactly the content the guest wrote.
    let fsck = Command::new(e2fs_tool("e2fsck")).args(["-fn"]).arg(&image).output().expect("run e2fsck");
    assert!(
        fsck.status.success(),
        "host e2fsck -fn reports problems ({}):\n{}{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let seq = seq_text(20000);
    let big: Vec<u8> = seq.iter().copied().cycle().take(seq.len() * 22).collect();
    assert_eq!(debugfs_cat(&image, "/hello.txt"), b"hello from the guest\n");
    assert_eq!(debugfs_cat(&image, "/seq.txt"), seq);
    assert_eq!(debugfs_cat(&image, "/dir/big.txt"), big);
    assert_eq!(debugfs_cat(&image, "/dir/copy.bin"), big);
    let lines: Vec<&str> = sums1.lines().collect();
    assert_eq!(lines.len(), 4, "sha256sum output: {sums1}");
    assert_eq!(first_word(lines[1]), sha256_hex(&seq), "guest and host agree on seq.txt");
    assert_eq!(first_word(lines[2]), sha256_hex(&big), "guest and host agree on big.txt");

    // Second boot on the same image: the guest's own e2fsck is happy, and the files read back the same.
    let mut vm = boot_with_disk(disk);
    let (rc, out) = guest_rc(&mut vm, "e2fsck -fn /dev/vda");
    assert_eq!(rc, 0, "guest e2fsck: {out}");
    guest_ok(&mut vm, "mount -t ext4 /dev/vda /mnt");
    assert_eq!(vm.sh("cat /mnt/hello.txt"), "hello from the guest");
    let sums2 = vm.sh("cd /mnt && sha256sum hello.txt seq.txt dir/big.txt dir/copy.bin && cd /");
    assert_eq!(sums2, sums1, "contents changed across the reboot");
    // Keep writing on the second boot, then check once more from the host.
    guest_ok(&mut vm, "echo second boot >> /mnt/hello.txt && rm /mnt/dir/copy.bin && sync");
    guest_ok(&mut vm, "umount /mnt");
    poweroff(vm);
    let fsck = Command::new(e2fs_tool("e2fsck")).args(["-fn"]).arg(&image).output().expect("run e2fsck");
    assert!(fsck.status.success(), "host e2fsck after the second boot:\n{}", String::from_utf8_lossy(&fsck.stdout));
    assert_eq!(debugfs_cat(&image, "/hello.txt"), b"hello from the guest\nsecond boot\n");
}

#[test]
fn raw_writes_land_at_their_offsets_in_the_image_and_reads_see_the_image() {
    let dir = TempDir::new("raw");
    let image = dir.image();
    // Something for the guest to read that only the host wrote.
    let host_pattern: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    const HOST_AT: u64 = 40 << 20;
    std::fs::OpenOptions::new().write(true).open(&image).unwrap().write_all_at(&host_pattern, HOST_AT).unwrap();

    let mut vm = boot_with_disk(image.to_str().unwrap());
    let guest_sum = vm.sh(&format!("dd if=/dev/vda bs=4096 skip={} count=16 2>/dev/null | sha256sum", HOST_AT / 4096));
    assert_eq!(first_word(&guest_sum), sha256_hex(&host_pattern), "guest read of host-written data");

    // (offset in 512-byte sectors, bytes, fill character); the last one ends at the last sector of the disk.
    let last = IMAGE_BYTES / 512 - 8;
    let fills: [(u64, usize, u8); 4] = [(0, 512, b'A'), (2048, 4096, b'B'), (12345, 1024, b'C'), (last, 4096, b'Z')];
    for (sector, len, c) in fills {
        guest_ok(
            &mut vm,
            &format!(
                "dd if=/dev/zero bs={len} count=1 2>/dev/null | tr '\\000' '{}' | dd of=/dev/vda bs=512 seek={sector} conv=fsync 2>/dev/null",
                c as char
            ),
        );
    }
    // A write that does not cover whole sectors: the kernel reads, merges and writes back the block.
    let seq = seq_text(1000);
    guest_ok(&mut vm, "seq 1 1000 | dd of=/dev/vda bs=512 seek=4000 conv=fsync 2>/dev/null");

    // fsync returned in the guest: the data is in the file now, while the guest still runs.
    let check = |image: &Path| {
        for (sector, len, c) in fills {
            assert_eq!(read_at(image, sector * 512, len), vec![c; len], "fill {:?} at sector {sector}", c as char);
            // The sectors around it are untouched (still sparse zeros).
            let end = sector * 512 + len as u64;
            if sector > 0 {
                assert_eq!(read_at(image, sector * 512 - 512, 512), vec![0u8; 512], "before fill {:?}", c as char);
            }
            if end < IMAGE_BYTES {
                assert_eq!(read_at(image, end, 512), vec![0u8; 512], "after fill {:?}", c as char);
            }
        }
        assert_eq!(read_at(image, 4000 * 512, seq.len()), seq);
        let tail = (4096 - seq.len() % 4096) % 4096;
        assert_eq!(read_at(image, 4000 * 512 + seq.len() as u64, tail), vec![0u8; tail], "rest of the block kept");
        assert_eq!(read_at(image, HOST_AT, host_pattern.len()), host_pattern);
    };
    check(&image);

    // The guest reads the written sectors back from the device (O_DIRECT bypasses its page cache).
    let back = vm.sh("dd if=/dev/vda bs=512 skip=12345 count=2 iflag=direct 2>/dev/null | sha256sum");
    assert_eq!(first_word(&back), sha256_hex(&[b'C'; 1024]));
    poweroff(vm);
    check(&image);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), IMAGE_BYTES, "the image keeps its size");
}

#[test]
fn read_only_disk_is_read_only_in_the_guest_and_on_the_host() {
    let dir = TempDir::new("ro");
    let image = dir.image();
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
    std::fs::OpenOptions::new().write(true).open(&image).unwrap().write_all_at(&pattern, 1 << 20).unwrap();
    let before = std::fs::read(&image).unwrap();

    let mut vm = boot_with_disk(&format!("{},readonly", image.display()));
    assert_eq!(vm.sh("cat /sys/block/vda/ro"), "1");
    // Reads work.
    let sum = vm.sh("dd if=/dev/vda bs=4096 skip=256 count=2 2>/dev/null | sha256sum");
    assert_eq!(first_word(&sum), sha256_hex(&pattern));
    // Writes fail, whether through the page cache or direct, and so does making a file system.
    let (rc, out) = guest_rc(&mut vm, "dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync");
    assert_ne!(rc, 0, "write to a read-only disk succeeded: {out}");
    let (rc, out) = guest_rc(&mut vm, "dd if=/dev/zero of=/dev/vda bs=512 seek=2048 count=1 oflag=direct");
    assert_ne!(rc, 0, "direct write to a read-only disk succeeded: {out}");
    let (rc, out) = guest_rc(&mut vm, "mkfs.ext4 -q -F /dev/vda");
    assert_ne!(rc, 0, "mkfs on a read-only disk succeeded: {out}");
    poweroff(vm);
    assert!(std::fs::read(&image).unwrap() == before, "the read-only image changed");
}
