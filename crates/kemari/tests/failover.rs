//! Transparent fault tolerance end to end: a protected guest keeps its TCP connections, its acknowledged writes and
//! its console across the death of its primary; a stopped primary is fenced; a dead secondary costs nothing but
//! protection; a corrupt checkpoint is refused.
//!
//! # Hosts
//! Network namespaces stand in for machines (see `common/ft.rs` for the picture): `br` holds the bridge `br0`;
//! `pri` (primary host) and `sec` (secondary host) each have the tap `kmrtap0` on a local bridge with an uplink
//! veth to `br0`; `cli` is the client, 10.0.3.100/24 on `br0`. The guest is 10.0.3.15/24 with MAC
//! 52:54:00:12:34:56 on both taps. The replication link is a separate veth pair, `pri` 10.0.9.1 ↔ `sec`
//! 10.0.9.2. The primary is `kemari run --protect 10.0.9.2:7700 ...` in `pri`, the secondary
//! `kemari standby --listen 10.0.9.2:7700 ...` in `sec`, both with a file arbiter in a shared temp directory;
//! the guest is the real Linux guest on our RISC-V engine. Everything is removed afterwards, also on failure.
//!
//! # What each test proves
//! - `topology_*`, `replication_link_*`, `record_workload_*`: the harness itself, without fault tolerance: the
//!   client reaches a guest on either host through `br0`, the link can be cut, and the write workload and its
//!   checker agree on a run where nothing fails. They make a failure of the tests below mean the product.
//! - `tcp_stream_survives_sigkill_of_the_primary`: 64 MiB through a guest echo service while the primary is
//!   SIGKILLed at a random byte offset; the stream completes, nothing is reset, sha256 matches. 10 rounds.
//! - `no_acknowledged_write_is_lost_with_{shared,replicated}_storage`: every record the guest reported to the
//!   client after fsync is on the surviving disk image, intact and in order, and the file system checks clean.
//! - `console_has_no_gap_*`: the user's console (primary's, then secondary's) misses no tick; under the default
//!   policy (event, speculative), strict checkpoints with a coalescing window, and Remus-style intervals.
//! - `a_failed_over_guest_is_protected_again_by_a_new_standby`: after the first failover the new primary
//!   (`standby --reprotect`) syncs to a fresh standby on the dead primary's host; killing it too moves the
//!   guest a second time, with no console gap at either seam.
//! - `replicated_disks_are_brought_in_step_when_a_failed_over_guest_is_protected_again`: with replicated
//!   disks, the new primary re-protects to a standby on the dead primary's host that holds the dead primary's
//!   (stale) disk copy; the copies are compared and the chunks that differ sent, and a second failover onto
//!   that copy loses no acknowledged write, the file system checks clean, and the console has no gap.
//! - `a_request_the_last_checkpoint_had_not_seen_is_answered_after_failover_without_a_resend`: the input log;
//!   a request the primary's guest consumed after its last acknowledged checkpoint is replayed by the new
//!   primary, which answers it, and the client (5 s minimum RTO) sent it only once.
//! - `a_request_waiting_for_the_guest_when_the_primary_dies_is_answered_after_failover_without_a_resend`: frames
//!   are logged as they arrive: a request that reached the primary while its guest was paused is replayed too.
//! - `console_input_typed_before_the_kill_is_replayed_once`: lines typed on the primary's console after its
//!   last acknowledged checkpoint reach the new primary's guest, once each and in order.
//! - `udp_datagrams_reach_the_guest_once_each_across_a_failover`: a guest loop numbers the datagrams it
//!   receives; those its primary consumed after the last acknowledged checkpoint are replayed by the new
//!   primary, and across both the guest sees each number once, in order.
//! - `partition_leaves_exactly_one_active_node`: the replication link is cut with both hosts alive; the primary
//!   goes on unprotected (fence bumped), the secondary stands down (exit 3, "stale") and never runs the guest,
//!   and the client's stream is unaffected.
//! - `stopped_primary_is_fenced_and_releases_nothing_when_it_wakes`: SIGSTOP → takeover by heartbeat timeout;
//!   SIGCONT → the old primary puts not one frame on its tap, not one byte on its disk or console, and exits 3
//!   saying `fenced`.
//! - `primary_carries_on_unprotected_when_the_secondary_dies`: SIGKILL of the secondary mid-stream; the primary
//!   reports `unprotected` and the client's stream is unaffected.
//! - `corrupt_checkpoint_is_rejected_and_failover_still_works`: a proxy on the replication link flips one bit in
//!   one CHECKPOINT; the secondary rejects it, the primary resends, protection goes on, and a later failover
//!   resumes the guest from good state with no console gap. (That pair replicates in plaintext: the proxy must
//!   read the protocol. Every other pair uses mutual TLS, as the README's examples do.)
//! - `two_pairs_survive_the_loss_of_their_whole_primary_host`: two VMs (`web1`, `web2`), each with its own
//!   tap, MAC, address and standby port, both primaries on host `pri`, both standbys on `sec`, a client TCP
//!   session to each; both primaries are SIGKILLed at once; both standbys take over, both sessions complete
//!   with no reset and the right bytes, and each VM's name is in its log lines and `status`.
//! - `guest_memory_crosses_the_replication_link_only_encrypted`: a packet capture on the standby's end of the
//!   link finds no trace of a marker the guest holds in memory and prints, where the same capture of a
//!   plaintext pair finds it.
//!
//! The fault-tolerance tests fail (they do not skip) when `kemari` lacks the fault-tolerance command line.
//! Knobs for local runs: `KEMARI_FT_SEED` replays the random moments, `KEMARI_FT_REPEATS` (default 10) and
//! `KEMARI_FT_STREAM_MIB` (default 64) size the SIGKILL test.
//!
//! Needs root. Timeouts only guard against hangs; nothing asserts on time.

mod common;
#[path = "common/ft.rs"]
mod ft;
#[path = "common/netns.rs"]
mod netns;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::{guest_file, Vm, GUEST_TIMEOUT};
use ft::{
    assert_fsck_clean, assert_no_console_gap, complete_ticks, debugfs_cat, env_u64, sha256_file, EchoStream, Pair,
    PairOptions, Rng, Storage, Topology, CLIENT_IP, GUEST_IP, GUEST_MAC, GUEST_MAC_BYTES, SECONDARY_REPL_IP, TAP,
};

const ECHO_PORT: u16 = 7100;
const REPORT_PORT: u16 = 7200;
const DATAGRAM_PORT: u16 = 7300;

// ------------------------------------------------------------------------------------------------ helpers --

/// Runs `cmd` in the guest and insists that it succeeds.
fn guest_ok(vm: &mut Vm, cmd: &str) -> String {
    let out = vm.sh(&format!("{cmd}; echo RC=$?"));
    let (body, rc) = out.rsplit_once("RC=").unwrap_or_else(|| panic!("no exit status in {out:?}"));
    assert_eq!(rc.trim(), "0", "guest command failed: {cmd}\n{out}");
    body.trim().to_string()
}

