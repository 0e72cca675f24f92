//! The virtio-mmio transport (virtio 1.x, register layout version 2).
//!
//! Owns the device's queues and the negotiation state; forwards queue notifications to the device. A device
//! that the guest misprogrammed beyond recovery is marked DEVICE_NEEDS_RESET and ignored until the driver
//! resets it; the rest of the machine carries on.

use kemari_state::{Reader, StateError, Writer};
use virtio_queue::{Queue, QueueState, QueueT};

use super::{Ctx, Processed, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::gate::Effects;
use crate::memory::GuestMemory;

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const VENDOR: u32 = 0x4952_4d4b; // "KMRI"

pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Interrupt status bits.
const INT_USED_RING: u32 = 1;
const INT_CONFIG: u32 = 2;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>) -> MmioTransport {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&m| Queue::new(m).expect("device queue sizes are powers of two"))
            .collect();
        MmioTransport {
            device,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
        }
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn active(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// Whether the interrupt line should be asserted.
    pub fn interrupt_pending(&self) -> bool {
        self.interrupt_status != 0
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.device.reset();
    }

    /// Applies a device call's outcome; returns true when the driver must be interrupted.
    fn apply(&mut self, p: Processed, mem: &GuestMemory) -> bool {
        if p.failed {
            tracing::warn!(device = self.device.device_type(), "guest misprogrammed the device; it needs a reset");
            self.status |= status::DEVICE_NEEDS_RESET;
            self.interrupt_status |= INT_CONFIG;
            return true;
        }
        if !p.used {
            return false;
        }
        // Honour the driver's notification suppression (or EVENT_IDX) for every queue that may have changed.
        let mut notify = false;
        for q in &mut self.queues {
            if q.ready() && q.needs_notification(mem).unwrap_or(true) {
                notify = true;
            }
        }
        if notify {
            self.interrupt_status |= INT_USED_RING;
        }
        notify
    }

    pub fn read(&mut self, offset: u64, size: u8) -> u64 {
        if offset >= CONFIG {
            let mut data = [0u8; 8];
            let n = (size as usize).min(8);
            self.device.read_config(offset - CONFIG, &mut data[..n]);
            return u64::from_le_bytes(data);
        }
        if size != 4 {
            return 0;
        }
        let v: u32 = match offset {
            MAGIC => MAGIC_VALUE,
            VERSION => 2,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self.queues.get(self.queue_sel as usize).map_or(0, |q| q.max_size() as u32),
            QUEUE_READY => self.queues.get(self.queue_sel as usize).is_some_and(|q| q.ready()) as u32,
            INTERRUPT_STATUS => self.interrupt_status,
            STATUS => self.status,
            CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        v as u64
    }

    /// Handles a register write; returns true when the driver must be interrupted.
    pub fn write(&mut self, offset: u64, size: u8, value: u64, mem: &GuestMemory, gate: Effects) -> bool {
        if offset >= CONFIG {
            let n = (size as usize).min(8);
            self.device.write_config(offset - CONFIG, &value.to_le_bytes()[..n]);
            return false;
        }
        if size != 4 {
            return false;
        }
        let v = value as u32;
        // Queue configuration may change only before the driver is done setting up.
        let configurable = self.status & status::DRIVER_OK == 0;
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v as u64,
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | ((v as u64) << 32),
                _ => {}
            },
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            QUEUE_READY if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH | QUEUE_DEVICE_LOW
            | QUEUE_DEVICE_HIGH
                if configurable =>
            {
                let high = offset & 4 != 0;
                let (lo, hi) = if high { (None, Some(v)) } else { (Some(v), None) };
                if let Some(q) = self.selected_queue() {
                    match offset & !4 {
                        QUEUE_DESC_LOW => q.set_desc_table_address(lo, hi),
                        QUEUE_DRIVER_LOW => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            QUEUE_NOTIFY => {
                let index = v as usize;
                if !self.active() || index >= self.queues.len() {
                    return false;
                }
                if !self.queues[index].is_valid(mem) {
                    return self.apply(Processed { used: false, failed: true }, mem);
                }
                let p = self.device.process_queue(index, &mut Ctx { queues: &mut self.queues, mem, gate });
                return self.apply(p, mem);
            }
            INTERRUPT_ACK => self.interrupt_status &= !v,
            STATUS => {
                if v == 0 {
                    self.reset();
                    return false;
                }
                // FEATURES_OK only sticks if the driver accepted a subset of what we offered, including VERSION_1.
                let mut v = v;
                if v & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
                    let offered = self.offered_features();
                    if self.driver_features & !offered != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                        v &= !status::FEATURES_OK;
                    }
                }
                let was_ok = self.status & status::DRIVER_OK != 0;
                self.status = v | (self.status & status::DEVICE_NEEDS_RESET);
                if !was_ok && self.status & status::DRIVER_OK != 0 {
                    for q in &mut self.queues {
                        q.set_event_idx(false);
                    }
                    self.device.activate(self.driver_features);
                }
            }
            _ => {}
        }
        false
    }

    /// Asks the device to announce itself on its network (after a migration or failover).
    pub fn announce(&mut self, mut gate: Effects) {
        if self.active() {
            self.device.announce(&mut gate);
        }
    }

    /// Lets the device bring in outside work (e.g. received frames); returns true when the driver must be
    /// interrupted.
    pub fn poll(&mut self, mem: &GuestMemory, gate: Effects) -> bool {
        if !self.active() {
            return false;
        }
        let p = self.device.poll(&mut Ctx { queues: &mut self.queues, mem, gate });
        self.apply(p, mem)
    }
}

