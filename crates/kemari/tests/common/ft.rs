//! Fault-tolerance test support: the hosts (network namespaces), a protected pair of real `kemari` processes on
//! them, the client's TCP workloads, console tick parsing, and a man-in-the-middle proxy for the replication link.
//!
//! ```text
//!                              ns "br":  bridge br0
//!                 ┌────────────────┬──────┴─────────┬───────────────┐
//!             pri-up (veth)    sec-up (veth)    cli-up (veth)
//!                 │                │                │
//!   ns "pri": uplink           ns "sec": uplink   ns "cli": eth0 10.0.3.100/24
//!             └ hostbr ┐                └ hostbr ┐
//!               kmrtap0 ← kemari run      kmrtap0 ← kemari standby        guest: 10.0.3.15/24,
//!             repl 10.0.9.1/24 ══════════ repl 10.0.9.2/24                MAC 52:54:00:12:34:56 on both taps
//!                       (replication link: its own veth pair)
//! ```
//!
//! A tap has to live in the namespace of the bridge it joins, and kemari opens its tap in the namespace it runs
//! in; so each host has a little bridge `hostbr` with the tap and an uplink veth to the shared `br0`. The guest
//! MAC is the same on both taps: after a failover the new primary announces it and `br0` learns the new port.
//!
//! A second protected guest fits beside the first ([`SECOND_GUEST`]: tap `kmrtap1` on both hosts, its own MAC,
//! address and standby port); pairs then share one [`Topology`].
//!
//! Everything is torn down on drop, also when a test panics: [`Pair`] kills its kemari processes first (field
//! order), then removes its temporary directory (arbiter, disks, control sockets), then the namespaces (once
//! no pair holds them any more).
//!
//! Timeouts here only keep a broken build from hanging the suite; nothing asserts on time.

#![allow(dead_code, unused_imports)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub use crate::common::{accept, connect, debugfs_cat, e2fs_tool};
use crate::common::{guest_file, kemari_bin, Vm, GUEST_TIMEOUT};
use crate::netns::NetNs;
/// Message kinds of the replication wire protocol (the product's own constants).
pub use kemari_replication::wire;

pub const TAP: &str = "kmrtap0";
pub const GUEST_MAC: &str = "52:54:00:12:34:56";
pub const GUEST_MAC_BYTES: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 15);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 100);
pub const PRIMARY_REPL_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 1);
pub const SECONDARY_REPL_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 2);
pub const STANDBY_PORT: u16 = 7700;
/// Where the hostile-stream proxy listens, in the primary's namespace.
pub const PROXY_PORT: u16 = 7701;
/// Name of the replication veth on both sides.
pub const REPL_DEV: &str = "repl";

/// Where one protected guest sits on the hosts: its tap (the same name on both hosts), MAC, address on the
/// client network and standby port. Several pairs can share one [`Topology`], each with a guest of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestNet {
    pub tap: &'static str,
    pub mac: &'static str,
    pub mac_bytes: [u8; 6],
    pub ip: Ipv4Addr,
    pub standby_port: u16,
}

/// The guest every test has (the constants above).
pub const FIRST_GUEST: GuestNet =
    GuestNet { tap: TAP, mac: GUEST_MAC, mac_bytes: GUEST_MAC_BYTES, ip: GUEST_IP, standby_port: STANDBY_PORT };

/// A second guest beside the first (its own tap, MAC, address and standby port).
pub const SECOND_GUEST: GuestNet = GuestNet {
    tap: "kmrtap1",
    mac: "52:54:00:12:34:57",
    mac_bytes: [0x52, 0x54, 0x00, 0x12, 0x34, 0x57],
    ip: Ipv4Addr::new(10, 0, 3, 16),
    standby_port: 7710,
};

impl Default for GuestNet {
    fn default() -> GuestNet {
        FIRST_GUEST
    }
}

impl GuestNet {
    /// The `--net` argument of both nodes.
    pub fn net_arg(&self) -> String {
        format!("tap={},mac={}", self.tap, self.mac)
    }
}

/// Heartbeat interval given to both processes (the product default).
pub const HEARTBEAT_MS: u64 = 50;
/// Heartbeat timeout given to both processes. Longer than the product default (200 ms): the test machine is small
/// and busy (two emulated guests and a client on two cores), and a spurious takeover would make a test flaky.
/// Failure detection by the connection closing (SIGKILL) does not wait for it; only SIGSTOP does.
pub const HEARTBEAT_TIMEOUT_MS: u64 = 1000;

/// Size of the protected disk images.
pub const DISK_BYTES: u64 = 64 << 20;

/// How long a client waits on a stalled TCP stream before calling it a hang.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Held while a fault-tolerance test runs; see [`serial`].
pub struct Serial {
    _thread: MutexGuard<'static, ()>,
    _file: std::fs::File,
}

/// Fault-tolerance tests run one at a time: each runs two emulated guests' worth of processes, and running them
/// side by side on a small machine only invites spurious heartbeat timeouts. A mutex serialises the tests of one
/// process (`cargo test`), a lock file those of separate processes (`cargo nextest`, one process per test).
pub fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let thread = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let path = std::env::temp_dir().join("kemari-ft-tests.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor we own; the lock goes with the file when `Serial` drops.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}: {}", path.display(), std::io::Error::last_os_error());
    Serial { _thread: thread, _file: file }
}

