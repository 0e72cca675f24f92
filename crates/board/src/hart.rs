//! The hart section of a RISC-V machine's state: one per hart, the complete architectural state
//! ([`HartState`]).

use kemari_engine::{HartState, Privilege};

use kemari_state::{Reader, Section, StateError, Writer};

pub const SECTION: Section = Section { tag: *b"HART", version: 1, cap: 1024 };

/// The CSRs a hart section holds, in stream order (one list for both directions).
fn csrs(h: &mut HartState) -> [&mut u64; 21] {
    [
        &mut h.fcsr,
        &mut h.mstatus,
        &mut h.medeleg,
        &mut h.mideleg,
        &mut h.mie,
        &mut h.mip,
        &mut h.mtvec,
        &mut h.mscratch,
        &mut h.mepc,
        &mut h.mcause,
        &mut h.mtval,
        &mut h.mcounteren,
        &mut h.menvcfg,
        &mut h.stvec,
        &mut h.sscratch,
        &mut h.sepc,
        &mut h.scause,
        &mut h.stval,
        &mut h.scounteren,
        &mut h.senvcfg,
        &mut h.satp,
    ]
}

pub fn encode(h: &HartState) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(h.id);
    for v in h.x.iter().chain(h.f.iter()) {
        w.u64(*v);
    }
    w.u64(h.pc);
    w.u8(h.privilege as u8);
    for v in csrs(&mut h.clone()) {
        w.u64(*v);
    }
    for v in h.pmpcfg.iter().chain(h.pmpaddr.iter()) {
        w.u64(*v);
    }
    w.u64(h.instret);
    w.bool(h.reservation.is_some());
    w.u64(h.reservation.unwrap_or(0));
    w.bool(h.waiting);
    w.bool(h.stopped);
    w.0
}

