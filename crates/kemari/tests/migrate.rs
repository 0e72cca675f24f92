//! Live migration between two kemari processes: the guest's counter carries on across the switch with no gap
//! and no repeat, and the sender stops; between two hosts (network namespaces, see `common/ft.rs`), a client's
//! TCP stream through the guest and the guest's disk writes carry on across it; hostile streams are refused and
//! the receiver waits for the next sender; a lost acknowledgement leaves one copy running.
//!
//! Needs root (namespaces, taps). Timeouts only guard against hangs; nothing asserts on time.

mod common;
#[path = "common/ft.rs"]
mod ft;
#[path = "common/netns.rs"]
mod netns;

use std::net::TcpListener;
use std::process::Command;

use common::{ctl, guest_run, kemari_bin, Vm, GUEST_TIMEOUT};
use ft::{EchoStream, Rng, TempDir, Topology, GUEST_IP, GUEST_MAC, SECONDARY_REPL_IP, TAP};

fn ticks(console: &str) -> Vec<u64> {
    console.lines().filter_map(|l| l.trim().strip_prefix("tick-")).filter_map(|n| n.parse().ok()).collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `kemari` arguments with `node`'s mutual-TLS credentials (made in `certs` on first use) appended.
fn with_tls(certs: &std::path::Path, node: &str, args: &[impl AsRef<str>]) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    all.extend(ft::link_args(Some(certs), node));
    all
}

