//! A virtio driver for device tests, shared by virtio-blk's and virtio-net's: guest RAM with split queues laid
//! out in it the way a driver lays them out (descriptors first, then the available ring entries, then its
//! index), the gate in front of a recorder (or the backend a test gives), and readers for what the device did
//! (used ring entries, effects, guest memory).

use std::sync::Arc;

use kemari_memory::GuestRam;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::GuestAddress;

use super::Ctx;
use crate::gate::{Effect, OutputGate, Recorder};
use crate::memory::{device_view, GuestMemory};

/// Where guest RAM starts.
pub const RAM: u64 = 0x8000_0000;
/// Queue `i`'s rings start at `RAM + i * QUEUE_SPAN`.
pub const QUEUE_SPAN: u64 = 0x1_0000;

/// Lets a device's test rig, a struct with a `drv: Driver` field, be used as the driver it holds.
macro_rules! rig_derefs_to_driver {
    ($rig:ty) => {
        impl std::ops::Deref for $rig {
            type Target = $crate::virtio::testing::Driver;
            fn deref(&self) -> &Self::Target {
                &self.drv
            }
        }

        impl std::ops::DerefMut for $rig {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.drv
            }
        }
    };
}
pub(crate) use rig_derefs_to_driver;

/// A raw split-queue descriptor.
pub fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// A buffer of a request as the driver lays it out.
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
}

/// One queue's rings, and where the driver is in them.
struct Rings {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    /// Next free descriptor table slot.
    next_desc: u16,
    /// Used ring entries read so far.
    seen_used: u16,
}

pub struct Driver {
    pub ram: Arc<GuestRam>,
    pub mem: GuestMemory,
    pub gate: OutputGate,
    /// The gate's backend, when it records.
    pub rec: Option<Recorder>,
    /// The device's queues, as the transport would hand them over.
    pub queues: Vec<Queue>,
    rings: Vec<Rings>,
}

impl Driver {
    /// `ram_size` bytes of RAM with one ready queue of each of `sizes`, and a gate that records effects.
    pub fn new(ram_size: u64, sizes: &[u16]) -> Driver {
        let rec = Recorder::default();
        let mut d = Driver::with_gate(ram_size, sizes, OutputGate::new(Box::new(rec.clone())));
        d.rec = Some(rec);
        d
    }

    /// The same, in front of `gate`.
    pub fn with_gate(ram_size: u64, sizes: &[u16], gate: OutputGate) -> Driver {
        let ram = Arc::new(GuestRam::new(RAM, ram_size).unwrap());
        let mem = device_view(&ram);
        let (mut queues, mut rings) = (Vec::new(), Vec::new());
        for (i, &size) in sizes.iter().enumerate() {
            let mock = MockSplitQueue::create(&mem, GuestAddress(RAM + i as u64 * QUEUE_SPAN), size);
            assert!(mock.end().0 <= RAM + (i as u64 + 1) * QUEUE_SPAN, "queue {i} does not fit its span");
            queues.push(mock.create_queue().unwrap());
            let (desc, avail, used) = (mock.desc_table_addr().0, mock.avail_addr().0, mock.used_addr().0);
            rings.push(Rings { desc, avail, used, size, next_desc: 0, seen_used: 0 });
        }
        Driver { ram, mem, gate, rec: None, queues, rings }
    }

    /// What a device call gets.
    pub fn ctx(&mut self) -> Ctx<'_> {
        Ctx { queues: &mut self.queues, mem: &self.mem, gate: self.gate.effects() }
    }

    /// The effects the gate recorded.
    pub fn effects(&self) -> Vec<Effect> {
        self.rec.as_ref().expect("a recording gate").0.lock().unwrap().clone()
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.ram.write(addr, data).unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.ram.read(addr, &mut b).unwrap();
        b
    }

    fn u16_at(&self, addr: u64) -> u16 {
        u16::from_le_bytes(self.read(addr, 2).try_into().unwrap())
    }

    /// Queue `q`'s next free descriptor table slot.
    pub fn next_desc(&self, q: usize) -> u16 {
        self.rings[q].next_desc
    }

    /// Publishes a chain of the buffers (linked in order) on queue `q`; returns its head.
    pub fn offer(&mut self, q: usize, bufs: &[Buf]) -> u16 {
        let head = self.rings[q].next_desc;
        let next_flag = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let last = i + 1 == bufs.len();
                let flags = b.flags as u32 | if last { 0 } else { next_flag };
                desc(b.addr, b.len, flags, if last { 0 } else { head + i as u16 + 1 })
            })
            .collect();
        self.offer_raw(q, &descs);
        head
    }

    /// Publishes raw descriptors at queue `q`'s next table slots (a new chain starts after each one without
    /// NEXT), as a driver does: descriptors first, then the available ring entries, then its index.
    pub fn offer_raw(&mut self, q: usize, descs: &[RawDescriptor]) {
        let r = &self.rings[q];
        let (table, avail, size) = (r.desc, r.avail, r.size);
        let mut idx = self.u16_at(avail + 2);
        let mut slot = self.rings[q].next_desc;
        let mut starts_chain = true;
        for d in descs {
            let d = SplitDescriptor::from(*d);
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&d.addr().0.to_le_bytes());
            raw[8..12].copy_from_slice(&d.len().to_le_bytes());
            raw[12..14].copy_from_slice(&d.flags().to_le_bytes());
            raw[14..16].copy_from_slice(&d.next().to_le_bytes());
            self.write(table + 16 * slot as u64, &raw);
            if starts_chain {
                self.write(avail + 4 + 2 * (idx % size) as u64, &slot.to_le_bytes());
                idx = idx.wrapping_add(1);
            }
            starts_chain = !d.has_next();
            slot += 1;
        }
        self.rings[q].next_desc = slot;
        self.set_avail_idx(q, idx);
    }

    /// Writes queue `q`'s available index (a driver may write any value; tests write impossible ones).
    pub fn set_avail_idx(&self, q: usize, idx: u16) {
        self.write(self.rings[q].avail + 2, &idx.to_le_bytes());
    }

    /// Queue `q`'s used index.
    pub fn used_idx(&self, q: usize) -> u16 {
        self.u16_at(self.rings[q].used + 2)
    }

    /// Used ring entry `i` of queue `q`: (head, length written).
    pub fn used_entry(&self, q: usize, i: u16) -> (u32, u32) {
        let r = &self.rings[q];
        let e = self.read(r.used + 4 + 8 * (i % r.size) as u64, 8);
        (u32::from_le_bytes(e[0..4].try_into().unwrap()), u32::from_le_bytes(e[4..8].try_into().unwrap()))
    }

    /// The used entries of queue `q` added since the last call.
    pub fn used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let idx = self.used_idx(q);
        let mut out = Vec::new();
        while self.rings[q].seen_used != idx {
            out.push(self.used_entry(q, self.rings[q].seen_used));
            self.rings[q].seen_used = self.rings[q].seen_used.wrapping_add(1);
        }
        out
    }
}
