//! Network namespaces for end-to-end network tests: a throwaway "host" per test, holding the tap kemari uses.
//!
//! [`NetNs::new`] creates a namespace `kmr-<pid>-<tag>`; dropping it deletes the namespace and with it everything
//! inside (taps, addresses), also when the test panics. Namespaces left by earlier runs that were killed (their
//! pid is gone) are removed on the way. Code that must run "on the host" — starting kemari so that it opens its
//! tap in the namespace, sockets, pings — runs on a thread that entered the namespace ([`NetNs::enter`],
//! [`NetNs::spawn`]); a process started from such a thread inherits the namespace.
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and the `ip` tool.

#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const PREFIX: &str = "kmr-";
const NETNS_DIR: &str = "/run/netns";

/// A network namespace that is deleted when dropped.
pub struct NetNs {
    name: String,
}

/// Panics with a clear message unless the tests run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "network tests need root (network namespaces and taps); run them as root");
}

/// Runs `ip ARGS`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run `ip` (iproute2)");
    assert!(out.status.success(), "`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
}

/// Deletes `kmr-<pid>-*` namespaces whose process is gone (a run killed before its guards ran).
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else { return };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

impl NetNs {
    /// Creates `kmr-<pid>-<tag>` (unique per process and call) with its loopback up.
    pub fn new(tag: &str) -> NetNs {
        require_root();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let name = format!("{PREFIX}{}-{tag}{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]);
        // From here on the guard owns it: a failing step below still deletes it.
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Creates a persistent tap `tap` in the namespace with address `cidr`, up (it has no carrier until kemari
    /// attaches to it).
    pub fn add_tap(&self, tap: &str, cidr: &str) {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
        self.ip(&["addr", "add", cidr, "dev", tap]);
        self.ip(&["link", "set", tap, "up"]);
    }

    /// Creates a persistent tap `tap` with no address, up (an administrator's tap for a bridge port).
    pub fn add_bare_tap(&self, tap: &str) {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
        self.ip(&["link", "set", tap, "up"]);
    }

    /// Creates a bridge `bridge` (no STP, so ports forward at once), up.
    pub fn add_bridge(&self, bridge: &str) {
        self.ip(&["link", "add", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0"]);
        self.ip(&["link", "set", bridge, "up"]);
    }

    /// Makes `dev` a port of `bridge`.
    pub fn join_bridge(&self, dev: &str, bridge: &str) {
        self.ip(&["link", "set", dev, "master", bridge]);
    }

    /// Creates a veth pair: `local` in this namespace and `remote` in `other`, both up.
    pub fn add_veth_to(&self, local: &str, other: &NetNs, remote: &str) {
        self.ip(&["link", "add", local, "type", "veth", "peer", "name", remote, "netns", other.name()]);
        self.ip(&["link", "set", local, "up"]);
        other.ip(&["link", "set", remote, "up"]);
    }

    /// Gives `dev` the address `cidr`.
    pub fn add_addr(&self, dev: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", dev]);
    }

    pub fn link_up(&self, dev: &str) {
        self.ip(&["link", "set", dev, "up"]);
    }

    pub fn link_down(&self, dev: &str) {
        self.ip(&["link", "set", dev, "down"]);
    }

    /// Writes `value` to `/proc/sys/<key>` (dots or slashes) as seen from inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e}", self.name));
    }

    /// Starts capturing every frame on interface `dev` of this namespace (see [`PacketCapture`]).
    pub fn capture(&self, dev: &str) -> PacketCapture {
        PacketCapture::start(self, dev)
    }

    fn join_this_thread(&self) {
        let f = File::open(format!("{NETNS_DIR}/{}", self.name)).expect("open the namespace");
        // SAFETY: setns(2) on a namespace file descriptor we hold open; it switches only the calling thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {}: {}", self.name, io::Error::last_os_error());
    }

    /// Runs `f` on a thread inside the namespace and returns its result. Processes `f` starts and sockets it
    /// creates belong to the namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.join_this_thread();
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Starts `f` on a new thread inside the namespace.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let path = format!("{NETNS_DIR}/{}", self.name);
        let ns = File::open(&path).expect("open the namespace");
        std::thread::spawn(move || {
            // SAFETY: as in `join_this_thread`.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
            drop(ns);
            f()
        })
    }

    /// Pings `dst` from inside the namespace until a reply comes or `timeout` passes.
    pub fn ping(&self, dst: Ipv4Addr, timeout: Duration) -> io::Result<bool> {
        self.enter(|| ping(dst, timeout))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys the interfaces in it, taps included.
        if let Err(e) = Command::new("ip").args(["netns", "del", &self.name]).output() {
            eprintln!("could not delete network namespace {}: {e}", self.name);
        }
    }
}

/// Lets blocking receives on `sock` give up after `micros` (so loops can check their deadlines).
fn set_receive_timeout(sock: &std::os::fd::OwnedFd, micros: i64) {
    let tv = libc::timeval { tv_sec: 0, tv_usec: micros };
    // SAFETY: SO_RCVTIMEO takes a timeval of the size we pass, on a socket we own.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from(c[0]) << 8 };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// ICMP echo through a raw socket of the calling thread's namespace: true when `dst` answered.
fn ping(dst: Ipv4Addr, timeout: Duration) -> io::Result<bool> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    set_receive_timeout(&sock, 200_000);
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
        sin_zero: [0; 8],
    };
    let id = (std::process::id() as u16) ^ 0x4b4d;
    let deadline = Instant::now() + timeout;
    let mut seq = 0u16;
    let mut last_sent: Option<Instant> = None;
    while Instant::now() < deadline {
        if last_sent.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            seq = seq.wrapping_add(1);
            let mut pkt = vec![8u8, 0, 0, 0];
            pkt.extend_from_slice(&id.to_be_bytes());
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(b"kemari-ping-payload-0123456789ab");
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
            // SAFETY: `pkt` and `addr` are valid for the lengths passed.
            let n = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                // No route or neighbour yet: try again on the next round.
                if !matches!(e.raw_os_error(), Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH)) {
                    return Err(e);
                }
            }
            last_sent = Some(Instant::now());
        }
        let mut buf = [0u8; 1500];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            continue; // timeout (EAGAIN) or EINTR
        }
        let pkt = &buf[..n as usize];
        // A raw socket delivers the IP header too.
        let ihl = usize::from(pkt.first().copied().unwrap_or(0) & 0xf) * 4;
        if pkt.len() < ihl + 8 || pkt[12..16] != dst.octets() {
            continue;
        }
        let icmp = &pkt[ihl..];
        if icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One frame seen by a [`PacketCapture`].