/// Boots an unprotected guest (`kemari run` without `--protect`) on `host`'s tap and gives it the guest address.
fn boot_unprotected(host: &netns::NetNs, disk: Option<&std::path::Path>) -> Vm {
    let kernel = guest_file("Image");
    let initrd = guest_file("initramfs.cpio.gz");
    let net = format!("tap={TAP},mac={GUEST_MAC}");
    let mut args = vec![
        "run".to_string(),
        "--kernel".into(),
        kernel.display().to_string(),
        "--initrd".into(),
        initrd.display().to_string(),
        "--memory".into(),
        "256".into(),
        "--net".into(),
        net,
    ];
    if let Some(d) = disk {
        args.extend(["--disk".into(), d.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let mut vm = host.enter(|| Vm::start(&args));
    vm.expect("KEMARI-GUEST-READY");
    eprintln!("guest boot to KEMARI-GUEST-READY: {:?}", started.elapsed());
    assert_eq!(
        vm.sh(&format!("ip link set eth0 up && ip addr add {GUEST_IP}/24 dev eth0 && echo configured")),
        "configured"
    );
    vm
}

/// Echoes `len` bytes through the guest's echo service from the client and checks them; returns bytes/second.
fn echo_round_trip(vm: &mut Vm, topo: &Topology, len: usize, seed: u64) -> f64 {
    ft::start_guest_echo(vm, ECHO_PORT);
    let started = Instant::now();
    let stream = EchoStream::start(&topo.cli, ECHO_PORT, len, seed);
    stream.finish();
    len as f64 / started.elapsed().as_secs_f64()
}

/// The guest's write workload: `count` records `rec-N <sha256 of "rec-N\n">`, each appended to /mnt/log with
/// fsync, and only after the fsync returned is N sent to the client over TCP (one connection, one number per
/// line). When the client closes the connection, the guest unmounts the file system and powers off.
fn record_workload(count: u64) -> String {
    format!(
        "( i=0; while [ $i -lt {count} ]; do i=$((i+1)); h=$(echo rec-$i | sha256sum); \
         echo \"rec-$i ${{h%% *}}\" | dd of=/mnt/log oflag=append conv=notrunc,fsync 2>/dev/null || break; \
         echo $i; done ) | nc {CLIENT_IP} {REPORT_PORT}; umount /mnt && echo UMOUNT''-OK; poweroff -f"
    )
}

/// Checks the record file read from a disk image: records 1..=M in order, each intact, M at least `acked`.
/// Returns M.
fn check_records(log: &[u8], acked: u64) -> u64 {
    let text = String::from_utf8_lossy(log);
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the record file ends in a torn record: {:?}",
        text.lines().last()
    );
    let mut n = 0u64;
    for line in text.lines() {
        n += 1;
        let want = format!("rec-{n} {}", ft::sha256(format!("rec-{n}\n").as_bytes()));
        assert_eq!(line, want, "record {n} on the disk is wrong (missing, repeated or damaged)");
    }
    assert!(n >= acked, "the guest reported {acked} records durable, but the disk holds only {n}");
    n
}

/// Reads the numbers the guest reports on `conn` until `last`; after the `kill_after`-th, runs `kill` once.
/// Panics if the connection fails. Returns the numbers.
fn read_reports(conn: std::net::TcpStream, last: u64, kill_after: u64, mut kill: impl FnMut()) -> Vec<u64> {
    let mut reader = BufReader::new(conn);
    let mut got = Vec::new();
    let mut line = String::new();
    while got.last() != Some(&last) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => panic!("the guest closed the report connection after {:?}", got.last()),
            Ok(_) => {}
            Err(e) => panic!("the report connection failed after {:?}: {e} ({:?})", got.last(), e.kind()),
        }
        let n: u64 = line.trim().parse().unwrap_or_else(|_| panic!("bad report line {line:?}"));
        got.push(n);
        if got.len() as u64 == kill_after {
            kill();
        }
    }
    got
}

// ------------------------------------------------------------------------------------ harness self-checks --

#[test]
fn topology_connects_the_client_to_an_unprotected_guest_on_either_host() {
    let _serial = ft::serial();
    let topo = Topology::new();

    // On the primary's host, with a capture on its tap (the oracle of the silent-failure test).
    let capture = topo.pri.capture(TAP);
    let mut vm = boot_unprotected(&topo.pri, None);
    assert!(topo.cli.ping(GUEST_IP, GUEST_TIMEOUT).unwrap(), "client → guest ping through br0 failed");
    let out = vm.sh(&format!("ping -c 2 {CLIENT_IP}"));
    assert!(out.contains("2 packets received"), "guest → client ping failed:\n{out}");
    let frames = capture.frames();
    let from_vmm = capture.incoming_from(GUEST_MAC_BYTES).len();
    assert!(
        from_vmm >= 2,
        "the capture did not see the guest's frames enter through the tap ({} frames)",
        frames.len()
    );
    assert!(
        frames.iter().all(|f| f.incoming() || f.src_mac() != GUEST_MAC_BYTES),
        "a frame from the guest MAC was classified as sent by the host"
    );
    assert!(frames.iter().any(|f| !f.incoming()), "the capture saw no frame going to the guest");
    drop(capture);
    let rate = echo_round_trip(&mut vm, &topo, 16 << 20, 1);
    eprintln!("unprotected echo through br0 from the primary's host: {:.1} MiB/s", rate / f64::from(1 << 20));
    drop(vm);

    // The same MAC on the secondary's host: br0 learns the new port from the guest's first frames.
    let mut vm = boot_unprotected(&topo.sec, None);
    let out = vm.sh(&format!("ping -c 2 {CLIENT_IP}"));
    assert!(out.contains("2 packets received"), "guest on the secondary's host → client ping failed:\n{out}");
    assert!(topo.cli.ping(GUEST_IP, GUEST_TIMEOUT).unwrap(), "client → guest on the secondary's host failed");
    echo_round_trip(&mut vm, &topo, 1 << 20, 2);
}

#[test]
fn replication_link_can_be_cut_and_restored() {
    let _serial = ft::serial();
    let topo = Topology::new();
    assert!(topo.pri.ping(SECONDARY_REPL_IP, Duration::from_secs(10)).unwrap(), "replication link down at start");
    topo.cut_link();
    assert!(!topo.pri.ping(SECONDARY_REPL_IP, Duration::from_secs(2)).unwrap(), "cut_link left the hosts connected");
    topo.restore_link();
    assert!(topo.pri.ping(SECONDARY_REPL_IP, Duration::from_secs(10)).unwrap(), "restore_link did not reconnect");
}

#[test]
fn record_workload_and_its_checker_agree_without_protection() {
    let _serial = ft::serial();
    let topo = Topology::new();
    let dir = ft::TempDir::new("records");
    let image = dir.path("disk.img");
    ft::make_image(&image);
    let mut vm = boot_unprotected(&topo.pri, Some(&image));
    guest_ok(&mut vm, "mkfs.ext4 -q -F /dev/vda && mount -t ext4 /dev/vda /mnt");
    let listener = topo.cli.enter(|| TcpListener::bind(SocketAddr::from((CLIENT_IP, REPORT_PORT))).unwrap());
    let started = Instant::now();
    vm.send(&record_workload(40));
    let got = read_reports(ft::accept(&listener), 40, 0, || {});
    eprintln!("40 fsynced records unprotected: {:?}", started.elapsed());
    assert_eq!(got, (1..=40).collect::<Vec<_>>());
    assert_eq!(vm.wait().code(), Some(0), "the workload powers the guest off: {}", vm.stderr());
    assert!(vm.output().contains("UMOUNT-OK"), "umount failed:\n{}", vm.output());
    assert_fsck_clean(&image);
    assert_eq!(check_records(&debugfs_cat(&image, "/log"), 40), 40);
}

