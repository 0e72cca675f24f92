//! Guest memory in a state stream: PAGS sections of (page index inside RAM, 4 KiB), 1,024 pages per section.
//! Every machine's stream carries its memory this way, whatever its architecture; page indices are RAM offsets
//! (see `kemari-memory`), so they do not depend on where RAM sits in the guest's address space.

use kemari_memory::{GuestRam, PAGE_SIZE};
use kemari_state::{Arch, Encoder, Reader, Section, StateError, StateFile};

pub const PAGES_PER_SECTION: usize = 1024;
pub const PAGS: Section = Section { tag: *b"PAGS", version: 1, cap: (PAGES_PER_SECTION * (8 + 4096) + 4) as u32 };

/// A stream of just these guest pages (indices inside RAM), as `Machine::restore_pages` takes it. Reads RAM
/// in place, so it may run on another thread while the guest runs (a page written meanwhile is in the dirty log
/// and sent again).
pub fn encode(arch: Arch, ram: &GuestRam, list: &[u64]) -> Vec<u8> {
    encode_into(arch, ram, list, Vec::new())
}

/// [`encode`] into the allocation of `buf`.
pub fn encode_into(arch: Arch, ram: &GuestRam, list: &[u64], buf: Vec<u8>) -> Vec<u8> {
    let bytes = list.len() * (8 + PAGE_SIZE as usize) + list.len().div_ceil(PAGES_PER_SECTION) * 18;
    let mut f = Encoder::reusing(buf, arch, bytes);
    push(ram, &mut f, list);
    // Page sections are full-size at most, and RAM is small enough that all of them fit in a stream.
    f.finish().expect("a page stream of this RAM is within the format's limits")
}

/// Adds PAGS sections holding the pages of `list`.
pub fn push(ram: &GuestRam, f: &mut Encoder, list: &[u64]) {
    for chunk in list.chunks(PAGES_PER_SECTION) {
        f.section(&PAGS, |w| {
            w.u32(chunk.len() as u32);
            for &p in chunk {
                w.u64(p);
                ram.append_to(ram.address_of(p * PAGE_SIZE), PAGE_SIZE as usize, &mut w.0).expect("page inside RAM");
            }
        });
    }
}

/// Every page of the PAGS sections of `f` as (page index, 4 KiB), checked against a RAM of `pages` pages.
pub fn checked<'a>(f: &'a StateFile<'_>, pages: u64) -> Result<Vec<(u64, &'a [u8])>, StateError> {
    let mut out = Vec::new();
    for payload in f.all(&PAGS)? {
        let mut r = Reader::new(payload, "PAGS");
        let n = r.u32()? as usize;
        if n > PAGES_PER_SECTION {
            return Err(r.invalid("too many pages in one section"));
        }
        for _ in 0..n {
            let p = r.u64()?;
            if p >= pages {
                return Err(r.invalid(format!("page {p} is beyond RAM")));
            }
            out.push((p, r.raw(PAGE_SIZE as usize)?));
        }
        r.finish()?;
    }
    Ok(out)
}
