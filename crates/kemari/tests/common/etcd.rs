//! A real three-member etcd cluster (Debian's `etcd-server`) for the fault-tolerance tests, each member in a
//! network namespace of its own, on a management bridge that the pair's hosts join:
//!
//! ```text
//!   ns "mgmt": bridge mgmt0
//!      ├─ veth ─ ns "etcd0": 10.0.8.10/24   etcd member e0 (clients :2379, peers :2380)
//!      ├─ veth ─ ns "etcd1": 10.0.8.11/24   e1
//!      ├─ veth ─ ns "etcd2": 10.0.8.12/24   e2
//!      ├─ veth ─ ns "pri" (the Topology's): mgmt 10.0.8.1/24
//!      └─ veth ─ ns "sec" (the Topology's): mgmt 10.0.8.2/24
//! ```
//!
//! Partitions are blackhole routes on both ends (packets vanish, as on a cut cable; nothing answers "no route").
//! Dropping the cluster kills the members, then deletes their namespaces and data (under /dev/shm: etcd syncs
//! its log on every write), also when a test panics.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ft::Topology;
use crate::netns::{self, NetNs};

pub const PRIMARY_MGMT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 8, 1);
pub const SECONDARY_MGMT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 8, 2);
pub const MEMBERS: usize = 3;
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// The VM's key prefix in the cluster.
pub const PREFIX: &str = "/kemari-test";

fn member_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 8, 10 + i as u8)
}

struct Member {
    /// Killed on drop (before the namespace goes).
    child: Option<Child>,
    ns: NetNs,
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The cluster; fields drop in order: members (processes, then their namespaces), the bridge, the data.
pub struct EtcdCluster {
    members: Vec<Member>,
    mgmt: NetNs,
    dir: PathBuf,
    /// Blackhole routes in force: (namespace, destination).
    cuts: Mutex<Vec<(String, Ipv4Addr)>>,
}

impl EtcdCluster {
    /// Starts the members, joins the primary's and the secondary's hosts of `net` to their bridge and waits
    /// until the cluster has a leader.
    pub fn start(net: &Topology) -> EtcdCluster {
        let mgmt = NetNs::new("mgmt");
        mgmt.add_bridge("mgmt0");
        for (host, ip, port) in [(&net.pri, PRIMARY_MGMT_IP, "mgmt-pri"), (&net.sec, SECONDARY_MGMT_IP, "mgmt-sec")] {
            host.add_veth_to("mgmt", &mgmt, port);
            mgmt.join_bridge(port, "mgmt0");
            host.add_addr("mgmt", &format!("{ip}/24"));
        }
        let dir = PathBuf::from("/dev/shm").join(format!("kemari-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the etcd data directory");
        let mut cluster = EtcdCluster { members: Vec::new(), mgmt, dir, cuts: Mutex::new(Vec::new()) };
        let initial: Vec<String> = (0..MEMBERS).map(|i| format!("e{i}=http://{}:{PEER_PORT}", member_ip(i))).collect();
        for i in 0..MEMBERS {
            let ns = NetNs::new(&format!("etcd{i}"));
            let port = format!("mgmt-e{i}");
            ns.add_veth_to("mgmt", &cluster.mgmt, &port);
            cluster.mgmt.join_bridge(&port, "mgmt0");
            ns.add_addr("mgmt", &format!("{}/24", member_ip(i)));
            cluster.members.push(Member { child: None, ns });
            cluster.spawn(i, &initial.join(","));
        }
        let start = Instant::now();
        while cluster.leader().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the etcd cluster elected no leader\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("etcd: {MEMBERS} members up with a leader after {:?}", start.elapsed());
        cluster
    }

    fn spawn(&mut self, i: usize, initial: &str) {
        let (client, peer) =
            (format!("http://{}:{CLIENT_PORT}", member_ip(i)), format!("http://{}:{PEER_PORT}", member_ip(i)));
        let log = std::fs::File::create(self.dir.join(format!("e{i}.log"))).expect("create the etcd log");
        let data = self.dir.join(format!("e{i}"));
        let token = format!("kemari-test-{}", std::process::id());
        let child = self.members[i].ns.enter(|| {
            Command::new("etcd")
                .args(["--name", &format!("e{i}"), "--data-dir"])
                .arg(&data)
                .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", initial, "--initial-cluster-token", &token])
                .args(["--initial-cluster-state", "new"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start etcd ({e}): these tests need Debian's etcd-server"))
        });
        self.members[i].child = Some(child);
    }

    /// `etcd:` spec naming the members in `order` (the arbiter starts with the first).
    pub fn spec_in_order(&self, order: &[usize]) -> String {
        let eps: Vec<String> = order.iter().map(|&i| format!("{}:{CLIENT_PORT}", member_ip(i))).collect();
        format!("etcd:{}{PREFIX}", eps.join(","))
    }

    /// The member that says it leads (its `etcd_server_is_leader` metric), if one does.
    pub fn leader(&self) -> Option<usize> {
        (0..MEMBERS).find(|&i| {
            self.members[i].child.is_some()
                && self.members[i].ns.enter(|| metrics(member_ip(i))).lines().any(|l| l == "etcd_server_is_leader 1")
        })
    }

    /// SIGKILL of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn blackhole(&self, ns: &NetNs, dst: Ipv4Addr) {
        ns.ip(&["route", "add", "blackhole", &format!("{dst}/32")]);
        self.cuts.lock().unwrap().push((ns.name().to_string(), dst));
    }

    /// Cuts `a` and `b` apart, both ways.
    fn cut(&self, a: (&NetNs, Ipv4Addr), b: (&NetNs, Ipv4Addr)) {
        self.blackhole(a.0, b.1);
        self.blackhole(b.0, a.1);
    }

    /// The host `host` (management address `host_ip`) keeps reaching member `keep` only, and `keep` loses the
    /// other members: the host's side has no quorum, the other side has. Undone by [`EtcdCluster::heal`].
    pub fn isolate_with_minority(&self, host: &NetNs, host_ip: Ipv4Addr, keep: usize) {
        for i in (0..MEMBERS).filter(|&i| i != keep) {
            let other = (&self.members[i].ns, member_ip(i));
            self.cut((host, host_ip), other);
            self.cut((&self.members[keep].ns, member_ip(keep)), other);
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        for (ns, dst) in self.cuts.lock().unwrap().drain(..) {
            netns::ip(&["-n", &ns, "route", "del", "blackhole", &format!("{dst}/32")]);
        }
    }

    /// The members' logs, for a failure message.
    pub fn logs(&self) -> String {
        (0..MEMBERS)
            .map(|i| {
                let text = std::fs::read_to_string(self.dir.join(format!("e{i}.log"))).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!("--- etcd e{i} (last 10 lines) ---\n{}", lines[lines.len().saturating_sub(10)..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.members.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET /metrics` from a member's client port (plain HTTP/1.0); empty when it does not answer.
fn metrics(ip: Ipv4Addr) -> String {
    let addr = SocketAddr::from((ip, CLIENT_PORT));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut body = String::new();
    if s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").is_ok() {
        let _ = s.read_to_string(&mut body);
    }
    body
}
