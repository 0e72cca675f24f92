//! A standby's own life, without a guest: how it ends when told to, and what its status says when a primary
//! leaves before protection was established. (The fault-tolerance behaviour with real pairs is in
//! `failover.rs`.)

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Vm;
use kemari_replication::arbiter::{Arbiter, FileArbiter};
use kemari_replication::wire::{self, Hello};
use kemari_replication::Storage;

/// Only guards against a hang; nothing asserts on time.
const PATIENCE: Duration = Duration::from_secs(30);

struct Standby {
    vm: Vm,
    dir: PathBuf,
    api: PathBuf,
    listen: SocketAddr,
}

impl Standby {
    fn start(tag: &str) -> Standby {
        let dir = std::env::temp_dir().join(format!("kemari-standby-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("arbiter")).unwrap();
        let api = dir.join("api.sock");
        // A free port (taken back at once; nothing else here binds it meanwhile).
        let listen = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let arbiter = format!("file:{}", dir.join("arbiter").display());
        let args = ["standby", "--listen", &listen.to_string(), "--arbiter", &arbiter, "--node", "sec", "--no-rng"];
        let mut args = args.to_vec();
        args.extend(["--api", api.to_str().unwrap()]);
        let mut vm = Vm::start(&args);
        vm.expect_stderr("waiting for a primary");
        Standby { vm, dir, api, listen }
    }

    fn status(&self) -> serde_json::Value {
        let (ok, out) = common::ctl(self.api.to_str().unwrap(), &["status"]);
        assert!(ok, "status failed: {out}");
        serde_json::from_str(&out).unwrap()
    }

    /// Waits until the status satisfies `cond`; panics with the last status after [`PATIENCE`].
    fn wait_status(&self, what: &str, cond: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let s = self.status();
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

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

#[test]
fn a_standby_quits_on_sigterm_and_removes_its_control_socket() {
    let mut s = Standby::start("sigterm");
    assert_eq!(s.status()["protection"], "standby");
    assert!(exists(&s.api));
    s.vm.signal(libc::SIGTERM);
    let status = s.vm.wait();
    assert_eq!(status.code(), Some(0), "a standby told to stop exits 0; stderr:\n{}", s.vm.stderr());
    assert!(!exists(&s.api), "the control socket was left behind");
}

#[test]
fn a_primary_that_leaves_before_protection_is_not_shown_as_syncing() {
    let s = Standby::start("left");
    // A primary as far as the standby can tell: it holds the lease and says so in its HELLO, then goes away
    // before sending anything else.
    let mut lease = FileArbiter::new(&s.dir.join("arbiter"), "fake-primary", Duration::from_secs(60)).unwrap();
    let fence = lease.acquire().unwrap();
    let hello = Hello {
        harts: 1,
        memory: 16 << 20,
        storage: Storage::Shared,
        disks: vec![],
        node: "fake-primary".into(),
        fence,
    };
    let mut conn = TcpStream::connect(s.listen).unwrap();
    wire::send(&mut conn, wire::HELLO, &[&hello.encode()]).unwrap();
    let during = s.wait_status("the session", |st| st["protection"] == "syncing");
    assert_ne!(during["peer"], "", "{during}");
    drop(conn);
    let after = s.wait_status("the session's end", |st| st["protection"] != "syncing");
    assert_eq!(after["protection"], "standby", "{after}");
    assert_eq!(after["peer"], "", "no primary is connected any more: {after}");
}
