//! Test support for in-process machines: the built guest, a console that records, bounded runs.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kemari_board::{Machine, MachineConfig, Round, RunOutcome};
use kemari_runtime::Event;

/// A console sink that keeps everything written to it.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A guest artifact built by `scripts/guest-build`.
pub fn guest(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/guest").join(name);
    assert!(p.exists(), "{} missing: run scripts/guest-build", p.display());
    p
}

/// The built guest on two harts with `memory_mib` of RAM and a virtio-rng device.
pub fn guest_config(memory_mib: u64) -> MachineConfig {
    MachineConfig {
        harts: 2,
        memory_mib,
        kernel: Some(guest("Image")),
        initrd: Some(guest("initramfs.cpio.gz")),
        cmdline: "console=ttyS0".into(),
        firmware: None,
        disks: vec![],
        nets: vec![],
        rng: true,
        prealloc: false,
        engine: kemari_board::Engine::default(),
    }
}

/// Runs rounds until the console shows `needle` (bounded, so a broken build fails instead of hanging).
pub fn run_until(m: &mut Machine, out: &Capture, rx: &Receiver<Event>, needle: &str) {
    for _ in 0..2_000_000 {
        if out.text().contains(needle) {
            return;
        }
        assert!(round(m, rx).is_none(), "guest stopped early:\n{}", out.text());
    }
    panic!("no {needle:?} on the console:\n{}", out.text());
}

/// One round as the runtime runs it, for tests that drive a machine themselves: console input from `rx`
/// first, then the round, then its idle wait (cut short by an event). The run's end, if it ended.
pub fn round(m: &mut Machine, rx: &Receiver<Event>) -> Option<RunOutcome> {
    let take = |m: &mut Machine, ev: Event| match ev {
        Event::Console(bytes) => m.push_input(&bytes),
        Event::Wake => {}
        _ => panic!("these tests send only console input"),
    };
    while let Ok(ev) = rx.try_recv() {
        take(m, ev);
    }
    match m.step_round() {
        Round::Ran => {}
        Round::Idle(wait) => {
            if let Ok(ev) = rx.recv_timeout(wait.min(Duration::from_millis(10))) {
                take(m, ev);
            }
        }
        Round::Ended(outcome) => return Some(outcome),
    }
    None
}