impl MmioTransport {
    /// Writes the transport's state (registers, negotiated features, every queue, the device's own state).
    pub fn save(&self, w: &mut Writer) {
        w.u32(self.device.device_type());
        for v in [self.queue_sel, self.device_features_sel, self.driver_features_sel, self.status] {
            w.u32(v);
        }
        w.u64(self.driver_features);
        w.u32(self.interrupt_status);
        w.u32(self.config_generation);
        w.u32(self.queues.len() as u32);
        for q in &self.queues {
            let st = q.state();
            w.u16(st.max_size);
            w.u16(st.next_avail);
            w.u16(st.next_used);
            w.bool(st.event_idx_enabled);
            w.u16(st.size);
            w.bool(st.ready);
            w.u64(st.desc_table);
            w.u64(st.avail_ring);
            w.u64(st.used_ring);
        }
        w.bytes(&self.device.save());
    }

    /// Checks and decodes what `save` wrote against this transport's device and guest memory (the bytes are
    /// untrusted), without changing anything; [`MmioTransport::apply_state`] then cannot fail.
    pub fn decode_state(&self, r: &mut Reader, mem: &GuestMemory) -> Result<TransportState, StateError> {
        let kind = r.u32()?;
        if kind != self.device.device_type() {
            return Err(r.invalid(format!(
                "device type {kind} in the state, but this slot holds type {}",
                self.device.device_type()
            )));
        }
        let (queue_sel, device_features_sel, driver_features_sel, status) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
        let driver_features = r.u64()?;
        if driver_features & !self.offered_features() != 0 {
            return Err(r.invalid("negotiated features the device does not offer"));
        }
        let interrupt_status = r.u32()? & (INT_USED_RING | INT_CONFIG);
        let config_generation = r.u32()?;
        let n = r.u32()? as usize;
        if n != self.queues.len() {
            return Err(r.invalid(format!("{n} queues in the state, the device has {}", self.queues.len())));
        }
        let mut queues = Vec::with_capacity(n);
        for q in &self.queues {
            let st = QueueState {
                max_size: r.u16()?,
                next_avail: r.u16()?,
                next_used: r.u16()?,
                event_idx_enabled: r.bool()?,
                size: r.u16()?,
                ready: r.bool()?,
                desc_table: r.u64()?,
                avail_ring: r.u64()?,
                used_ring: r.u64()?,
            };
            if st.max_size != q.max_size() {
                return Err(r.invalid("queue maximum size differs from the device's"));
            }
            let restored = Queue::try_from(st).map_err(|e| r.invalid(format!("queue: {e}")))?;
            // A ready queue must lie in guest memory: the guest may be hostile, the stream may be too.
            if restored.ready() && !restored.is_valid(mem) {
                return Err(r.invalid("a ready queue lies outside guest memory"));
            }
            queues.push(restored);
        }
        let device = self.device.decode_state(r.bytes(1 << 20)?).map_err(|why| r.invalid(why))?;
        Ok(TransportState {
            queue_sel,
            device_features_sel,
            driver_features_sel,
            status,
            driver_features,
            interrupt_status,
            config_generation,
            queues,
            device,
        })
    }

