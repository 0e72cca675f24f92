//! PLIC (platform-level interrupt controller), SiFive layout as on QEMU `virt`.
//!
//! Sources are edge-style: a device raising its line sets the source pending; a claim clears it and marks it
//! in service until completion, so a source re-raised while being served is delivered again afterwards.
//! Context `2h` is hart `h` in M-mode, `2h + 1` hart `h` in S-mode.

use kemari_state::{Reader, StateError, Writer};

pub const BASE: u64 = 0x0c00_0000;
pub const SIZE: u64 = 0x60_0000;
/// Sources 1..NUM_SOURCES-1 exist (0 is "no interrupt").
pub const NUM_SOURCES: usize = 32;

const PENDING: u64 = 0x1000;
const ENABLE: u64 = 0x2000;
const ENABLE_STRIDE: u64 = 0x80;
const CONTEXT: u64 = 0x20_0000;
const CONTEXT_STRIDE: u64 = 0x1000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plic {
    pub priority: Vec<u32>,
    pub pending: u32,
    pub in_service: u32,
    /// Per context: enabled sources bitmap.
    pub enable: Vec<u32>,
    pub threshold: Vec<u32>,
}

impl Plic {
    pub fn new(harts: usize) -> Plic {
        Plic {
            priority: vec![0; NUM_SOURCES],
            pending: 0,
            in_service: 0,
            enable: vec![0; 2 * harts],
            threshold: vec![0; 2 * harts],
        }
    }

    pub fn contexts(&self) -> usize {
        self.enable.len()
    }

    /// A device signals an interrupt on `source`.
    pub fn raise(&mut self, source: u32) {
        if (1..NUM_SOURCES as u32).contains(&source) {
            self.pending |= 1 << source;
        }
    }

    /// The best claimable source for `ctx`, if any beats the context's threshold.
    fn best(&self, ctx: usize) -> Option<u32> {
        let candidates = self.pending & !self.in_service & self.enable[ctx];
        let mut best: Option<(u32, u32)> = None;
        for s in 1..NUM_SOURCES as u32 {
            if candidates & (1 << s) == 0 {
                continue;
            }
            let p = self.priority[s as usize];
            if p > self.threshold[ctx] && best.is_none_or(|(_, bp)| p > bp) {
                best = Some((s, p));
            }
        }
        best.map(|(s, _)| s)
    }

    /// Whether the external-interrupt line of context `ctx` is asserted.
    pub fn line(&self, ctx: usize) -> bool {
        ctx < self.contexts() && self.best(ctx).is_some()
    }

    pub fn load(&mut self, off: u64, size: u8) -> Option<u64> {
        if size != 4 || !off.is_multiple_of(4) {
            return None;
        }
        let v = match off {
            o if o < PENDING => self.priority.get((o / 4) as usize).copied().unwrap_or(0),
            o if o == PENDING => self.pending,
            o if (ENABLE..CONTEXT).contains(&o) => {
                let ctx = ((o - ENABLE) / ENABLE_STRIDE) as usize;
                if (o - ENABLE).is_multiple_of(ENABLE_STRIDE) {
                    self.enable.get(ctx).copied().unwrap_or(0)
                } else {
                    0
                }
            }
            o if o >= CONTEXT => {
                let ctx = ((o - CONTEXT) / CONTEXT_STRIDE) as usize;
                if ctx >= self.contexts() {
                    return Some(0);
                }
                match (o - CONTEXT) % CONTEXT_STRIDE {
                    0 => self.threshold[ctx],
                    4 => match self.best(ctx) {
                        Some(s) => {
                            self.pending &= !(1 << s);
                            self.in_service |= 1 << s;
                            s
                        }
                        None => 0,
                    },
                    _ => 0,
                }
            }
            _ => 0,
        };
        Some(v as u64)
    }

    pub fn store(&mut self, off: u64, size: u8, value: u64) -> bool {
        if size != 4 || !off.is_multiple_of(4) {
            return false;
        }
        let v = value as u32;
        match off {
            o if o < PENDING => {
                if let Some(p) = self.priority.get_mut((o / 4) as usize) {
                    *p = v & 7;
                }
            }
            o if (ENABLE..CONTEXT).contains(&o) => {
                let ctx = ((o - ENABLE) / ENABLE_STRIDE) as usize;
                if (o - ENABLE).is_multiple_of(ENABLE_STRIDE) && ctx < self.contexts() {
                    self.enable[ctx] = v & !1;
                }
            }
            o if o >= CONTEXT => {
                let ctx = ((o - CONTEXT) / CONTEXT_STRIDE) as usize;
                if ctx < self.contexts() {
                    match (o - CONTEXT) % CONTEXT_STRIDE {
                        0 => self.threshold[ctx] = v & 7,
                        4 if (v as usize) < NUM_SOURCES => {
                            self.in_service &= !(1 << v);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        true
    }
}

impl Plic {
    /// Writes priorities, pending and in-service sources, each context's enables and threshold (the PLIC
    /// section).
    pub fn save(&self, w: &mut Writer) {
        for v in &self.priority {
            w.u32(*v);
        }
        w.u32(self.pending);
        w.u32(self.in_service);
        for (e, t) in self.enable.iter().zip(&self.threshold) {
            w.u32(*e);
            w.u32(*t);
        }
    }

    /// Decodes what `save` wrote for a PLIC of this one's contexts, masked to what the registers can hold
    /// (source 0 never exists); applying it is assigning it.
    pub fn decode_state(&self, r: &mut Reader) -> Result<Plic, StateError> {
        let mut p = Plic::new(self.enable.len() / 2);
        for v in p.priority.iter_mut() {
            *v = r.u32()? & 7;
        }
        p.pending = r.u32()? & !1;
        p.in_service = r.u32()? & !1;
        for ctx in 0..p.enable.len() {
            p.enable[ctx] = r.u32()? & !1;
            p.threshold[ctx] = r.u32()? & 7;
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_complete_cycle_respects_priority_and_threshold() {
        let mut p = Plic::new(1);
        p.store(10 * 4, 4, 1);
        p.store(3 * 4, 4, 5);
        p.store(ENABLE + ENABLE_STRIDE, 4, (1 << 10) | (1 << 3));
        p.raise(10);
        p.raise(3);
        assert!(p.line(1));
        assert!(!p.line(0), "M context has nothing enabled");
        let claim = CONTEXT + CONTEXT_STRIDE + 4;
        assert_eq!(p.load(claim, 4), Some(3), "higher priority first");
        assert_eq!(p.load(claim, 4), Some(10));
        assert!(!p.line(1));
        p.raise(10); // re-raised while in service: held until completion
        assert!(!p.line(1));
        p.store(claim, 4, 10);
        assert!(p.line(1));
        p.store(CONTEXT + CONTEXT_STRIDE, 4, 1); // threshold 1 masks priority-1 source 10
        assert!(!p.line(1));
    }
}
