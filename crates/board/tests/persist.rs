//! The one save/restore path, on the real guest: save → restore → save gives identical bytes, and a restored
//! machine carries on where the saved one stopped.

use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};

use kemari_board::persist::Pages;
use kemari_board::{Machine, MachineConfig};
use kemari_runtime::Event;

mod common;
use common::{guest_config, round, run_until, Capture};

fn config() -> MachineConfig {
    guest_config(128)
}

#[test]
fn save_restore_save_is_identical_and_the_restored_guest_carries_on() {
    let (tx, rx) = channel();
    let out = Capture::default();
    let wake_tx = Mutex::new(tx.clone());
    let wake: kemari_devices::host::Wake = Arc::new(move || {
        let _ = wake_tx.lock().unwrap().send(Event::Wake);
    });
    let mut m = Machine::new(&config(), Box::new(out.clone()), wake.clone()).unwrap();
    run_until(&mut m, &out, &rx, "KEMARI-GUEST-READY");
    // Leave a shell variable in guest memory that only a faithful restore brings back.
    tx.send(Event::Console(b"secret=$((1000+337))\n".to_vec())).unwrap();
    run_until(&mut m, &out, &rx, "secret=$((1000+337))");
    for _ in 0..200 {
        round(&mut m, &rx);
    }

    let first = m.save(Pages::AllNonZero).unwrap();
    drop(m);

    let out2 = Capture::default();
    let mut restored = Machine::restore(&config(), &first, Box::new(out2.clone()), wake).unwrap();
    let second = restored.save(Pages::AllNonZero).unwrap();
    assert!(first == second, "save → restore → save must give identical bytes ({} vs {})", first.len(), second.len());

    tx.send(Event::Console(b"echo value-$secret\n".to_vec())).unwrap();
    run_until(&mut restored, &out2, &rx, "value-1337");
}

#[test]
fn restore_refuses_a_different_machine_shape() {
    let (tx, _rx) = channel();
    let tx = Mutex::new(tx);
    let wake: kemari_devices::host::Wake = Arc::new(move || {
        let _ = tx.lock().unwrap().send(Event::Wake);
    });
    let m = Machine::new(&config(), Box::new(Capture::default()), wake.clone()).unwrap();
    let bytes = m.save(Pages::AllNonZero).unwrap();
    let mut other = config();
    other.memory_mib = 256;
    let err = Machine::restore(&other, &bytes, Box::new(Capture::default()), wake.clone()).err().unwrap();
    assert!(err.to_string().contains("MiB of memory"), "{err}");
    let mut other = config();
    other.harts = 1;
    let err = Machine::restore(&other, &bytes, Box::new(Capture::default()), wake.clone()).err().unwrap();
    assert!(err.to_string().contains("harts"), "{err}");
    let mut corrupt = bytes.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x10;
    assert!(Machine::restore(&config(), &corrupt, Box::new(Capture::default()), wake).is_err());
}

/// The longest state a machine can have (every page non-zero, eight harts) is within what a receiver of that
/// machine accepts (`max_state_len`), and a snapshot of it restores: the limits follow the machine.
#[test]
fn a_machine_with_every_page_written_saves_within_the_receivers_cap_and_restores() {
    let cfg = MachineConfig { harts: 8, memory_mib: 64, kernel: None, initrd: None, firmware: None, ..config() };
    let wake: kemari_devices::host::Wake = Arc::new(|| {});
    let m = Machine::empty(&cfg, Box::new(Capture::default()), wake.clone()).unwrap();
    let page = [0xa5u8; 4096];
    for p in 0..(64u64 << 20) / 4096 {
        m.ram.write(m.ram.base() + p * 4096, &page).unwrap();
    }
    let bytes = m.save(Pages::AllNonZero).unwrap();
    let cap = kemari_board::persist::max_state_len(64 << 20);
    assert!(bytes.len() as u64 <= cap, "a full 64 MiB state of {} bytes is over the cap of {cap}", bytes.len());
    let restored = Machine::restore(&cfg, &bytes, Box::new(Capture::default()), wake).unwrap();
    assert!(restored.save(Pages::AllNonZero).unwrap() == bytes);
}