    /// Applies what this transport's [`MmioTransport::decode_state`] returned.
    pub fn apply_state(&mut self, st: TransportState) {
        self.queue_sel = st.queue_sel;
        self.device_features_sel = st.device_features_sel;
        self.driver_features_sel = st.driver_features_sel;
        self.status = st.status;
        self.driver_features = st.driver_features;
        self.interrupt_status = st.interrupt_status;
        self.config_generation = st.config_generation;
        self.queues = st.queues;
        self.device.apply_state(st.device);
    }
}

/// A transport's state, checked against it: registers, queues and the device's own state.
pub struct TransportState {
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    status: u32,
    driver_features: u64,
    interrupt_status: u32,
    config_generation: u32,
    queues: Vec<Queue>,
    device: super::DeviceState,
}

#[cfg(test)]
mod tests {
    //! The transport driven the way a (possibly hostile) driver drives it: register writes and rings in guest
    //! memory, with the entropy device behind it.

    use std::sync::Arc;

    use kemari_memory::GuestRam;

    use super::*;
    use crate::gate::{OutputGate, Recorder};
    use crate::memory::device_view;
    use crate::virtio::rng::Rng;

    const RAM: u64 = 0x8000_0000;
    const DESC: u64 = RAM + 0x1000;
    const AVAIL: u64 = RAM + 0x2000;
    const USED: u64 = RAM + 0x3000;

    struct Driver {
        ram: Arc<GuestRam>,
        mem: GuestMemory,
        gate: OutputGate,
        t: MmioTransport,
    }

    impl Driver {
        fn new() -> Driver {
            let ram = Arc::new(GuestRam::new(RAM, 1 << 20).unwrap());
            let mem = device_view(&ram);
            let gate = OutputGate::new(Box::new(Recorder::default()));
            Driver { ram, mem, gate, t: MmioTransport::new(Box::new(Rng)) }
        }

        fn w(&mut self, reg: u64, v: u32) -> bool {
            self.t.write(reg, 4, v as u64, &self.mem, self.gate.effects())
        }

        fn r(&mut self, reg: u64) -> u32 {
            self.t.read(reg, 4) as u32
        }

