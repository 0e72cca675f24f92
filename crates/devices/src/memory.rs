//! A `vm-memory` view of guest RAM for device emulation, wired to the dirty log of guest RAM.
//!
//! Devices read and write guest memory through `vm-memory` (and `virtio-queue` on top of it). Every write they
//! make — used-ring updates, received frames, block reads — marks its pages in the same dirty log the harts
//! use, so a checkpoint carries them (DESIGN.md: "pages the VMM itself wrote into guest memory").

use std::sync::Arc;

use kemari_memory::GuestRam;
use vm_memory::bitmap::{Bitmap, RefSlice, WithBitmapSlice};
use vm_memory::{GuestAddress, GuestRegionMmap, MmapRegion};

/// Marks writes made through `vm-memory` in the engine's dirty log. One per RAM region: offsets in the region
/// start at `.1` in RAM.
#[derive(Clone)]
pub struct DirtyLog(Arc<GuestRam>, u64);

impl std::fmt::Debug for DirtyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DirtyLog")
    }
}

impl<'a> WithBitmapSlice<'a> for DirtyLog {
    type S = RefSlice<'a, DirtyLog>;
}

impl Bitmap for DirtyLog {
    fn mark_dirty(&self, offset: usize, len: usize) {
        self.0.mark_dirty_range(self.1 + offset as u64, len as u64);
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.0.is_dirty((self.1 + offset as u64) / kemari_memory::PAGE_SIZE)
    }

    fn slice_at(&self, offset: usize) -> RefSlice<'_, DirtyLog> {
        RefSlice::new(self, offset)
    }
}

/// Guest memory as devices see it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<DirtyLog>;

/// Builds the device view of `ram` (same host mapping, same dirty log, one `vm-memory` region per RAM region).
pub fn device_view(ram: &Arc<GuestRam>) -> GuestMemory {
    let regions = ram.regions().iter().map(|r| {
        // SAFETY: the pointer and size describe a part of the live anonymous mapping owned by `ram`, and the
        // returned view holds an `Arc` to `ram` (inside its bitmap), so the mapping outlives every access
        // through the view.
        let region = unsafe {
            vm_memory::mmap::MmapRegionBuilder::new_with_bitmap(r.size as usize, DirtyLog(ram.clone(), r.offset))
                .with_raw_mmap_pointer(ram.host_ptr().add(r.offset as usize))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE)
                .build()
        }
        .expect("raw region over existing RAM");
        let region: MmapRegion<DirtyLog> = region;
        GuestRegionMmap::new(region, GuestAddress(r.base)).expect("RAM region does not overflow")
    });
    GuestMemory::from_regions(regions.collect()).expect("RAM regions are ordered and disjoint")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn device_writes_reach_ram_and_the_dirty_log() {
        let ram = Arc::new(GuestRam::new(0x8000_0000, 1 << 20).unwrap());
        let mem = device_view(&ram);
        ram.take_dirty();
        mem.write_obj(0xdead_beefu32, GuestAddress(0x8000_3004)).unwrap();
        assert_eq!(ram.take_dirty(), vec![3]);
        let mut b = [0u8; 4];
        ram.read(0x8000_3004, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
        assert!(mem.write_obj(1u8, GuestAddress(0x8010_0000)).is_err(), "outside RAM");
    }

    #[test]
    fn each_region_marks_its_own_pages() {
        let ram = Arc::new(GuestRam::with_regions(&[(0, 1 << 16), (0x1_0000_0000, 1 << 16)]).unwrap());
        let mem = device_view(&ram);
        mem.write_obj(7u64, GuestAddress(0x1_0000_2000)).unwrap();
        assert_eq!(ram.take_dirty(), vec![16 + 2], "page 2 of the second region is RAM page 18");
        let mut b = [0u8; 8];
        ram.read(0x1_0000_2000, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 7);
        assert!(mem.write_obj(1u8, GuestAddress(0x1_0000)).is_err(), "the hole is not RAM");
    }
}
