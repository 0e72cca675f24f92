//! Receivers (a standby, `run --incoming`) without a guest, their peers played by the test.
//!
//! Anyone who can reach a receiver's port: a header claiming gigabytes, a connection that trickles or idles,
//! a message longer than the announced machine could send. Receivers refuse each with a reason, take memory
//! only as bytes arrive, and keep serving their control API and other peers meanwhile. And a standby's own
//! life: how it ends when told to, and what its status says when a primary leaves before protection was
//! established. (Fault tolerance with real pairs is in `failover.rs`.)
//!
//! Most receivers here run with `--insecure-plaintext`: they test the protocol's own defences, which a peer
//! that passed the TLS handshake (a compromised node) meets too. The `tls_` tests show that with credentials
//! a peer outside the cluster and VM gets nothing further than the handshake.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Vm;
use kemari_replication::arbiter::{Arbiter, FileArbiter};
use kemari_replication::wire::{self, Hello, WireError};
use kemari_replication::Storage;

/// Only guards against a hang; nothing asserts on time.
const PATIENCE: Duration = Duration::from_secs(60);

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kemari-peers-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("arbiter")).unwrap();
    dir
}

fn status(api: &str) -> serde_json::Value {
    let (ok, out) = common::ctl(api, &["status"]);
    assert!(ok, "status failed: {out}");
    serde_json::from_str(&out).unwrap()
}

/// Resident memory of a process, in bytes.
fn rss(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 =
        s.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    kb << 10
}

/// A header of message `kind` claiming `len` bytes, followed by `with` of them.
fn header(kind: u8, len: u64, with: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(with);
    m
}

/// Sends `bytes` one at a time, one every `every`, until all are sent or the receiver closes; true when it
/// was closed on.
fn trickle(addr: SocketAddr, bytes: Vec<u8>, every: Duration) -> std::thread::JoinHandle<bool> {
    let conn = TcpStream::connect(addr).unwrap();
    std::thread::spawn(move || {
        for b in bytes {
            if (&conn).write_all(&[b]).is_err() {
                return true;
            }
            std::thread::sleep(every);
        }
        false
    })
}

/// A `run --incoming` receiver in `dir` with the link arguments `link(dir)`: the process, its control socket
/// and where it listens.
fn incoming(dir: &Path, link: impl Fn(&Path) -> Vec<String>) -> (Vm, String, SocketAddr) {
    let api = dir.join("api.sock").display().to_string();
    let to = free_addr();
    let mut args: Vec<String> = ["run", "--incoming", &to.to_string(), "--api", &api].map(String::from).to_vec();
    args.extend(link(dir));
    let mut receiver = Vm::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    receiver.expect_stderr("waiting for an incoming migration");
    (receiver, api, to)
}

fn plaintext(_: &Path) -> Vec<String> {
    vec!["--insecure-plaintext".into()]
}

/// A migration sender's HELLO message for a 16 MiB, 1-hart machine.
fn migration_hello() -> Vec<u8> {
    let mut hello = b"KMIG".to_vec();
    hello.extend_from_slice(&1u32.to_le_bytes());
    hello.extend_from_slice(&1u32.to_le_bytes());
    hello.extend_from_slice(&(16u64 << 20).to_le_bytes());
    header(1, hello.len() as u64, &hello)
}

struct Standby {
    vm: Vm,
    dir: PathBuf,
    api: String,
    listen: SocketAddr,
}

impl Standby {
    /// A standby whose link is plaintext.
    fn start(tag: &str) -> Standby {
        Standby::start_with(tag, plaintext)
    }

    /// A standby with the link arguments `link(dir)` gives.
    fn start_with(tag: &str, link: impl Fn(&Path) -> Vec<String>) -> Standby {
        let dir = scratch(tag);
        let api = dir.join("api.sock").display().to_string();
        let listen = free_addr();
        let arbiter = format!("file:{}", dir.join("arbiter").display());
        let mut args: Vec<String> = [
            "standby",
            "--listen",
            &listen.to_string(),
            "--arbiter",
            &arbiter,
            "--node",
            "sec",
            "--no-rng",
            "--api",
            &api,
        ]
        .map(String::from)
        .to_vec();
        args.extend(link(&dir));
        let mut vm = Vm::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
        vm.expect_stderr("waiting for a primary");
        Standby { vm, dir, api, listen }
    }