#[test]
fn console_checker_accepts_a_replayed_seam_and_catches_gaps() {
    let p = b"boot\r\ntick-1\r\ntick-2\r\ntick-3\r\ntick-";
    // The secondary re-prints the last line(s) it cannot know were released, then carries on.
    assert_eq!(assert_no_console_gap(p, b"tick-3\r\ntick-4\r\ntick-5\r\n"), (5, 1));
    assert_eq!(assert_no_console_gap(p, b"tick-2\r\ntick-3\r\ntick-4\r\n"), (4, 2));
    assert_eq!(assert_no_console_gap(p, b"4\r\ntick-5\r\n"), (5, 0), "a line finished by the secondary");
    assert_eq!(complete_ticks(b"tick-4tick-42\r\ntick-43\n tick-44"), vec![42, 43]);
    for bad in [&b"tick-5\r\n"[..], b"tick-4\r\ntick-6\r\n", b"tick-4\r\ntick-3\r\n", b""] {
        let r = std::panic::catch_unwind(|| assert_no_console_gap(p, bad));
        assert!(r.is_err(), "accepted {:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn record_checker_catches_lost_repeated_and_damaged_records() {
    let rec = |n: u64| format!("rec-{n} {}\n", ft::sha256(format!("rec-{n}\n").as_bytes()));
    let good: String = (1..=5).map(rec).collect();
    assert_eq!(check_records(good.as_bytes(), 5), 5);
    assert_eq!(check_records(good.as_bytes(), 3), 5, "records written but not yet reported are fine");
    let lost: String = [1, 2, 4, 5].into_iter().map(rec).collect();
    let repeated: String = [1, 2, 3, 3, 4].into_iter().map(rec).collect();
    let damaged = good.replacen("rec-3 ", "rec-3 0", 1);
    let torn = &good[..good.len() - 3];
    for (what, log, acked) in [
        ("a lost record", lost.as_str(), 4),
        ("a repeated record", repeated.as_str(), 4),
        ("a damaged record", damaged.as_str(), 5),
        ("a torn record", torn, 4),
        ("too few records", good.as_str(), 6),
    ] {
        let r = std::panic::catch_unwind(|| check_records(log.as_bytes(), acked));
        assert!(r.is_err(), "the record checker accepted {what}");
    }
}

#[test]
fn proxy_flips_one_bit_in_one_checkpoint_and_forwards_the_rest() {
    use ft::wire;
    use std::io::{Read, Write};
    let _serial = ft::serial();
    let ns = netns::NetNs::new("proxy");
    let standby_addr = SocketAddr::from(([127, 0, 0, 1], 7700));
    let standby = ns.enter(|| TcpListener::bind(standby_addr).unwrap());
    let proxy = ft::Proxy::start(&ns, SocketAddr::from(([127, 0, 0, 1], 7701)), standby_addr);
    let msg = |kind: u8, payload: &[u8]| {
        let mut m = vec![kind];
        m.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        m.extend_from_slice(payload);
        m
    };
    let checkpoint = |epoch: u64| {
        let mut p = epoch.to_le_bytes().to_vec();
        p.extend(ft::pseudo_random(4000, epoch));
        p
    };
    let mut primary = ns.enter(|| ft::connect(SocketAddr::from(([127, 0, 0, 1], 7701))));
    let mut secondary = ft::accept(&standby);
    let sent = [msg(wire::HELLO, b"shape"), msg(wire::CHECKPOINT, &checkpoint(1)), msg(wire::HEARTBEAT, b"")];
    for m in &sent {
        primary.write_all(m).unwrap();
    }
    let mut got = vec![0u8; sent.iter().map(Vec::len).sum()];
    secondary.read_exact(&mut got).unwrap();
    assert_eq!(got, sent.concat(), "an unarmed proxy changes nothing");
    assert!(proxy.corruption().is_none());

    proxy.arm();
    let bad = msg(wire::CHECKPOINT, &checkpoint(2));
    primary.write_all(&bad).unwrap();
    primary.write_all(&bad).unwrap(); // the resend
    let mut got = vec![0u8; bad.len() * 2];
    secondary.read_exact(&mut got).unwrap();
    let (first, second) = got.split_at(bad.len());
    let diff: Vec<usize> = (0..bad.len()).filter(|&i| first[i] != bad[i]).collect();
    assert_eq!(diff.len(), 1, "exactly one byte differs");
    assert_eq!((first[diff[0]] ^ bad[diff[0]]).count_ones(), 1, "by exactly one bit");
    assert!(diff[0] >= 9 + 8, "the flip is past the header and the epoch");
    assert_eq!(second, &bad[..], "only one checkpoint is corrupted");
    let c = proxy.corruption().unwrap();
    assert_eq!((c.epoch, c.offset as usize), (2, diff[0] - 9));
    assert_eq!(proxy.epochs_after_corruption(), vec![2]);

    let nack = msg(wire::NACK, &2u64.to_le_bytes());
    secondary.write_all(&nack).unwrap();
    let mut back = vec![0u8; nack.len()];
    primary.read_exact(&mut back).unwrap();
    assert_eq!(back, nack);
    assert_eq!(proxy.sent_by_secondary(wire::NACK), 1);

    // The primary dies: the proxy closes the secondary's side too.
    drop(primary);
    let mut rest = Vec::new();
    assert_eq!(secondary.read_to_end(&mut rest).unwrap(), 0, "the secondary sees the close");
}

// ---------------------------------------------------------------------------------- fault tolerance --

#[test]
fn tcp_stream_survives_sigkill_of_the_primary() {
    let _serial = ft::serial();
    let mut rng = Rng::new("tcp_stream_survives_sigkill_of_the_primary");
    let rounds = env_u64("KEMARI_FT_REPEATS", 10);
    let len = (env_u64("KEMARI_FT_STREAM_MIB", 64) << 20) as usize;
    for round in 1..=rounds {
        let mut pair = Pair::start(PairOptions::default());
        ft::start_guest_echo(&mut pair.primary, ECHO_PORT);
        let stream = EchoStream::start(&pair.net.cli, ECHO_PORT, len, rng.next_u64());
        // A random moment: once this many bytes came back (not too close to either end).
        let kill_at = rng.range(len as u64 / 32, len as u64 - len as u64 / 8);
        stream.wait_received(kill_at);
        pair.kill_primary();
        let killed_at = stream.received();
        assert!(killed_at < len as u64, "round {round}: the stream ended before the kill, nothing was tested");
        let failover = pair.wait_failover();
        let result = stream.finish();
        eprintln!(
            "round {round}/{rounds}: SIGKILL after {killed_at} of {len} bytes echoed; {failover}; sha256 {}",
            result.got_sha256
        );
    }
}

fn no_acknowledged_write_is_lost(storage: Storage) {
    const RECORDS: u64 = 200;
    let _serial = ft::serial();
    let mut rng = Rng::new(&format!("no_acknowledged_write_is_lost({storage:?})"));
    let mut pair = Pair::start(PairOptions { disk: Some(storage), ..Default::default() });
    guest_ok(&mut pair.primary, "mkfs.ext4 -q -F /dev/vda && mount -t ext4 /dev/vda /mnt");
    let listener = pair.net.cli.enter(|| TcpListener::bind(SocketAddr::from((CLIENT_IP, REPORT_PORT))).unwrap());
    pair.primary.send(&record_workload(RECORDS));
    let conn = ft::accept(&listener);

    let kill_after = rng.range(10, RECORDS / 2);
    let got = read_reports(conn, RECORDS, kill_after, || pair.primary.signal(libc::SIGKILL));
    // The client closed the connection: the guest unmounts and powers off, on the secondary now.
    let failover = pair.wait_failover();
    assert_eq!(got, (1..=RECORDS).collect::<Vec<_>>(), "the report stream lost or repeated numbers across failover");
    let status = pair.secondary.wait();
    assert_eq!(
        status.code(),
        Some(0),
        "the new primary's guest powers off cleanly; stderr:\n{}",
        pair.secondary.stderr()
    );
    assert!(pair.secondary.output().contains("UMOUNT-OK"), "umount failed:\n{}", pair.secondary.output());

    let image = pair.secondary_disk.clone().unwrap();
    assert_fsck_clean(&image);
    let on_disk = check_records(&debugfs_cat(&image, "/log"), RECORDS);
    eprintln!("{storage:?}: SIGKILL after {kill_after} acknowledged records; {failover}; {on_disk} records on disk");
}

#[test]
fn no_acknowledged_write_is_lost_with_shared_storage() {
    no_acknowledged_write_is_lost(Storage::Shared);
}

#[test]
fn no_acknowledged_write_is_lost_with_replicated_storage() {
    no_acknowledged_write_is_lost(Storage::Replicated);
}

/// The console test under a given synchronisation policy (extra `kemari run` arguments) and standby options.
fn console_has_no_gap(test: &str, policy: &[&str], standby: &[&str]) {
    let _serial = ft::serial();
    let mut rng = Rng::new(test);
    let primary_args = policy.iter().map(|a| a.to_string()).collect();
    let secondary_args = standby.iter().map(|a| a.to_string()).collect();
    let mut pair = Pair::start(PairOptions { primary_args, secondary_args, ..PairOptions::default() });
    pair.start_ticks();
    let kill_at = rng.range(10, 60);
    ft::wait_tick(&mut pair.primary, kill_at);
    pair.kill_primary();
    let failover = pair.wait_failover();
    // Let the primary's last output drain, then see the secondary carry on well past it.
    std::thread::sleep(Duration::from_millis(200));
    let last = *complete_ticks(&pair.primary.output_bytes()).last().unwrap();
    ft::wait_tick(&mut pair.secondary, last + 20);
    let (seen, repeats) = assert_no_console_gap(&pair.primary.output_bytes(), &pair.secondary.output_bytes());
    eprintln!("{failover}; primary's last tick {last}; {seen} ticks without a gap; {repeats} repeated at the seam");
}

#[test]
fn console_has_no_gap_across_a_failover() {
    console_has_no_gap("console_has_no_gap_across_a_failover", &[], &[]);
}

/// (Its standby also faults the replica's RAM in while it waits for the primary: `--prealloc`.)
#[test]
fn console_has_no_gap_with_strict_checkpoints_and_a_coalescing_window() {
    console_has_no_gap(
        "console_has_no_gap_with_strict_checkpoints",
        &["--strict", "--window-us", "500"],
        &["--memory", "256", "--prealloc"],
    );
}

#[test]
fn console_has_no_gap_with_interval_checkpoints() {
    console_has_no_gap(
        "console_has_no_gap_with_interval_checkpoints",
        &["--sync", "interval", "--interval-ms", "20"],
        &[],
    );
}

/// Console output is checkpointed at the end of each burst, not per byte: a protected guest prints 100 lines
/// of 64 characters in one go; the checkpoints taken meanwhile are at most about one per line (each byte its
/// own checkpoint, as with `--console-sync each`, took 5660 for the same lines), and every line is on the
/// console in order.
#[test]
fn console_output_is_checkpointed_per_burst_not_per_byte() {
    let _serial = ft::serial();
    let mut pair = Pair::start(PairOptions::default());
    const LINES: u64 = 100;
    let before = pair.primary_status()["checkpoints"].as_u64().unwrap();
    pair.primary.send(&format!(
        "i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo burst-line-$(printf %04d $i)-abcdefghijklmnopqrstuvwxyz-0123456789; done; echo BURSTS-$((40+2))"
    ));
    pair.primary.expect("BURSTS-42");
    let taken = pair.primary_status()["checkpoints"].as_u64().unwrap() - before;
    let out = String::from_utf8_lossy(&pair.primary.output_bytes()).to_string();
    let lines: Vec<&str> = out.lines().filter_map(|l| l.trim_end().strip_prefix("burst-line-")).collect();
    let numbers: Vec<u64> = lines.iter().filter_map(|l| l.get(..4)?.parse().ok()).collect();
    assert_eq!(numbers, (1..=LINES).collect::<Vec<_>>(), "every line, in order");
    eprintln!("{taken} checkpoints for {LINES} lines");
    assert!(taken <= LINES + LINES / 2, "{taken} checkpoints for {LINES} console lines: not per burst");
}

#[test]
fn stopped_primary_is_fenced_and_releases_nothing_when_it_wakes() {
    let _serial = ft::serial();
    let mut pair = Pair::start(PairOptions { disk: Some(Storage::Replicated), ..Default::default() });
    // Effects of every kind pending all the time: console ticks, ICMP frames to the client, block writes.
    pair.start_ticks();
    pair.primary.send(&format!("ping -i 0.2 {CLIENT_IP} >/dev/null 2>&1 &"));
    pair.primary.send(
        "j=0; while true; do j=$(((j+1)%1024)); \
         dd if=/dev/urandom of=/dev/vda bs=4096 seek=$j count=1 conv=fsync 2>/dev/null; sleep 0.02; done &",
    );
    let capture = pair.net.pri.capture(TAP);
    // The capture sees what the primary puts on its tap while it is the active one.
    let start = Instant::now();
    while capture.incoming_from(GUEST_MAC_BYTES).len() < 3 {
        assert!(start.elapsed() < GUEST_TIMEOUT, "the capture on the primary's tap never saw the guest's frames");
        std::thread::sleep(Duration::from_millis(50));
    }
    ft::wait_tick(&mut pair.primary, 20);

    pair.primary.signal(libc::SIGSTOP);
    let failover = pair.wait_failover();
    // The new primary runs the guest on.
    let start = Instant::now();
    while complete_ticks(&pair.secondary.output_bytes()).len() < 10 {
        assert!(start.elapsed() < GUEST_TIMEOUT, "no ticks from the new primary:\n{}", pair.secondary.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    // What the old primary had released before it stopped has drained by now.
    std::thread::sleep(Duration::from_millis(300));
    let console_before = pair.primary.output_len();
    let disk = pair.primary_disk.clone().unwrap();
    let disk_before = sha256_file(&disk);
    capture.clear();
    let mark = pair.primary.stderr_lines();

    pair.primary.signal(libc::SIGCONT);
    let status = pair.primary.wait();
    // Frames it might still write take a moment to reach the capture.
    std::thread::sleep(Duration::from_millis(500));
    let frames = capture.incoming_from(GUEST_MAC_BYTES);
    assert!(frames.is_empty(), "the fenced old primary put {} frame(s) on its tap after SIGCONT", frames.len());
    assert_eq!(
        pair.primary.output_len(),
        console_before,
        "the fenced old primary printed console bytes after SIGCONT: {:?}",
        String::from_utf8_lossy(&pair.primary.output_bytes()[console_before..])
    );
    assert_eq!(sha256_file(&disk), disk_before, "the fenced old primary wrote to its disk after SIGCONT");
    let fenced = pair.primary.stderr().lines().skip(mark).any(|l| l.contains("fenced"));
    assert!(fenced, "no `fenced` message after SIGCONT:\n{}", pair.primary.stderr());
    assert_eq!(status.code(), Some(3), "a fenced primary exits 3; stderr:\n{}", pair.primary.stderr());

    // The guest lives on at the secondary, and the user's console has no gap.
    let last = *complete_ticks(&pair.secondary.output_bytes()).last().unwrap();
    ft::wait_tick(&mut pair.secondary, last + 5);
    let (_, repeats) = assert_no_console_gap(&pair.primary.output_bytes(), &pair.secondary.output_bytes());
    eprintln!("{failover}; old primary fenced with exit 3; {repeats} console line(s) repeated at the seam");
}

#[test]
fn primary_carries_on_unprotected_when_the_secondary_dies() {
    let _serial = ft::serial();
    let mut rng = Rng::new("primary_carries_on_unprotected_when_the_secondary_dies");
    let len = (env_u64("KEMARI_FT_STREAM_MIB", 64) << 20) as usize;
    let mut pair = Pair::start(PairOptions::default());
    ft::start_guest_echo(&mut pair.primary, ECHO_PORT);
    let stream = EchoStream::start(&pair.net.cli, ECHO_PORT, len, rng.next_u64());
    let kill_at = rng.range(len as u64 / 32, len as u64 / 2);
    stream.wait_received(kill_at);
    // Only what the primary says after the kill counts (it may have said "unprotected" while connecting).
    let mark = pair.primary.stderr_lines();
    pair.kill_secondary();
    let killed_at = stream.received();
    assert!(killed_at < len as u64, "the stream ended before the kill, nothing was tested");
    let line = pair.primary.expect_stderr_after("unprotected", mark);
    let result = stream.finish();
    let status = pair.primary_status();
    assert_eq!(status["protection"], "unprotected", "status after losing the secondary: {status}");
    eprintln!("secondary SIGKILLed after {killed_at} bytes; primary: {line}; sha256 {}", result.got_sha256);
}

#[test]
fn corrupt_checkpoint_is_rejected_and_failover_still_works() {
    let _serial = ft::serial();
    let mut pair = Pair::start(PairOptions { proxy: true, ..Default::default() });
    pair.start_ticks();
    ft::wait_tick(&mut pair.primary, 10);
    let proxy = pair.proxy.as_ref().unwrap();
    proxy.arm();
    proxy.wait_until("a CHECKPOINT to corrupt", |p| p.corruption().is_some());
    let corruption = proxy.corruption().unwrap();
    let rejected = pair.secondary.expect_stderr("rejected checkpoint");
    let proxy = pair.proxy.as_ref().unwrap();
    proxy.wait_until("a NACK from the secondary", |p| p.sent_by_secondary(ft::wire::NACK) >= 1);
    // After the NACK the primary sends the same checkpoint again (checkpoints it had already sent behind it,
    // speculatively, may come first).
    proxy
        .wait_until("the corrupted checkpoint sent again", |p| p.epochs_after_corruption().contains(&corruption.epoch));
    // Protection goes on: the primary releases console output only after acknowledgements, so new ticks on its
    // console prove the secondary acknowledges again.
    let last = *complete_ticks(&pair.primary.output_bytes()).last().unwrap();
    ft::wait_tick(&mut pair.primary, last + 10);
    let status = pair.secondary_status();
    assert_eq!(status["role"], "secondary", "the secondary keeps its role after rejecting: {status}");

    pair.kill_primary();
    let failover = pair.wait_failover();
    std::thread::sleep(Duration::from_millis(200));
    let last = *complete_ticks(&pair.primary.output_bytes()).last().unwrap();
    ft::wait_tick(&mut pair.secondary, last + 10);
    let (_, repeats) = assert_no_console_gap(&pair.primary.output_bytes(), &pair.secondary.output_bytes());
    // The resumed guest is fully alive.
    assert_eq!(pair.secondary.sh("echo $((6*7))"), "42");
    eprintln!(
        "flipped a bit at offset {} of a {}-byte CHECKPOINT (epoch {}); secondary: {rejected}; {failover}; \
         {repeats} console line(s) repeated",
        corruption.offset, corruption.payload_len, corruption.epoch
    );
}

/// A request that reached the primary after its last checkpoint is answered after failover without the
/// client sending it again: the primary's guest consumed it (the input went to the secondary at once), but
/// the proxy on the replication link swallows every checkpoint from then on, so the guest's reply stays held
/// in the primary's gate and the secondary's committed state never saw the request. The primary is SIGKILLed;
/// the new primary replays the request and answers. The client's route has a 5 s minimum retransmission
/// timeout, so a reply that needed a resend would come only after one: a capture on the client shows the
/// request frame went out exactly once.
#[test]
fn a_request_the_last_checkpoint_had_not_seen_is_answered_after_failover_without_a_resend() {
    request_is_replayed(&[]);
}

/// The same under the other policies, with SMP guests: Remus-style intervals on 2 harts, strict checkpoints
/// with a coalescing window on 2 harts.
#[test]
fn a_request_is_replayed_under_interval_and_strict_policies_on_smp_guests() {
    request_is_replayed(&["--sync", "interval", "--interval-ms", "20", "--cpus", "2"]);
    request_is_replayed(&["--strict", "--window-us", "500", "--cpus", "2"]);
}

/// A request that reached the primary while its guest could not take it (here: paused through the control API;
/// in life, the machine busy taking a checkpoint) is logged as it arrives, so the new primary replays it: the
/// client, with a 5 s minimum retransmission timeout, sends it once and gets the answer.
#[test]
fn a_request_waiting_for_the_guest_when_the_primary_dies_is_answered_after_failover_without_a_resend() {
    use std::io::Write;
    let _serial = ft::serial();
    let mut pair = Pair::start(PairOptions { proxy: true, ..Default::default() });
    let mut sock = echo_with_long_rto(&mut pair);
    let capture = pair.net.cli.capture("eth0");
    let proxy = pair.proxy.as_ref().unwrap();
    proxy.withhold_checkpoints();
    let (ok, out) = common::ctl(pair.primary_api.to_str().unwrap(), &["pause"]);
    assert!(ok, "pause: {out}");
    const REQUEST: &[u8] = b"request-the-guest-never-took\n";
    sock.write_all(REQUEST).unwrap();
    proxy.wait_until("the request's INPUT while the guest is paused", |p| {
        p.inputs_while_withholding().iter().any(|(i, _)| i.bytes.windows(REQUEST.len()).any(|w| w == REQUEST))
    });
    let failover = answered_after_failover_without_a_resend(&mut pair, &mut sock, &capture, REQUEST);
    eprintln!("{failover}");
}

/// Kills the primary; the new primary answers `request` on `sock`, which the client sent only once (seen on
/// `capture`). Returns the secondary's failover line.
fn answered_after_failover_without_a_resend(
    pair: &mut Pair,
    sock: &mut std::net::TcpStream,
    capture: &netns::PacketCapture,
    request: &[u8],
) -> String {
    use std::io::Read;
    pair.kill_primary();
    let failover = pair.wait_failover();
    let mut reply = vec![0u8; request.len()];
    sock.read_exact(&mut reply).unwrap();
    assert_eq!(reply, request, "the new primary answered the replayed request");
    let sent = capture
        .frames()
        .iter()
        .filter(|f| !f.incoming() && f.bytes.windows(request.len()).any(|w| w == request))
        .count();
    assert_eq!(sent, 1, "the client sent the request once; {failover}");
    failover
}

/// The client's route gets a 5 s minimum retransmission timeout (a resend would show as a long wait and a
/// second request frame); the guest runs its echo service; one round trip on a new connection.
fn echo_with_long_rto(pair: &mut Pair) -> std::net::TcpStream {
    use std::io::{Read, Write};
    pair.net.cli.ip(&[
        "route",
        "replace",
        "10.0.3.0/24",
        "dev",
        "eth0",
        "proto",
        "kernel",
        "scope",
        "link",
        "src",
        "10.0.3.100",
        "rto_min",
        "5000ms",
    ]);
    ft::start_guest_echo(&mut pair.primary, ECHO_PORT);
    let mut sock = pair.net.cli.enter(|| ft::connect(SocketAddr::from((GUEST_IP, ECHO_PORT))));
    sock.set_nodelay(true).unwrap();
    let mut got = [0u8; 6];
    sock.write_all(b"hello\n").unwrap();
    sock.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello\n");
    sock
}

fn request_is_replayed(policy: &[&str]) {
    use std::io::Write;
    let _serial = ft::serial();
    let primary_args = policy.iter().map(|a| a.to_string()).collect();
    let mut pair = Pair::start(PairOptions { proxy: true, primary_args, ..Default::default() });
    let mut sock = echo_with_long_rto(&mut pair);
    let capture = pair.net.cli.capture("eth0");
    let proxy = pair.proxy.as_ref().unwrap();
    proxy.withhold_checkpoints();
    const REQUEST: &[u8] = b"request-that-no-checkpoint-saw\n";
    sock.write_all(REQUEST).unwrap();
    // The guest consumed it (the INPUT with its frame reached the secondary) and answered: a checkpoint after
    // it was swallowed.
    proxy.wait_until("the request's INPUT, then a swallowed checkpoint", |p| {
        let carries = |b: &[u8]| b.windows(REQUEST.len()).any(|w| w == REQUEST);
        p.inputs_while_withholding().iter().any(|(i, after)| carries(&i.bytes) && *after >= 1)
    });
    // The reply is held in the primary's gate: no checkpoint since the proxy began to swallow them was
    // acknowledged. (Not asked over the control API: a primary with too many
    // checkpoints unacknowledged waits for acknowledgements in the machine loop, which also answers it.)
    let failover = answered_after_failover_without_a_resend(&mut pair, &mut sock, &capture, REQUEST);
    assert!(!failover.contains(" 0 inputs replayed"), "{failover}");
    eprintln!("{policy:?}: {failover}");
}

/// The numbers of the words of `out` that are `prefix` followed by a number ("ok-7" → 7). Words only, so the
/// echoed command line ("echo DUP-$n") and a prompt before a report do not count.
fn numbered_words(out: &str, prefix: &str) -> Vec<u32> {
    out.split_whitespace().filter_map(|w| w.strip_prefix(prefix)?.parse().ok()).collect()
}

/// Console input typed just before the kill is not lost, and nothing the guest consumed is given to it twice:
/// a guest loop reads numbered lines from its console and reports any number that is not the next one. Five
/// lines typed on the primary's console after its last acknowledged checkpoint (the proxy swallows the later
/// ones) are replayed by the new primary; the sixth is typed on the new primary's console.
#[test]
fn console_input_typed_before_the_kill_is_replayed_once() {
    let _serial = ft::serial();
    let mut pair = Pair::start(PairOptions { proxy: true, ..Default::default() });
    pair.primary.send(
        "echo LOOP-$((1+1)); last=0; while read n; do [ $n -le $last ] && echo DUP-$n; \
         [ $n -gt $((last+1)) ] && echo GAP-$n; last=$n; echo ok-$n; done",
    );
    pair.primary.expect("LOOP-2");
    let proxy = pair.proxy.as_ref().unwrap();
    proxy.withhold_checkpoints();
    pair.primary.send("1\n2\n3\n4\n5");
    proxy.wait_until("the typed lines' INPUT", |p| {
        let typed: usize = p.inputs_while_withholding().iter().map(|(i, _)| i.bytes.len()).sum();
        typed >= "1\n2\n3\n4\n5\n".len()
    });
    pair.kill_primary();
    let failover = pair.wait_failover();
    pair.secondary.expect("ok-5");
    pair.secondary.send("6");
    pair.secondary.expect("ok-6");
    let out = String::from_utf8_lossy(&pair.secondary.output_bytes()).to_string();
    let seen: Vec<&str> = out.lines().map(str::trim_end).filter(|l| l.starts_with("ok-")).collect();
    assert_eq!(seen, ["ok-1", "ok-2", "ok-3", "ok-4", "ok-5", "ok-6"], "{failover}\n{out}");
    // The echoed command line holds "DUP-$n" and may be in the new primary's output: the console is
    // at-least-once, so it may repeat what the old primary printed since the secondary last heard of a release.
    let (dups, gaps) = (numbered_words(&out, "DUP-"), numbered_words(&out, "GAP-"));
    assert!(dups.is_empty() && gaps.is_empty(), "the guest saw {dups:?} again and missed before {gaps:?}:\n{out}");
    eprintln!("{failover}");
}

/// A guest sees no input twice and misses none of what its primary consumed: a guest loop reads numbered UDP
/// datagrams and reports any number that is not the next one. Datagrams 11–15 reach the primary's guest after
/// its last acknowledged checkpoint (the proxy swallows the later ones; they are few, and sent at once, so that
/// the primary's guest consumes them all before too many checkpoints are unacknowledged and it must wait), so
/// only the input log can give them to the new primary's guest; 16–25 are sent to the new primary.
#[test]
fn udp_datagrams_reach_the_guest_once_each_across_a_failover() {
    let _serial = ft::serial();
    let mut pair = Pair::start(PairOptions { proxy: true, ..Default::default() });
    // (stdin from /dev/null: a background job reading the console would be stopped.)
    pair.primary.send(&format!(
        "nc -u -l -p {DATAGRAM_PORT} </dev/null | ( last=0; while read n; do [ $n -le $last ] && echo DUP-$n; \
         [ $n -gt $((last+1)) ] && echo GAP-$n; last=$n; echo ok-$n; done ) &"
    ));
    let port = format!(":{DATAGRAM_PORT:04X} ");
    assert_eq!(
        pair.primary.sh(&format!("until grep -q '{port}' /proc/net/udp; do sleep 0.1; done; echo ready")),
        "ready"
    );
    let sock = pair.net.cli.enter(|| std::net::UdpSocket::bind((CLIENT_IP, 0))).unwrap();
    let send = |numbers: std::ops::RangeInclusive<u32>, pace: Duration| {
        for n in numbers {
            sock.send_to(format!("{n}\n").as_bytes(), (GUEST_IP, DATAGRAM_PORT)).unwrap();
            std::thread::sleep(pace);
        }
    };
    send(1..=10, Duration::from_millis(5));
    pair.primary.expect("ok-10");
    let proxy = pair.proxy.as_ref().unwrap();
    proxy.withhold_checkpoints();
    send(11..=15, Duration::ZERO);
    // Each of them reached the secondary in an INPUT: the primary's guest consumed it.
    proxy.wait_until("the INPUT of datagrams 11-15", |p| {
        let logged = p.inputs_while_withholding();
        (11..=15).all(|n| {
            let payload = format!("{n}\n");
            logged.iter().any(|(i, _)| i.bytes.get(42..42 + payload.len()) == Some(payload.as_bytes()))
        })
    });
    pair.kill_primary();
    let failover = pair.wait_failover();
    pair.secondary.expect("ok-15");
    send(16..=25, Duration::from_millis(5));
    pair.secondary.expect("ok-25");
    let oks = |vm: &Vm| -> Vec<u32> {
        let out = String::from_utf8_lossy(&vm.output_bytes()).to_string();
        let (dups, gaps) = (numbered_words(&out, "DUP-"), numbered_words(&out, "GAP-"));
        assert!(dups.is_empty() && gaps.is_empty(), "the guest saw {dups:?} again and missed before {gaps:?}:\n{out}");
        numbered_words(&out, "ok-")
    };
    let (before, after) = (oks(&pair.primary), oks(&pair.secondary));
    // The console is at-least-once: the new primary may repeat the last line the old one printed.
    let seam = after.first().copied().unwrap_or(0);
    let joined: Vec<u32> = before.iter().copied().filter(|&n| n < seam).chain(after.iter().copied()).collect();
    assert_eq!(joined, (1..=25).collect::<Vec<_>>(), "primary {before:?}, then secondary {after:?}; {failover}");
    assert!(seam <= 11, "the new primary's guest got 11-15 by replay; it printed from {seam}; {failover}");
    eprintln!("{failover}; the primary's console showed up to ok-{:?}", before.last());
}

#[test]
fn partition_leaves_exactly_one_active_node() {
    let _serial = ft::serial();
    let mut rng = Rng::new("partition_leaves_exactly_one_active_node");
    let len = (env_u64("KEMARI_FT_STREAM_MIB", 64) << 20) as usize;
    let mut pair = Pair::start(PairOptions::default());
    ft::start_guest_echo(&mut pair.primary, ECHO_PORT);
    let stream = EchoStream::start(&pair.net.cli, ECHO_PORT, len, rng.next_u64());
    stream.wait_received(rng.range(len as u64 / 32, len as u64 / 4));
    let mark = pair.primary.stderr_lines();
    let secondary_console = pair.secondary.output_len();
    // Both hosts stay up and reach the client; only the replication link between them goes.
    pair.net.cut_link();
    // The primary keeps the lease, bumps the fence and goes on alone; the secondary sees the fence moved and
    // stands down instead of taking over.
    let line = pair.primary.expect_stderr_after("unprotected", mark);
    let status = pair.secondary.wait();
    let said = pair.secondary.stderr();
    assert_eq!(status.code(), Some(3), "the cut-off secondary stands down with exit code 3:\n{said}");
    assert!(said.contains("stale"), "the secondary says why it did not take over:\n{said}");
    assert!(!said.contains("failover complete"), "the secondary must not take over a live primary:\n{said}");
    assert_eq!(pair.secondary.output_len(), secondary_console, "the secondary's guest never ran (no console)");
    let result = stream.finish();
    assert_eq!(pair.primary_status()["protection"], "unprotected");
    pair.net.restore_link();
    eprintln!("partition: primary: {line}; stream sha256 {}", result.got_sha256);
}

#[test]
fn a_failed_over_guest_is_protected_again_by_a_new_standby() {
    let _serial = ft::serial();
    let mut rng = Rng::new("a_failed_over_guest_is_protected_again_by_a_new_standby");
    // The replacement standby will run on the primary's host once that host's kemari is gone.
    let third = SocketAddr::from((ft::PRIMARY_REPL_IP, ft::STANDBY_PORT + 2));
    let secondary_args = vec!["--reprotect".to_string(), third.to_string()];
    let mut pair = Pair::start(PairOptions { secondary_args, ..PairOptions::default() });
    pair.start_ticks();
    ft::wait_tick(&mut pair.primary, rng.range(10, 40));
    let mark = pair.secondary.stderr_lines();
    pair.kill_primary();
    pair.wait_failover();
    // The host of the dead primary comes back as the new standby (its tap is free again).
    let api = pair.dir.path("third.sock");
    let args = ft::standby_args(&pair.arbiter, third, "third", &api, pair.certs.as_deref());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut third_vm = pair.net.pri.enter(|| Vm::start(&args));
    third_vm.expect_stderr("protection established");
    let line = pair.secondary.expect_stderr_after("protection established", mark);
    let status = pair.secondary_status();
    assert_eq!(status["role"], "primary", "{status}");
    assert_eq!(status["protection"], "protected", "the new primary reports its new protection: {status}");
    // Let the new pair checkpoint a few ticks, then lose the second primary too.
    let last = *complete_ticks(&pair.secondary.output_bytes()).last().unwrap();
    ft::wait_tick(&mut pair.secondary, last + rng.range(5, 20));
    pair.secondary.signal(libc::SIGKILL);
    let failover = third_vm.expect_stderr("failover complete in");
    std::thread::sleep(Duration::from_millis(200));
    let last = *complete_ticks(&pair.secondary.output_bytes()).last().unwrap();
    ft::wait_tick(&mut third_vm, last + 20);
    assert_no_console_gap(&pair.primary.output_bytes(), &pair.secondary.output_bytes());
    let (seen, _) = assert_no_console_gap(&pair.secondary.output_bytes(), &third_vm.output_bytes());
    assert_eq!(third_vm.sh("echo $((6*7))").lines().filter(|l| !l.contains("tick-")).collect::<Vec<_>>(), ["42"]);
    eprintln!("re-protected: {line}; second failover: {failover}; {seen} ticks without a gap on the second seam");
}

#[test]
fn replicated_disks_are_brought_in_step_when_a_failed_over_guest_is_protected_again() {
    let _serial = ft::serial();
    let mut rng = Rng::new("replicated_disks_are_brought_in_step_when_a_failed_over_guest_is_protected_again");
    let third = SocketAddr::from((ft::PRIMARY_REPL_IP, ft::STANDBY_PORT + 2));
    let secondary_args = vec!["--reprotect".to_string(), third.to_string()];
    let mut pair = Pair::start(PairOptions { disk: Some(Storage::Replicated), secondary_args, ..Default::default() });
    guest_ok(&mut pair.primary, "mkfs.ext4 -q -F /dev/vda && mount -t ext4 /dev/vda /mnt");
    pair.start_ticks();
    let listener = pair.net.cli.enter(|| TcpListener::bind(SocketAddr::from((CLIENT_IP, REPORT_PORT))).unwrap());
    // More records than the test reads: it closes the connection, and the guest then unmounts and powers off.
    // In the background, so that the console takes commands meanwhile.
    pair.primary.send(&format!("( {} ) &", record_workload(1_000_000)));
    let mut reports = BufReader::new(ft::accept(&listener));
    let mut acked = 0u64;
    let mut read_until = |n: u64| {
        let mut line = String::new();
        while acked < n {
            line.clear();
            match reports.read_line(&mut line) {
                Ok(0) => panic!("the guest closed the report connection after {acked}"),
                Ok(_) => {}
                Err(e) => panic!("the report connection failed after {acked}: {e}"),
            }
            let got: u64 = line.trim().parse().unwrap_or_else(|_| panic!("bad report line {line:?}"));
            assert_eq!(got, acked + 1, "the report stream lost or repeated numbers across a failover");
            acked = got;
        }
        acked
    };

    // First failover: the old primary's copy stays behind on its host, without what is written from here on.
    let first = read_until(rng.range(10, 40));
    let mark = pair.secondary.stderr_lines();
    pair.kill_primary();
    pair.wait_failover();
    read_until(first + 20);
    // Data the stale copy lacks and the guest does not write again: only the comparison can bring it over.
    let out = pair.secondary.sh("head -c 4194304 /dev/urandom > /mnt/after && sync && sha256sum /mnt/after");
    let after = out.lines().find_map(|l| l.strip_suffix("  /mnt/after")).unwrap_or_else(|| panic!("{out}")).to_string();
    // The dead primary's host comes back as the new standby, with that stale copy.
    let image = pair.primary_disk.clone().unwrap();
    let api = pair.dir.path("third.sock");
    let mut args = ft::standby_args(&pair.arbiter, third, "third", &api, pair.certs.as_deref());
    args.extend(["--storage".into(), "replicated".into(), "--disk".into(), image.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut third_vm = pair.net.pri.enter(|| Vm::start(&args));
    let rewritten = third_vm.expect_stderr("disk copies in step");
    third_vm.expect_stderr("protection established");
    let compared = pair.secondary.expect_stderr_after("replicated disks: compared", mark);
    pair.secondary.expect_stderr_after("protection established", mark);
    let status = pair.secondary_status();
    assert_eq!(status["protection"], "protected", "{status}");
    let disks = &status["disk_comparison"];
    assert_eq!(disks["done"], true, "{status}");
    assert_eq!(disks["total_bytes"], ft::DISK_BYTES, "{status}");
    assert!(disks["differed_bytes"].as_u64().unwrap() > 0, "the stale copy must have differed: {status}");

    // Second failover, onto the copy that was brought in step.
    let now = read_until(0);
    let second = read_until(now + rng.range(10, 40));
    third_vm.expect_stderr("protection established"); // still protected when the new primary dies
    pair.secondary.signal(libc::SIGKILL);
    let failover = third_vm.expect_stderr("failover complete in");
    let last = read_until(second + 20);
    drop(reports);
    assert_eq!(third_vm.wait().code(), Some(0), "the guest powers off cleanly; stderr:\n{}", third_vm.stderr());
    assert!(third_vm.output().contains("UMOUNT-OK"), "umount failed:\n{}", third_vm.output());
    assert_fsck_clean(&image);
    let on_disk = check_records(&debugfs_cat(&image, "/log"), last);
    assert_eq!(ft::sha256(&debugfs_cat(&image, "/after")), after, "the file written before re-protection");
    assert_no_console_gap(&pair.primary.output_bytes(), &pair.secondary.output_bytes());
    let (seen, _) = assert_no_console_gap(&pair.secondary.output_bytes(), &third_vm.output_bytes());
    eprintln!(
        "first kill after {first} records, second after {second}; {compared}; {rewritten}; {failover}; \
         {last} acknowledged, {on_disk} on disk; {seen} ticks without a gap on the second seam"
    );
}

#[test]
fn a_primary_whose_standby_died_is_protected_again_by_a_new_one() {
    let _serial = ft::serial();
    let mut rng = Rng::new("a_primary_whose_standby_died_is_protected_again_by_a_new_one");
    // Two harts: the replacement standby names only --memory (the README's recipe), which must not make it
    // expect one hart.
    let primary_args = vec!["--cpus".to_string(), "2".into()];
    let mut pair = Pair::start(PairOptions { primary_args, ..PairOptions::default() });
    pair.start_ticks();
    ft::wait_tick(&mut pair.primary, rng.range(5, 20));
    let mark = pair.primary.stderr_lines();
    pair.kill_secondary();
    pair.primary.expect_stderr_after("unprotected", mark);
    pair.secondary.wait();

    // A new standby on the same host, address and tap. The primary's checkpoints so far had epochs the new
    // standby never saw: the new session starts again at 1.
    let mark = pair.primary.stderr_lines();
    let api = pair.dir.path("secondary-2.sock");
    let listen = SocketAddr::from((SECONDARY_REPL_IP, ft::STANDBY_PORT));
    let mut args = ft::standby_args(&pair.arbiter, listen, "sec-2", &api, pair.certs.as_deref());
    args.extend(["--memory", "256", "--prealloc"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pair.secondary = pair.net.sec.enter(|| Vm::start(&args));
    pair.secondary_api = api;
    pair.secondary.expect_stderr("protection established");
    let line = pair.primary.expect_stderr_after("protection established", mark);
    let status = pair.primary_status();
    assert_eq!(status["protection"], "protected", "the primary is protected again: {status}");
    assert_eq!(pair.secondary_status()["protection"], "protected");

    // The new pair checkpoints, then the primary dies: the new standby takes over from where the guest was.
    let last = *complete_ticks(&pair.primary.output_bytes()).last().unwrap();
    ft::wait_tick(&mut pair.primary, last + rng.range(5, 20));
    pair.kill_primary();
    let failover = pair.wait_failover();
    std::thread::sleep(Duration::from_millis(200));
    let last = *complete_ticks(&pair.primary.output_bytes()).last().unwrap();
    ft::wait_tick(&mut pair.secondary, last + 10);
    let (seen, repeats) = assert_no_console_gap(&pair.primary.output_bytes(), &pair.secondary.output_bytes());
    let answer = pair.secondary.sh("echo $((6*7))");
    assert_eq!(answer.lines().filter(|l| !l.contains("tick-")).collect::<Vec<_>>(), ["42"]);
    eprintln!("protected again: {line}; {failover}; {seen} ticks, {repeats} repeated at the seam");
}

#[test]
fn a_slow_disk_flush_does_not_fence_a_healthy_primary() {
    let _serial = ft::serial();
    // Every flush of the shared disk takes half as long again as the lease (the heartbeat timeout): each
    // release of a flush lets the lease lapse by the primary's own clock, with nobody else taking it.
    let delay = (ft::HEARTBEAT_TIMEOUT_MS * 3 / 2).to_string();
    let primary_env = vec![("KEMARI_FAULT_FLUSH_DELAY_MS".to_string(), delay.clone())];
    let mut pair = Pair::start(PairOptions { disk: Some(Storage::Shared), primary_env, ..PairOptions::default() });
    // Console output while each flush is written keeps more checkpoints in flight while it is released, so
    // acknowledgements wait behind the slow release.
    let written = guest_ok(
        &mut pair.primary,
        "for i in 0 1 2; do dd if=/dev/urandom of=/dev/vda bs=4096 count=8 seek=$((i*8)) conv=fsync 2>/dev/null & \
         yes flood-$i | head -n 1000; wait; done; dd if=/dev/vda bs=4096 count=24 2>/dev/null | sha256sum",
    );
    let guest_sum = written.lines().last().unwrap().split_whitespace().next().unwrap().to_string();
    assert_eq!(pair.primary.sh("echo $((6*7))"), "42", "the primary's console goes on");
    assert!(pair.primary.try_status().is_none(), "the primary exited:\n{}", pair.primary.stderr());
    let said = pair.primary.stderr();
    assert!(!said.contains("fenced"), "a healthy primary fenced itself after a slow flush:\n{said}");
    let status = pair.primary_status();
    assert_eq!(status["protection"], "protected", "{status}");
    assert!(!pair.secondary.stderr().contains("failover"), "nobody needed a failover:\n{}", pair.secondary.stderr());
    // What the guest wrote (and read back through its own writes) is what the shared disk holds.
    let disk = std::fs::read(pair.primary_disk.as_ref().unwrap()).unwrap();
    assert_eq!(ft::sha256(&disk[..24 * 4096]), guest_sum, "the disk does not hold what the guest wrote");
    eprintln!("three flushes of {delay} ms each released; fence {} kept, still protected", status["fence"]);
}

#[test]
fn a_disk_write_that_fails_on_release_pauses_the_guest_and_is_not_lost() {
    let _serial = ft::serial();
    // The shared disk lives on a file system with almost no room: its writes fail with ENOSPC once they are
    // released, after the guest was told they completed.
    let dir = ft::TempDir::new("full-disk");
    let fs = common::SmallFs::mount(dir.path("fs"), 4 << 20);
    let image = fs.path("shared.img");
    ft::make_image(&image);
    let filler = fs.path("filler");
    std::fs::write(&filler, vec![1u8; (4 << 20) - (128 << 10)]).unwrap();
    let opts = PairOptions { disk: Some(Storage::Shared), shared_disk: Some(image.clone()), ..PairOptions::default() };
    let mut pair = Pair::start(opts);
    let data = guest_ok(
        &mut pair.primary,
        "dd if=/dev/urandom of=/tmp/data bs=4096 count=256 2>/dev/null; sha256sum /tmp/data",
    );
    let want = data.split_whitespace().next().unwrap().to_string();
    pair.primary.send("dd if=/tmp/data of=/dev/vda bs=4096 conv=fsync 2>/dev/null; echo WRITTEN-RC=$?");

    // The guest stops on the write it cannot keep, and says why.
    let start = Instant::now();
    let stalled = loop {
        let s = pair.primary_status();
        if s["paused"] == true && s["io_error"].is_string() {
            break s;
        }
        assert!(start.elapsed() < GUEST_TIMEOUT, "the guest never paused on the failed write; status {s}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let why = stalled["io_error"].as_str().unwrap();
    assert!(why.contains("No space left on device"), "{stalled}");
    assert!(stalled["effects_held"].as_u64().unwrap() > 0, "the failed write is kept: {stalled}");
    assert!(pair.primary.stderr().contains("the guest is paused"), "{}", pair.primary.stderr());
    assert!(!pair.primary.output().contains("WRITTEN-RC=0"), "output behind the failed write left the VM");
    assert!(pair.primary.try_status().is_none(), "the primary exited:\n{}", pair.primary.stderr());

    // Room again: resume retries the write, and everything behind it follows.
    std::fs::remove_file(&filler).unwrap();
    let (ok, out) = common::ctl(pair.primary_api.to_str().unwrap(), &["resume"]);
    assert!(ok, "resume: {out}");
    pair.primary.expect("WRITTEN-RC=0");
    let status = pair.primary_status();
    assert_eq!(status["paused"], false, "{status}");
    assert!(status.get("io_error").is_none(), "{status}");
    assert_eq!(status["protection"], "protected", "{status}");
    let disk = std::fs::read(&image).unwrap();
    assert_eq!(ft::sha256(&disk[..1 << 20]), want, "the disk does not hold every write the guest saw complete");
    eprintln!("paused on: {why}; after resume the disk holds all 1 MiB the guest wrote");
}

/// The replication link carries guest memory (and held console output) only encrypted: a packet capture on
/// the standby's end of the link, while the guest builds a marker in memory and prints it, finds no trace of
/// it over mutual TLS. The same capture of a plaintext pair finds it, so the capture would see a leak.
#[test]
fn guest_memory_crosses_the_replication_link_only_encrypted() {
    let _serial = ft::serial();
    const MARKER: &[u8] = b"KEMARI-SECRET-42007";
    let captured = |plaintext: bool| -> (usize, bool) {
        let mut pair = Pair::start(PairOptions { plaintext, ..PairOptions::default() });
        let capture = ft::Capture::start(&pair.net.sec, ft::REPL_DEV, ft::STANDBY_PORT);
        // Built in the guest, not typed: the typed command alone does not hold it.
        let out = pair.primary.sh("a=KEMARI; b=SECRET; echo $a-$b-$((6*7*1000+7)) > /tmp/marker; cat /tmp/marker");
        assert_eq!(out.as_bytes(), MARKER);
        // More outputs, more checkpoints: each after the marker's pages were dirtied.
        for i in 0..5 {
            assert_eq!(pair.primary.sh(&format!("echo again-{i}")), format!("again-{i}"));
        }
        let bytes = capture.finish();
        (bytes.len(), bytes.windows(MARKER.len()).any(|w| w == MARKER))
    };
    let (tls_bytes, tls_leak) = captured(false);
    let (plain_bytes, plain_leak) = captured(true);
    assert!(plain_leak, "the capture missed the marker even in plaintext ({plain_bytes} bytes): it cannot see a leak");
    assert!(tls_bytes > 4096, "the capture saw only {tls_bytes} bytes of the TLS link: checkpoints did not cross it");
    assert!(!tls_leak, "guest memory crossed the TLS replication link in plaintext");
    eprintln!("captured {tls_bytes} bytes over TLS (no marker), {plain_bytes} in plaintext (marker found)");
}

/// Two protected VMs, `web1` and `web2`, each a primary on host A (`pri`) with its standby on host B (`sec`),
/// each with its own tap, MAC, address and standby port, and a client TCP session to each. Host A is lost at
/// once (both primaries SIGKILLed back to back): both standbys take over, and both sessions carry on with no
/// reset and no lost or wrong byte. Each VM's name is in its own log lines (and not the other's) and in its
/// `status`.
#[test]
fn two_pairs_survive_the_loss_of_their_whole_primary_host() {
    let _serial = ft::serial();
    let mut rng = Rng::new("two_pairs_survive_the_loss_of_their_whole_primary_host");
    let len = (env_u64("KEMARI_FT_STREAM_MIB", 64) << 20) as usize / 4;
    let net = std::sync::Arc::new(Topology::new());
    let names = ["web1", "web2"];
    let mut pairs: Vec<Pair> = [ft::FIRST_GUEST, ft::SECOND_GUEST]
        .into_iter()
        .zip(names)
        .map(|(guest, name)| {
            Pair::start_on(net.clone(), PairOptions { guest, name: Some(name.into()), ..PairOptions::default() })
        })
        .collect();
    for (pair, name) in pairs.iter().zip(names) {
        for (node, status) in [("primary", pair.primary_status()), ("secondary", pair.secondary_status())] {
            assert_eq!(status["name"], name, "{name}'s {node} status: {status}");
            assert_eq!(status["protection"], "protected", "{name}'s {node} status: {status}");
        }
    }
    let mut streams = Vec::new();
    for pair in &mut pairs {
        ft::start_guest_echo(&mut pair.primary, ECHO_PORT);
        streams.push(EchoStream::start_to(&net.cli, pair.guest.ip, ECHO_PORT, len, rng.next_u64()));
    }
    // A random moment with both sessions well under way.
    for stream in &streams {
        stream.wait_received(rng.range(len as u64 / 16, len as u64 / 2));
    }
    for pair in &mut pairs {
        pair.kill_primary();
    }
    for (stream, name) in streams.iter().zip(names) {
        assert!(stream.received() < len as u64, "{name}'s stream ended before the kill, nothing was tested");
    }
    let mut said = Vec::new();
    for pair in &mut pairs {
        said.push(pair.wait_failover());
    }
    for ((stream, pair), name) in streams.into_iter().zip(&pairs).zip(names) {
        let result = stream.finish();
        let status = pair.secondary_status();
        assert_eq!(status["name"], name, "{name}'s new primary's status: {status}");
        assert_eq!(status["role"], "primary", "{name}'s standby took over: {status}");
        let other = names.iter().find(|&&n| n != name).unwrap();
        for (node, vm) in [("primary", &pair.primary), ("secondary", &pair.secondary)] {
            let log = vm.stderr();
            let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("kemari")).collect();
            assert!(!lines.is_empty(), "{name}'s {node} logged nothing");
            let unnamed: Vec<&&str> = lines.iter().filter(|l| !l.starts_with(&format!("kemari[{name}]: "))).collect();
            assert!(unnamed.is_empty(), "{name}'s {node} logged lines without its name: {unnamed:?}");
            assert!(!log.contains(&format!("kemari[{other}]")), "{name}'s {node} logged as {other}:\n{log}");
        }
        eprintln!("{name}: sha256 {} after the host's loss", result.got_sha256);
    }
    eprintln!("failovers: {said:?}");
}