fn start(args: &[String]) -> Vm {
    Vm::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn guest_moves_to_the_receiver_without_losing_a_tick() {
    let dir = std::env::temp_dir().join(format!("kemari-mig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let api = dir.join("api.sock").to_str().unwrap().to_string();
    let to = format!("127.0.0.1:{}", free_port());

    let certs = dir.join("certs");
    let mut receiver = start(&with_tls(&certs, "dst", &["run", "--incoming", &to]));
    let mut sender = start(&with_tls(&certs, "src", &guest_run(&["--cpus", "2", "--api", &api])));
    sender.expect("KEMARI-GUEST-READY");
    // Memory keeps changing while the migration runs: a counter, and a buffer rewritten in a loop.
    sender.send("i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.05; done &");
    sender.send("while true; do dd if=/dev/urandom of=/tmp/churn bs=64k count=16 2>/dev/null; done &");
    sender.expect("tick-10");

    let out = Command::new(kemari_bin()).args(["migrate", "--api", &api, "--to", &to]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "migrate failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"downtime_micros\""), "no downtime reported: {stdout}");
    assert_eq!(sender.wait().code(), Some(0), "the sender stops after the switch: {}", sender.stderr());

    // The switch may fall inside a line ("tick-" on the sender, "11" on the receiver): the user sees the two
    // consoles one after the other, so check the ticks of that one stream.
    let before = ticks(&sender.output());
    let last = *before.last().unwrap();
    receiver.expect(&format!("tick-{}", last + 10));
    // (Only the last ticks before the switch: earlier, the echo of the typed commands may split a tick line.)
    let seen: Vec<u64> =
        ticks(&(sender.output() + &receiver.output())).into_iter().filter(|&t| t > 10 && t + 3 >= last).collect();
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "gap or repeat across the switch: {seen:?}");
    assert!(ticks(&receiver.output()).iter().all(|&t| t > last), "the receiver repeated a tick of the sender");
    // The receiver's guest is fully alive: a fresh command runs.
    // (The tick loop keeps printing in the background: leave its lines out.)
    let answer = receiver.sh("echo $((6*7))");
    let answer: Vec<&str> = answer.lines().filter(|l| !l.trim().starts_with("tick-")).collect();
    assert_eq!(answer, ["42"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Boots a sender with the control API on `api` and the link arguments `link`, and starts a console tick
/// every 50 ms.
fn ticking_sender(api: &str, link: &[String]) -> Vm {
    let mut args = guest_run(&["--api", api]);
    args.extend_from_slice(link);
    let mut sender = start(&args);
    sender.expect("KEMARI-GUEST-READY");
    sender.send("i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.05; done &");
    sender.expect("tick-10");
    sender
}

fn connect_when_listening(to: &str) -> std::net::TcpStream {
    common::connect(to.parse().expect("an IP:port"))
}

/// A migration message: kind, length, payload.
fn message(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    m.extend_from_slice(payload);
    m
}

/// A HELLO of protocol `version` for a 1-hart machine of `mib` MiB (from version 3 on, an x86-64 one).
fn hello(version: u32, mib: u64) -> Vec<u8> {
    let mut p = b"KMIG".to_vec();
    p.extend_from_slice(&version.to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&(mib << 20).to_le_bytes());
    if version >= 3 {
        p.extend_from_slice(b"X64_");
    }
    message(1, &p)
}

/// Hostile senders (a protocol from the future, another architecture or machine size, a page stream that fails
/// its checksum, one that stops mid-message) are each refused with a message saying why, and the receiver (which
/// preallocates its RAM) stays there, its control API telling what it waits for and what it refused: a real
/// migration to it afterwards works, and no page of a refused stream leaks into the migrated guest (it would
/// show as a crash or a wrong counter). The link is plaintext here: this is the protocol's own defence (what
/// a peer that passed the TLS handshake meets too), which mutual TLS would hide from a test without keys.
#[test]
fn a_receiver_refuses_hostile_streams_then_takes_a_real_migration() {
    use std::io::Write;
    let dir = TempDir::new("mig-hostile");
    let api = dir.path("api.sock").display().to_string();
    let receiver_api = dir.path("receiver.sock").display().to_string();
    let to = format!("127.0.0.1:{}", free_port());
    let plain = ["--insecure-plaintext".to_string()];
    let mut receiver = Vm::start(&[
        "run",
        "--incoming",
        &to,
        "--memory",
        "256",
        "--prealloc",
        "--api",
        &receiver_api,
        "--insecure-plaintext",
    ]);

    // A PAGS section claiming page 5, whose section checksum is wrong.
    let mut stream = b"KEMARIST\x01\0\0\0\x01\0\0\0PAGS\x01\0\x0c\0\0\0\x01\0\0\0\x05\0\0\0\0\0\0\0".to_vec();
    stream.extend_from_slice(b"\xde\xad\xbe\xef\0\0\0\0");
    let bad_pages = |version| [hello(version, 256), message(2, &stream)].concat();
    let mut cut = hello(2, 256);
    cut.extend_from_slice(&message(2, &[0u8; 4096])[..2000]);
    // Each is refused, and the sender is told why (REFUSE and the reason), except a sender of protocol version
    // 1, which knows no REFUSE: the receiver still takes such senders, and answers them as version 1 did.
    let cases: [(&str, Vec<u8>, &str, bool); 7] = [
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec(), "not a kemari migration stream", true),
        ("future version", hello(99, 256), "protocol version 99, this kemari speaks 1 to 3", true),
        ("other architecture", hello(3, 256), "the sender runs a x86-64 machine, this receiver riscv64", true),
        ("other size", hello(2, 64), "has 64 MiB of RAM, this receiver was given --memory 256", true),
        ("bad checksum", bad_pages(2), "checksum", true),
        ("bad checksum, version 1", bad_pages(1), "checksum", false),
        ("cut mid-message", cut, "network", true),
    ];
    for (what, bytes, why, told) in cases {
        let mark = receiver.stderr_lines();
        let mut conn = connect_when_listening(&to);
        conn.write_all(&bytes).unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let line = receiver.expect_stderr_after("incoming migration refused", mark);
        assert!(line.contains(why), "{what}: the refusal does not say {why:?}: {line}");
        assert!(receiver.try_status().is_none(), "{what}: the receiver exited: {}", receiver.stderr());
        let mut answer = Vec::new();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let _ = std::io::Read::read_to_end(&mut conn, &mut answer);
        match kemari_transport::frame::receive(&mut answer.as_slice(), 0) {
            Err(kemari_transport::frame::FrameError::Refused(reason)) if told => {
                assert!(reason.contains(why), "{what}: the sender was told {reason:?}, not {why:?}")
            }
            Err(kemari_transport::frame::FrameError::Closed) if !told => {}
            other => panic!("{what}: the sender got {other:?} ({answer:?})"),
        }
    }
    let (ok, status) = ctl(&receiver_api, &["status"]);
    assert!(ok && status.contains("\"role\":\"incoming\"") && status.contains("\"refused\":7"), "{status}");
    assert!(status.contains("\"last_refusal\":\"network"), "{status}");
    let (ok, said) = ctl(&receiver_api, &["pause"]);
    assert!(!ok && said.contains("no guest runs here yet"), "{said}");

    let mut sender = ticking_sender(&api, &plain);
    let out = Command::new(kemari_bin()).args(["migrate", "--api", &api, "--to", &to]).output().unwrap();
    assert!(out.status.success(), "migrate failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sender.wait().code(), Some(0), "the sender stops after the switch: {}", sender.stderr());
    let last = *ticks(&sender.output()).last().unwrap();
    receiver.expect(&format!("tick-{}", last + 10));
    let answer = receiver.sh("echo $((6*7))");
    let answer: Vec<&str> = answer.lines().filter(|l| !l.trim().starts_with("tick-")).collect();
    assert_eq!(answer, ["42"]);
    // The same socket now serves the running guest.
    let (ok, status) = ctl(&receiver_api, &["status"]);
    assert!(ok && status.contains("\"paused\":false") && !status.contains("incoming"), "{status}");
}

/// A receiver that cannot run the final state (it was given other devices than the sender has: no disk) says
/// so to the sender, which then knows the guest runs nowhere else: it carries on at the sender (not paused, as
/// when the outcome is unknown), `kemari migrate` fails with the receiver's reason, and the receiver waits for
/// the next sender.
#[test]
fn a_receiver_that_refuses_the_final_state_leaves_the_guest_running_at_the_sender() {
    let dir = TempDir::new("mig-refused-final");
    let api = dir.path("api.sock").display().to_string();
    let disk = dir.path("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(16 << 20).unwrap();
    let to = format!("127.0.0.1:{}", free_port());
    let mut receiver = Vm::start(&["run", "--incoming", &to, "--insecure-plaintext"]);
    connect_when_listening(&to); // (refused: an empty connection; the receiver waits for the next)
    let mut sender = start(&guest_run(&["--api", &api, "--insecure-plaintext", "--disk", &disk.display().to_string()]));
    sender.expect("KEMARI-GUEST-READY");
    sender.send("i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.05; done &");
    sender.expect("tick-10");

    let mark = receiver.stderr_lines();
    let out = Command::new(kemari_bin()).args(["migrate", "--api", &api, "--to", &to]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "migrate reported success: {said}");
    assert!(said.contains("the receiver refused the final state") && said.contains("virtio devices"), "{said}");
    let line = receiver.expect_stderr_after("incoming migration refused", mark);
    assert!(line.contains("virtio devices"), "{line}");

    let (_, status) = ctl(&api, &["status"]);
    assert!(status.contains("\"paused\":false"), "the sender's guest does not run on: {status}");
    let last = *ticks(&sender.output()).last().unwrap();
    sender.expect(&format!("tick-{}", last + 10));
    assert!(ticks(&receiver.output()).is_empty(), "the receiver ran the guest too: {}", receiver.output());
    assert!(receiver.try_status().is_none(), "the receiver exited: {}", receiver.stderr());
}

/// Between a real sender and a real receiver, a proxy passes everything but the receiver's acknowledgement of
/// the final state, and closes the sender's connection instead. The receiver runs the guest; the sender cannot
/// tell, so it keeps its copy paused (one active copy) and says so: `kemari migrate` fails with "outcome
/// unknown", the sender's status is paused, and its console stays silent while the receiver's ticks go on.
/// (Plaintext: the proxy must see the acknowledgement to drop it.)
#[test]
fn a_lost_acknowledgement_leaves_the_sender_paused_and_one_copy_running() {
    use std::io::{Read, Write};
    let dir = TempDir::new("mig-lost-ack");
    let api = dir.path("api.sock").display().to_string();
    let to = format!("127.0.0.1:{}", free_port());
    let plain = ["--insecure-plaintext".to_string()];
    let mut receiver = Vm::start(&["run", "--incoming", &to, "--insecure-plaintext"]);
    connect_when_listening(&to); // (the receiver refuses this empty connection and waits for the next)

    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let via = proxy.local_addr().unwrap().to_string();
    let to2 = to.clone();
    let swallowed = std::thread::spawn(move || {
        let (mut from_sender, _) = proxy.accept().unwrap();
        let mut to_receiver = std::net::TcpStream::connect(&to2).unwrap();
        let (mut up_in, mut up_out) = (from_sender.try_clone().unwrap(), to_receiver.try_clone().unwrap());
        std::thread::spawn(move || std::io::copy(&mut up_in, &mut up_out));
        let mut byte = [0u8; 1];
        loop {
            to_receiver.read_exact(&mut byte).unwrap();
            if byte[0] == 4 {
                // The ACK: the sender never sees it.
                from_sender.shutdown(std::net::Shutdown::Both).unwrap();
                return true;
            }
            from_sender.write_all(&byte).unwrap();
        }
    });

    let mut sender = ticking_sender(&api, &plain);
    let out = Command::new(kemari_bin()).args(["migrate", "--api", &api, "--to", &via]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "migrate reported success without an acknowledgement: {said}");
    assert!(said.contains("outcome unknown"), "{said}");
    assert!(swallowed.join().unwrap());

    assert!(sender.try_status().is_none(), "the sender exited: {}", sender.stderr());
    let (_, status) = ctl(&api, &["status"]);
    assert!(status.contains("\"paused\":true"), "the sender's guest is not paused: {status}");
    let last = *ticks(&sender.output()).last().unwrap();
    receiver.expect(&format!("tick-{}", last + 20));
    assert_eq!(
        ticks(&sender.output()).last(),
        Some(&last),
        "the sender's guest ran on while the receiver's did: two active copies"
    );
}

/// Forwards a connection to `to`, but only the first `pass` bytes from the sender: then it stops reading (a
/// receiver that stalled mid-transfer; the link is encrypted, so bytes are all it can count) and says so on
/// the channel. It closes both sides once the receiver's side ends.
fn stalling_proxy(to: String, pass: usize) -> (String, std::sync::mpsc::Receiver<()>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let via = listener.local_addr().unwrap().to_string();
    let (stalled, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut from_sender, _) = listener.accept().unwrap();
        let mut to_receiver = std::net::TcpStream::connect(&to).unwrap();
        let (mut back_in, mut back_out) = (to_receiver.try_clone().unwrap(), from_sender.try_clone().unwrap());
        let back = std::thread::spawn(move || std::io::copy(&mut back_in, &mut back_out));
        let mut buf = vec![0u8; 64 << 10];
        let mut passed = 0;
        while passed < pass {
            let n = from_sender.read(&mut buf[..(pass - passed).min(64 << 10)]).unwrap();
            assert!(n > 0, "the sender closed before {pass} bytes");
            to_receiver.write_all(&buf[..n]).unwrap();
            passed += n;
        }
        let _ = stalled.send(());
        let _ = back.join();
        let _ = from_sender.shutdown(std::net::Shutdown::Both);
    });
    (via, rx)
}

/// The receiver vanishes mid-transfer (the pre-copy under way: 4 MiB passed, then the link stalls, then the
/// receiver is SIGKILLed): the sender reports the failure and its guest carries on as it was, running (the
/// ticks continue) or paused by the user before the migration (it stays paused until resumed); a migration to
/// a new receiver then works.
fn receiver_dies_mid_transfer(tag: &str, paused: bool) {
    let dir = TempDir::new(tag);
    let api = dir.path("api.sock").display().to_string();
    let to = format!("127.0.0.1:{}", free_port());
    let certs = dir.path("certs");
    let mut doomed = start(&with_tls(&certs, "doomed", &["run", "--incoming", &to]));
    connect_when_listening(&to); // (refused: it only shows the receiver listens)
    let mut sender = ticking_sender(&api, &ft::link_args(Some(&certs), "src"));
    // The guest's memory is more than the socket buffers hold: a stalled link stalls the pre-copy.
    sender.send("dd if=/dev/urandom of=/tmp/fill bs=1M count=48 2>/dev/null; echo FILLED");
    sender.expect("FILLED");
    if paused {
        assert!(ctl(&api, &["pause"]).0);
    }
    let (via, stalled) = stalling_proxy(to.clone(), 4 << 20);
    let migrate = std::process::Command::new(kemari_bin())
        .args(["migrate", "--api", &api, "--to", &via])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    stalled.recv_timeout(GUEST_TIMEOUT).expect("the pre-copy never sent 4 MiB");
    assert!(ctl(&api, &["status"]).1.contains("\"migration\""), "the migration is not under way");
    doomed.signal(libc::SIGKILL);
    let out = migrate.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("migration failed"), "{said}");

    let (ok, status) = ctl(&api, &["status"]);
    assert!(ok && status.contains(&format!("\"paused\":{paused}")), "{status}");
    if paused {
        // Ticks that were due meanwhile may come out at once: see the guest run again first.
        assert!(ctl(&api, &["resume"]).0);
    }
    let last = *ticks(&sender.output()).last().unwrap();
    sender.expect(&format!("tick-{}", last + 5));

    let to = format!("127.0.0.1:{}", free_port());
    let mut receiver = start(&with_tls(&certs, "dst", &["run", "--incoming", &to]));
    connect_when_listening(&to);
    let out = Command::new(kemari_bin()).args(["migrate", "--api", &api, "--to", &to]).output().unwrap();
    assert!(out.status.success(), "the second migration failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sender.wait().code(), Some(0), "the sender stops after the switch: {}", sender.stderr());
    let last = *ticks(&sender.output()).last().unwrap();
    receiver.expect(&format!("tick-{}", last + 5));
}

#[test]
fn a_receiver_that_dies_mid_transfer_leaves_the_guest_running_on_the_sender() {
    receiver_dies_mid_transfer("mig-receiver-dies", false);
}

#[test]
fn a_receiver_that_dies_mid_transfer_leaves_a_paused_guest_paused() {
    receiver_dies_mid_transfer("mig-receiver-dies-paused", true);
}

/// The guest's echo service port, and where the receiver listens on the second host.
const ECHO_PORT: u16 = 5001;
const MIGRATE_PORT: u16 = 7790;

/// Sender `kemari run` in ns `pri`, receiver `kemari run --incoming` in ns `sec`, both with the guest's tap on
/// their host and the same disk image (shared storage); a client in ns `cli` streams 16 MiB through the guest's
/// echo service while the guest appends fsynced records to a file on its disk, and the VM migrates mid-stream.
/// The stream completes with the same sha256 on both ends and no reset (the receiver's RARP moved the guest's MAC
/// to the second host's port of the bridge); the file system checks clean and holds every record, in order.
#[test]
fn tcp_stream_and_disk_writes_carry_on_across_a_migration_between_hosts() {
    const LEN: usize = 16 << 20;
    let _serial = ft::serial();
    let mut rng = Rng::new("tcp_stream_and_disk_writes_carry_on_across_a_migration_between_hosts");
    let net = Topology::new();
    let dir = TempDir::new("mig-hosts");
    let disk = dir.path("shared.img");
    ft::make_image(&disk);
    let disk_arg = disk.display().to_string();
    let api = dir.path("sender.sock").display().to_string();
    let to = format!("{SECONDARY_REPL_IP}:{MIGRATE_PORT}");
    let net_arg = format!("tap={TAP},mac={GUEST_MAC}");

    let certs = dir.path("certs");
    let receiver_args = with_tls(&certs, "dst", &["run", "--incoming", &to, "--net", &net_arg, "--disk", &disk_arg]);
    let mut receiver = net.sec.enter(|| start(&receiver_args));
    let sender_args = with_tls(
        &certs,
        "src",
        &guest_run(&["--memory", "256", "--net", &net_arg, "--disk", &disk_arg, "--api", &api]),
    );
    let mut sender = net.pri.enter(|| start(&sender_args));
    sender.expect("KEMARI-GUEST-READY");
    let up = sender.sh(&format!("ip link set eth0 up && ip addr add {GUEST_IP}/24 dev eth0 && echo configured"));
    assert_eq!(up, "configured");
    assert!(net.cli.ping(GUEST_IP, GUEST_TIMEOUT).unwrap(), "the client cannot ping the guest");
    // (Kernel messages off the console: they would mix with the command output.)
    assert_eq!(
        sender.sh("dmesg -n 1; mkfs.ext4 -q -F /dev/vda && mount -t ext4 /dev/vda /mnt && echo mounted"),
        "mounted"
    );
    sender.send(
        "(i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); echo record-$i >> /mnt/log; sync; done; echo WROTE-$i) &",
    );
    ft::start_guest_echo(&mut sender, ECHO_PORT);
    let stream = EchoStream::start(&net.cli, ECHO_PORT, LEN, rng.next_u64());
    stream.wait_received(rng.range(LEN as u64 / 16, LEN as u64 / 4));

    let out = Command::new(kemari_bin()).args(["migrate", "--api", &api, "--to", &to]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "migrate failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    let at_switch = stream.received();
    assert_eq!(sender.wait().code(), Some(0), "the sender stops after the switch: {}", sender.stderr());
    assert!(at_switch < LEN as u64, "the stream ended before the migration: nothing crossed the switch");
    let echoed = stream.finish();
    eprintln!("migrated after {at_switch} of {LEN} bytes echoed; {}; sha256 {}", stdout.trim(), echoed.got_sha256);

    receiver.send("touch /tmp/stop");
    receiver.expect("WROTE-");
    let records: u64 = receiver.expect("\n").trim().parse().expect("the writer's record count");
    assert_eq!(receiver.sh("umount /mnt && echo UMOUNT-OK"), "UMOUNT-OK");
    receiver.send("poweroff -f");
    assert_eq!(receiver.wait().code(), Some(0), "the migrated guest powers off: {}", receiver.stderr());
    ft::assert_fsck_clean(&disk);
    let log = String::from_utf8(ft::debugfs_cat(&disk, "/log")).expect("text records");
    let want: Vec<String> = (1..=records).map(|i| format!("record-{i}")).collect();
    assert_eq!(log.lines().collect::<Vec<_>>(), want, "the records on disk are not the ones the guest wrote");
    eprintln!("{records} records on the disk after the migration");
}
