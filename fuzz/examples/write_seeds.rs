//! Writes the seed corpora from a real saved state: the guest kernel and initramfs of `target/guest` boot on the
//! fuzzed machine's shape (16 MiB, one hart, no devices) for a few million instructions, and the machine's
//! state is saved.
//!
//! Run from `fuzz/`: `cargo run --release --example write_seeds` (writes `seeds/restore/*`,
//! `seeds/restore_sections/*` and `corpus/restore/state-full`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kemari_board::persist::Pages;
use kemari_board::{MachineConfig, Round};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guest = root.join("../target/guest");
    let cfg = MachineConfig {
        kernel: Some(guest.join("Image")),
        initrd: Some(guest.join("initramfs.cpio.gz")),
        cmdline: "console=ttyS0".into(),
        ..kemari_fuzz::config()
    };
    for f in [cfg.kernel.as_ref().unwrap(), cfg.initrd.as_ref().unwrap()] {
        assert!(f.exists(), "{} missing: run scripts/guest-build", f.display());
    }
    let console = Box::new(std::io::sink());
    let mut m = kemari_board::Machine::new(&cfg, console, Arc::new(|| {})).expect("a 16 MiB machine boots");
    // A few million instructions: the kernel is up and has touched memory, devices and timers.
    for _ in 0..250 {
        match m.step_round() {
            Round::Ran => {}
            // Every hart waits: guest time follows the host's clock, so wait as the runtime would.
            Round::Idle(wait) => std::thread::sleep(wait.min(Duration::from_millis(10))),
            Round::Ended(end) => {
                eprintln!("guest ended early: {end:?}");
                break;
            }
        }
    }
    let instret: u64 = m.harts.iter().map(|h| h.state().instret).sum();
    let nonzero: Vec<u64> = (0..m.ram.size() / 4096).filter(|&p| !m.page_is_zero(p)).collect();
    let some: Vec<u64> = nonzero.iter().copied().step_by(nonzero.len() / 4 + 1).take(4).collect();
    let full = m.save(Pages::AllNonZero).expect("the machine saves");
    let bare = m.save(Pages::Only(&[])).expect("the machine saves");
    let four = m.save(Pages::Only(&some)).expect("the machine saves");
    let pages = m.save_pages(&nonzero[..3]);
    eprintln!("{instret} instructions in; {} non-zero pages; full state {} bytes", nonzero.len(), full.len());

    let write = |dir: &str, name: &str, bytes: &[u8]| {
        let d: PathBuf = root.join("seeds").join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
        eprintln!("seeds/{dir}/{name}: {} bytes", bytes.len());
    };
    write("restore", "state-no-pages", &bare);
    write("restore", "state-4-pages", &four);
    write("restore", "pages-3", &pages);
    // The whole snapshot is 6.5 MiB: it goes to the (git-ignored) corpus, not to the seeds.
    let corpus = root.join("corpus/restore");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("state-full"), &full).unwrap();
    eprintln!("corpus/restore/state-full: {} bytes", full.len());
    write("restore_sections", "state-no-pages", &kemari_fuzz::unframed(&bare));
    write("restore_sections", "state-4-pages", &kemari_fuzz::unframed(&four));
    // The structured form frames back to the same bytes.
    assert!(kemari_fuzz::framed(&kemari_fuzz::unframed(&four)) == four);
}
