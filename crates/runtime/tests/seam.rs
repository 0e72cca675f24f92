//! The runtime and live migration need nothing but the machine seam: a machine without a guest (the test
//! double, which claims to be x86-64 unless a test makes it RISC-V) runs in the real runtime loop, is paused,
//! resumed and snapshotted through control requests, and live-migrates over real TCP to a receiver that builds
//! its replica from the HELLO.

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kemari_machine::testing::FakeMachine;
use kemari_machine::{Arch, Machine, RunOutcome};
use kemari_runtime::control::{Reply, Request, SNAPSHOT_STATE};
use kemari_runtime::migrate::{Arrival, Incoming};
use kemari_runtime::{Config, Ended, Event, Standalone};
use kemari_transport::{frame, Security};

const PAGES: u64 = 256;

/// A fake machine running in the runtime on a thread of its own; the events that reach it.
struct Running {
    events: Sender<Event>,
    thread: JoinHandle<(FakeMachine, Ended)>,
}

fn start(mut m: FakeMachine) -> Running {
    let (events, rx): (Sender<Event>, Receiver<Event>) = mpsc::channel();
    let waker = Mutex::new(events.clone());
    let wake: kemari_runtime::Wake = Arc::new(move || {
        let _ = waker.lock().unwrap().send(Event::Wake);
    });
    let thread = std::thread::spawn(move || {
        let cfg = Config { wake, link_security: Some(Security::Plaintext) };
        let ended = kemari_runtime::run(&mut m, &rx, &mut Standalone, cfg);
        (m, ended)
    });
    Running { events, thread }
}

impl Running {
    fn ask(&self, req: Request) -> Reply {
        let (tx, rx) = mpsc::channel();
        self.events.send(Event::Control(req, tx)).unwrap();
        rx.recv_timeout(Duration::from_secs(20)).expect("no reply")
    }

    /// The status fields this test looks at: paused, and the guest's counter (its instructions).
    fn status(&self) -> (bool, u64) {
        match self.ask(Request::Status) {
            Reply::Status { paused, instret, cpus: 1, memory_mib: 1, .. } => (paused, instret),
            r => panic!("{r:?}"),
        }
    }

    /// Quits, and checks that the run ended so.
    fn quit(self) {
        self.events.send(Event::Quit).unwrap();
        assert_eq!(self.thread.join().unwrap().1, Ended::Machine(RunOutcome::Quit));
    }

