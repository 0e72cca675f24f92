//! virtio-net end to end: the real guest talks to a "host" (a network namespace) through a tap.
//!
//! Topology per test: namespace `kmr-<pid>-<tag><n>` holding tap `kmrtap0` at 10.0.2.1/24 (created beforehand,
//! as an administrator would, with `ip tuntap add`); kemari runs inside the namespace (so it opens that tap) and
//! the guest configures eth0 as 10.0.2.15/24 with busybox `ip`. Everything lives in the namespace, which the
//! test deletes when it ends, also when it fails.
//!
//! Needs root. Timeouts only guard against hangs; nothing asserts on time.

mod common;
#[path = "common/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener};
use std::process::{Command, Stdio};

use common::{accept, connect, guest_file, Vm, GUEST_TIMEOUT};
use netns::NetNs;

const TAP: &str = "kmrtap0";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const MAC: &str = "52:54:00:12:34:56";

/// A guest on a tap in its own namespace. Fields drop in order: kemari is killed before the namespace goes.
struct Setup {
    vm: Vm,
    ns: NetNs,
}

fn boot_on_tap(tag: &str) -> Setup {
    let ns = NetNs::new(tag);
    ns.add_tap(TAP, &format!("{HOST_IP}/24"));
    let kernel = guest_file("Image");
    let initrd = guest_file("initramfs.cpio.gz");
    let net = format!("tap={TAP},mac={MAC}");
    let args = [
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--memory",
        "256",
        "--net",
        &net,
    ];
    let mut vm = ns.enter(|| Vm::start(&args));
    vm.expect("KEMARI-GUEST-READY");
    assert_eq!(vm.sh("cat /sys/class/net/eth0/address"), MAC, "the guest sees the MAC from --net");
    assert_eq!(
        vm.sh(&format!("ip link set eth0 up && ip addr add {GUEST_IP}/24 dev eth0 && echo configured")),
        "configured"
    );
    Setup { vm, ns }
}

/// sha256 of `data` as hex, by the host's `sha256sum`.
fn sha256(data: &[u8]) -> String {
    let mut child =
        Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

/// Deterministic incompressible bytes.
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[test]
fn guest_pings_and_talks_tcp_with_the_host_both_ways() {
    let mut s = boot_on_tap("talk");
    let (vm, ns) = (&mut s.vm, &s.ns);

    // Guest → host ICMP (ARP resolution included).
    let out = vm.sh(&format!("ping -c 3 {HOST_IP}"));
    assert!(out.contains("3 packets received"), "guest ping to the host failed:\n{out}");

    // Host → guest ICMP.
    assert!(ns.ping(GUEST_IP, GUEST_TIMEOUT).unwrap(), "no echo reply from the guest");

    // The guest listens, the host connects; each side sends a line and reads the other's.
    let host = ns.spawn(|| {
        let mut s = connect(SocketAddr::from((GUEST_IP, 7001)));
        s.write_all(b"hello-from-host\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got
    });
    let guest_got = vm.sh("echo hello-from-guest | nc -l -p 7001");
    assert_eq!(guest_got, "hello-from-host");
    assert_eq!(host.join().unwrap(), "hello-from-guest\n");

    // The host listens, the guest connects.
    let listener = ns.enter(|| TcpListener::bind(SocketAddr::from((HOST_IP, 7002))).unwrap());
    let host = std::thread::spawn(move || {
        let mut s = accept(&listener);
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        s.write_all(b"reply-from-host\n").unwrap();
        got
    });
    let guest_got = vm.sh(&format!("echo request-from-guest | nc {HOST_IP} 7002"));
    assert_eq!(guest_got, "reply-from-host");
    assert_eq!(host.join().unwrap(), "request-from-guest\n");
}

#[test]
fn sixteen_mib_cross_the_tap_intact_both_ways() {
    const LEN: usize = 16 << 20;
    let mut s = boot_on_tap("bulk");
    let (vm, ns) = (&mut s.vm, &s.ns);

    // Host → guest: the guest hashes what arrives.
    let data = pseudo_random(LEN, 0x6b65_6d61_7269_0001);
    let want = sha256(&data);
    let host = ns.spawn(move || {
        let mut s = connect(SocketAddr::from((GUEST_IP, 7003)));
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        // Wait for the guest to close its side: it has everything then.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let out = vm.sh("nc -l -p 7003 </dev/null | sha256sum");
    host.join().unwrap();
    assert_eq!(out.split_whitespace().next(), Some(want.as_str()), "host → guest transfer corrupted: {out}");

    // Guest → host: a file of random bytes made in the guest, hashed on both sides.
    let out = vm.sh("dd if=/dev/urandom of=/tmp/big bs=1M count=16 2>/dev/null && sha256sum /tmp/big");
    let guest_sum = out.split_whitespace().next().unwrap_or_default().to_string();
    assert_eq!(guest_sum.len(), 64, "unexpected sha256sum output {out:?}");
    let listener = ns.enter(|| TcpListener::bind(SocketAddr::from((HOST_IP, 7004))).unwrap());
    let host = std::thread::spawn(move || {
        let mut s = accept(&listener);
        let mut got = Vec::with_capacity(LEN);
        s.read_to_end(&mut got).unwrap();
        got
    });
    let out = vm.sh(&format!("nc {HOST_IP} 7004 </tmp/big && echo sent"));
    assert_eq!(out, "sent");
    let got = host.join().unwrap();
    assert_eq!(got.len(), LEN, "guest → host transfer truncated");
    assert_eq!(sha256(&got), guest_sum, "guest → host transfer corrupted");
}
