//! virtio-net (virtio 1.x): one NIC backed by a host tap.
//!
//! Queues: RX (0) and TX (1), 256 entries each. Features: `VIRTIO_NET_F_MAC` and `VIRTIO_NET_F_STATUS` (the
//! link is always up); no checksum or segmentation offloads and no mergeable RX buffers, so every frame travels
//! in one buffer chain behind a 12-byte `virtio_net_hdr_v1` (the transport only accepts drivers that negotiate
//! `VIRTIO_F_VERSION_1`, so `num_buffers` is always present). The device keeps no state of its own beyond the
//! transport's: frames waiting in the [`RxQueue`] are inputs, which need no synchronisation.
//!
//! - **TX** (guest → world): on a notify of queue 1 the device gathers each chain (skipping the header) and
//!   hands the frame to the output gate as [`Effect::NetTx`]. It never writes the tap itself: under protection
//!   the gate holds the frame until the checkpoint covering it is acknowledged.
//! - **RX** (world → guest): frames the tap's reader thread queued ([`RxQueue`]) are written into the driver's
//!   RX buffers in [`VirtioDevice::poll`] and when the driver adds buffers (notify of queue 0). Inputs need no
//!   synchronisation: the written pages are dirty-logged and travel with the next checkpoint. Without buffers
//!   frames wait in the bounded queue; a frame too big for the guest's buffer is dropped.
//!
//! Guest input is never trusted: a chain that leaves guest RAM, loops, points the wrong way or is too long is
//! dropped (returned to the driver with length 0) and logged, at most one warning per second per device. An
//! unusable queue (rings outside RAM, an impossible available index) fails the device
//! ([`Processed::failed`]), and the transport asks the driver to reset it.

use std::sync::atomic::Ordering;

