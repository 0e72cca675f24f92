//! Linux tap devices: the host end of a virtio-net NIC.
//!
//! [`Tap::open`] attaches to the tap interface `name` (`IFF_TAP | IFF_NO_PI`, no `IFF_VNET_HDR`: the tap
//! carries plain Ethernet frames; the virtio-net header lives only between the guest and the device model).
//!
//! - A tap created beforehand (`ip tuntap add NAME mode tap`, possibly `user USER` so kemari needs no root)
//!   is used as it is; it outlives kemari, with its addresses and bridge membership.
//! - A missing tap is created by kemari (this needs `CAP_NET_ADMIN`). It is not persistent: it disappears when
//!   kemari exits, and anything configured on it (addresses, bridge port) goes with it.
//!
//! Either way kemari tries to bring the interface up (`SIOCSIFFLAGS IFF_UP`); when it may not (no
//! `CAP_NET_ADMIN`), it logs a warning and carries on: `ip link set NAME up` does it from outside.
//!
//! Direction of traffic:
//! - **TX** (guest → world) never goes through this module's reader: the device hands each frame to the output
//!   gate, whose [`crate::host::HostBackend`] writes it to the fd from [`Tap::writer`]. That is the only writer.
//! - **RX** (world → guest): [`Tap::spawn_reader`] starts a thread that reads frames into a bounded
//!   [`RxQueue`] and wakes the machine loop; the device moves them into guest buffers between CPU slices.
//!   Inputs need no synchronisation with checkpoints (DESIGN.md): a frame dropped because the queue is full
//!   is like one lost on the wire, and TCP resends it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::host::Wake;

/// Frames the reader keeps for the device at most; more are dropped (like frames lost on the wire).
pub const RX_QUEUE_FRAMES: usize = 256;

/// Largest frame the reader takes from the tap: an Ethernet frame for the largest MTU a tap can have (65535),
/// with room for VLAN tags. (Without `IFF_VNET_HDR` the kernel segments large packets before they reach the
/// tap, so frames follow the tap's MTU.) A frame that does not fit is dropped.
pub const MAX_RX_FRAME: usize = 65_536 + 256;

/// Frames the reader moves per batch before it wakes the machine loop.
const RX_BATCH: usize = 64;

const TUN_PATH: &str = "/dev/net/tun";

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?} is too long: Linux interface names have at most 15 bytes")]
    NameTooLong(String),
    #[error("invalid tap name {0:?}: it must be non-empty and contain no '/', ':', '%' or whitespace")]
    InvalidName(String),
    #[error(
        "{TUN_PATH} is missing: load the tun driver (`modprobe tun`) or create the node (`mknod {TUN_PATH} c 10 200`)"
    )]
    TunMissing,
    #[error(
        "permission denied for tap {0:?}: creating or attaching a tap needs CAP_NET_ADMIN (run as root), or create it \
         for your user first: `ip tuntap add {0} mode tap user $USER`"
    )]
    Permission(String),
    #[error("tap {0:?} is busy: another process (another kemari?) has it open")]
    Busy(String),
    #[error("an interface named {0:?} exists and is not a tap (is it a tun, or a physical or veth interface?)")]
    NotATap(String),
    #[error("cannot open tap {name:?}: {source}")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
}

impl Tap {
    /// Opens (creating it if it does not exist) the tap `name` and brings it up if allowed.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        validate_name(name)?;
        let existed = interface_exists(name);
        let file = OpenOptions::new().read(true).write(true).open(TUN_PATH).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => TapError::TunMissing,
            Some(libc::EACCES) | Some(libc::EPERM) => TapError::Permission(name.to_string()),
            _ => TapError::Io { name: name.to_string(), source: e },
        })?;

        let mut req = ifreq(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a valid, initialised one that lives
        // for the duration of the call, and `file` is an open /dev/net/tun descriptor.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut libc::ifreq) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(name.to_string()),
                Some(libc::EBUSY) => TapError::Busy(name.to_string()),
                Some(libc::EINVAL) if existed => TapError::NotATap(name.to_string()),
                _ => TapError::Io { name: name.to_string(), source: e },
            });
        }

        let tap = Tap { file, name: name.to_string(), created: !existed };
        if let Err(e) = set_up(name) {
            tracing::warn!(tap = name, error = %e, "could not bring the tap up; run `ip link set {name} up`");
        }
        tracing::info!(tap = name, created = tap.created, "tap attached");
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether kemari created the tap (it then disappears when kemari exits).
    pub fn created(&self) -> bool {
        self.created
    }

    /// A handle for the gate's [`crate::host::HostBackend`], the only writer of frames to the tap.
    pub fn writer(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Starts a thread that reads frames from the tap into a bounded queue (at most [`RX_QUEUE_FRAMES`]; frames
    /// arriving while it is full are dropped) and calls `wake` after each batch.
    ///
    /// The thread holds its own handle to the tap and ends when every clone of the returned [`RxQueue`] is
    /// dropped, or when the tap goes away.
    pub fn spawn_reader(&self, wake: Wake) -> io::Result<RxQueue> {
        let tap = self.file.try_clone()?;
        let (stop_rx, stop_tx) = pipe()?;
        let queue = RxQueue::with_stop(Arc::new(stop_tx));
        let shared = queue.shared.clone();
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("tap-rx-{}", self.name))
            .spawn(move || reader(tap, stop_rx, shared, wake, &name))?;
        Ok(queue)
    }
}