        /// The driver's initialisation sequence with one queue of 8 entries at the given rings.
        fn setup(&mut self, desc: u64, avail: u64, used: u64) {
            self.w(STATUS, status::ACKNOWLEDGE | status::DRIVER);
            self.w(DRIVER_FEATURES_SEL, 1);
            self.w(DRIVER_FEATURES, 1); // VERSION_1
            self.w(STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
            assert_ne!(self.r(STATUS) & status::FEATURES_OK, 0);
            self.w(QUEUE_SEL, 0);
            self.w(QUEUE_NUM, 8);
            self.w(QUEUE_DESC_LOW, desc as u32);
            self.w(QUEUE_DESC_HIGH, (desc >> 32) as u32);
            self.w(QUEUE_DRIVER_LOW, avail as u32);
            self.w(QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
            self.w(QUEUE_DEVICE_LOW, used as u32);
            self.w(QUEUE_DEVICE_HIGH, (used >> 32) as u32);
            self.w(QUEUE_READY, 1);
            self.w(STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
        }

        fn desc(&self, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            self.ram.write(DESC + 16 * i, &d).unwrap();
        }

        /// Publishes descriptor `head` as the next available chain.
        fn offer(&self, slot: u16, head: u16) {
            self.ram.write(AVAIL + 4 + 2 * slot as u64, &head.to_le_bytes()).unwrap();
            self.ram.write(AVAIL + 2, &(slot + 1).to_le_bytes()).unwrap();
        }

        fn used_idx(&self) -> u16 {
            let mut b = [0u8; 2];
            self.ram.read(USED + 2, &mut b).unwrap();
            u16::from_le_bytes(b)
        }
    }

    const WRITE: u16 = 2;
    const NEXT: u16 = 1;

    #[test]
    fn identifies_as_a_modern_virtio_device() {
        let mut d = Driver::new();
        assert_eq!(d.r(MAGIC), MAGIC_VALUE);
        assert_eq!(d.r(VERSION), 2);
        assert_eq!(d.r(DEVICE_ID), 4);
        d.w(DEVICE_FEATURES_SEL, 1);
        assert_eq!(d.r(DEVICE_FEATURES) & 1, 1, "VERSION_1 offered");
    }

    #[test]
    fn refuses_features_it_did_not_offer() {
        let mut d = Driver::new();
        d.w(DRIVER_FEATURES_SEL, 0);
        d.w(DRIVER_FEATURES, 1 << 5);
        d.w(DRIVER_FEATURES_SEL, 1);
        d.w(DRIVER_FEATURES, 1);
        d.w(STATUS, status::FEATURES_OK);
        assert_eq!(d.r(STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn serves_a_request_and_interrupts() {
        let mut d = Driver::new();
        d.setup(DESC, AVAIL, USED);
        d.desc(0, RAM + 0x8000, 32, WRITE, 0);
        d.offer(0, 0);
        assert!(d.w(QUEUE_NOTIFY, 0), "used ring changed: interrupt");
        assert_eq!(d.used_idx(), 1);
        assert_eq!(d.r(INTERRUPT_STATUS), 1);
        d.w(INTERRUPT_ACK, 1);
        assert_eq!(d.r(INTERRUPT_STATUS), 0);
        let mut buf = [0u8; 32];
        d.ram.read(RAM + 0x8000, &mut buf).unwrap();
        assert_ne!(buf, [0u8; 32], "entropy written");
    }

    #[test]
    fn buffer_outside_ram_is_not_written_and_nothing_panics() {
        let mut d = Driver::new();
        d.setup(DESC, AVAIL, USED);
        // Straddles the end of RAM, then one entirely outside.
        d.desc(0, RAM + (1 << 20) - 8, 64, WRITE | NEXT, 1);
        d.desc(1, 0x1_0000_0000, 64, WRITE, 0);
        d.offer(0, 0);
        d.w(QUEUE_NOTIFY, 0);
        assert_eq!(d.r(STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn looping_chain_terminates() {
        let mut d = Driver::new();
        d.setup(DESC, AVAIL, USED);
        d.desc(0, RAM + 0x8000, 16, WRITE | NEXT, 1);
        d.desc(1, RAM + 0x9000, 16, WRITE | NEXT, 0);
        d.offer(0, 0);
        d.w(QUEUE_NOTIFY, 0);
        // The chain is cut at the queue size; the device keeps working.
        d.desc(2, RAM + 0xa000, 16, WRITE, 0);
        d.offer(1, 2);
        d.w(QUEUE_NOTIFY, 0);
        assert_eq!(d.used_idx(), 2);
    }

    #[test]
    fn rings_outside_ram_fail_the_device_until_reset() {
        let mut d = Driver::new();
        d.setup(0x1_0000_0000, AVAIL, USED);
        assert!(d.w(QUEUE_NOTIFY, 0), "config interrupt tells the driver");
        assert_ne!(d.r(STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(d.r(INTERRUPT_STATUS) & INT_CONFIG, INT_CONFIG);
        // Further notifications are ignored; a reset brings the device back.
        assert!(!d.w(QUEUE_NOTIFY, 0));
        d.w(STATUS, 0);
        assert_eq!(d.r(STATUS), 0);
        d.setup(DESC, AVAIL, USED);
        d.desc(0, RAM + 0x8000, 8, WRITE, 0);
        d.offer(0, 0);
        assert!(d.w(QUEUE_NOTIFY, 0));
        assert_eq!(d.used_idx(), 1);
    }

    #[test]
    fn queue_notify_for_a_missing_queue_is_ignored() {
        let mut d = Driver::new();
        d.setup(DESC, AVAIL, USED);
        assert!(!d.w(QUEUE_NOTIFY, 7));
        assert!(!d.w(QUEUE_NOTIFY, u32::MAX));
    }
}