use virtio_bindings::virtio_net::{virtio_net_hdr_v1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::chain::{self, Segment, WarnLimit};
use super::{device_type, Ctx, Processed, VirtioDevice};
use crate::gate::{Effect, Effects, Source};
use crate::memory::GuestMemory;
use crate::tap::RxQueue;

/// Entries per queue.
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

/// Largest TX chain accepted, header included (a 64 KiB frame plus Ethernet and virtio-net headers).
pub const MAX_TX_CHAIN: usize = 65_550;
/// The virtio-net header in front of every frame (virtio 1.x: `num_buffers` is present).
const HDR_LEN: usize = std::mem::size_of::<virtio_net_hdr_v1>();
/// Ethernet header: shorter frames are dropped (the tap would refuse them anyway).
const ETH_HLEN: usize = 14;

const _: () = assert!(HDR_LEN == 12);

/// One NIC.
pub struct Net {
    nic: usize,
    mac: [u8; 6],
    rx: RxQueue,
    warn: WarnLimit,
    tx_dropped: u64,
    rx_dropped: u64,
}

impl Net {
    /// A NIC whose frames leave as `Effect::NetTx { nic, .. }` and arrive through `rx`.
    pub fn new(nic: usize, mac: [u8; 6], rx: RxQueue) -> Net {
        Net { nic, mac, rx, warn: WarnLimit::new("virtio-net", nic), tx_dropped: 0, rx_dropped: 0 }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Frames the device dropped: (TX, RX). RX counts frames too big for the guest's buffers, not those the
    /// tap reader dropped because its queue was full (see [`RxQueue::dropped`]).
    pub fn dropped(&self) -> (u64, u64) {
        (self.tx_dropped, self.rx_dropped)
    }

    fn config(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c
    }

    /// Sends every frame the driver made available on the TX queue.
    fn transmit(&mut self, ctx: &mut Ctx) -> Processed {
        let mut out = Processed::default();
        let Some(q) = ctx.queues.get_mut(TX) else { return out };
        match queue_usable(q, ctx.mem) {
            Usable::No => return Processed { used: false, failed: true },
            Usable::Idle => return out,
            Usable::Yes => {}
        }
        while let Some(chain) = q.pop_descriptor_chain(ctx.mem) {
            let head = chain.head_index();
            match gather_tx(chain, ctx.mem) {
                Ok(frame) => {
                    if let Err(e) = ctx.gate.submit(Effect::NetTx { nic: self.nic, frame }) {
                        // Lost like a frame on a broken wire; the guest's protocols recover.
                        self.tx_dropped += 1;
                        self.warn.warn(format_args!("frame not sent: {e}"));
                    }
                }
                Err(bad) => {
                    self.tx_dropped += 1;
                    self.warn.warn(format_args!("TX chain {head} dropped: {bad}"));
                }
            }
            match give_back(q, ctx.mem, head, 0) {
                Ok(()) => out.used = true,
                Err(Fatal) => return Processed { used: out.used, failed: true },
            }
        }
        out
    }

    /// Moves queued frames into the driver's RX buffers.
    fn receive(&mut self, ctx: &mut Ctx) -> Processed {
        let mut out = Processed::default();
        if self.rx.is_empty() {
            return out;
        }
        let Some(q) = ctx.queues.get_mut(RX) else { return out };
        match queue_usable(q, ctx.mem) {
            Usable::No => return Processed { used: false, failed: true },
            Usable::Idle => return out,
            Usable::Yes => {}
        }
        while !self.rx.is_empty() {
            let Some(chain) = q.pop_descriptor_chain(ctx.mem) else { break };
            let head = chain.head_index();
            let written = match walk(chain, ctx.mem, true) {
                Err(bad) => {
                    self.warn.warn(format_args!("RX chain {head} dropped: {bad}"));
                    0
                }
                Ok(segs) => {
                    let Some(frame) = self.rx.pop() else {
                        // Nothing to put in it after all: leave the buffer with the device.
                        q.go_to_previous_position();
                        break;
                    };
                    // Taken from the host's queue: consumed by the guest, delivered or dropped below.
                    ctx.gate.consume(Source::Nic(self.nic), &frame);
                    let capacity: u64 = segs.iter().map(|&(_, len)| len).sum();
                    if (HDR_LEN + frame.len()) as u64 > capacity {
                        self.rx_dropped += 1;
                        self.warn.warn(format_args!(
                            "received frame of {} bytes dropped: the guest's RX buffer holds {capacity} bytes",
                            frame.len()
                        ));
                        // The buffer stays available for the next frame.
                        q.go_to_previous_position();
                        continue;
                    }
                    // All zero (no offloads) but num_buffers: the whole frame is in this one chain.
                    let mut hdr = [0u8; HDR_LEN];
                    hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
                    match chain::scatter(ctx.mem, &segs, &[&hdr, &frame]) {
                        Ok(n) => n as u32,
                        Err(()) => {
                            self.rx_dropped += 1;
                            self.warn.warn(format_args!("RX chain {head} unwritable"));
                            0
                        }
                    }
                }
            };
            match give_back(q, ctx.mem, head, written) {
                Ok(()) => out.used = true,
                Err(Fatal) => return Processed { used: out.used, failed: true },
            }
        }
        out
    }
}

/// A RARP request announcing `mac`, as a migrated VM sends so that switches learn its new port.
pub fn rarp_announcement(mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]); // broadcast
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x80, 0x35]); // RARP
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 3]); // Ethernet/IPv4, request reverse
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.resize(60, 0);
    f
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn announce(&mut self, gate: &mut Effects) {
        // Three frames, like QEMU's self-announce; a lost one is harmless.
        for _ in 0..3 {
            let _ = gate.submit(Effect::NetTx { nic: self.nic, frame: rarp_announcement(self.mac()) });
        }
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| config.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn process_queue(&mut self, index: usize, ctx: &mut Ctx) -> Processed {
        match index {
            RX => self.receive(ctx),
            TX => self.transmit(ctx),
            _ => Processed::default(),
        }
    }

    fn poll(&mut self, ctx: &mut Ctx) -> Processed {
        self.receive(ctx)
    }
}

