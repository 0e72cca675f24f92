//! Descriptor chains as every device reads them: a chain is walked once, whole, into its device-readable and
//! device-writable buffers, and refused if it does not end properly; data then moves between guest memory and
//! those buffers with [`gather`] and [`scatter`], after [`check`] made sure they lie in guest memory. Also the
//! devices' rate-limited warnings about what the guest did wrong.

use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _, Permissions};

use crate::memory::GuestMemory;

/// A guest memory buffer: `(address, length)`.
pub type Segment = (GuestAddress, u64);

/// The buffers of one chain, in chain order, zero-length ones included.
#[derive(Debug, Default)]
pub struct Buffers {
    /// Device-readable buffers.
    pub readable: Vec<Segment>,
    /// Device-writable buffers.
    pub writable: Vec<Segment>,
    /// A readable buffer came after a writable one (the spec puts every readable buffer first).
    pub out_of_order: bool,
}

impl Buffers {
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| s.1).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| s.1).sum()
    }
}

/// Why a chain was refused as a whole.
#[derive(Debug, PartialEq, Eq)]
pub enum ChainError {
    /// The chain has no descriptor, or ends in one that still points onward: it loops, names a descriptor
    /// outside the table, or its table is unreadable (virtio-queue's iterator then stops silently).
    Broken,
    /// More descriptors than the device accepts in one chain.
    TooLong,
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChainError::Broken => "descriptor chain is empty, loops or leaves the descriptor table",
            ChainError::TooLong => "descriptor chain has too many descriptors",
        })
    }
}

/// Walks a chain (at most `max` descriptors) into its buffers.
pub fn walk(chain: impl Iterator<Item = Descriptor>, max: usize) -> Result<Buffers, ChainError> {
    let mut b = Buffers::default();
    let mut count = 0usize;
    let mut ended = false;
    for d in chain {
        count += 1;
        if count > max {
            return Err(ChainError::TooLong);
        }
        ended = !d.has_next();
        let seg = (GuestAddress(d.addr().0), u64::from(d.len()));
        if d.is_write_only() {
            b.writable.push(seg);
        } else {
            b.out_of_order |= !b.writable.is_empty();
            b.readable.push(seg);
        }
    }
    if count == 0 || !ended {
        return Err(ChainError::Broken);
    }
    Ok(b)
}

/// Checks that the `len` bytes of `segments` from `skip` on lie in guest memory; the first buffer that does
/// not, or `Err(None)` when the buffers hold fewer bytes.
pub fn check(mem: &GuestMemory, segments: &[Segment], mut skip: u64, len: u64) -> Result<(), Option<Segment>> {
    let mut left = len;
    for &(addr, seg_len) in segments {
        if left == 0 {
            break;
        }
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let n = (seg_len - skip).min(left);
        let inside = addr.checked_add(skip).is_some_and(|at| mem.check_range(at, n as usize, Permissions::Write));
        if !inside {
            return Err(Some((addr, seg_len)));
        }
        left -= n;
        skip = 0;
    }
    if left == 0 {
        Ok(())
    } else {
        Err(None)
    }
}