#[derive(Clone, Debug)]
pub struct Frame {
    /// `sll_pkttype`: `libc::PACKET_OUTGOING` for frames the namespace's kernel sends out of the interface; any
    /// other value for frames that came in (on a tap: frames the process behind the tap wrote).
    pub pkttype: u8,
    pub bytes: Vec<u8>,
}

impl Frame {
    /// True for a frame that entered the namespace through the interface (on a tap: written by the VMM).
    pub fn incoming(&self) -> bool {
        self.pkttype != libc::PACKET_OUTGOING
    }

    /// Source MAC address of the Ethernet frame.
    pub fn src_mac(&self) -> [u8; 6] {
        let mut m = [0u8; 6];
        if self.bytes.len() >= 12 {
            m.copy_from_slice(&self.bytes[6..12]);
        }
        m
    }
}

/// A raw AF_PACKET capture of one interface, on a thread inside the interface's namespace; stops when dropped.
/// No tcpdump needed.
pub struct PacketCapture {
    frames: std::sync::Arc<std::sync::Mutex<Vec<Frame>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PacketCapture {
    fn start(ns: &NetNs, dev: &str) -> PacketCapture {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let dev = dev.to_string();
        let (f2, s2) = (frames.clone(), stop.clone());
        let thread = ns.spawn(move || {
            let sock = match open_packet_socket(&dev) {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut buf = vec![0u8; 65536];
            while !s2.load(Ordering::Relaxed) {
                // SAFETY: all-zero is a valid sockaddr_ll.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: `buf` and `from` are valid for writes of the lengths passed.
                let n = unsafe {
                    libc::recvfrom(
                        sock.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut from as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    continue; // SO_RCVTIMEO (EAGAIN) or EINTR: look at the stop flag again
                }
                f2.lock().unwrap().push(Frame { pkttype: from.sll_pkttype, bytes: buf[..n as usize].to_vec() });
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("cannot capture on {}: {e}", ns.name()),
            Err(_) => panic!("capture thread in {} died", ns.name()),
        }
        PacketCapture { frames, stop, thread: Some(thread) }
    }

    /// Every frame captured so far.
    pub fn frames(&self) -> Vec<Frame> {
        self.frames.lock().unwrap().clone()
    }

    /// Frames captured so far that entered through the interface with source MAC `mac`.
    pub fn incoming_from(&self, mac: [u8; 6]) -> Vec<Frame> {
        self.frames().into_iter().filter(|f| f.incoming() && f.src_mac() == mac).collect()
    }

    /// Forgets what was captured so far.
    pub fn clear(&self) {
        self.frames.lock().unwrap().clear();
    }
}

impl Drop for PacketCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An AF_PACKET socket bound to `dev` in the calling thread's namespace, with a short receive timeout.
fn open_packet_socket(dev: &str) -> io::Result<std::os::fd::OwnedFd> {
    let cname = std::ffi::CString::new(dev).unwrap();
    // SAFETY: `cname` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // Protocol 0 receives nothing until bind() names the interface and the protocol: no stray frames from other
    // interfaces in between.
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll; the fields we need are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    set_receive_timeout(&sock, 100_000);
    Ok(sock)
}