    /// A primary as far as the standby can tell: it holds the lease and introduces itself (16 MiB, 1 hart).
    fn fake_primary(&self) -> (FileArbiter, TcpStream) {
        let (lease, hello) = self.lease_and_hello();
        let mut conn = TcpStream::connect(self.listen).unwrap();
        conn.write_all(&hello).unwrap();
        (lease, conn)
    }

    /// The lease taken by a fake primary, and its HELLO message.
    fn lease_and_hello(&self) -> (FileArbiter, Vec<u8>) {
        let mut lease = FileArbiter::new(&self.dir.join("arbiter"), "fake", Duration::from_secs(60)).unwrap();
        let fence = lease.acquire().unwrap();
        let hello = fake_hello(fence);
        let mut msg = Vec::new();
        wire::send(&mut msg, wire::HELLO, &[&hello.encode()]).unwrap();
        (lease, msg)
    }

    fn wait_status(&self, what: &str, cond: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let s = status(&self.api);
            if cond(&s) {
                return s;
            }
            assert!(start.elapsed() < PATIENCE, "the standby's status never showed {what}; last: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_trickling_connection_neither_blocks_a_standby_nor_its_api_nor_a_real_primary() {
    let s = Standby::start("trickle");
    // A plausible HELLO (a header, then 29 bytes) at 0.5 s a byte would take 19 s; a HELLO has to be whole
    // within a couple of seconds.
    let trickler = trickle(s.listen, header(wire::HELLO, 29, &[0; 29]), Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(status(&s.api)["protection"], "standby");
    assert!(!trickler.is_finished(), "the control API answered only after the trickler was done");
    // A primary arriving meanwhile is heard at once.
    let (_lease, _conn) = s.fake_primary();
    s.wait_status("the primary's session", |st| st["protection"] == "syncing");
    assert!(!trickler.is_finished(), "the standby answered only after the trickler gave up");
    assert!(trickler.join().unwrap(), "the standby never closed the trickling connection");
}

/// A primary the standby will not protect is told why, in a REFUSE the primary prints: one whose HELLO claims a
/// fence the arbiter does not name, one of another storage mode, and a second primary while the standby
/// protects a first.
#[test]
fn a_refused_primary_is_told_why() {
    let mut s = Standby::start("refusals");
    let (mut lease, _) = s.lease_and_hello();
    let fence = lease.read().unwrap().fence;
    let told = |hello: Hello| {
        let mut conn = TcpStream::connect(s.listen).unwrap();
        wire::send(&mut conn, wire::HELLO, &[&hello.encode()]).unwrap();
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        match wire::receive(&mut conn, 0) {
            Err(WireError::Refused(why)) => why,
            other => panic!("the primary was not told why: {other:?}"),
        }
    };
    let hello = fake_hello(fence);
    let why = told(Hello { fence: fence + 5, ..hello.clone() });
    assert!(why.contains(&format!("claims fence {}", fence + 5)), "{why}");
    let why = told(Hello { storage: Storage::Replicated, ..hello.clone() });
    assert!(why.contains("Replicated storage"), "{why}");
    let why = told(Hello { arch: kemari_machine::Arch::X86_64, ..hello.clone() });
    assert!(why.contains("the primary runs a x86-64 machine, this node riscv64"), "{why}");

    let mut first = TcpStream::connect(s.listen).unwrap();
    wire::send(&mut first, wire::HELLO, &[&hello.encode()]).unwrap();
    s.wait_status("the first primary's session", |st| st["protection"] == "syncing");
    let why = told(hello);
    assert!(why.contains("already protects the primary at"), "{why}");
    s.vm.expect_stderr("refused a second primary connection");
}

#[test]
fn a_standby_refuses_a_checkpoint_longer_than_the_announced_machine() {
    let mut s = Standby::start("huge");
    let (_lease, mut conn) = s.fake_primary();
    s.wait_status("the session", |st| st["protection"] == "syncing");
    // 8 GiB claimed by 38 bytes, for a machine of 16 MiB.
    conn.write_all(&header(wire::CHECKPOINT, 8 << 30, &[0; 29])).unwrap();
    let line = s.vm.expect_stderr("too large");
    assert!(line.contains("8589934592"), "{line}");
    s.wait_status("the end of the session", |st| st["protection"] == "standby");
    assert!(rss(s.vm.pid()) < 256 << 20, "the standby took memory for bytes that never came");
}

#[test]
fn an_idle_or_huge_sender_does_not_hold_a_migration_receiver() {
    let dir = scratch("incoming");
    let (mut receiver, api, to) = incoming(&dir, plaintext);
    // An idle connection is refused once its HELLO is overdue, while it is still open.
    let idle = TcpStream::connect(to).unwrap();
    let line = receiver.expect_stderr("incoming migration refused");
    assert!(line.contains("no complete HELLO"), "{line}");
    // A sender of a 16 MiB machine that claims an 8 GiB message is refused unread.
    let mut huge = TcpStream::connect(to).unwrap();
    huge.write_all(&migration_hello()).unwrap();
    huge.write_all(&header(2, 8 << 30, &[0; 29])).unwrap();
    let mark = receiver.stderr_lines();
    let line = receiver.expect_stderr_after("incoming migration refused", mark);
    assert!(line.contains("too large"), "{line}");
    assert!(rss(receiver.pid()) < 256 << 20, "the receiver took memory for bytes that never came");
    let st = status(&api);
    assert_eq!(st["refused"], 2, "{st}");
    drop((idle, huge));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A migration receiver makes handshakes and reads HELLOs on threads of their own and receives a stream on
/// another: while idle connections sit there and an introduced sender stalls inside its stream, the control
/// API answers at once (showing whom it receives from), another sender is turned away with a reason, and
/// once the stalled sender is gone the next one is taken.
#[test]
fn a_migration_receivers_api_and_next_sender_wait_for_no_connection() {
    let dir = scratch("incoming-busy");
    let (mut receiver, api, to) = incoming(&dir, plaintext);
    let hello = migration_hello();

    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(to).unwrap()).collect();
    let mut stalled = TcpStream::connect(to).unwrap();
    stalled.write_all(&hello).unwrap();
    stalled.write_all(&header(2, 1 << 20, &[0; 100])).unwrap();
    let local = stalled.local_addr().unwrap().to_string();
    let start = Instant::now();
    let st = loop {
        let st = status(&api);
        if st["receiving_from"].is_string() || start.elapsed() > PATIENCE {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st["receiving_from"], local.as_str(), "{st}");
    assert_eq!(st["refused"], 0, "the idle connections are not overdue yet, and nobody waited for them: {st}");

    let mark = receiver.stderr_lines();
    let mut second = TcpStream::connect(to).unwrap();
    second.write_all(&hello).unwrap();
    let line = receiver.expect_stderr_after("incoming migration refused", mark);
    assert!(line.contains("another sender's migration is being received"), "{line}");

    let mark = receiver.stderr_lines();
    drop(stalled);
    let line = receiver.expect_stderr_after("incoming migration refused", mark);
    assert!(line.contains("vanished") && line.contains(&local), "{line}");
    let mut third = TcpStream::connect(to).unwrap();
    third.write_all(&hello).unwrap();
    let local = third.local_addr().unwrap().to_string();
    let start = Instant::now();
    while status(&api)["receiving_from"] != local.as_str() {
        assert!(start.elapsed() < PATIENCE, "the next sender was never taken: {}", status(&api));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(receiver.try_status().is_none(), "the receiver exited: {}", receiver.stderr());
    drop((idle, second, third));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn many_idle_connections_are_closed_not_queued() {
    let s = Standby::start("crowd");
    let idle: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(s.listen).unwrap()).collect();
    // Beyond the handshakes under way, connections are closed at once: the 200th reads EOF now, not after
    // 199 others timed out one by one.
    let mut last = &idle[199];
    last.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut last, &mut buf).ok(), Some(0), "the connection was not closed");
    // A primary retrying as a real one does (its attempts are closed while the handshake slots are taken) is
    // heard while the idle connections are still open: those in the slots are refused once their HELLO is
    // overdue.
    let mut lease = FileArbiter::new(&s.dir.join("arbiter"), "fake", Duration::from_secs(60)).unwrap();
    let fence = lease.acquire().unwrap();
    let hello = fake_hello(fence);
    let start = Instant::now();
    let _conn = loop {
        let mut conn = TcpStream::connect(s.listen).unwrap();
        // Closed on while the slots are taken: try again.
        let _ = wire::send(&mut conn, wire::HELLO, &[&hello.encode()]);
        std::thread::sleep(Duration::from_millis(200));
        if status(&s.api)["protection"] == "syncing" {
            break conn;
        }
        assert!(start.elapsed() < PATIENCE, "the primary was never heard");
    };
    drop(idle);
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

#[test]
fn a_standby_quits_on_sigterm_and_removes_its_control_socket() {
    let mut s = Standby::start("sigterm");
    assert_eq!(status(&s.api)["protection"], "standby");
    assert!(exists(Path::new(&s.api)));
    s.vm.signal(libc::SIGTERM);
    let code = s.vm.wait();
    assert_eq!(code.code(), Some(0), "a standby told to stop exits 0; stderr:\n{}", s.vm.stderr());
    assert!(!exists(Path::new(&s.api)), "the control socket was left behind");
}

#[test]
fn a_primary_that_leaves_before_protection_is_not_shown_as_syncing() {
    let s = Standby::start("left");
    // It introduces itself, then goes away before sending anything else.
    let (_lease, conn) = s.fake_primary();
    let during = s.wait_status("the session", |st| st["protection"] == "syncing");
    assert_ne!(during["peer"], "", "{during}");
    drop(conn);
    let after = s.wait_status("the session's end", |st| st["protection"] != "syncing");
    assert_eq!(after["protection"], "standby", "{after}");
    assert_eq!(after["peer"], "", "no primary is connected any more: {after}");
}

/// Inside a session, a byte now and then is no sign of life: a primary that trickles a checkpoint (a byte
/// every 50 ms, well inside the 200 ms heartbeat timeout) loses its session as a silent one would, and the
/// standby waits for the next primary.
#[test]
fn a_primary_that_trickles_inside_a_message_loses_its_session() {
    let mut s = Standby::start("trickle-session");
    let (_lease, conn) = s.fake_primary();
    s.wait_status("the session", |st| st["protection"] == "syncing");
    let mut message = header(wire::PAGES, 1 << 20, &[]);
    message.resize(message.len() + 4096, 0);
    let trickler = std::thread::spawn(move || {
        for b in message {
            if (&conn).write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let line = s.vm.expect_stderr("the session ended before protection");
    assert!(line.contains("no heartbeat for"), "{line}");
    let after = s.wait_status("the session's end", |st| st["protection"] != "syncing");
    assert_eq!((after["protection"].as_str(), after["peer"].as_str()), (Some("standby"), Some("")), "{after}");
    assert!(s.vm.try_status().is_none(), "the standby exited: {}", s.vm.stderr());
    drop(trickler);
}

// ------------------------------------------------------------------------------------------ mutual TLS --

/// Credentials in `dir`: `certs/` (the receiver's cluster: nodes `rx` and `pri` of VM `vm`, and `intruder`,
/// signed by the same CA for VM `other-vm`) and `other/` (another cluster's CA with a node `pri` of VM `vm`).
/// Returns the receiver's `--tls` arguments.
fn tls_cluster(dir: &Path) -> Vec<String> {
    let certs = dir.join("certs");
    kemari_transport::make_certs(&certs, "vm", &["rx", "pri"]).unwrap();
    kemari_transport::sign_node(&certs, "other-vm", "intruder").unwrap();
    kemari_transport::make_certs(&dir.join("other"), "vm", &["pri"]).unwrap();
    vec!["--tls".into(), certs.join("rx").display().to_string()]
}

/// Connects to `addr` as `node` of the credentials in `dir`: the TLS handshake's outcome.
fn tls_connect(
    dir: &Path,
    node: &str,
    addr: SocketAddr,
) -> Result<(kemari_transport::Reader, kemari_transport::Writer), kemari_transport::TlsError> {
    let creds = kemari_transport::Credentials::load(dir, node).unwrap();
    creds.connect(TcpStream::connect(addr).unwrap(), PATIENCE)
}

/// With credentials, a standby hears only a node of its cluster and VM. A fake primary without a certificate
/// (holding the lease, with a valid HELLO, then a SHUTDOWN: before TLS it got a session and could end the
/// standby), a node of another cluster and a node of another VM are each refused in the handshake; a node of
/// the cluster that sends garbage is refused at the protocol; the standby keeps standing by through all of
/// them, and a real node of the cluster then gets its session (and can end it with SHUTDOWN).
#[test]
fn tls_a_standby_hears_only_a_node_of_its_cluster_and_vm() {
    use std::io::Read;
    let mut s = Standby::start_with("tls-standby", tls_cluster);
    let (certs, other) = (s.dir.join("certs"), s.dir.join("other"));
    let (_lease, hello) = s.lease_and_hello();
    let mut shutdown = Vec::new();
    wire::send(&mut shutdown, wire::SHUTDOWN, &[]).unwrap();

    let mark = s.vm.stderr_lines();
    let mut plain = TcpStream::connect(s.listen).unwrap();
    plain.write_all(&[&hello[..], &shutdown[..]].concat()).unwrap();
    let line = s.vm.expect_stderr_after("refused a connection", mark);
    assert!(line.contains("TLS handshake"), "{line}");
    plain.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.windows(6).any(|w| w == b"refuse"), "the standby answered in the protocol");

    for (what, dir, node) in [("another cluster", &other, "pri"), ("another VM", &certs, "intruder")] {
        let mark = s.vm.stderr_lines();
        assert!(tls_connect(dir, node, s.listen).is_err(), "{what}: the handshake succeeded");
        let line = s.vm.expect_stderr_after("refused a connection", mark);
        assert!(line.contains("TLS handshake"), "{what}: {line}");
    }

    let mark = s.vm.stderr_lines();
    let (mut r, mut w) = tls_connect(&certs, "pri", s.listen).expect("a node of the cluster is let in");
    w.write_all(b"GET / HTTP/1.1\r\nHost: standby\r\n\r\n").unwrap();
    let line = s.vm.expect_stderr_after("refused a connection", mark);
    assert!(!line.contains("TLS"), "the garbage is refused by the protocol, after the handshake: {line}");
    // A node of the cluster is told why.
    match kemari_transport::frame::receive(&mut r, 0) {
        Err(kemari_transport::frame::FrameError::Refused(why)) => assert!(why.contains("too large"), "{why}"),
        other => panic!("the node was not told why it was refused: {other:?}"),
    }
    assert!(s.vm.try_status().is_none(), "the standby exited: {}", s.vm.stderr());
    let st = status(&s.api);
    assert_eq!((st["protection"].as_str(), st["peer"].as_str()), (Some("standby"), Some("")), "{st}");

    // The same HELLO and SHUTDOWN from a node of the cluster: heard.
    let (_r, mut w) = tls_connect(&certs, "pri", s.listen).unwrap();
    w.write_all(&hello).unwrap();
    s.wait_status("the session with the cluster's node", |st| st["protection"] == "syncing");
    w.write_all(&shutdown).unwrap();
    assert_eq!(s.vm.wait().code(), Some(0), "{}", s.vm.stderr());
}

/// With credentials, a migration receiver takes nothing from a sender without a certificate of its cluster
/// and VM: a plaintext sender with a valid HELLO, and a node of another cluster, are refused in the handshake
/// (the refusals counted in its status), a node of the cluster sending garbage at the protocol.
#[test]
fn tls_a_migration_receiver_takes_nothing_from_a_peer_without_credentials() {
    let dir = scratch("tls-incoming");
    let (mut receiver, api, to) = incoming(&dir, tls_cluster);
    let hello = migration_hello();

    let mark = receiver.stderr_lines();
    let mut plain = TcpStream::connect(to).unwrap();
    plain.write_all(&hello).unwrap();
    let line = receiver.expect_stderr_after("incoming migration refused", mark);
    assert!(line.contains("TLS handshake"), "{line}");

    let mark = receiver.stderr_lines();
    assert!(tls_connect(&dir.join("other"), "pri", to).is_err(), "another cluster's node got through");
    let line = receiver.expect_stderr_after("incoming migration refused", mark);
    assert!(line.contains("TLS handshake"), "{line}");

    let mark = receiver.stderr_lines();
    let (mut r, mut w) = tls_connect(&dir.join("certs"), "pri", to).expect("a node of the cluster is let in");
    w.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let line = receiver.expect_stderr_after("incoming migration refused", mark);
    assert!(line.contains("not a kemari migration stream"), "{line}");
    match kemari_transport::frame::receive(&mut r, 0) {
        Err(kemari_transport::frame::FrameError::Refused(why)) => assert!(why.contains("not a kemari"), "{why}"),
        other => panic!("the node was not told why it was refused: {other:?}"),
    }
    let st = status(&api);
    assert_eq!(st["refused"], 3, "{st}");
    assert!(receiver.try_status().is_none(), "the receiver exited: {}", receiver.stderr());
    drop((plain, w));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The HELLO of a one-hart, 16 MiB RISC-V primary holding `fence`.
fn fake_hello(fence: u64) -> Hello {
    Hello {
        arch: kemari_machine::Arch::Riscv64,
        cpus: 1,
        memory: 16 << 20,
        storage: Storage::Shared,
        disks: vec![],
        node: "fake".into(),
        fence,
    }
}