// ---------------------------------------------------------------------------------------------------- hosts --

/// The four namespaces and their links (see the module docs). Deleted on drop.
pub struct Topology {
    pub cli: NetNs,
    pub pri: NetNs,
    pub sec: NetNs,
    pub br: NetNs,
}

/// Best effort: no IPv6 (no router solicitations, no DAD, no MLD reports) in a test namespace, so captures only
/// show what the tests cause. Set before the interfaces exist so they inherit it.
fn quiet_ipv6(ns: &NetNs) {
    for key in ["net/ipv6/conf/default/disable_ipv6", "net/ipv6/conf/all/disable_ipv6"] {
        let path = format!("/proc/sys/{key}");
        let _ = ns.enter(|| std::fs::write(&path, "1"));
    }
}

impl Topology {
    pub fn new() -> Topology {
        let br = NetNs::new("br");
        let pri = NetNs::new("pri");
        let sec = NetNs::new("sec");
        let cli = NetNs::new("cli");
        for ns in [&br, &pri, &sec, &cli] {
            quiet_ipv6(ns);
        }
        br.add_bridge("br0");
        for (host, port) in [(&pri, "pri-up"), (&sec, "sec-up")] {
            host.add_bridge("hostbr");
            // The administrator's tap, created before kemari starts, with no address: a bridge port.
            host.add_bare_tap(TAP);
            host.join_bridge(TAP, "hostbr");
            host.add_veth_to("uplink", &br, port);
            host.join_bridge("uplink", "hostbr");
            br.join_bridge(port, "br0");
        }
        cli.add_veth_to("eth0", &br, "cli-up");
        br.join_bridge("cli-up", "br0");
        cli.add_addr("eth0", &format!("{CLIENT_IP}/24"));
        // The replication link: a direct veth pair between the two hosts.
        pri.add_veth_to(REPL_DEV, &sec, REPL_DEV);
        pri.add_addr(REPL_DEV, &format!("{PRIMARY_REPL_IP}/24"));
        sec.add_addr(REPL_DEV, &format!("{SECONDARY_REPL_IP}/24"));
        Topology { cli, pri, sec, br }
    }

    /// Gives both hosts one more administrator's tap `tap` on their `hostbr` (for a second guest).
    pub fn add_guest_tap(&self, tap: &str) {
        for host in [&self.pri, &self.sec] {
            host.add_bare_tap(tap);
            host.join_bridge(tap, "hostbr");
        }
    }

    /// Partitions the two hosts: the replication link goes down on both ends (the client network stays up).
    pub fn cut_link(&self) {
        self.pri.link_down(REPL_DEV);
        self.sec.link_down(REPL_DEV);
    }

    /// Undoes [`Topology::cut_link`].
    pub fn restore_link(&self) {
        self.pri.link_up(REPL_DEV);
        self.sec.link_up(REPL_DEV);
    }
}

// ----------------------------------------------------------------------------------------------- temp files --

/// A fresh directory under the system temp dir, removed with everything in it on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "kemari-ft-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A sparse raw image of [`DISK_BYTES`] bytes.
pub fn make_image(path: &Path) {
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(DISK_BYTES).expect("size image");
}

/// `cp --sparse=always FROM TO`: the secondary's replica, identical to the primary's copy before start.
pub fn copy_image(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("--sparse=always").arg(from).arg(to).status().expect("run cp");
    assert!(st.success(), "cp {} {} failed", from.display(), to.display());
}

