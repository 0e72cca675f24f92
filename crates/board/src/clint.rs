//! CLINT (SiFive core-local interruptor): `msip`, `mtimecmp` and `mtime` for M-mode software.
//!
//! Only M-mode firmware (the `--firmware` path) programs it; with the built-in SBI the kernel reaches the timer
//! and IPIs through SBI calls instead, and the board drives STIP/SSIP directly.

use kemari_state::{Reader, StateError, Writer};

pub const BASE: u64 = 0x0200_0000;
pub const SIZE: u64 = 0x1_0000;
const MSIP: u64 = 0x0;
const MTIMECMP: u64 = 0x4000;
const MTIME: u64 = 0xbff8;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Clint {
    pub msip: Vec<bool>,
    pub mtimecmp: Vec<u64>,
}

impl Clint {
    pub fn new(harts: usize) -> Clint {
        Clint { msip: vec![false; harts], mtimecmp: vec![u64::MAX; harts] }
    }

    pub fn load(&self, off: u64, size: u8, mtime: u64) -> Option<u64> {
        let harts = self.msip.len() as u64;
        match off {
            o if o < MSIP + 4 * harts && size == 4 && o % 4 == 0 => Some(self.msip[(o / 4) as usize] as u64),
            o if (MTIMECMP..MTIMECMP + 8 * harts).contains(&o) => {
                let h = ((o - MTIMECMP) / 8) as usize;
                Some(sub_read(self.mtimecmp[h], o % 8, size))
            }
            o if (MTIME..MTIME + 8).contains(&o) => Some(sub_read(mtime, o % 8, size)),
            _ => Some(0),
        }
    }

    /// Returns false for a write the device refuses (none: unknown registers ignore writes).
    pub fn store(&mut self, off: u64, size: u8, value: u64) -> bool {
        let harts = self.msip.len() as u64;
        match off {
            o if o < MSIP + 4 * harts && o % 4 == 0 => self.msip[(o / 4) as usize] = value & 1 != 0,
            o if (MTIMECMP..MTIMECMP + 8 * harts).contains(&o) => {
                let h = ((o - MTIMECMP) / 8) as usize;
                self.mtimecmp[h] = sub_write(self.mtimecmp[h], o % 8, size, value);
            }
            // mtime is derived from the host clock; writes are ignored.
            _ => {}
        }
        true
    }
}

impl Clint {
    /// Writes each hart's `msip` and `mtimecmp` (the CLNT section).
    pub fn save(&self, w: &mut Writer) {
        for (msip, cmp) in self.msip.iter().zip(&self.mtimecmp) {
            w.bool(*msip);
            w.u64(*cmp);
        }
    }

    /// Decodes what `save` wrote for a CLINT of this one's harts; applying it is assigning it.
    pub fn decode_state(&self, r: &mut Reader) -> Result<Clint, StateError> {
        let mut c = Clint::new(self.msip.len());
        for h in 0..c.msip.len() {
            c.msip[h] = r.bool()?;
            c.mtimecmp[h] = r.u64()?;
        }
        Ok(c)
    }
}

/// Reads `size` bytes at byte offset `at` of a 64-bit register.
pub(crate) fn sub_read(reg: u64, at: u64, size: u8) -> u64 {
    let v = reg >> (8 * at);
    if size >= 8 {
        v
    } else {
        v & ((1u64 << (8 * size as u64)) - 1)
    }
}

/// Writes `size` bytes at byte offset `at` of a 64-bit register.
pub(crate) fn sub_write(reg: u64, at: u64, size: u8, value: u64) -> u64 {
    let bits = 8 * size as u64;
    let mask = if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 } << (8 * at);
    (reg & !mask) | ((value << (8 * at)) & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtimecmp_halves_and_msip() {
        let mut c = Clint::new(2);
        c.store(MTIMECMP + 8, 4, 0x1234_5678);
        c.store(MTIMECMP + 12, 4, 0x9);
        assert_eq!(c.mtimecmp[1], 0x9_1234_5678);
        assert_eq!(c.load(MTIMECMP + 12, 4, 0), Some(9));
        c.store(4, 4, 1);
        assert!(c.msip[1] && !c.msip[0]);
        assert_eq!(c.load(MTIME, 8, 77), Some(77));
    }
}