    /// Waits until the guest's counter passed `n`.
    fn wait_past(&self, n: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, counter) = self.status();
            if counter > n {
                return counter;
            }
            assert!(Instant::now() < deadline, "the guest is stuck at {counter}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn pause_resume_and_snapshot_are_the_runtimes() {
    let vm = start(FakeMachine::new(PAGES));
    vm.wait_past(5);
    assert_eq!(vm.ask(Request::Pause), Reply::Ok);
    let (paused, at) = vm.status();
    assert!(paused, "status does not show the pause");
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(vm.status(), (true, at), "the guest ran while paused");

    let dir = std::env::temp_dir().join(format!("kemari-runtime-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    match vm.ask(Request::Snapshot { dir: dir.clone() }) {
        Reply::Snapshot { bytes, .. } => assert!(bytes > 0),
        r => panic!("{r:?}"),
    }
    let mut restored = FakeMachine::new(PAGES);
    restored.apply_checkpoint(&std::fs::read(dir.join(SNAPSHOT_STATE)).unwrap()).unwrap();
    assert_eq!(restored.counter(), at, "the snapshot is not the paused guest");
    assert_eq!(restored.page_word(at % PAGES), at, "the snapshot's RAM is not the guest's");
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(vm.ask(Request::Resume), Reply::Ok);
    assert!(!vm.status().0, "still paused after resume");
    vm.wait_past(at + 3);
    vm.quit();
}

/// Receives one machine on `incoming` (a receiver of `FakeMachine`s): the built machine, or the refusal.
fn receive_one(incoming: Incoming) -> JoinHandle<Result<FakeMachine, String>> {
    std::thread::spawn(move || loop {
        match incoming.next(Duration::from_millis(50)) {
            None => continue,
            Some(Arrival::Refused { why, .. }) => return Err(why),
            Some(Arrival::Sender(sender)) => return sender.receive(FakeMachine::empty).map_err(|e| e.to_string()),
        }
    })
}

#[test]
fn a_machine_known_only_through_the_seam_live_migrates() {
    let incoming = Incoming::bind("127.0.0.1:0", Security::Plaintext, Arch::X86_64, None).unwrap();
    let to = incoming.local_addr().to_string();
    let receiver = receive_one(incoming);

    let vm = start(FakeMachine::new(PAGES));
    vm.events.send(Event::Console(b"typed before\n".to_vec())).unwrap();
    vm.wait_past(20);
    match vm.ask(Request::Migrate { to, downtime_ms: 5 }) {
        Reply::Migrated { bytes, .. } => assert!(bytes > 0),
        r => panic!("{r:?}"),
    }
    let (sent, ended) = vm.thread.join().unwrap();
    assert_eq!(ended, Ended::Machine(RunOutcome::Migrated), "the sender's run did not end");
    let mut got = receiver.join().unwrap().expect("the receiver refused");

    assert_eq!(got.counter(), sent.counter(), "the receiver's guest is not where the sender's stopped");
    assert_eq!(got.typed, b"typed before\n", "console input the guest consumed did not travel");
    for p in 0..PAGES {
        assert_eq!(got.page_word(p), sent.page_word(p), "RAM page {p} differs");
    }
    assert_eq!(got.announced, 1, "the receiver did not announce the guest's new place");

    // The guest goes on from there: its output continues the sender's without a gap or a repeat.
    let last = *sent.ticks_performed().last().expect("the sender's guest printed");
    assert_eq!(last, sent.counter());
    got.power_off_at = Some(last + 3);
    let vm = start(got);
    let (got, ended) = vm.thread.join().unwrap();
    assert_eq!(ended, Ended::Machine(RunOutcome::PowerOff));
    assert_eq!(got.ticks_performed(), vec![last + 1, last + 2, last + 3]);
}

/// A receiver of RISC-V machines, which refuses the test double's x86-64 one: where it listens, and its end.
fn riscv_receiver() -> (String, JoinHandle<Result<FakeMachine, String>>) {
    let incoming = Incoming::bind("127.0.0.1:0", Security::Plaintext, Arch::Riscv64, None).unwrap();
    (incoming.local_addr().to_string(), receive_one(incoming))
}

#[test]
fn a_receiver_of_another_architecture_refuses_and_the_guest_runs_on() {
    let (to, receiver) = riscv_receiver();

    let vm = start(FakeMachine::new(PAGES));
    vm.wait_past(3);
    match vm.ask(Request::Migrate { to, downtime_ms: 5 }) {
        Reply::Error(e) => assert!(e.contains("riscv64"), "the sender is not told why: {e}"),
        r => panic!("{r:?}"),
    }
    let why = receiver.join().unwrap().err().expect("a RISC-V receiver took an x86-64 machine");
    assert!(why.contains("the sender runs a x86-64 machine, this receiver riscv64"), "{why}");
    let (paused, at) = vm.status();
    assert!(!paused, "a refused migration left the guest paused");
    vm.wait_past(at + 3);
    vm.quit();
}

#[test]
fn a_failed_migration_leaves_the_guest_as_it_was() {
    let (to, receiver) = riscv_receiver();

    let vm = start(FakeMachine::new(PAGES));
    vm.wait_past(3);
    assert_eq!(vm.ask(Request::Pause), Reply::Ok);
    let (_, at) = vm.status();
    assert!(matches!(vm.ask(Request::Migrate { to, downtime_ms: 5 }), Reply::Error(_)));
    assert!(receiver.join().unwrap().is_err(), "a RISC-V receiver took an x86-64 machine");
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(vm.status(), (true, at), "a failed migration set a paused guest running");
    assert_eq!(vm.ask(Request::Resume), Reply::Ok);
    vm.wait_past(at + 3);
    vm.quit();
}

/// A receiver of migration protocol 2 at most, as a kemari from before version 3 is: it refuses a later HELLO in
/// that kemari's words and passes any other connection through to the receiver at `real` (which takes version
/// 2 too). Returns where it listens and the versions of the HELLOs it saw.
fn older_receiver(real: String) -> (String, Arc<Mutex<Vec<u32>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let versions = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut down = conn.unwrap();
            let (kind, hello) = frame::receive(&mut down, 64).unwrap();
            let version = u32::from_le_bytes(hello[4..8].try_into().unwrap());
            versions.lock().unwrap().push(version);
            if version > 2 {
                let why = format!(
                    "protocol: migration protocol version {version}, this kemari speaks 1 to 2: upgrade this node"
                );
                frame::refuse(&mut down, &why);
                continue;
            }
            let mut up = TcpStream::connect(&real).unwrap();
            frame::send(&mut up, kind, &[&hello]).unwrap();
            let (mut from, mut to) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut up, &mut down);
                let _ = down.flush();
            });
        }
    });
    (addr, seen)
}

#[test]
fn a_risc_v_guest_still_migrates_to_a_receiver_of_protocol_2() {
    let incoming = Incoming::bind("127.0.0.1:0", Security::Plaintext, Arch::Riscv64, None).unwrap();
    let (to, seen) = older_receiver(incoming.local_addr().to_string());
    let receiver = receive_one(incoming);

    let vm = start(FakeMachine::claiming(Arch::Riscv64, PAGES));
    vm.wait_past(10);
    match vm.ask(Request::Migrate { to, downtime_ms: 5 }) {
        Reply::Migrated { .. } => {}
        r => panic!("{r:?}"),
    }
    let (sent, ended) = vm.thread.join().unwrap();
    assert_eq!(ended, Ended::Machine(RunOutcome::Migrated));
    let got = receiver.join().unwrap().expect("the receiver refused");
    assert_eq!(got.counter(), sent.counter(), "the receiver's guest is not where the sender's stopped");
    assert_eq!(*seen.lock().unwrap(), [3, 2], "the sender did not try version 3, then 2");
}

#[test]
fn an_x86_guest_does_not_fall_back_to_protocol_2() {
    let incoming = Incoming::bind("127.0.0.1:0", Security::Plaintext, Arch::X86_64, None).unwrap();
    let (to, seen) = older_receiver(incoming.local_addr().to_string());

    let vm = start(FakeMachine::new(PAGES));
    vm.wait_past(3);
    match vm.ask(Request::Migrate { to, downtime_ms: 5 }) {
        Reply::Error(e) => assert!(e.contains("speaks 1 to 2: upgrade this node"), "{e}"),
        r => panic!("{r:?}"),
    }
    // Version 2 knows only RISC-V machines: asking again in it would hand the receiver a guest it takes for one.
    assert_eq!(*seen.lock().unwrap(), [3]);
    vm.quit();
}
