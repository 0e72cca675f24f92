//! Fault tolerance with the etcd arbiter, end to end: a real three-member etcd cluster (each member in a
//! namespace of its own, see `common/etcd.rs`) and a real protected pair (`kemari run --protect` in `pri`,
//! `kemari standby` in `sec`, as in `failover.rs`) with `--arbiter etcd:10.0.8.10:2379,...`.
//!
//! # What each test proves
//! - `sigkill_of_the_primary_fails_over_through_etcd`: the primary is SIGKILLed mid-stream; the secondary takes
//!   over once the primary's etcd lease expired; the client's TCP stream completes intact and the console has
//!   no gap.
//! - `stopped_primary_is_fenced_through_etcd_and_releases_nothing`: SIGSTOP → takeover after lease expiry;
//!   SIGCONT → the old primary puts not one frame on its tap nor a byte on its console, and exits 3 `fenced`.
//! - `partition_from_the_etcd_majority_leaves_exactly_one_active_node`: the primary keeps one etcd member, which
//!   is cut off from the other two (no quorum on its side): it holds its outputs although its secondary still
//!   acknowledges; then the replication link goes too: the secondary takes over; after healing, the old
//!   primary learns it is fenced and exits 3 without having released anything since it lost etcd. Outputs
//!   come from one side only, and the console has no gap.
//! - `losing_one_etcd_member_does_not_stop_protection`: the etcd leader (the first endpoint the nodes use) is
//!   SIGKILLed; checkpoints are still acknowledged and released (the guest's console goes on), with no
//!   failover and the same fence.
//!
//! Needs root, `etcd` (Debian's etcd-server) and the guest from `scripts/guest-build`. Serialised with the
//! other fault-tolerance tests (`ft::serial`). Timeouts only guard against hangs; nothing asserts on time.

mod common;
#[path = "common/etcd.rs"]
mod etcd;
#[path = "common/ft.rs"]
mod ft;
#[path = "common/netns.rs"]
mod netns;

use std::time::{Duration, Instant};

use common::GUEST_TIMEOUT;
use etcd::EtcdCluster;
use ft::{assert_no_console_gap, complete_ticks, EchoStream, Pair, PairOptions, Rng, Topology, CLIENT_IP};

const ECHO_PORT: u16 = 7100;

/// An etcd cluster on fresh hosts and a protected pair using it, the nodes naming the current etcd leader first
/// when `leader_first` (else the members in order). Drop the pair first (declare it after the cluster).
fn etcd_pair(leader_first: bool) -> (EtcdCluster, Pair) {
    let net = Topology::new();
    let cluster = EtcdCluster::start(&net);
    let mut order: Vec<usize> = (0..etcd::MEMBERS).collect();
    if leader_first {
        let leader = cluster.leader().expect("a leader");
        order.retain(|&i| i != leader);
        order.insert(0, leader);
    }
    let spec = cluster.spec_in_order(&order);
    let pair = Pair::start_on(net, PairOptions { arbiter: Some(spec), ..PairOptions::default() });
    (cluster, pair)
}

