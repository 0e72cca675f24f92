#!/usr/bin/env python3
"""Boot target/guest/{Image,initramfs.cpio.gz} on the reference emulator
(qemu-system-riscv64 -M virt) and check the guest works:

  * KEMARI-GUEST-READY appears on the console (and how long that took)
  * the shell answers `echo $((6*7))` with 42
  * /bin/cpuloop prints a CPULOOP line, and its checksum for a small iteration
    count matches a Python model of the loop
  * with --devices: virtio-blk (mke2fs + mount + write/read back), virtio-net
    (eth0 is up, DHCP through QEMU user networking) and virtio-rng work
  * `poweroff -f` makes QEMU exit

Usage: guest/qemu-smoke.py [--devices] [--bios FW] [--smp N] [--mem MB] [--timeout S] [--log FILE]
The whole console transcript goes to target/guest/qemu-smoke.log.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "target", "guest")
CMDLINE = "console=ttyS0 earlycon=sbi"
MASK = (1 << 64) - 1


def cpuloop_model(iterations):
    """Python version of guest/cpuloop.c; returns the checksum."""
    x, acc = 0x9E3779B97F4A7C15, 0
    for i in range(iterations):
        x ^= (x << 13) & MASK
        x ^= x >> 7
        x ^= (x << 17) & MASK
        acc = (acc * 6364136223846793005 + (x ^ i)) & MASK
    return acc


class Console:
    def __init__(self, argv, log_path):
        self.start = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.buf = b""
        self.pos = 0  # searches start here
        self.cond = threading.Condition()
        self.log = open(log_path, "wb")
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        while True:
            data = os.read(self.proc.stdout.fileno(), 4096)
            with self.cond:
                if not data:
                    self.eof = True
                    self.cond.notify_all()
                    return
                self.buf += data
                self.log.write(data)
                self.log.flush()
                self.cond.notify_all()

    eof = False

    def expect(self, pattern, timeout):
        """Wait for regex `pattern` after the previous match; returns the match."""
        rx = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = rx.search(self.buf, self.pos)
                if m:
                    self.pos = m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    tail = self.buf[-2000:].decode(errors="replace")
                    raise TimeoutError(f"waiting for {pattern!r}; console tail:\n{tail}")
                self.cond.wait(left)

    def send(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def elapsed(self):
        return time.monotonic() - self.start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--mem", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--log", default=os.path.join(OUT, "qemu-smoke.log"))
    ap.add_argument("--bios", default="default",
                    help="firmware for -bios, e.g. "
                    "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.elf")
    ap.add_argument("--devices", action="store_true",
                    help="attach virtio-blk/net/rng (MMIO) and test them")
    args = ap.parse_args()

    argv = ["qemu-system-riscv64", "-M", "virt", "-m", str(args.mem),
            "-smp", str(args.smp), "-nographic", "-bios", args.bios,
            "-kernel", os.path.join(OUT, "Image"),
            "-initrd", os.path.join(OUT, "initramfs.cpio.gz"),
            "-append", CMDLINE]
    disk = None
    if args.devices:
        disk = tempfile.NamedTemporaryFile(prefix="kemari-disk-", suffix=".img")
        disk.truncate(16 << 20)
        argv += ["-drive", f"file={disk.name},if=none,format=raw,id=d0",
                 "-device", "virtio-blk-device,drive=d0",
                 "-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0",
                 "-device", "virtio-rng-device"]
    print("+ " + " ".join(f"'{a}'" if " " in a else a for a in argv))
    con = Console(argv, args.log)
    ok = False
    try:
        con.expect(r"KEMARI-GUEST-READY", args.timeout)
        t_ready = con.elapsed()
        print(f"KEMARI-GUEST-READY after {t_ready:.2f}s")
        con.expect(r"# ", 30)

        con.send("echo $((6*7))")
        con.expect(r"\n42\r?\n", 30)
        print("shell: echo $((6*7)) -> 42")

        small = 100000
        con.send(f"cpuloop {small}")
        m = con.expect(r"CPULOOP (\d+) (\d+) ([0-9a-f]{16})", 60)
        want = f"{cpuloop_model(small):016x}"
        got = m.group(3).decode()
        if got != want:
            raise RuntimeError(f"cpuloop {small}: checksum {got}, expected {want}")
        print(f"cpuloop {small}: checksum {got} matches the Python model")

        con.send("cpuloop")
        m = con.expect(r"CPULOOP (\d+) (\d+) ([0-9a-f]{16})", 120)
        iters, ns = int(m.group(1)), int(m.group(2))
        print(f"cpuloop: {m.group(0).decode()}  ({ns / 1e9:.2f}s, "
              f"{iters / (ns / 1e9) / 1e6:.1f} M iterations/s)")

        if args.devices:
            con.send("mke2fs -q /dev/vda && mount -t ext2 /dev/vda /mnt && "
                     "seq 1 1000 > /mnt/f && sync && sha256sum /mnt/f && umount /mnt "
                     "&& echo BLK-OK")
            con.expect(r"\nBLK-OK\r?\n", 60)
            print("virtio-blk: mke2fs, mount, write, sha256sum OK")
            con.send("ip link set eth0 up && udhcpc -q -n -i eth0 -s /bin/true >/dev/null 2>&1; "
                     "ip -4 addr show eth0 | grep -q inet || ip addr add 10.0.2.15/24 dev eth0; "
                     "ip -4 -o addr show eth0 && echo NET-OK")
            m = con.expect(r"inet (\S+).*\n(?:.*\n)?NET-OK", 60)
            print(f"virtio-net: eth0 {m.group(1).decode()}")
            con.send("cat /sys/class/misc/hw_random/rng_current && "
                     "dd if=/dev/hwrng bs=16 count=1 2>/dev/null | hexdump -C | head -1 && echo RNG-OK")
            m = con.expect(r"(virtio_rng\S*)\r?\n(?:.*\n)*?RNG-OK", 30)
            print(f"virtio-rng: {m.group(1).decode()}")

        con.send("poweroff -f")
        try:
            con.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise RuntimeError("QEMU did not exit after poweroff -f")
        print(f"poweroff: QEMU exited with {con.proc.returncode} after {con.elapsed():.2f}s")
        ok = True
    except (TimeoutError, RuntimeError) as e:
        print(f"FAIL: {e}", file=sys.stderr)
    finally:
        if con.proc.poll() is None:
            con.proc.kill()
            con.proc.wait()
        print(f"console log: {args.log}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
