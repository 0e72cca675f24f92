//! The interpreter and the JIT boot the real guest in lockstep. Two machines alike but for their engine run on a
//! manual clock (guest time moves between rounds, by the same amount on both, never with the host), round by
//! round; after every round each hart's whole state must be the same on both, and all of RAM every so often and
//! at the end. The run goes from the first instruction to the guest's shell: early boot (SBI calls, Sv39 turned
//! on), the second hart started through SBI HSM, IPIs and remote fences, the kernel writing code it then runs
//! (the initramfs unpacked, modules of user space loaded by exec), page faults and user mode.

mod common;

use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};

use common::*;
use kemari_board::machine::GuestClock;
use kemari_board::{Engine, Machine, Round};
use kemari_runtime::Event;

/// Guest time per round: 100 µs (a round is a slice of every hart, about that long on the interpreter).
const TICKS_PER_ROUND: u64 = 1_000;
/// All of RAM is compared every this many rounds.
const RAM_EVERY: u64 = 5_000;
const MAX_ROUNDS: u64 = 2_000_000;

fn machine(engine: Engine) -> (Machine, Capture, Receiver<Event>) {
    let mut cfg = guest_config(128);
    // A random device would feed the two guests different bytes.
    cfg.rng = false;
    cfg.engine = engine;
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    let wake: kemari_devices::host::Wake = Arc::new(move || {
        let _ = tx.lock().unwrap().send(Event::Wake);
    });
    let out = Capture::default();
    let mut m = Machine::new(&cfg, Box::new(out.clone()), wake).unwrap();
    m.dev.clock = GuestClock::manual(0);
    if engine == Engine::Jit {
        // Compile a block the second time it runs: more of the boot runs compiled than at the default.
        for h in &mut m.harts {
            h.set_jit_threshold(1);
        }
    }
    (m, out, rx)
}

/// The first page at which the two machines' RAM differs.
fn ram_differs(a: &Machine, b: &Machine) -> Option<u64> {
    const CHUNK: u64 = 1 << 20;
    let base = kemari_board::layout::RAM_BASE;
    let (mut x, mut y) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    for off in (0..a.ram.size()).step_by(CHUNK as usize) {
        a.ram.read(base + off, &mut x).expect("RAM");
        b.ram.read(base + off, &mut y).expect("RAM");
        if x != y {
            let page = x.chunks(4096).zip(y.chunks(4096)).position(|(p, q)| p != q).unwrap_or(0) as u64;
            return Some(base + off + page * 4096);
        }
    }
    None
}

#[test]
fn interpreter_and_jit_boot_the_guest_in_lockstep() {
    let (mut interp, interp_out, _interp_rx) = machine(Engine::Interp);
    let (mut jit, jit_out, _jit_rx) = machine(Engine::Jit);
    for round in 0..MAX_ROUNDS {
        // Rounds only: guest time moves by hand, and neither guest gets input.
        let a = interp.step_round();
        let b = jit.step_round();
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "the machines stopped differently at round {round}");
        assert!(!matches!(a, Round::Ended(_)), "the guest stopped at round {round}: {a:?}\n{}", interp_out.text());
        for (i, (x, y)) in interp.harts.iter().zip(&jit.harts).enumerate() {
            assert!(
                x.state() == y.state(),
                "hart {i} differs after round {round}:\ninterpreter {:#x?}\nJIT {:#x?}",
                x.state(),
                y.state()
            );
        }
        let ready = interp_out.text().contains("KEMARI-GUEST-READY");
        if ready || round % RAM_EVERY == 0 {
            if let Some(page) = ram_differs(&interp, &jit) {
                panic!("RAM page {page:#x} differs after round {round}");
            }
        }
        if ready {
            assert_eq!(interp_out.text(), jit_out.text(), "the consoles differ");
            let compiled: u64 = jit.harts.iter().map(|h| h.compiled_blocks()).sum();
            let retired: u64 = jit.harts.iter().map(|h| h.state().instret).sum();
            assert!(compiled > 1000, "the JIT compiled only {compiled} blocks");
            eprintln!("lockstep to the shell: {round} rounds, {retired} instructions, {compiled} blocks compiled");
            return;
        }
        interp.dev.clock.advance(TICKS_PER_ROUND);
        jit.dev.clock.advance(TICKS_PER_ROUND);
    }
    panic!("no shell after {MAX_ROUNDS} rounds:\n{}", interp_out.text());
}
