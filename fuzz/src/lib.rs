//! What the fuzz targets share: the board's sections, a small machine built once per process, and the checks
//! every input goes through.
//!
//! Oracles, for every input:
//! - nothing panics, hangs, or touches memory outside the guest (run under AddressSanitizer to see the last);
//! - `apply_checkpoint` (which decodes every section before it changes anything) either refuses the input and leaves the machine's
//!   state exactly as it was, or accepts it, and then the accepted state saves and restores to identical bytes;
//! - `restore_pages` (a live-migration round) refuses it or writes its pages; `peek_shape` answers.

use std::sync::{Arc, Mutex, OnceLock};

use kemari_board::persist::{peek_shape, Pages};
use kemari_board::{Machine, MachineConfig};
use kemari_state::{Section, StateFile};

/// The sections `kemari-board` knows, with their caps (a copy of `persist.rs`'s private list: if they drift, the
/// decode step here fuzzes a slightly different list, and `restore_into` still checks the real one).
pub const KNOWN: [Section; 8] = [
    Section { tag: *b"BORD", version: 1, cap: 1024 },
    kemari_board::hart::SECTION,
    Section { tag: *b"CLNT", version: 1, cap: 1024 },
    Section { tag: *b"PLIC", version: 1, cap: 4096 },
    Section { tag: *b"UART", version: 1, cap: 1024 },
    Section { tag: *b"VIRT", version: 1, cap: 2 << 20 },
    Section { tag: *b"GATE", version: 1, cap: 256 << 20 },
    Section { tag: *b"PAGS", version: 1, cap: 1024 * (8 + 4096) + 4 },
];

/// The fuzzed machine: 16 MiB, one hart, no devices, nothing loaded.
pub fn config() -> MachineConfig {
    MachineConfig {
        harts: 1,
        memory_mib: 16,
        kernel: None,
        initrd: None,
        cmdline: String::new(),
        firmware: None,
        disks: vec![],
        nets: vec![],
        rng: false,
        prealloc: false,
        engine: Default::default(),
    }
}

pub fn empty_machine() -> Machine {
    Machine::empty(&config(), Box::new(std::io::sink()), Arc::new(|| {})).expect("a 16 MiB machine")
}

struct Harness {
    m: Machine,
    /// A valid state of this machine (its own empty state), to go back to after an accepted input.
    baseline: Vec<u8>,
}

fn harness() -> &'static Mutex<Harness> {
    static H: OnceLock<Mutex<Harness>> = OnceLock::new();
    H.get_or_init(|| {
        let mut m = empty_machine();
        let baseline = m.save(Pages::Only(&[])).expect("the machine saves");
        // Restoring stops the machine's clock (a built machine's clock runs), so that two saves of an unchanged
        // machine are identical.
        m.restore_into(&baseline).expect("the machine's own state restores");
        let baseline = m.save(Pages::Only(&[])).expect("the machine saves");
        Mutex::new(Harness { m, baseline })
    })
}

/// Runs one input through the decoder and the restore paths, checking the oracles above.
pub fn check(data: &[u8]) {
    let _ = StateFile::decode(data, &KNOWN);
    let _ = peek_shape(data);
    let mut h = harness().lock().unwrap_or_else(|e| e.into_inner());
    let Harness { m, baseline } = &mut *h;
    let before = m.save(Pages::Only(&[])).expect("the machine saves");
    match m.apply_checkpoint(data) {
        Err(_) => {
            assert!(
                m.save(Pages::Only(&[])).expect("the machine saves") == before,
                "a refused checkpoint changed the machine's state"
            );
        }
        Ok(()) => {
            let saved = m.save(Pages::Only(&[])).expect("the machine saves");
            m.restore_into(&saved).expect("a state this machine saved restores");
            assert!(m.save(Pages::Only(&[])).expect("the machine saves") == saved, "save → restore → save differs");
            m.restore_into(baseline).expect("the baseline restores");
        }
    }
    let _ = m.restore_pages(data);
}

/// Tags in the order the structured target's selector byte picks them.
pub fn tag_of(selector: u8) -> [u8; 4] {
    KNOWN[(selector & 7) as usize].tag
}

/// Builds a stream with valid framing and checksums from the structured input format: repeated
/// `selector u8, len u16 LE, payload[len]` (the last payload may be short). The selector's low 3 bits pick the
/// tag from [`KNOWN`]; bit 7 set writes section version 2 (a version from the future).
pub fn framed(mut data: &[u8]) -> Vec<u8> {
    let mut f = StateFile::new(kemari_state::Arch::Riscv64);
    while data.len() >= 3 {
        let sel = data[0];
        let len = u16::from_le_bytes([data[1], data[2]]) as usize;
        data = &data[3..];
        let payload = &data[..len.min(data.len())];
        data = &data[payload.len()..];
        let version = if sel & 0x80 != 0 { 2 } else { 1 };
        f.push(&Section { tag: tag_of(sel), version, cap: u32::MAX }, payload.to_vec());
    }
    f.encode()
}

/// The structured form of a (good) stream, for seeding: each section as `selector, len, payload`. Sections
/// longer than 65,535 bytes cannot be expressed and are left out.
pub fn unframed(stream: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let count = u32::from_le_bytes(stream[12..16].try_into().expect("header")) as usize;
    let mut pos = 16;
    for _ in 0..count {
        let tag: [u8; 4] = stream[pos..pos + 4].try_into().expect("tag");
        let len = u32::from_le_bytes(stream[pos + 6..pos + 10].try_into().expect("len")) as usize;
        let payload = &stream[pos + 10..pos + 10 + len];
        pos += 10 + len + 4;
        let Some(sel) = KNOWN.iter().position(|s| s.tag == tag) else { continue };
        let Ok(len16) = u16::try_from(len) else { continue };
        out.push(sel as u8);
        out.extend_from_slice(&len16.to_le_bytes());
        out.extend_from_slice(payload);
    }
    out
}