enum Usable {
    Yes,
    /// Not set up (yet): nothing to do, nothing wrong.
    Idle,
    /// Rings outside RAM, or an available index no driver could have written.
    No,
}

fn queue_usable(q: &Queue, mem: &GuestMemory) -> Usable {
    if !q.ready() {
        return Usable::Idle;
    }
    if !q.is_valid(mem) {
        return Usable::No;
    }
    match q.avail_idx(mem, Ordering::Acquire) {
        Ok(idx) if (idx - std::num::Wrapping(q.next_avail())).0 <= q.size() => Usable::Yes,
        _ => Usable::No,
    }
}

/// The queue cannot take used buffers any more.
struct Fatal;

/// Returns a chain to the driver. A head index outside the queue cannot be returned (the guest made it up;
/// nothing is lost by ignoring it); a used ring that cannot be written makes the queue unusable.
fn give_back(q: &mut Queue, mem: &GuestMemory, head: u16, len: u32) -> Result<(), Fatal> {
    match q.add_used(mem, head, len) {
        Ok(()) => Ok(()),
        Err(virtio_queue::Error::InvalidDescriptorIndex) => Ok(()),
        Err(_) => Err(Fatal),
    }
}

/// Why a descriptor chain was refused.
#[derive(Debug, PartialEq, Eq)]
enum BadChain {
    /// The chain ends in a descriptor that still points to a next one: it loops, names a descriptor outside
    /// the table, or its table is unreadable.
    Broken,
    OutsideRam {
        addr: u64,
        len: u64,
    },
    /// A descriptor the device may only read in an RX chain, or may only write in a TX chain.
    WrongDirection,
    TooLong(u64),
    TooShort(u64),
}

impl std::fmt::Display for BadChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadChain::Broken => write!(f, "descriptor chain loops or leaves the descriptor table"),
            BadChain::OutsideRam { addr, len } => write!(f, "buffer {addr:#x}+{len:#x} is outside guest RAM"),
            BadChain::WrongDirection => write!(f, "descriptor with the wrong direction"),
            BadChain::TooLong(n) => write!(f, "{n} bytes is more than {MAX_TX_CHAIN}"),
            BadChain::TooShort(n) => write!(f, "{n} bytes is shorter than the headers"),
        }
    }
}

/// Walks a chain and checks it: it must end properly, and every buffer must lie in guest RAM and go in the
/// direction `write` (true: device writes). Returns the buffers.
fn walk(chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory, write: bool) -> Result<Vec<Segment>, BadChain> {
    // The iterator stops after at most queue-size descriptors (or an indirect table's length).
    let b = chain::walk(chain, usize::MAX).map_err(|_| BadChain::Broken)?;
    let (segs, wrong) = if write { (b.writable, b.readable) } else { (b.readable, b.writable) };
    if !wrong.is_empty() {
        return Err(BadChain::WrongDirection);
    }
    for &(addr, len) in &segs {
        chain::check(mem, &[(addr, len)], 0, len).map_err(|_| BadChain::OutsideRam { addr: addr.0, len })?;
    }
    Ok(segs)
}