fn validate_name(name: &str) -> Result<(), TapError> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(TapError::NameTooLong(name.to_string()));
    }
    let bad = |c: char| c == '/' || c == ':' || c == '%' || c.is_whitespace() || c.is_control();
    if name.is_empty() || name == "." || name == ".." || name.chars().any(bad) {
        return Err(TapError::InvalidName(name.to_string()));
    }
    Ok(())
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is a plain C struct (a name array and a union of integers and pointers) for which all
    // zero bytes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else { return false };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Sets IFF_UP on interface `name` (needs CAP_NET_ADMIN unless it is up already).
fn set_up(name: &str) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just created and own exclusively.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFFLAGS fills `ifr_flags` of the valid `ifreq` we pass; `sock` is open.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req as *mut libc::ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS initialised the `ifru_flags` member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the valid `ifreq` we pass; `sock` is open.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req as *mut libc::ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits until `tap` is readable or `stop` is readable or closed, or, with `timeout_ms == 0`, just looks.
/// Returns (tap readable, tap broken, stop requested).
fn wait(tap: RawFd, stop: Option<RawFd>, timeout_ms: libc::c_int) -> io::Result<(bool, bool, bool)> {
    let mut fds = [
        libc::pollfd { fd: tap, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: stop.unwrap_or(-1), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd structs (a negative fd is ignored by poll).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if n >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let readable = fds[0].revents & libc::POLLIN != 0;
    let broken = !readable && fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0;
    Ok((readable, broken, fds[1].revents != 0))
}

/// The reader thread: tap → queue, then wake the machine loop.
fn reader(tap: File, stop: OwnedFd, shared: Arc<Shared>, wake: Wake, name: &str) {
    let fd = tap.as_raw_fd();
    let mut buf = vec![0u8; MAX_RX_FRAME + 1];
    let mut warned = false;
    loop {
        match wait(fd, Some(stop.as_raw_fd()), -1) {
            Ok((_, _, true)) => return,
            Ok((false, true, _)) => {
                tracing::warn!(tap = name, "tap went away; no more frames for the guest");
                return;
            }
            Ok((false, false, _)) => continue,
            Ok((true, _, _)) => {}
            Err(e) => {
                tracing::warn!(tap = name, error = %e, "polling the tap failed; no more frames for the guest");
                return;
            }
        }
        let mut moved = 0;
        loop {
            // The tap is readable and this thread is its only reader, so this read does not block. One read
            // returns exactly one frame.
            match (&tap).read(&mut buf) {
                Ok(n) if n > MAX_RX_FRAME => {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(n) => {
                    if n > 0 && shared.push(buf[..n].to_vec()) {
                        moved += 1;
                        // The guest hears of the first frame at once, not after the whole batch (logging
                        // each frame on arrival takes a little time).
                        if moved == 1 {
                            wake();
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The tap lost its interface (deleted) or the handle is unusable: nothing more will come.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBADFD | libc::EBADF | libc::EIO | libc::ENODEV)) => {
                    tracing::warn!(tap = name, error = %e, "reading the tap failed; no more frames for the guest");
                    if moved > 0 {
                        wake();
                    }
                    return;
                }
                // Anything else concerns one frame (the kernel consumed it): count it as lost and go on.
                Err(e) => {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(tap = name, error = %e, "a frame could not be read from the tap; dropped");
                    }
                }
            }
            if moved >= RX_BATCH || !matches!(wait(fd, None, 0), Ok((true, _, _))) {
                break;
            }
        }
        if moved > 1 {
            wake();
        }
    }
}

/// Where a queue reports each frame it accepts, with the frame's number (the input log under protection: see
/// [`RxQueue::log_arrivals`]), in the frames' order: on the tap's reader thread once the frame is queued,
/// outside the queue's lock (the guest takes frames meanwhile); for the frames already queued when logging
/// starts, inside `log_arrivals`. It must not wait for anything slow (e.g. a peer).
pub type ArrivalSink = Arc<dyn Fn(u64, Vec<u8>) + Send + Sync>;

struct Arrivals {
    /// The number of the next frame accepted.
    next: u64,
    sink: ArrivalSink,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Vec<u8>>,
    arrivals: Option<Arrivals>,
}

struct Shared {
    queue: Mutex<Queue>,
    capacity: usize,
    dropped: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame` (and reports it while arrivals are logged); drops it (and counts it) when the queue is
    /// full.
    fn push(&self, frame: Vec<u8>) -> bool {
        let mut q = self.lock();
        if q.frames.len() >= self.capacity {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let Some(a) = &mut q.arrivals else {
            q.frames.push_back(frame);
            return true;
        };
        // Numbered here, in queue order; reported once the guest may take it (one reader per queue keeps the
        // reports in that order).
        let (seq, sink) = (a.next, a.sink.clone());
        a.next += 1;
        q.frames.push_back(frame.clone());
        drop(q);
        sink(seq, frame);
        true
    }
}

/// Received frames waiting for guest buffers, shared between a tap's reader thread and the device.
///
/// Clones share the queue; the reader thread (if any) stops once every clone is dropped.
#[derive(Clone)]
pub struct RxQueue {
    shared: Arc<Shared>,
    /// Dropping the last clone closes the write end of the reader's stop pipe.
    _stop: Option<Arc<OwnedFd>>,
}

impl std::fmt::Debug for RxQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxQueue").field("len", &self.len()).field("dropped", &self.dropped()).finish()
    }
}

impl Default for RxQueue {
    fn default() -> Self {
        RxQueue::new(RX_QUEUE_FRAMES)
    }
}

impl RxQueue {
    /// A queue with no reader thread, holding at most `capacity` frames (tests, or frames from elsewhere).
    pub fn new(capacity: usize) -> RxQueue {
        RxQueue {
            shared: Arc::new(Shared { queue: Mutex::default(), capacity, dropped: AtomicU64::new(0) }),
            _stop: None,
        }
    }

    fn with_stop(stop: Arc<OwnedFd>) -> RxQueue {
        RxQueue { _stop: Some(stop), ..RxQueue::new(RX_QUEUE_FRAMES) }
    }

    /// Queues a frame; returns false (and counts a drop) when the queue is full.
    pub fn push(&self, frame: Vec<u8>) -> bool {
        self.shared.push(frame)
    }

    /// Puts `frames` in front of what is queued, in their order (a failover's replay), whatever the capacity.
    /// Never while arrivals are logged (they would be numbered out of order).
    pub fn push_front(&self, frames: Vec<Vec<u8>>) {
        let mut q = self.shared.lock();
        debug_assert!(q.arrivals.is_none(), "a replay into a queue whose arrivals are logged");
        for f in frames.into_iter().rev() {
            q.frames.push_front(f);
        }
    }

    /// Drops every queued frame; returns how many. Never while arrivals are logged.
    pub fn clear(&self) -> usize {
        let mut q = self.shared.lock();
        debug_assert!(q.arrivals.is_none(), "frames dropped from a queue whose arrivals are logged");
        let n = q.frames.len();
        q.frames.clear();
        n
    }

    /// The oldest queued frame.
    pub fn pop(&self) -> Option<Vec<u8>> {
        self.shared.lock().frames.pop_front()
    }

    /// Reports every frame the queue accepts from now on to `sink`, numbered in queue order, the frames queued
    /// now first: frame number `consumed + 1` is the next one taken (the queue is first in, first out, and
    /// every frame taken counts as consumed). With `None`, stops. The input log uses it so that a frame reaches
    /// the secondary as soon as it arrives, not only once the guest took it: a request waiting here when the
    /// primary dies is replayed too.
    pub fn log_arrivals(&self, consumed: u64, sink: Option<ArrivalSink>) {
        let mut q = self.shared.lock();
        q.arrivals = sink.map(|sink| {
            let mut next = consumed + 1;
            for f in &q.frames {
                sink(next, f.clone());
                next += 1;
            }
            Arrivals { next, sink }
        });
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.shared.lock().frames.len()
    }

    /// Frames dropped so far because the queue was full (or too big to read).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_arrivals_are_numbered_in_queue_order_from_what_was_consumed() {
        let q = RxQueue::new(3);
        q.push(b"a".to_vec());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        // Five frames consumed before: "a", waiting, is number 6.
        q.log_arrivals(5, Some(Arc::new(move |n, f| s.lock().unwrap().push((n, f)))));
        q.push(b"b".to_vec());
        assert_eq!(q.pop(), Some(b"a".to_vec()));
        q.push(b"c".to_vec());
        q.push(b"d".to_vec());
        assert!(!q.push(b"e".to_vec()), "full: dropped, and not numbered");
        q.log_arrivals(0, None);
        q.pop();
        q.push(b"f".to_vec());
        let want: Vec<(u64, Vec<u8>)> =
            [(6, "a"), (7, "b"), (8, "c"), (9, "d")].iter().map(|&(n, f)| (n, f.as_bytes().to_vec())).collect();
        assert_eq!(*seen.lock().unwrap(), want);
    }

    #[test]
    fn names_are_checked_before_anything_is_opened() {
        assert!(matches!(Tap::open("a-very-long-tap-name"), Err(TapError::NameTooLong(_))));
        assert!(matches!(Tap::open(""), Err(TapError::InvalidName(_))));
        assert!(matches!(Tap::open("tap%d"), Err(TapError::InvalidName(_))));
        assert!(matches!(Tap::open("a/b"), Err(TapError::InvalidName(_))));
        assert!(validate_name("kmrtap0").is_ok());
        assert!(validate_name("123456789012345").is_ok());
    }

    /// Runs `f` on a thread in a fresh network namespace of its own (gone when the thread ends), or returns
    /// None when we may not create one (not root).
    fn in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare(2) with CLONE_NEWNET only changes this thread's network namespace.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    eprintln!("skipped: cannot create a network namespace ({})", io::Error::last_os_error());
                    return None;
                }
                Some(f())
            })
            .join()
            .unwrap()
        })
    }

    #[test]
    fn creates_a_missing_tap_brings_it_up_and_reads_frames() {
        in_private_netns(|| {
            let tap = Tap::open("kmrtest0").expect("open tap");
            assert!(tap.created(), "no tap of that name existed in the fresh namespace");
            assert_eq!(tap.name(), "kmrtest0");
            let flags = std::fs::read_to_string("/sys/class/net/kmrtest0/flags").ok();
            if let Some(flags) = flags {
                // sysfs shows the namespace of whoever mounted it; only check when it shows our tap.
                let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
                assert_ne!(flags & libc::IFF_UP as u32, 0, "tap is up");
            }
            assert!(matches!(Tap::open("kmrtest0"), Err(TapError::Busy(_))));
            assert!(matches!(Tap::open("lo"), Err(TapError::NotATap(_))));

            let woken = Arc::new(AtomicU64::new(0));
            let w = woken.clone();
            let rx = tap
                .spawn_reader(Arc::new(move || {
                    w.fetch_add(1, Ordering::SeqCst);
                }))
                .unwrap();
            // Make the kernel send something on the tap: an ARP request for a neighbour we send UDP to.
            let ok = std::process::Command::new("ip")
                .args(["addr", "add", "10.251.0.1/24", "dev", "kmrtest0"])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("skipped the RX part: `ip addr add` failed");
                return;
            }
            let sock = std::net::UdpSocket::bind("10.251.0.1:0").unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let arp = loop {
                let _ = sock.send_to(b"x", "10.251.0.2:9");
                std::thread::sleep(std::time::Duration::from_millis(50));
                if let Some(f) = std::iter::from_fn(|| rx.pop()).find(|f| f.len() >= 14 && f[12..14] == [8, 6]) {
                    break f;
                }
                assert!(std::time::Instant::now() < deadline, "no ARP request came out of the tap");
            };
            assert_eq!(&arp[..6], &[0xff; 6], "ARP request is broadcast");
            assert!(woken.load(Ordering::SeqCst) > 0, "reader woke the machine loop");
            // The frame came through plain: no packet-info or virtio-net header in front.
            assert_eq!(&arp[14..16], &[0, 1], "ARP hardware type Ethernet right after the Ethernet header");
            // Dropping the queue stops the reader, which closes its handle: with ours gone too, the tap (created
            // by us, not persistent) disappears, and opening the name creates a new one.
            drop(rx);
            drop(tap);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while interface_exists("kmrtest0") {
                assert!(std::time::Instant::now() < deadline, "the reader thread kept the tap open");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert!(Tap::open("kmrtest0").unwrap().created());
        });
    }

    #[test]
    fn queue_is_bounded_and_fifo() {
        let q = RxQueue::new(2);
        assert!(q.is_empty());
        assert!(q.push(vec![1]));
        assert!(q.clone().push(vec![2]));
        assert!(!q.push(vec![3]), "full queue drops");
        assert_eq!(q.dropped(), 1);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some(vec![1]));
        assert_eq!(q.pop(), Some(vec![2]));
        assert_eq!(q.pop(), None);
    }
}
