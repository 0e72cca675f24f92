//! Fault tolerance needs nothing but the machine seam: a primary and a standby, each driving a machine without
//! a guest (`kemari_machine::testing::FakeMachine`, which even claims to be x86-64), replicate it over a real
//! TCP link through the real drivers, and fail over when the link is cut while the primary hangs. Checked:
//! output commit (nothing was released that the replica does not hold), the replica's memory matches its
//! state, released output has no gap across the failover, console input consumed before the failure is
//! replayed exactly once, and the old primary, once it runs again, is fenced and releases nothing more.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kemari_machine::testing::{ticks, FakeMachine};
use kemari_machine::{Arch, Machine, RunOutcome};
use kemari_replication::arbiter::FileArbiter;
use kemari_replication::metrics::Metrics;
use kemari_replication::primary::{self, Ended, PrimaryConfig};
use kemari_replication::secondary::{self, StandbyConfig, StandbyEnd};
use kemari_replication::Options;
use kemari_runtime::Event;
use kemari_transport::Security;

/// 1 MiB: a HELLO carries whole MiB.
const PAGES: u64 = 256;

/// A TCP relay between the primary and the standby that the test can hold (bytes wait, both directions) and
/// cut (both connections shut down).
struct Relay {
    addr: String,
    hold: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
}

impl Relay {
    fn start(to: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (hold, cut) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (h, c) = (hold.clone(), cut.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&to) else { continue };
                for (mut from, mut into) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let (h, c) = (h.clone(), c.clone());
                    std::thread::spawn(move || {
                        from.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
                        let mut buf = [0u8; 64 << 10];
                        loop {
                            if c.load(Ordering::SeqCst) {
                                let _ = from.shutdown(Shutdown::Both);
                                let _ = into.shutdown(Shutdown::Both);
                                return;
                            }
                            if h.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(1));
                                continue;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) if into.write_all(&buf[..n]).is_ok() => {}
                                Ok(_) => return,
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        Relay { addr, hold, cut }
    }
}

fn free_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn replication_fails_over_a_machine_it_knows_only_through_the_seam() {
    let dir = std::env::temp_dir().join(format!("kemari-seam-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let opts = Options::default();
    let ttl = opts.heartbeat_timeout;

    // The standby: builds its replica through the seam from the primary's HELLO.
    let listen = free_port();
    let (_standby_events, standby_input) = mpsc::channel::<Event>();
    let standby_cfg = StandbyConfig {
        listen: listen.clone(),
        security: Security::Plaintext,
        opts: opts.clone(),
        arbiter: Box::new(FileArbiter::new(&dir, "sec", ttl).unwrap()),
        arch: Arch::X86_64,
        disks: vec![],
        build: Box::new(FakeMachine::empty),
        expect_cpus: None,
        expect_memory_mib: None,
    };
    let standby = std::thread::spawn(move || secondary::standby(standby_cfg, &standby_input));
    let relay = Relay::start(listen);

    // The primary.
    let mut machine = FakeMachine::new(PAGES);
    let (performed, hang) = (machine.performed.clone(), machine.hang.clone());
    let (events, input) = mpsc::channel::<Event>();
    let status = Metrics::new("primary", "connecting");
    let primary_cfg = PrimaryConfig {
        peer: Some(relay.addr.clone()),
        opts: opts.clone(),
        arbiter: Box::new(FileArbiter::new(&dir, "pri", ttl).unwrap()),
        disks: vec![],
        security: Security::Plaintext,
        wake: Arc::new(|| {}),
        metrics: Some(status.clone()),
    };
    let primary = std::thread::spawn(move || {
        let ended = primary::run(&mut machine, &input, primary_cfg);
        (ended, machine)
    });

    // Protected (output flows only once checkpoints are acknowledged); then console input goes in.
    let state = || status.lock().unwrap().state;
    wait_for("protection", Duration::from_secs(20), || state() == "protected");
    let n = ticks(&performed).len();
    wait_for("protected output", Duration::from_secs(10), || ticks(&performed).len() >= n + 50);
    events.send(Event::Console(b"typed once\n".to_vec())).unwrap();
    let n = ticks(&performed).len();
    wait_for("more output after the input", Duration::from_secs(10), || ticks(&performed).len() >= n + 20);

    // The link stops carrying anything: the guest runs on a few rounds, whose checkpoints never arrive and
    // whose output must therefore stay held. Then the primary hangs (as a stopped process would), and the link
    // is cut.
    relay.hold.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(4));
    hang.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    let released_before = ticks(&performed);
    assert_eq!(state(), "protected", "the primary stayed protected until the cut");
    relay.cut.store(true, Ordering::SeqCst);

    let end = standby.join().unwrap().expect("the standby fails over");
    let StandbyEnd::TookOver { mut machine, arbiter, metrics } = end else { panic!("the standby did not take over") };
    let replica_counter = machine.counter();
    let last_released = *released_before.last().unwrap();
    assert!(
        last_released <= replica_counter,
        "output commit: tick {last_released} left the old primary, the replica is at {replica_counter}"
    );
    assert_eq!(machine.page_word(replica_counter % PAGES), replica_counter, "the replica's RAM matches its state");
    assert_eq!(machine.shape().arch, Arch::X86_64);
    assert_eq!(machine.announced, 1, "the new primary announces itself");

    // The new primary runs on alone for a while, then powers off.
    machine.power_off_at = Some(replica_counter + 30);
    let (_new_events, new_input) = mpsc::channel::<Event>();
    let cfg = PrimaryConfig {
        peer: None,
        opts: opts.clone(),
        arbiter,
        disks: vec![],
        security: Security::Plaintext,
        wake: Arc::new(|| {}),
        metrics: Some(metrics),
    };
    let ended = primary::run(&mut *machine, &new_input, cfg);
    assert!(matches!(ended, Ended::Machine(RunOutcome::PowerOff)), "{ended:?}");
    let after = machine.ticks_performed();
    assert_eq!(*after.last().unwrap(), replica_counter + 30);
    // No gap: the new primary re-issued what the committed state held and went on from there (a tick may
    // appear twice at the seam: at least once).
    assert!(after[0] <= last_released + 1, "gap: the old primary released up to {last_released}, then {after:?}");
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "the new primary's output is in order, without gaps");
    let typed = String::from_utf8_lossy(&machine.typed).to_string();
    assert_eq!(typed.matches("typed once\n").count(), 1, "console input consumed before the failure: {typed:?}");

    // The old primary wakes up: it must find itself fenced, having released nothing more.
    hang.store(false, Ordering::SeqCst);
    let (ended, old) = primary.join().unwrap();
    assert!(matches!(ended, Ended::Fenced(_)), "the old primary was not fenced: {ended:?}");
    assert_eq!(old.ticks_performed(), released_before, "the fenced primary released output after the failover");
    let _ = std::fs::remove_dir_all(&dir);
}
