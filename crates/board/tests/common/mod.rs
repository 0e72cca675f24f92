//! Test support for in-process machines: the built guest, a console that records, bounded runs.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use kemari_board::{Event, Machine, MachineConfig};

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
        assert!(m.step_round(rx).is_none(), "guest stopped early:\n{}", out.text());
    }
    panic!("no {needle:?} on the console:\n{}", out.text());
}
