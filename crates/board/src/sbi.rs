//! The SBI implementation: the VMM plays M-mode firmware for an S-mode kernel.
//!
//! Extensions: base, TIME, IPI, RFENCE, HSM, SRST, and the legacy (v0.1) calls including console
//! putchar/getchar. Calls arrive as [`kemari_engine::Exit::Sbi`] with the hart stopped at its `ecall`.

use std::io::Write;

use kemari_engine::irq;

use crate::machine::Machine;

pub const EXT_BASE: u64 = 0x10;
pub const EXT_TIME: u64 = 0x5449_4d45;
pub const EXT_IPI: u64 = 0x73_5049;
pub const EXT_RFENCE: u64 = 0x5246_4e43;
pub const EXT_HSM: u64 = 0x48_534d;
pub const EXT_SRST: u64 = 0x5352_5354;

const SUCCESS: i64 = 0;
const ERR_NOT_SUPPORTED: i64 = -2;
const ERR_INVALID_PARAM: i64 = -3;
const ERR_ALREADY_AVAILABLE: i64 = -6;

/// Our SBI implementation ID (not registered; outside the assigned range).
const IMPL_ID: u64 = 0x4b45_4d41;

pub enum SbiOutcome {
    Continue,
    Shutdown,
    Reboot,
    Failure,
}

/// Harts selected by an SBI hart mask.
fn selected(mask: u64, base: u64, harts: usize) -> impl Iterator<Item = usize> {
    (0..harts).filter(move |&h| {
        if base == u64::MAX {
            return true;
        }
        let h = h as u64;
        h >= base && h - base < 64 && mask & (1 << (h - base)) != 0
    })
}

/// Handles the SBI call of hart `i`.
pub fn handle(m: &mut Machine, i: usize) -> SbiOutcome {
    let h = &m.harts[i];
    let (ext, fid) = (h.reg(17), h.reg(16));
    let a: [u64; 6] = std::array::from_fn(|k| h.reg(10 + k));
    let n = m.harts.len();
    let (err, val) = match ext {
        // Legacy extensions return their value in a0 only.
        0x00 => {
            m.dev.stimecmp[i] = a[0];
            m.harts[i].set_irq_line(irq::STI, false);
            return legacy(m, i, 0);
        }
        0x01 => {
            let _ = m.dev.uart.writer_mut().write_all(&[a[0] as u8]);
            let _ = m.dev.uart.writer_mut().flush();
            return legacy(m, i, 0);
        }
        0x02 => {
            let v = m.take_input_byte().map(|b| b as u64).unwrap_or(u64::MAX);
            return legacy(m, i, v);
        }
        0x03 => {
            m.harts[i].set_irq_line(irq::SSI, false);
            return legacy(m, i, 0);
        }
        0x04..=0x07 => {
            // The legacy hart mask is a pointer to an unsigned long in guest memory; 0 means all harts.
            let mask = if a[0] == 0 { u64::MAX } else { read_guest_mask(m, i, a[0]) };
            for t in selected(mask, 0, n) {
                if ext == 0x04 {
                    m.harts[t].set_irq_line(irq::SSI, true);
                } else {
                    m.harts[t].flush_tlb();
                }
            }
            return legacy(m, i, 0);
        }
        0x08 => return SbiOutcome::Shutdown,
        EXT_BASE => match fid {
            0 => (SUCCESS, 2 << 24), // SBI v2.0
            1 => (SUCCESS, IMPL_ID),
            2 => (SUCCESS, 1),
            3 => {
                let known = matches!(a[0], EXT_BASE | EXT_TIME | EXT_IPI | EXT_RFENCE | EXT_HSM | EXT_SRST | 0..=0x08);
                (SUCCESS, known as u64)
            }
            4..=6 => (SUCCESS, 0),
            _ => (ERR_NOT_SUPPORTED, 0),
        },
        EXT_TIME if fid == 0 => {
            m.dev.stimecmp[i] = a[0];
            m.harts[i].set_irq_line(irq::STI, false);
            (SUCCESS, 0)
        }
        EXT_IPI if fid == 0 => {
            for t in selected(a[0], a[1], n) {
                m.harts[t].set_irq_line(irq::SSI, true);
            }
            (SUCCESS, 0)
        }
        EXT_RFENCE if fid <= 6 => {
            // fence.i needs nothing (writes to guest memory invalidate decoded code themselves); every sfence variant
            // flushes whole TLBs.
            if fid != 0 {
                for t in selected(a[0], a[1], n) {
                    m.harts[t].flush_tlb();
                }
            }
            (SUCCESS, 0)
        }
        EXT_HSM => match fid {
            0 => {
                let target = a[0] as usize;
                if target >= n {
                    (ERR_INVALID_PARAM, 0)
                } else if !m.harts[target].is_stopped() {
                    (ERR_ALREADY_AVAILABLE, 0)
                } else if m.ram.offset_of(a[1], 2).is_none() {
                    (-5, 0) // SBI_ERR_INVALID_ADDRESS
                } else {
                    m.harts[target].hsm_start(a[1], a[2]);
                    (SUCCESS, 0)
                }
            }
            1 => {
                m.harts[i].set_stopped(true);
                return SbiOutcome::Continue;
            }
            2 => match m.harts.get(a[0] as usize) {
                Some(t) => (SUCCESS, if t.is_stopped() { 1 } else { 0 }),
                None => (ERR_INVALID_PARAM, 0),
            },
            _ => (ERR_NOT_SUPPORTED, 0),
        },
        EXT_SRST if fid == 0 => {
            return match (a[0], a[1]) {
                (_, 1) => SbiOutcome::Failure,
                (0, _) => SbiOutcome::Shutdown,
                (1 | 2, _) => SbiOutcome::Reboot,
                _ => {
                    m.harts[i].complete_sbi(ERR_INVALID_PARAM, 0);
                    SbiOutcome::Continue
                }
            };
        }
        _ => (ERR_NOT_SUPPORTED, 0),
    };
    m.harts[i].complete_sbi(err, val);
    SbiOutcome::Continue
}

fn legacy(m: &mut Machine, i: usize, a0: u64) -> SbiOutcome {
    let a1 = m.harts[i].reg(11);
    m.harts[i].complete_sbi(a0 as i64, a1);
    SbiOutcome::Continue
}

/// Reads a legacy hart mask through the calling hart's view of memory. Only identity-mapped or physical
/// addresses are supported; anything else selects all harts (over-delivery of IPIs and fences is harmless).
fn read_guest_mask(m: &Machine, _i: usize, addr: u64) -> u64 {
    let mut buf = [0u8; 8];
    match m.ram.read(addr, &mut buf) {
        Some(()) => u64::from_le_bytes(buf),
        None => u64::MAX,
    }
}