/// sha256 of `data` as hex, by the host's `sha256sum`.
pub fn sha256(data: &[u8]) -> String {
    let mut child =
        Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run sha256sum");
    let mut stdin = child.stdin.take().unwrap();
    // Feed from a thread: sha256sum's output pipe cannot fill, but keep it simple and deadlock-free anyway.
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

/// sha256 of a file's bytes.
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

/// Host `e2fsck -fn IMAGE`: panics with its report unless the file system is clean.
pub fn assert_fsck_clean(image: &Path) {
    let out = Command::new(e2fs_tool("e2fsck")).arg("-fn").arg(image).output().expect("run e2fsck");
    assert!(
        out.status.success(),
        "host e2fsck -fn {} reports problems ({}):\n{}{}",
        image.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// --------------------------------------------------------------------------------------------- randomness --

/// A small generator (splitmix64). The seed comes from `KEMARI_FT_SEED` if set, else from the clock; it is
/// printed so a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(test: &str) -> Rng {
        let seed = match std::env::var("KEMARI_FT_SEED") {
            Ok(s) => s.parse().expect("KEMARI_FT_SEED must be a number"),
            Err(_) => {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
                (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
            }
        };
        eprintln!("{test}: random seed {seed} (replay with KEMARI_FT_SEED={seed})");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Deterministic incompressible bytes.
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    seed |= 1;
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

/// A number from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number"))).unwrap_or(default)
}

// ------------------------------------------------------------------------------------------ the kemari CLI --

/// Panics with a clear message unless this `kemari` has the fault-tolerance command line (issue 5): the FT tests
/// then fail, they do not skip.
pub fn require_ft_cli() {
    static MISSING: OnceLock<Vec<String>> = OnceLock::new();
    let missing = MISSING.get_or_init(|| {
        let help = |sub: &str| {
            let out = Command::new(kemari_bin()).args([sub, "--help"]).output().expect("run kemari");
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        };
        let standby = help("standby");
        let run = help("run");
        let mut missing = Vec::new();
        for flag in ["--listen", "--arbiter", "--node", "--storage", "--heartbeat-ms", "--heartbeat-timeout-ms"] {
            if !standby.contains(flag) {
                missing.push(format!("kemari standby {flag}"));
            }
        }
        for flag in
            ["--protect", "--arbiter", "--node", "--storage", "--sync", "--window-us", "--interval-ms", "--strict"]
        {
            if !run.contains(flag) {
                missing.push(format!("kemari run {flag}"));
            }
        }
        missing
    });
    assert!(missing.is_empty(), "this kemari has no fault tolerance yet (issue 5): missing {}", missing.join(", "));
}

/// `kemari ctl --api SOCK status`, parsed.
pub fn status(api: &Path) -> serde_json::Value {
    let out = Command::new(kemari_bin()).arg("ctl").arg("--api").arg(api).arg("status").output().expect("kemari ctl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "kemari ctl status failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("status is not JSON ({e}): {text}"))
}

// ------------------------------------------------------------------------------------------ protected pair --

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Both processes name the same image file.
    Shared,
    /// Each has its own copy; block writes travel inside checkpoints.
    Replicated,
}

impl Storage {
    pub fn flag(self) -> &'static str {
        match self {
            Storage::Shared => "shared",
            Storage::Replicated => "replicated",
        }
    }
}

/// How to start a [`Pair`].
#[derive(Clone, Debug, Default)]
pub struct PairOptions {
    /// A protected disk (/dev/vda in the guest), and how it is stored.
    pub disk: Option<Storage>,
    /// Put a [`Proxy`] on the replication link (the primary connects to it; it connects to the standby).
    pub proxy: bool,
    /// More `kemari run` arguments for the primary (e.g. a sync policy).
    pub primary_args: Vec<String>,
    /// More `kemari standby` arguments for the secondary (e.g. `--reprotect`).
    pub secondary_args: Vec<String>,
    /// Environment of the primary's process (e.g. a fault to inject).
    pub primary_env: Vec<(String, String)>,
    /// Where the shared image is (made there if missing) instead of the pair's own directory.
    pub shared_disk: Option<PathBuf>,
    /// Replicate over bare TCP (`--insecure-plaintext`) instead of mutual TLS; implied by `proxy`, which
    /// reads and corrupts the protocol on the wire.
    pub plaintext: bool,
    /// The `--arbiter` both nodes get (e.g. `etcd:...`) instead of a file arbiter in the pair's directory.
    pub arbiter: Option<String>,
    /// The guest's tap, MAC, address and standby port ([`FIRST_GUEST`] unless another pair has it).
    pub guest: GuestNet,
    /// The VM's `--name` on both nodes.
    pub name: Option<String>,
}

/// The VM the test certificates name.
pub const CERT_VM: &str = "kemari-test";

/// `--tls DIR/NODE` for `node`, making the cluster CA in `certs` and the node's certificate (with
/// `kemari certs`) if they are not there yet; `--insecure-plaintext` without `certs`.
pub fn link_args(certs: Option<&Path>, node: &str) -> Vec<String> {
    let Some(certs) = certs else { return vec!["--insecure-plaintext".into()] };
    if !certs.join(format!("{node}.pem")).exists() {
        let mut cmd = Command::new(kemari_bin());
        cmd.arg("certs").arg("--dir").arg(certs).args(["--vm", CERT_VM]);
        if certs.join("ca.pem").exists() {
            cmd.arg("--add");
        }
        let out = cmd.arg(node).output().expect("run kemari certs");
        assert!(out.status.success(), "kemari certs failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    vec!["--tls".into(), certs.join(node).display().to_string()]
}

/// `kemari standby` listening on `listen` with the test's arbiter, heartbeat, tap and control socket, and
/// its link's credentials in `certs` (plaintext without).
pub fn standby_args(arbiter: &Path, listen: SocketAddr, node: &str, api: &Path, certs: Option<&Path>) -> Vec<String> {
    standby_args_with(&format!("file:{}", arbiter.display()), listen, node, api, certs)
}

/// [`standby_args`] with any `--arbiter` spec.
pub fn standby_args_with(
    arbiter: &str,
    listen: SocketAddr,
    node: &str,
    api: &Path,
    certs: Option<&Path>,
) -> Vec<String> {
    standby_args_for(arbiter, listen, node, api, certs, &FIRST_GUEST)
}

/// [`standby_args_with`] for the guest `guest`.
pub fn standby_args_for(
    arbiter: &str,
    listen: SocketAddr,
    node: &str,
    api: &Path,
    certs: Option<&Path>,
    guest: &GuestNet,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "standby",
        "--listen",
        &listen.to_string(),
        "--arbiter",
        arbiter,
        "--node",
        node,
        "--heartbeat-ms",
        &HEARTBEAT_MS.to_string(),
        "--heartbeat-timeout-ms",
        &HEARTBEAT_TIMEOUT_MS.to_string(),
        "--net",
        &guest.net_arg(),
        "--api",
        &api.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(link_args(certs, node));
    args
}

/// A protected pair: `kemari standby` in ns `sec`, `kemari run --protect` in ns `pri`, the guest configured on
/// the client network, protection established on both sides. Fields drop in order: processes first.
pub struct Pair {
    pub primary: Vm,
    pub secondary: Vm,
    pub proxy: Option<Proxy>,
    /// The primary's disk image (None without a disk).
    pub primary_disk: Option<PathBuf>,
    /// The secondary's disk image: the same file as the primary's in shared mode.
    pub secondary_disk: Option<PathBuf>,
    pub primary_api: PathBuf,
    pub secondary_api: PathBuf,
    pub arbiter: PathBuf,
    /// The nodes' certificates (None: the pair replicates in plaintext).
    pub certs: Option<PathBuf>,
    pub dir: TempDir,
    /// The guest's place on the hosts.
    pub guest: GuestNet,
    /// The hosts, which other pairs may share.
    pub net: Arc<Topology>,
}

impl Pair {
    /// Starts the standby, then the primary; waits for the guest and for protection on both sides; gives the
    /// guest its address and checks that the client reaches it.
    pub fn start(opts: PairOptions) -> Pair {
        Pair::start_on(Topology::new(), opts)
    }

    /// [`Pair::start`] on hosts the caller made (and may have joined to more, e.g. an etcd cluster, or may share
    /// with another pair whose `opts.guest` differs).
    pub fn start_on(net: impl Into<Arc<Topology>>, opts: PairOptions) -> Pair {
        require_ft_cli();
        let net: Arc<Topology> = net.into();
        let guest = opts.guest;
        if guest.tap != TAP {
            net.add_guest_tap(guest.tap);
        }
        let dir = TempDir::new("pair");
        let arbiter = dir.path("arbiter");
        std::fs::create_dir_all(&arbiter).unwrap();
        let primary_api = dir.path("primary.sock");
        let secondary_api = dir.path("secondary.sock");
        let certs = (!opts.plaintext && !opts.proxy).then(|| dir.path("certs"));
        let (primary_disk, secondary_disk) = match opts.disk {
            None => (None, None),
            Some(Storage::Shared) => {
                let p = opts.shared_disk.clone().unwrap_or_else(|| dir.path("shared.img"));
                if !p.exists() {
                    make_image(&p);
                }
                (Some(p.clone()), Some(p))
            }
            Some(Storage::Replicated) => {
                let p = dir.path("primary.img");
                let s = dir.path("secondary.img");
                make_image(&p);
                copy_image(&p, &s);
                (Some(p), Some(s))
            }
        };
        let arbiter_arg = opts.arbiter.clone().unwrap_or_else(|| format!("file:{}", arbiter.display()));
        let net_arg = guest.net_arg();
        let name_args: Vec<String> = opts.name.iter().flat_map(|n| ["--name".to_string(), n.clone()]).collect();
        let hb = HEARTBEAT_MS.to_string();
        let hb_timeout = HEARTBEAT_TIMEOUT_MS.to_string();

        let mut standby = standby_args_for(
            &arbiter_arg,
            SocketAddr::from((SECONDARY_REPL_IP, guest.standby_port)),
            "sec",
            &secondary_api,
            certs.as_deref(),
            &guest,
        );
        standby.extend(name_args.iter().cloned());
        if let (Some(storage), Some(disk)) = (opts.disk, &secondary_disk) {
            standby.extend(["--storage".into(), storage.flag().into(), "--disk".into(), disk.display().to_string()]);
        }
        standby.extend(opts.secondary_args.iter().cloned());
        let secondary = net.sec.enter(|| Vm::start(&strs(&standby)));

        let proxy = opts.proxy.then(|| {
            Proxy::start(
                &net.pri,
                SocketAddr::from((PRIMARY_REPL_IP, PROXY_PORT)),
                SocketAddr::from((SECONDARY_REPL_IP, STANDBY_PORT)),
            )
        });
        let protect = if opts.proxy {
            format!("{PRIMARY_REPL_IP}:{PROXY_PORT}")
        } else {
            format!("{SECONDARY_REPL_IP}:{}", guest.standby_port)
        };
        let kernel = guest_file("Image");
        let initrd = guest_file("initramfs.cpio.gz");
        let mut run: Vec<String> = vec![
            "run".into(),
            "--kernel".into(),
            kernel.display().to_string(),
            "--initrd".into(),
            initrd.display().to_string(),
            "--memory".into(),
            "256".into(),
            "--net".into(),
            net_arg,
            "--api".into(),
            primary_api.display().to_string(),
            "--protect".into(),
            protect,
            "--arbiter".into(),
            arbiter_arg,
            "--node".into(),
            "pri".into(),
            "--heartbeat-ms".into(),
            hb,
            "--heartbeat-timeout-ms".into(),
            hb_timeout,
        ];
        run.extend(link_args(certs.as_deref(), "pri"));
        run.extend(name_args);
        if let (Some(storage), Some(disk)) = (opts.disk, &primary_disk) {
            run.extend(["--storage".into(), storage.flag().into(), "--disk".into(), disk.display().to_string()]);
        }
        run.extend(opts.primary_args.iter().cloned());
        let env: Vec<(&str, &str)> = opts.primary_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let primary = net.pri.enter(|| Vm::start_with_env(&strs(&run), &env));

        let mut pair = Pair {
            primary,
            secondary,
            proxy,
            primary_disk,
            secondary_disk,
            primary_api,
            secondary_api,
            arbiter,
            certs,
            dir,
            guest,
            net,
        };
        let started = Instant::now();
        pair.primary.expect("KEMARI-GUEST-READY");
        let booted = started.elapsed();
        pair.primary.expect_stderr("protection established");
        pair.secondary.expect_stderr("protection established");
        let protected = started.elapsed();
        pair.configure_guest_network();
        eprintln!(
            "pair: guest ready after {booted:?}, protected after {protected:?}, on the network after {:?}",
            started.elapsed()
        );
        pair
    }

    /// Gives eth0 the guest address (over the console of the primary) and waits until the client can ping it.
    pub fn configure_guest_network(&mut self) {
        let ip = self.guest.ip;
        assert_eq!(
            self.primary.sh(&format!("ip link set eth0 up && ip addr add {ip}/24 dev eth0 && echo configured")),
            "configured"
        );
        assert!(
            self.net.cli.ping(ip, GUEST_TIMEOUT).unwrap(),
            "the client cannot ping the protected guest\n--- primary stderr ---\n{}",
            self.primary.stderr()
        );
    }

    pub fn kill_primary(&mut self) {
        self.primary.signal(libc::SIGKILL);
    }

    pub fn kill_secondary(&mut self) {
        self.secondary.signal(libc::SIGKILL);
    }

    /// Waits for the secondary to report its takeover; returns that line (`failover complete in N ms`).
    pub fn wait_failover(&mut self) -> String {
        self.secondary.expect_stderr("failover complete in")
    }

    /// Starts a console counter in the guest: `tick-1`, `tick-2`, ... every 50 ms.
    pub fn start_ticks(&mut self) {
        self.primary.send("i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.05; done &");
    }

    pub fn primary_status(&self) -> serde_json::Value {
        status(&self.primary_api)
    }

    pub fn secondary_status(&self) -> serde_json::Value {
        status(&self.secondary_api)
    }
}

impl Drop for Pair {
    /// On a failing test, show what both processes said (their stderr) before they are killed.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let tail = |text: String| {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            eprintln!("--- primary stderr (last 40 lines) ---\n{}", tail(self.primary.stderr()));
            eprintln!("--- secondary stderr (last 40 lines) ---\n{}", tail(self.secondary.stderr()));
        }
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

// ----------------------------------------------------------------------------------------- console ticks --

/// The `tick-N` numbers in `console`, in order, counting only complete ones (digits followed by an end of line):
/// a fragment cut off by a kill, or re-printed after a failover, is not a number.
pub fn complete_ticks(console: &[u8]) -> Vec<u64> {
    ticks_at(console).into_iter().map(|(_, n)| n).collect()
}

/// Complete `tick-N` lines with the byte offset where each starts.
fn ticks_at(console: &[u8]) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(found) = console[at..].windows(5).position(|w| w == b"tick-") {
        let start = at + found;
        at = start + 5;
        let digits = console[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        let after = console.get(at + digits).copied();
        if digits > 0 && digits < 20 && matches!(after, Some(b'\r') | Some(b'\n')) {
            let n = std::str::from_utf8(&console[at..at + digits]).unwrap().parse().unwrap();
            out.push((start, n));
        }
    }
    out
}

/// Waits until the console of `vm` shows the complete line `tick-N` (panics if kemari exits first).
pub fn wait_tick(vm: &mut Vm, n: u64) {
    let start = Instant::now();
    loop {
        if complete_ticks(&vm.output_bytes()).contains(&n) {
            return;
        }
        if let Some(status) = vm.try_status() {
            std::thread::sleep(Duration::from_millis(100));
            if complete_ticks(&vm.output_bytes()).contains(&n) {
                return;
            }
            panic!(
                "kemari exited ({status}) before tick-{n}\n--- console ---\n{}\n--- stderr ---\n{}",
                vm.output(),
                vm.stderr()
            );
        }
        assert!(start.elapsed() < GUEST_TIMEOUT, "no tick-{n} on the console\n--- console ---\n{}", vm.output());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks what a user saw across a failover: the primary's console followed by the secondary's, as one byte
/// stream (a line the primary had half printed may be finished by the secondary). Every number from the first
/// to the last appears; the only repeats allowed are lines right after the seam that the primary had printed
/// already (the secondary re-issues the console bytes of the last acknowledged checkpoint, which the primary may
/// or may not have released before it died). Returns (numbers seen, repeats at the seam).
pub fn assert_no_console_gap(primary: &[u8], secondary: &[u8]) -> (usize, usize) {
    let user: Vec<u8> = [primary, secondary].concat();
    let ticks = ticks_at(&user);
    let from_primary = ticks.iter().filter(|(at, _)| *at < primary.len()).count();
    let numbers: Vec<u64> = ticks.iter().map(|&(_, n)| n).collect();
    assert!(from_primary > 0, "no ticks on the primary's console");
    assert!(numbers.len() > from_primary, "no ticks on the secondary's console after the failover");
    let mut max = numbers[0] - 1;
    let mut repeats = 0;
    for (i, &n) in numbers.iter().enumerate() {
        if n == max + 1 {
            max = n;
        } else if n <= max && i >= from_primary && i - from_primary == repeats {
            repeats += 1;
        } else {
            let around = &numbers[i.saturating_sub(5)..(i + 5).min(numbers.len())];
            panic!(
                "console gap or disorder: tick {n} after {max} ({} ticks from the primary, then the secondary's; \
                 around it: {around:?})",
                from_primary
            );
        }
    }
    (numbers.len() - repeats, repeats)
}

// -------------------------------------------------------------------------------------------- TCP helpers --

/// The guest's echo service: busybox `nc -l -p PORT -e cat`, one connection, everything read is written back.
pub fn start_guest_echo(vm: &mut Vm, port: u16) {
    vm.send(&format!("nc -l -p {port} -e cat &"));
}

/// The client side of an echo stream: one thread writes `data` to the guest, another reads the echo back
/// concurrently, counting bytes as they come.
pub struct EchoStream {
    received: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    writer: std::thread::JoinHandle<std::io::Result<()>>,
    reader: std::thread::JoinHandle<ReadOutcome>,
    pub want_sha256: String,
    pub len: usize,
}

/// The reader's end: everything read, or the error and what was read before it.
type ReadOutcome = Result<Vec<u8>, (std::io::Error, Vec<u8>)>;

/// What an [`EchoStream`] got back.
pub struct EchoResult {
    pub got: Vec<u8>,
    pub got_sha256: String,
}

impl EchoStream {
    /// Connects from the client namespace to the guest's echo service on `port` and starts streaming `len`
    /// pseudo-random bytes.
    pub fn start(cli: &NetNs, port: u16, len: usize, seed: u64) -> EchoStream {
        EchoStream::start_to(cli, GUEST_IP, port, len, seed)
    }

    /// [`EchoStream::start`] to the guest at `ip`.
    pub fn start_to(cli: &NetNs, ip: Ipv4Addr, port: u16, len: usize, seed: u64) -> EchoStream {
        let data = pseudo_random(len, seed);
        let want_sha256 = sha256(&data);
        let sock = cli.enter(|| connect(SocketAddr::from((ip, port))));
        let _ = sock.set_nodelay(true);
        let mut wsock = sock.try_clone().unwrap();
        let mut rsock = sock;
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let sent2 = sent.clone();
        let writer = std::thread::spawn(move || {
            for chunk in data.chunks(64 * 1024) {
                wsock.write_all(chunk)?;
                sent2.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            // End of input: the guest's cat ends, nc closes, the reader sees EOF.
            wsock.shutdown(Shutdown::Write)
        });
        let received2 = received.clone();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::with_capacity(len);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match rsock.read(&mut buf) {
                    Ok(0) => return Ok(got),
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        received2.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err((e, got)),
                }
            }
        });
        EchoStream { received, sent, writer, reader, want_sha256, len }
    }

    /// Bytes echoed back so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` bytes came back (panics if the stream ends or stalls first).
    pub fn wait_received(&self, n: u64) {
        let start = Instant::now();
        let mut last = (0, Instant::now());
        while self.received() < n {
            assert!(!self.reader.is_finished(), "the echo stream ended after {} of {n} bytes", self.received());
            if self.received() != last.0 {
                last = (self.received(), Instant::now());
            }
            assert!(last.1.elapsed() < STALL_TIMEOUT, "the echo stream stalled at {} bytes", self.received());
            assert!(start.elapsed() < GUEST_TIMEOUT * 4, "the echo stream is too slow to reach {n} bytes");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the stream to end and checks it: no error on either side (a reset fails here), every byte back,
    /// sha256 of what came back equal to sha256 of what was sent.
    pub fn finish(self) -> EchoResult {
        let got = match self.reader.join().unwrap() {
            Ok(got) => got,
            Err((e, got)) => panic!(
                "the client's TCP connection failed after {} of {} bytes came back: {e} ({:?})",
                got.len(),
                self.len,
                e.kind()
            ),
        };
        let sent = self.sent.clone();
        if let Err(e) = self.writer.join().unwrap() {
            let sent = sent.load(Ordering::Relaxed);
            panic!("sending to the guest failed after {sent} of {} bytes: {e} ({:?})", self.len, e.kind());
        }
        let got_sha256 = sha256(&got);
        assert_eq!(got.len(), self.len, "the echo came back short (or long)");
        assert_eq!(got_sha256, self.want_sha256, "the echo came back corrupted");
        EchoResult { got, got_sha256 }
    }
}

// ---------------------------------------------------------------------------------- replication proxy --

/// What the proxy did to the one CHECKPOINT it corrupted.
#[derive(Clone, Copy, Debug)]
pub struct Corruption {
    pub epoch: u64,
    pub payload_len: u64,
    /// Offset in the payload of the flipped byte (past the epoch: inside the state stream).
    pub offset: u64,
}

#[derive(Default)]
struct ProxyLog {
    /// Epochs of the CHECKPOINT messages the primary sent, in order.
    checkpoint_epochs: Vec<u64>,
    corruption: Option<Corruption>,
    /// Index in `checkpoint_epochs` of the corrupted message.
    corrupted_index: Option<usize>,
    /// Message kinds the secondary sent, in order.
    from_secondary: Vec<u8>,
    /// CHECKPOINTs swallowed while withholding.
    withheld: usize,
    /// The payloads of the INPUT messages forwarded while withholding, each with the number of checkpoints
    /// swallowed before it.
    inputs: Vec<(Vec<u8>, usize)>,
}

/// A man-in-the-middle TCP proxy on the replication link, in the primary's namespace: the primary connects to
/// it, it connects to the standby and forwards both ways, parsing the framing. Once armed, it flips one bit
/// inside the payload of the next CHECKPOINT message (past its epoch, in the state stream), and forwards
/// everything else untouched. Told to withhold, it swallows every CHECKPOINT from then on and forwards the
/// rest (as if the primary died right after each message but its checkpoints). When either side closes, it
/// closes the other.
pub struct Proxy {
    armed: Arc<AtomicBool>,
    withholding: Arc<AtomicBool>,
    log: Arc<Mutex<ProxyLog>>,
}

impl Proxy {
    pub fn start(ns: &NetNs, listen: SocketAddr, upstream: SocketAddr) -> Proxy {
        let listener = ns.enter(|| TcpListener::bind(listen).expect("proxy listens"));
        let armed = Arc::new(AtomicBool::new(false));
        let withholding = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(ProxyLog::default()));
        let (armed2, withholding2, log2) = (armed.clone(), withholding.clone(), log.clone());
        // The thread stays in the namespace for the upstream connections. It ends with the process; its sockets
        // go with the namespace.
        let _ = ns.spawn(move || {
            for conn in listener.incoming() {
                let Ok(down) = conn else { continue };
                // The standby listens before the primary starts; a refused connection means it is gone (a
                // reconnecting primary after the test ended): drop the primary's connection.
                let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(10)) else { continue };
                let _ = up.set_nodelay(true);
                let _ = down.set_nodelay(true);
                // No timeouts on a proxy: heartbeats may legitimately be the only traffic for a while.
                let _ = up.set_read_timeout(None);
                let _ = down.set_read_timeout(None);
                let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                let (a, w, l) = (armed2.clone(), withholding2.clone(), log2.clone());
                std::thread::spawn(move || {
                    let _ = pump_to_secondary(&down, &up, &a, &w, &l);
                    let _ = down.shutdown(Shutdown::Both);
                    let _ = up.shutdown(Shutdown::Both);
                });
                let l = log2.clone();
                std::thread::spawn(move || {
                    let _ = pump_to_primary(&u2, &d2, &l);
                    let _ = d2.shutdown(Shutdown::Both);
                    let _ = u2.shutdown(Shutdown::Both);
                });
            }
        });
        Proxy { armed, withholding, log }
    }

    /// Swallow every CHECKPOINT from now on, forward the rest.
    pub fn withhold_checkpoints(&self) {
        self.withholding.store(true, Ordering::SeqCst);
    }

    /// The inputs the primary logged while withholding, decoded, each with the number of checkpoints the
    /// proxy swallowed after it.
    pub fn inputs_while_withholding(&self) -> Vec<(kemari_devices::gate::Input, usize)> {
        let l = self.log.lock().unwrap();
        let decode = |p: &[u8]| kemari_replication::inputs::decode(p).expect("the primary's INPUT decodes");
        let now = l.withheld;
        l.inputs.iter().flat_map(|(p, before)| decode(p).into_iter().map(move |i| (i, now - before))).collect()
    }

    /// Corrupt the next CHECKPOINT message.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    pub fn corruption(&self) -> Option<Corruption> {
        self.log.lock().unwrap().corruption
    }

    /// Epochs of the CHECKPOINT messages forwarded after the corrupted one.
    pub fn epochs_after_corruption(&self) -> Vec<u64> {
        let log = self.log.lock().unwrap();
        match log.corrupted_index {
            Some(i) => log.checkpoint_epochs[i + 1..].to_vec(),
            None => Vec::new(),
        }
    }

    /// How many messages of `kind` the secondary sent.
    pub fn sent_by_secondary(&self, kind: u8) -> usize {
        self.log.lock().unwrap().from_secondary.iter().filter(|&&k| k == kind).count()
    }

    /// Waits until `cond` holds for the proxy's log.
    pub fn wait_until(&self, what: &str, cond: impl Fn(&Proxy) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            if start.elapsed() > GUEST_TIMEOUT {
                let after = self.epochs_after_corruption();
                panic!(
                    "proxy: never saw {what} (corruption {:?}; {} checkpoints after it, first {:?}; {} NACKs)",
                    self.corruption(),
                    after.len(),
                    &after[..after.len().min(10)],
                    self.sent_by_secondary(wire::NACK)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Most a single frame may claim before the proxy stops parsing and just copies bytes.
const MAX_PARSED_PAYLOAD: u64 = 1 << 36;

fn read_header(mut r: &TcpStream) -> std::io::Result<(u8, u64, [u8; 9])> {
    let mut h = [0u8; 9];
    r.read_exact(&mut h)?;
    Ok((h[0], u64::from_le_bytes(h[1..9].try_into().unwrap()), h))
}

fn copy_exact(from: &TcpStream, mut to: &TcpStream, len: u64) -> std::io::Result<()> {
    let n = std::io::copy(&mut from.take(len), &mut to)?;
    if n < len {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn pump_to_secondary(
    from: &TcpStream,
    mut to: &TcpStream,
    armed: &AtomicBool,
    withholding: &AtomicBool,
    log: &Mutex<ProxyLog>,
) -> std::io::Result<()> {
    loop {
        let (kind, len, header) = read_header(from)?;
        if len > MAX_PARSED_PAYLOAD {
            to.write_all(&header)?;
            std::io::copy(&mut { from }, &mut to)?;
            return Ok(());
        }
        if withholding.load(Ordering::SeqCst) {
            if kind == wire::CHECKPOINT {
                std::io::copy(&mut { from }.take(len), &mut std::io::sink())?;
                log.lock().unwrap().withheld += 1;
                continue;
            }
            if kind == wire::INPUT {
                let mut payload = vec![0u8; len as usize];
                { from }.read_exact(&mut payload)?;
                to.write_all(&header)?;
                to.write_all(&payload)?;
                let mut l = log.lock().unwrap();
                let withheld = l.withheld;
                l.inputs.push((payload, withheld));
                continue;
            }
        }
        if kind != wire::CHECKPOINT || len < 8 {
            to.write_all(&header)?;
            copy_exact(from, to, len)?;
            continue;
        }
        let mut epoch = [0u8; 8];
        { from }.read_exact(&mut epoch)?;
        let epoch_n = u64::from_le_bytes(epoch);
        let rest = len - 8;
        if rest > 0 && armed.swap(false, Ordering::SeqCst) {
            let mut body = vec![0u8; rest as usize];
            { from }.read_exact(&mut body)?;
            let at = body.len() / 2;
            body[at] ^= 0x10;
            {
                let mut l = log.lock().unwrap();
                l.corrupted_index = Some(l.checkpoint_epochs.len());
                l.checkpoint_epochs.push(epoch_n);
                l.corruption = Some(Corruption { epoch: epoch_n, payload_len: len, offset: 8 + at as u64 });
            }
            to.write_all(&header)?;
            to.write_all(&epoch)?;
            to.write_all(&body)?;
        } else {
            log.lock().unwrap().checkpoint_epochs.push(epoch_n);
            to.write_all(&header)?;
            to.write_all(&epoch)?;
            copy_exact(from, to, rest)?;
        }
    }
}

fn pump_to_primary(from: &TcpStream, to: &TcpStream, log: &Mutex<ProxyLog>) -> std::io::Result<()> {
    let mut to = to;
    loop {
        let (kind, len, header) = read_header(from)?;
        log.lock().unwrap().from_secondary.push(kind);
        to.write_all(&header)?;
        if len > MAX_PARSED_PAYLOAD {
            std::io::copy(&mut { from }, &mut to)?;
            return Ok(());
        }
        copy_exact(from, to, len)?;
    }
}

// ------------------------------------------------------------------------------------------------ capture --

/// A packet capture on one interface of a namespace (an `AF_PACKET` socket, as tcpdump uses): the TCP
/// payload of every IPv4 segment to or from `port`, in the order captured. On a veth nothing reorders, so a
/// string the stream carried in plaintext shows up whole.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u8>>,
}

impl Capture {
    pub fn start(ns: &NetNs, dev: &str, port: u16) -> Capture {
        use std::os::fd::{FromRawFd, OwnedFd};
        let dev = std::ffi::CString::new(dev).unwrap();
        let fd = ns.enter(|| {
            // SAFETY: plain socket calls on values built here; the descriptor is owned right away.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32);
                assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
                let fd = OwnedFd::from_raw_fd(fd);
                let index = libc::if_nametoindex(dev.as_ptr());
                assert!(index > 0, "no interface {dev:?}");
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
                addr.sll_ifindex = index as i32;
                let rc = libc::bind(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(rc, 0, "bind the capture: {}", std::io::Error::last_os_error());
                fd
            }
        });
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let big: libc::c_int = 64 << 20;
        let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        // SAFETY: setsockopt with option values that live across the calls.
        unsafe {
            libc::setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &big as *const _ as *const _, 4);
            let len = std::mem::size_of::<libc::timeval>() as u32;
            libc::setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout as *const _ as *const _, len);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut payload = Vec::new();
            let mut frame = vec![0u8; 1 << 18];
            while !stop2.load(Ordering::SeqCst) {
                // SAFETY: receives into a buffer we own, of the length given.
                let n = unsafe { libc::recv(raw, frame.as_mut_ptr() as *mut _, frame.len(), 0) };
                if n > 0 {
                    tcp_payload(&frame[..n as usize], port, &mut payload);
                }
            }
            drop(fd);
            payload
        });
        Capture { stop, thread }
    }

    /// Ends the capture: the payload bytes seen.
    pub fn finish(self) -> Vec<u8> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Appends the TCP payload of an Ethernet frame holding an IPv4 segment to or from `port`.
fn tcp_payload(frame: &[u8], port: u16, out: &mut Vec<u8>) {
    let Some(ip) = frame.get(14..).filter(|_| frame[12..14] == [0x08, 0x00]) else { return };
    if ip.len() < 20 || ip[9] != 6 {
        return;
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let Some(tcp) = ip.get(ihl..total) else { return };
    if tcp.len() < 20 {
        return;
    }
    let (src, dst) = (u16::from_be_bytes([tcp[0], tcp[1]]), u16::from_be_bytes([tcp[2], tcp[3]]));
    let offset = usize::from(tcp[12] >> 4) * 4;
    if (src == port || dst == port) && offset <= tcp.len() {
        out.extend_from_slice(&tcp[offset..]);
    }
}