/// Decodes and validates one hart. `harts` is the number of harts of the machine (ids must be below it).
pub fn decode(payload: &[u8], harts: usize) -> Result<HartState, StateError> {
    let mut r = Reader::new(payload, "HART");
    let mut h = HartState { id: r.u64()?, ..Default::default() };
    if h.id >= harts as u64 {
        return Err(r.invalid(format!("hart id {} but the machine has {harts} harts", h.id)));
    }
    for v in h.x.iter_mut() {
        *v = r.u64()?;
    }
    for v in h.f.iter_mut() {
        *v = r.u64()?;
    }
    if h.x[0] != 0 {
        return Err(r.invalid("x0 is not zero"));
    }
    h.pc = r.u64()?;
    if h.pc & 1 != 0 {
        return Err(r.invalid(format!("pc {:#x} is not 2-byte aligned", h.pc)));
    }
    let p = r.u8()?;
    h.privilege =
        Privilege::from_bits(p as u64).ok_or_else(|| r.invalid(format!("privilege mode {p} does not exist")))?;
    for v in csrs(&mut h) {
        *v = r.u64()?;
    }
    for v in h.pmpcfg.iter_mut().chain(h.pmpaddr.iter_mut()) {
        *v = r.u64()?;
    }
    h.instret = r.u64()?;
    let has_reservation = r.bool()?;
    let reservation = r.u64()?;
    h.reservation = has_reservation.then_some(reservation);
    h.waiting = r.bool()?;
    h.stopped = r.bool()?;
    r.finish()?;
    // Values the engine could never have produced.
    // frm may hold any 3-bit value (an invalid one traps only when used), so only the width is checked.
    if h.fcsr > 0xff {
        return Err(StateError::Invalid { tag: "HART".into(), why: format!("fcsr {:#x} is invalid", h.fcsr) });
    }
    let mode = h.satp >> 60;
    if ![0, 8, 9].contains(&mode) {
        return Err(StateError::Invalid { tag: "HART".into(), why: format!("satp mode {mode} is not supported") });
    }
    if (h.mstatus >> 11) & 3 == 2 {
        return Err(StateError::Invalid { tag: "HART".into(), why: "mstatus.MPP holds the reserved mode 2".into() });
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kemari_state::{Arch, StateFile, FORMAT_VERSION};

    fn sample(id: u64) -> HartState {
        let mut h = HartState { id, pc: 0x8020_1234, privilege: Privilege::Supervisor, ..Default::default() };
        for (i, v) in h.x.iter_mut().enumerate().skip(1) {
            *v = 0x1111_0000_0000_0000 ^ (i as u64 * 0x0101_0101);
        }
        for (i, v) in h.f.iter_mut().enumerate() {
            *v = 0xffff_ffff_0000_0000 | i as u64;
        }
        h.fcsr = 0x21;
        h.mstatus = 0xa_0000_6022;
        h.satp = (9 << 60) | 0x80588;
        h.instret = 123_456_789;
        h.reservation = Some(0x1000);
        h.stopped = id == 1;
        h
    }

    fn file(harts: &[HartState]) -> Vec<u8> {
        let mut f = StateFile::new(Arch::Riscv64);
        for h in harts {
            f.push(&SECTION, encode(h));
        }
        f.encode()
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<HartState>, StateError> {
        let f = StateFile::decode(bytes, &[SECTION])?;
        f.all(&SECTION)?.into_iter().map(|p| decode(p, 2)).collect()
    }

    #[test]
    fn round_trip_is_exact_and_deterministic() {
        let harts = [sample(0), sample(1)];
        let bytes = file(&harts);
        let back = decode_all(&bytes).unwrap();
        assert_eq!(back, harts);
        assert_eq!(file(&back), bytes, "save → restore → save gives identical bytes");
    }

    #[test]
    fn truncation_anywhere_is_rejected() {
        let bytes = file(&[sample(0), sample(1)]);
        for len in 0..bytes.len() {
            assert!(decode_all(&bytes[..len]).is_err(), "truncated to {len} bytes was accepted");
        }
    }

    #[test]
    fn any_flipped_bit_is_rejected() {
        let bytes = file(&[sample(0)]);
        for i in 0..bytes.len() {
            for bit in [0, 3, 7] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(decode_all(&b).is_err(), "flip of bit {bit} in byte {i} was accepted");
            }
        }
    }

    #[test]
    fn future_versions_are_named() {
        let mut bytes = file(&[sample(0)]);
        bytes[8] = FORMAT_VERSION as u8 + 1;
        assert_eq!(decode_all(&bytes), Err(StateError::UnsupportedVersion(FORMAT_VERSION + 1)));
        let mut f = StateFile::new(Arch::Riscv64);
        f.push(&Section { version: 7, ..SECTION }, encode(&sample(0)));
        assert_eq!(decode_all(&f.encode()), Err(StateError::SectionVersion { tag: "HART".into(), version: 7 }));
    }

    #[test]
    fn impossible_values_are_rejected_with_a_reason() {
        // (byte offset in the payload, value to put there, expected reason)
        let cases = [
            (0, 5, "hart id 5"),
            (8 + 64 * 8, 0x35, "not 2-byte aligned"),
            (8 + 64 * 8 + 8, 2, "privilege mode 2"),
            (8, 1, "x0 is not zero"),
        ];
        for (at, value, why) in cases {
            let mut payload = encode(&sample(0));
            payload[at] = value;
            let mut f = StateFile::new(Arch::Riscv64);
            f.push(&SECTION, payload);
            let err = decode_all(&f.encode()).unwrap_err().to_string();
            assert!(err.contains(why), "{err:?} does not say {why:?}");
        }
    }

    #[test]
    fn oversized_sections_and_unknown_tags_are_refused_before_allocation() {
        let mut f = StateFile::new(Arch::Riscv64);
        f.push(&SECTION, vec![0; 2000]);
        assert!(matches!(decode_all(&f.encode()), Err(StateError::TooLong { .. })));
        let mut f = StateFile::new(Arch::Riscv64);
        f.push(&Section { tag: *b"ZZZZ", version: 1, cap: 10 }, vec![1]);
        assert!(decode_all(&f.encode()).unwrap_err().to_string().contains("unknown section"));
    }
}