/// Collects a TX chain's frame (without the virtio-net header).
fn gather_tx(chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory) -> Result<Vec<u8>, BadChain> {
    let segs = walk(chain, mem, false)?;
    let total: u64 = segs.iter().map(|&(_, len)| len).sum();
    if total > MAX_TX_CHAIN as u64 {
        return Err(BadChain::TooLong(total));
    }
    if total < (HDR_LEN + ETH_HLEN) as u64 {
        return Err(BadChain::TooShort(total));
    }
    let mut frame = vec![0u8; total as usize - HDR_LEN];
    // Cannot fail: `walk` checked the ranges. Treat a failure like a range outside RAM anyway.
    chain::gather(mem, &segs, HDR_LEN as u64, &mut frame).map_err(|()| BadChain::OutsideRam { addr: 0, len: 0 })?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::testing::{desc, rig_derefs_to_driver, Driver, QUEUE_SPAN, RAM as BASE};

    const RAM: u64 = 1 << 20;
    const BUF: u64 = BASE + 2 * QUEUE_SPAN;
    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// The shared driver (queue 0 RX, queue 1 TX) with a NIC behind it.
    struct Rig {
        drv: Driver,
        rx: RxQueue,
        net: Net,
    }

    rig_derefs_to_driver!(Rig);

    impl Rig {
        fn new() -> Rig {
            let rx = RxQueue::new(4);
            Rig { drv: Driver::new(RAM, &[QUEUE_SIZE, QUEUE_SIZE]), net: Net::new(3, MAC, rx.clone()), rx }
        }

        fn call(&mut self, f: impl FnOnce(&mut Net, &mut Ctx) -> Processed) -> Processed {
            f(&mut self.net, &mut self.drv.ctx())
        }
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        f[..6].copy_from_slice(&[0xff; 6]);
        f
    }

    #[test]
    fn config_has_mac_and_link_up() {
        let rig = Rig::new();
        let mut c = [0xaau8; 10];
        rig.net.read_config(0, &mut c);
        assert_eq!(&c[..6], &MAC);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), VIRTIO_NET_S_LINK_UP as u16);
        assert_eq!(&c[8..], &[0, 0]);
        let mut far = [0xaau8; 4];
        rig.net.read_config(u64::MAX - 1, &mut far);
        assert_eq!(far, [0; 4]);
        assert_eq!(rig.net.features(), 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS);
    }

    #[test]
    fn tx_frame_leaves_as_exactly_one_gate_effect() {
        let mut rig = Rig::new();
        let f = frame(100);
        // Header in its own descriptor, the frame split over two more.
        rig.mem.write_slice(&[0x55; HDR_LEN], GuestAddress(BUF)).unwrap();
        rig.mem.write_slice(&f[..40], GuestAddress(BUF + 0x100)).unwrap();
        rig.mem.write_slice(&f[40..], GuestAddress(BUF + 0x200)).unwrap();
        rig.offer_raw(
            TX,
            &[
                desc(BUF, HDR_LEN as u32, VRING_DESC_F_NEXT, 1),
                desc(BUF + 0x100, 40, VRING_DESC_F_NEXT, 2),
                desc(BUF + 0x200, 60, 0, 0),
            ],
        );
        let p = rig.call(|n, c| n.process_queue(TX, c));
        assert_eq!(p, Processed { used: true, failed: false });
        assert_eq!(rig.effects(), vec![Effect::NetTx { nic: 3, frame: f }]);
        assert_eq!(rig.used_idx(TX), 1);
        assert_eq!(rig.used_entry(TX, 0), (0, 0));
    }

    #[test]
    fn tx_header_and_frame_in_one_buffer() {
        let mut rig = Rig::new();
        let f = frame(60);
        rig.mem.write_slice(&[0; HDR_LEN], GuestAddress(BUF)).unwrap();
        rig.mem.write_slice(&f, GuestAddress(BUF + HDR_LEN as u64)).unwrap();
        rig.offer_raw(TX, &[desc(BUF, (HDR_LEN + 60) as u32, 0, 0)]);
        rig.call(|n, c| n.process_queue(TX, c));
        assert_eq!(rig.effects(), vec![Effect::NetTx { nic: 3, frame: f }]);
    }

    #[test]
    fn rx_frame_lands_in_guest_memory_behind_the_header() {
        let mut rig = Rig::new();
        let f = frame(1514);
        assert!(rig.rx.push(f.clone()));
        // No buffers yet: the frame waits.
        let p = rig.call(|n, c| n.poll(c));
        assert_eq!(p, Processed::default());
        assert_eq!(rig.rx.len(), 1);
        // The driver posts a buffer split in two and notifies queue 0.
        rig.mem.write_slice(&[0xee; 2048], GuestAddress(BUF)).unwrap();
        rig.offer_raw(
            RX,
            &[
                desc(BUF, 1000, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
                desc(BUF + 0x1000, 1000, VRING_DESC_F_WRITE, 0),
            ],
        );
        let p = rig.call(|n, c| n.process_queue(RX, c));
        assert_eq!(p, Processed { used: true, failed: false });
        assert!(rig.rx.is_empty());
        let mut got = vec![0u8; 2000];
        rig.mem.read_slice(&mut got[..1000], GuestAddress(BUF)).unwrap();
        rig.mem.read_slice(&mut got[1000..], GuestAddress(BUF + 0x1000)).unwrap();
        assert_eq!(&got[..10], &[0; 10], "header zeroed");
        assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers = 1");
        assert_eq!(&got[12..12 + f.len()], &f[..]);
        assert_eq!(rig.used_idx(RX), 1);
        assert_eq!(rig.used_entry(RX, 0), (0, (HDR_LEN + f.len()) as u32));
        assert!(rig.effects().is_empty(), "receiving has no outside effect");
    }

    #[test]
    fn rx_frames_fill_buffers_in_order_and_wait_for_more() {
        let mut rig = Rig::new();
        for i in 0..3 {
            rig.rx.push(frame(60 + i));
        }
        rig.offer_raw(RX, &[desc(BUF, 2048, VRING_DESC_F_WRITE, 0), desc(BUF + 0x1000, 2048, VRING_DESC_F_WRITE, 0)]);
        rig.call(|n, c| n.poll(c));
        assert_eq!(rig.rx.len(), 1, "two buffers, two frames delivered");
        assert_eq!(rig.used_entry(RX, 0), (0, 72));
        assert_eq!(rig.used_entry(RX, 1), (1, 73));
    }

    #[test]
    fn rx_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
        let mut rig = Rig::new();
        rig.rx.push(frame(1514));
        rig.rx.push(frame(100));
        rig.offer_raw(RX, &[desc(BUF, 512, VRING_DESC_F_WRITE, 0)]);
        rig.call(|n, c| n.poll(c));
        assert!(rig.rx.is_empty());
        assert_eq!(rig.net.dropped(), (0, 1));
        assert_eq!(rig.used_entry(RX, 0), (0, 112), "the small frame got the buffer");
    }

    #[test]
    fn oversized_tx_frame_is_dropped() {
        let mut rig = Rig::new();
        rig.offer_raw(TX, &[desc(BUF, 12, VRING_DESC_F_NEXT, 1), desc(BUF + 0x100, 70_000, 0, 0)]);
        let p = rig.call(|n, c| n.process_queue(TX, c));
        assert_eq!(p, Processed { used: true, failed: false });
        assert!(rig.effects().is_empty());
        assert_eq!(rig.used_idx(TX), 1, "the buffer goes back to the driver");
        assert_eq!(rig.net.dropped(), (1, 0));
    }

    #[test]
    fn tx_descriptor_outside_ram_is_dropped() {
        let mut rig = Rig::new();
        let f = frame(60);
        rig.mem.write_slice(&f, GuestAddress(BUF + 0x100)).unwrap();
        rig.offer_raw(
            TX,
            &[
                // Below RAM, straddling its end, and far away.
                desc(0x1000, 74, 0, 0),
                desc(BASE + RAM - 10, 74, 0, 0),
                desc(u64::MAX - 4, 74, 0, 0),
                // A good one after the bad ones still goes out.
                desc(BUF + 0x100 - 12, 72, 0, 0),
            ],
        );
        let p = rig.call(|n, c| n.process_queue(TX, c));
        assert_eq!(p, Processed { used: true, failed: false });
        assert_eq!(rig.effects(), vec![Effect::NetTx { nic: 3, frame: f }]);
        assert_eq!(rig.used_idx(TX), 4);
    }

    #[test]
    fn looping_or_dangling_chains_are_dropped() {
        let mut rig = Rig::new();
        // Descriptor 0 points to itself; descriptor 1 to an index past the table.
        rig.offer_raw(TX, &[desc(BUF, 100, VRING_DESC_F_NEXT, 0)]);
        rig.offer_raw(TX, &[desc(BUF, 100, VRING_DESC_F_NEXT, 999)]);
        let p = rig.call(|n, c| n.process_queue(TX, c));
        assert_eq!(p, Processed { used: true, failed: false });
        assert!(rig.effects().is_empty());
        assert_eq!(rig.net.dropped(), (2, 0));
    }

    #[test]
    fn wrong_direction_is_dropped_both_ways() {
        let mut rig = Rig::new();
        rig.offer_raw(TX, &[desc(BUF, 100, VRING_DESC_F_WRITE, 0)]);
        rig.offer_raw(RX, &[desc(BUF, 2048, 0, 0), desc(BUF, 2048, VRING_DESC_F_WRITE, 0)]);
        rig.rx.push(frame(60));
        rig.call(|n, c| n.process_queue(TX, c));
        assert!(rig.effects().is_empty());
        rig.call(|n, c| n.poll(c));
        assert_eq!(rig.used_entry(RX, 0), (0, 0), "read-only RX buffer returned empty");
        assert_eq!(rig.used_entry(RX, 1), (1, 72), "the frame went into the next, good buffer");
    }

    #[test]
    fn impossible_available_index_fails_the_queue() {
        let mut rig = Rig::new();
        rig.set_avail_idx(TX, QUEUE_SIZE + 5);
        let p = rig.call(|n, c| n.process_queue(TX, c));
        assert!(p.failed);
        assert!(rig.effects().is_empty());
    }

    #[test]
    fn rings_outside_ram_fail_the_queue_without_panic() {
        let mut rig = Rig::new();
        rig.rx.push(frame(60));
        let mut queues: Vec<Queue> = vec![Queue::new(QUEUE_SIZE).unwrap(), Queue::new(QUEUE_SIZE).unwrap()];
        for q in &mut queues {
            q.set_size(QUEUE_SIZE);
            q.set_desc_table_address(Some(0x1000), Some(0));
            q.set_avail_ring_address(Some(0x3000), Some(0));
            q.set_used_ring_address(Some(0x4000), Some(0));
            q.set_ready(true);
        }
        let mut ctx = Ctx { queues: &mut queues, mem: &rig.drv.mem, gate: rig.drv.gate.effects() };
        assert!(rig.net.process_queue(TX, &mut ctx).failed);
        assert!(rig.net.poll(&mut ctx).failed);
        assert_eq!(rig.net.process_queue(7, &mut ctx), Processed::default());
    }

    #[test]
    fn garbage_queues_never_panic() {
        // Random descriptor tables and rings inside RAM: the device may drop or fail, never panic.
        let mut rig = Rig::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let mut junk = vec![0u8; 0x2_0000];
            for b in junk.chunks_mut(8) {
                let v = next();
                // Keep some addresses inside RAM so chains get somewhere.
                let v = if v % 3 == 0 { BASE + v % RAM } else { v };
                b.copy_from_slice(&v.to_le_bytes()[..b.len()]);
            }
            rig.mem.write_slice(&junk, GuestAddress(BASE)).unwrap();
            for _ in 0..3 {
                rig.rx.push(frame(60 + round));
            }
            for q in &mut rig.drv.queues {
                q.set_next_avail(next() as u16);
                q.set_next_used(next() as u16);
            }
            rig.call(|n, c| n.process_queue(TX, c));
            rig.call(|n, c| n.poll(c));
            while rig.rx.pop().is_some() {}
        }
    }
}