/// Fills `buf` from the segments, starting `skip` bytes into them; fails unless all of `buf` was filled.
pub fn gather(mem: &GuestMemory, segments: &[Segment], mut skip: u64, buf: &mut [u8]) -> Result<(), ()> {
    let mut done = 0usize;
    for &(addr, len) in segments {
        if done == buf.len() {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(buf.len() - done);
        let at = addr.checked_add(skip).ok_or(())?;
        mem.read_slice(&mut buf[done..done + n], at).map_err(|_| ())?;
        done += n;
        skip = 0;
    }
    if done == buf.len() {
        Ok(())
    } else {
        Err(())
    }
}

/// Writes `parts` one after the other into the segments; returns the bytes written, fewer than the parts hold
/// when the segments are full.
pub fn scatter(mem: &GuestMemory, segments: &[Segment], parts: &[&[u8]]) -> Result<usize, ()> {
    let mut segs = segments.iter().copied();
    let mut cur: Segment = (GuestAddress(0), 0);
    let mut written = 0;
    for part in parts {
        let mut data: &[u8] = part;
        while !data.is_empty() {
            if cur.1 == 0 {
                match segs.next() {
                    Some(s) => cur = s,
                    None => return Ok(written),
                }
                continue;
            }
            let n = (cur.1.min(data.len() as u64)) as usize;
            mem.write_slice(&data[..n], cur.0).map_err(|_| ())?;
            written += n;
            data = &data[n..];
            cur = (GuestAddress(cur.0.raw_value().wrapping_add(n as u64)), cur.1 - n as u64);
        }
    }
    Ok(written)
}

/// Warnings about guest misbehaviour are limited to one per this interval per device.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// At most one warning per [`WARN_INTERVAL`]; the rest are counted and reported with the next one.
pub struct WarnLimit {
    /// The device and its instance, e.g. `("virtio-net", 0)`.
    device: &'static str,
    index: usize,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    pub fn new(device: &'static str, index: usize) -> WarnLimit {
        WarnLimit { device, index, last: None, suppressed: 0 }
    }

    pub fn warn(&mut self, msg: std::fmt::Arguments) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < WARN_INTERVAL) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(index = self.index, suppressed = self.suppressed, "{}: {msg}", self.device);
        self.last = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kemari_memory::GuestRam;

    use super::*;
    use crate::memory::device_view;

    const BASE: u64 = 0x8000_0000;

    fn mem() -> GuestMemory {
        device_view(&Arc::new(GuestRam::new(BASE, 1 << 16).unwrap()))
    }

    fn desc(addr: u64, len: u32, write: bool, next: Option<u16>) -> Descriptor {
        use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
        let flags = if write { VRING_DESC_F_WRITE } else { 0 } | if next.is_some() { VRING_DESC_F_NEXT } else { 0 };
        Descriptor::new(addr, len, flags as u16, next.unwrap_or(0))
    }

    #[test]
    fn a_chain_is_read_whole_or_refused() {
        let b = walk(
            [desc(BASE, 16, false, Some(1)), desc(BASE + 16, 0, true, Some(2)), desc(BASE + 32, 1, true, None)]
                .into_iter(),
            8,
        )
        .unwrap();
        assert_eq!((b.readable_len(), b.writable_len(), b.writable.len(), b.out_of_order), (16, 1, 2, false));
        let b = walk([desc(BASE, 1, true, Some(1)), desc(BASE, 1, false, None)].into_iter(), 8).unwrap();
        assert!(b.out_of_order);
        assert_eq!(walk(std::iter::empty(), 8).unwrap_err(), ChainError::Broken);
        // virtio-queue stops early on a loop or a bad index: the last descriptor still points onward.
        assert_eq!(walk([desc(BASE, 1, false, Some(5))].into_iter(), 8).unwrap_err(), ChainError::Broken);
        let long = (0..9).map(|i| desc(BASE, 1, false, (i < 8).then_some(i + 1)));
        assert_eq!(walk(long, 8).unwrap_err(), ChainError::TooLong);
    }

    #[test]
    fn data_moves_across_buffers_and_stays_inside_guest_memory() {
        let mem = mem();
        let segs = [(GuestAddress(BASE), 3), (GuestAddress(BASE + 100), 0), (GuestAddress(BASE + 200), 5)];
        assert_eq!(scatter(&mem, &segs, &[b"ab", b"cdefghij"]), Ok(8), "full: the rest is not written");
        let mut buf = [0u8; 6];
        gather(&mem, &segs, 2, &mut buf).unwrap();
        assert_eq!(&buf, b"cdefgh");
        assert!(gather(&mem, &segs, 4, &mut [0u8; 6]).is_err(), "fewer bytes than asked");
        assert_eq!(check(&mem, &segs, 0, 8), Ok(()));
        assert_eq!(check(&mem, &segs, 0, 9), Err(None));
        let outside = [(GuestAddress(BASE), 1), (GuestAddress(BASE + (1 << 16) - 2), 4)];
        assert_eq!(check(&mem, &outside, 0, 2), Ok(()));
        assert_eq!(check(&mem, &outside, 0, 4), Err(Some(outside[1])));
        assert_eq!(check(&mem, &[(GuestAddress(u64::MAX), 2)], 1, 1), Err(Some((GuestAddress(u64::MAX), 2))));
    }
}