/// Waits until the primary's tap has carried at least 3 frames of the guest.
fn wait_frames(capture: &netns::PacketCapture) {
    let start = Instant::now();
    while capture.incoming_from(ft::GUEST_MAC_BYTES).len() < 3 {
        assert!(start.elapsed() < GUEST_TIMEOUT, "the capture on the primary's tap never saw the guest's frames");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `vm` printed `n` complete ticks.
fn wait_ticks(vm: &common::Vm, n: usize) {
    let start = Instant::now();
    while complete_ticks(&vm.output_bytes()).len() < n {
        assert!(start.elapsed() < GUEST_TIMEOUT, "no ticks from the new primary:\n{}", vm.output());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the old primary to exit, failing as soon as it releases anything: a console byte past `console`, or
/// a frame on its tap (`capture` was cleared when it had to stop releasing).
fn wait_exit_releasing_nothing(
    vm: &mut common::Vm,
    capture: &netns::PacketCapture,
    console: usize,
    when: &str,
) -> std::process::ExitStatus {
    let start = Instant::now();
    let mut exited = None;
    loop {
        let output = vm.output_bytes();
        assert_eq!(
            output.len(),
            console,
            "the old primary printed console bytes {when}: {:?}",
            String::from_utf8_lossy(&output[console.min(output.len())..])
        );
        let frames = capture.incoming_from(ft::GUEST_MAC_BYTES).len();
        assert_eq!(frames, 0, "the old primary put {frames} frame(s) on its tap {when}");
        match exited {
            // Frames it wrote last take a moment to reach the capture: look once more, then done.
            Some((status, at)) if Instant::elapsed(&at) > Duration::from_millis(500) => return status,
            Some(_) => {}
            None => exited = vm.try_status().map(|s| (s, Instant::now())),
        }
        assert!(start.elapsed() < GUEST_TIMEOUT, "the old primary did not exit {when}:\n{}", vm.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After the failover: the secondary carries the console on from the primary's last tick, without a gap.
fn assert_console_carries_on(pair: &mut Pair) -> usize {
    let last = *complete_ticks(&pair.primary.output_bytes()).last().unwrap();
    ft::wait_tick(&mut pair.secondary, last + 10);
    assert_no_console_gap(&pair.primary.output_bytes(), &pair.secondary.output_bytes()).1
}

#[test]
fn sigkill_of_the_primary_fails_over_through_etcd() {
    let _serial = ft::serial();
    let mut rng = Rng::new("sigkill_of_the_primary_fails_over_through_etcd");
    let (_cluster, mut pair) = etcd_pair(false);
    ft::start_guest_echo(&mut pair.primary, ECHO_PORT);
    pair.start_ticks();
    let len = 8 << 20;
    let stream = EchoStream::start(&pair.net.cli, ECHO_PORT, len, rng.next_u64());
    stream.wait_received(rng.range(len as u64 / 8, len as u64 / 2));
    pair.kill_primary();
    let killed_at = stream.received();
    assert!(killed_at < len as u64, "the stream ended before the kill, nothing was tested");
    let failover = pair.wait_failover();
    let result = stream.finish();
    std::thread::sleep(Duration::from_millis(200));
    let repeats = assert_console_carries_on(&mut pair);
    eprintln!(
        "etcd arbiter: SIGKILL after {killed_at} of {len} bytes echoed; {failover}; sha256 {}; console without \
         a gap ({repeats} repeated at the seam)",
        result.got_sha256
    );
}

#[test]
fn stopped_primary_is_fenced_through_etcd_and_releases_nothing() {
    let _serial = ft::serial();
    let (_cluster, mut pair) = etcd_pair(false);
    pair.start_ticks();
    pair.primary.send(&format!("ping -i 0.2 {CLIENT_IP} >/dev/null 2>&1 &"));
    let capture = pair.net.pri.capture(ft::TAP);
    wait_frames(&capture);
    ft::wait_tick(&mut pair.primary, 20);

    pair.primary.signal(libc::SIGSTOP);
    let failover = pair.wait_failover();
    wait_ticks(&pair.secondary, 10);
    // What the old primary had released before it stopped has drained by now.
    std::thread::sleep(Duration::from_millis(300));
    let console_before = pair.primary.output_len();
    capture.clear();
    let mark = pair.primary.stderr_lines();

    pair.primary.signal(libc::SIGCONT);
    let status = wait_exit_releasing_nothing(&mut pair.primary, &capture, console_before, "after SIGCONT");
    let said = pair.primary.stderr();
    assert!(said.lines().skip(mark).any(|l| l.contains("fenced")), "no `fenced` message after SIGCONT:\n{said}");
    assert_eq!(status.code(), Some(3), "a fenced primary exits 3; stderr:\n{said}");
    let repeats = assert_console_carries_on(&mut pair);
    eprintln!("etcd arbiter: SIGSTOP: {failover}; old primary fenced with exit 3; {repeats} repeated at the seam");
}

#[test]
fn partition_from_the_etcd_majority_leaves_exactly_one_active_node() {
    let _serial = ft::serial();
    let (cluster, mut pair) = etcd_pair(false);
    pair.start_ticks();
    pair.primary.send(&format!("ping -i 0.2 {CLIENT_IP} >/dev/null 2>&1 &"));
    let capture = pair.net.pri.capture(ft::TAP);
    wait_frames(&capture);
    ft::wait_tick(&mut pair.primary, 10);

    // 1. The primary reaches member 0 only, and member 0 none of the others: no quorum on the primary's side.
    cluster.isolate_with_minority(&pair.net.pri, etcd::PRIMARY_MGMT_IP, 0);
    // Its last confirmation is older than the heartbeat timeout after this: from then on it holds its outputs,
    // although its secondary still acknowledges every checkpoint.
    std::thread::sleep(Duration::from_millis(ft::HEARTBEAT_TIMEOUT_MS + 500));
    let console_held = pair.primary.output_len();
    capture.clear();
    // The guest goes on making outputs (held: more each time), none of which may leave.
    let held_before = pair.primary_status()["effects_held"].as_u64().unwrap();
    let start = Instant::now();
    loop {
        assert_eq!(
            pair.primary.output_len(),
            console_held,
            "the primary released console output without a quorum: {:?}",
            String::from_utf8_lossy(&pair.primary.output_bytes()[console_held..])
        );
        if pair.primary_status()["effects_held"].as_u64().unwrap() >= held_before + 20 {
            break;
        }
        assert!(start.elapsed() < GUEST_TIMEOUT, "the guest made no new outputs while its primary lost etcd");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = pair.primary_status();
    assert_eq!(status["protection"], "protected", "the secondary still acknowledges: {status}");

    // 2. The replication link goes too: the secondary takes over once the primary's lease expired.
    pair.net.cut_link();
    let failover = pair.wait_failover();
    wait_ticks(&pair.secondary, 10);

    // 3. Everything heals: the old primary learns it is fenced and stops.
    let mark = pair.primary.stderr_lines();
    cluster.heal();
    pair.net.restore_link();
    let status = wait_exit_releasing_nothing(&mut pair.primary, &capture, console_held, "after losing its quorum");
    let said = pair.primary.stderr();
    assert_eq!(status.code(), Some(3), "the cut-off primary exits 3 once it sees the new holder; stderr:\n{said}");
    assert!(said.lines().skip(mark).any(|l| l.contains("fenced")), "no `fenced` message after healing:\n{said}");
    assert_eq!(pair.secondary_status()["role"], "primary");
    let repeats = assert_console_carries_on(&mut pair);
    eprintln!(
        "etcd arbiter: partition: the primary held its outputs without a quorum; {failover}; old primary fenced \
         with exit 3; {repeats} repeated at the seam"
    );
}

#[test]
fn losing_one_etcd_member_does_not_stop_protection() {
    let _serial = ft::serial();
    // The leader first: the nodes talk to it, and its loss also means an election.
    let (mut cluster, mut pair) = etcd_pair(true);
    pair.start_ticks();
    ft::wait_tick(&mut pair.primary, 10);
    let fence = pair.primary_status()["fence"].clone();
    let leader = cluster.leader().expect("a leader");
    cluster.kill(leader);
    // Console output leaves the primary only after an acknowledgement and the arbiter's confirmation, so ticks
    // for three more heartbeat timeouts prove both go on without the member.
    let last = *complete_ticks(&pair.primary.output_bytes()).last().unwrap();
    let more = 3 * ft::HEARTBEAT_TIMEOUT_MS / 50;
    ft::wait_tick(&mut pair.primary, last + more);
    let status = pair.primary_status();
    assert_eq!(status["protection"], "protected", "{status}");
    assert_eq!(status["fence"], fence, "the lease was kept: {status}");
    assert_eq!(pair.secondary_status()["role"], "secondary");
    assert!(!pair.secondary.stderr().contains("failover"), "nobody needed a failover:\n{}", pair.secondary.stderr());
    let now = cluster.leader();
    assert!(now.is_some_and(|l| l != leader), "the two members left elect a new leader ({now:?})");
    eprintln!("etcd arbiter: leader e{leader} killed; {more} more ticks released, fence {fence}, new leader {now:?}");
}
