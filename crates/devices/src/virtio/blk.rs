//! virtio-blk: a raw disk image file behind the output gate.
//!
//! One request queue. Reads come from a read-only handle on the image, patched with the writes the gate still
//! holds ([`Effects::overlay_read`]), so the guest reads its own writes even before they reach the file.
//! Writes and flushes never touch the file here: they are [`Effect::BlockWrite`] / [`Effect::BlockFlush`]
//! effects handed to the gate (the host backend is the only writer of disk files). A write carries a copy of
//! its data, so completing it to the guest as soon as the gate took it is safe (see `gate.rs`).
//!
//! Everything the guest controls is validated: descriptor chains (layout, lengths, addresses inside guest
//! RAM), request types, sector ranges, request sizes. A bad request gets `VIRTIO_BLK_S_IOERR` (or
//! `VIRTIO_BLK_S_UNSUPP`); a chain so broken that it has no writable status byte fails the device (the
//! transport marks it DEVICE_NEEDS_RESET). Guest-caused problems are logged, at most one warning per second
//! per disk.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _, Permissions};

use super::chain::{self, Buffers, ChainError, Segment, WarnLimit};
use super::{device_type, Ctx, DeviceState, Processed, VirtioDevice};
use crate::gate::{Effect, Effects};
use crate::memory::GuestMemory;

/// Bytes per sector of the virtio-blk protocol (capacity and request offsets count these).
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request we tell the driver it may use (`seg_max`).
pub const SEG_MAX: u32 = 126;
/// Largest data segment we tell the driver it may use (`size_max`). With `SEG_MAX` this keeps every request the
/// driver builds below [`MAX_REQUEST_BYTES`].
pub const SIZE_MAX: u32 = 32 * 1024;
/// Largest data transfer of one request; larger requests fail with IOERR (they bound the copy we allocate).
pub const MAX_REQUEST_BYTES: u64 = 4 << 20;
/// Descriptors one chain may have (indirect tables can be long); beyond that the chain is refused as broken.
const MAX_CHAIN_DESCRIPTORS: usize = 1024;
/// Size of the request header (type, reserved, sector).
const HEADER_BYTES: u64 = 16;
/// Length of the device-specific config space we describe (`struct virtio_blk_config` up to `blk_size`).
const CONFIG_BYTES: usize = 24;

fn bit(b: u32) -> u64 {
    1u64 << b
}

/// A virtio-blk device over one raw image file.
pub struct Block {
    /// The gate's index of this image (`Effect::BlockWrite::disk`).
    disk: usize,
    /// Read handle; never written through.
    image: File,
    readonly: bool,
    /// Capacity in sectors.
    sectors: u64,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    /// The driver did not negotiate FLUSH: it treats the disk as write-through, so every write is followed by
    /// a flush effect.
    write_through: bool,
    /// A chain broke the device; ignore the queue until the driver resets it.
    broken: bool,
    warn: WarnLimit,
}

/// Size in bytes of a disk image: a regular file's length or a block device's capacity (whose `metadata`
/// length is 0, so the end is sought instead).
pub fn image_size(image: &File) -> io::Result<u64> {
    let mut handle = image;
    handle.seek(SeekFrom::End(0))
}

/// [`image_size`] of the image at `path`.
pub fn image_size_at(path: &Path) -> io::Result<u64> {
    image_size(&File::open(path)?)
}

impl Block {
    /// `disk` is the gate's index for this image; `image` a read handle; `readonly` refuses writes
    /// (VIRTIO_BLK_F_RO). `id` is what GET_ID reports (cut to 20 bytes).
    pub fn new(disk: usize, image: File, readonly: bool, id: &str) -> io::Result<Block> {
        let len = image_size(&image)?;
        let sectors = len / SECTOR_SIZE;
        if !len.is_multiple_of(SECTOR_SIZE) {
            tracing::warn!(disk, len, "disk image size is not a multiple of 512 bytes; the tail is not visible");
        }
        let mut id_bytes = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = id.len().min(id_bytes.len());
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Block {
            disk,
            image,
            readonly,
            sectors,
            id: id_bytes,
            write_through: true,
            broken: false,
            warn: WarnLimit::new("virtio-blk", disk),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    fn config(&self) -> [u8; CONFIG_BYTES] {
        let mut c = [0u8; CONFIG_BYTES];
        // capacity, size_max, seg_max; geometry (16..20) and blk_size (20..24) are not offered and stay zero.
        c[0..8].copy_from_slice(&self.sectors.to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c
    }

    /// Serves one descriptor chain; returns the number of bytes written into guest memory (data + status).
    fn serve(
        &mut self,
        chain: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
        ctx: &mut Ctx,
    ) -> Result<u32, Broken> {
        let req = Layout::parse(chain, ctx.mem)?;
        let (status, data_written) = match self.execute(&req, ctx) {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(Fail::Unsupported(t)) => {
                self.warn.warn(format_args!("unsupported request type {t}"));
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
            Err(Fail::Guest(why)) => {
                self.warn.warn(format_args!("bad request: {why}"));
                (VIRTIO_BLK_S_IOERR, 0)
            }
            Err(Fail::Host(e)) => {
                self.warn.warn(format_args!("I/O error: {e}"));
                (VIRTIO_BLK_S_IOERR, 0)
            }
        };
        ctx.mem.write_obj(status as u8, req.status).map_err(|_| Broken("status byte not writable"))?;
        Ok(data_written + 1)
    }

    /// Performs a parsed request; returns the number of data bytes written into guest memory.
    fn execute(&mut self, req: &Layout, ctx: &mut Ctx) -> Result<u32, Fail> {
        let mut header = [0u8; HEADER_BYTES as usize];
        chain::gather(ctx.mem, &req.readable, 0, &mut header).map_err(|()| Fail::Guest("request header unreadable"))?;
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = req.data_in_len();
                let offset = self.range(sector, len)?;
                check_data(ctx.mem, &req.writable, len)?;
                let mut buf = vec![0u8; len as usize];
                self.pread(offset, &mut buf).map_err(Fail::Host)?;
                ctx.gate.overlay_read(self.disk, offset, &mut buf);
                scatter_all(ctx.mem, &req.writable, &buf).map_err(|()| Fail::Guest("data buffer not writable"))?;
                Ok(len as u32)
            }
            VIRTIO_BLK_T_OUT => {
                if self.readonly {
                    return Err(Fail::Guest("write to a read-only disk"));
                }
                let len = req.readable_len - HEADER_BYTES;
                let offset = self.range(sector, len)?;
                let mut data = vec![0u8; len as usize];
                chain::gather(ctx.mem, &req.readable, HEADER_BYTES, &mut data)
                    .map_err(|()| Fail::Guest("data buffer not readable"))?;
                if len > 0 {
                    submit(&mut ctx.gate, Effect::BlockWrite { disk: self.disk, offset, data })?;
                    if self.write_through {
                        submit(&mut ctx.gate, Effect::BlockFlush { disk: self.disk })?;
                    }
                }
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                // A read-only disk has nothing to make durable (and no write handle behind the gate).
                if !self.readonly {
                    submit(&mut ctx.gate, Effect::BlockFlush { disk: self.disk })?;
                }
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let len = req.data_in_len().min(self.id.len() as u64);
                check_data(ctx.mem, &req.writable, len)?;
                scatter_all(ctx.mem, &req.writable, &self.id[..len as usize])
                    .map_err(|()| Fail::Guest("id buffer not writable"))?;
                Ok(len as u32)
            }
            other => Err(Fail::Unsupported(other)),
        }
    }

    /// Checks a transfer of `len` bytes at `sector`; returns its byte offset in the image.
    fn range(&self, sector: u64, len: u64) -> Result<u64, Fail> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(Fail::Guest("data length is not a multiple of 512"));
        }
        if len > MAX_REQUEST_BYTES {
            return Err(Fail::Guest("request larger than 4 MiB"));
        }
        let end = sector.checked_add(len / SECTOR_SIZE).ok_or(Fail::Guest("sector out of range"))?;
        if end > self.sectors {
            return Err(Fail::Guest("sector out of range"));
        }
        Ok(sector * SECTOR_SIZE)
    }

    /// Reads from the image; bytes past its end (it shrank under us) read as zeros.
    fn pread(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.image.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Checks that the first `len` bytes of the data buffers lie in guest memory, before anything is read from the
/// image or written to the guest.
fn check_data(mem: &GuestMemory, segments: &[Segment], len: u64) -> Result<(), Fail> {
    chain::check(mem, segments, 0, len).map_err(|outside| match outside {
        Some(_) => Fail::Guest("data buffer outside guest memory"),
        None => Fail::Guest("data buffers too short"),
    })
}

/// Writes all of `data` into the segments.
fn scatter_all(mem: &GuestMemory, segments: &[Segment], data: &[u8]) -> Result<(), ()> {
    match chain::scatter(mem, segments, &[data]) {
        Ok(n) if n == data.len() => Ok(()),
        _ => Err(()),
    }
}

fn submit(gate: &mut Effects, effect: Effect) -> Result<(), Fail> {
    gate.submit(effect).map(|_| ()).map_err(Fail::Host)
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_SIZE_MAX)
            | bit(VIRTIO_RING_F_INDIRECT_DESC);
        if self.readonly {
            f |= bit(VIRTIO_BLK_F_RO);
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
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

    fn activate(&mut self, acked_features: u64) {
        self.write_through = acked_features & bit(VIRTIO_BLK_F_FLUSH) == 0;
    }

    fn process_queue(&mut self, index: usize, ctx: &mut Ctx) -> Processed {
        let mut out = Processed::default();
        if self.broken || index != 0 || ctx.queues.is_empty() {
            return out;
        }
        loop {
            let q: &mut Queue = &mut ctx.queues[0];
            let chain = match q.iter(ctx.mem) {
                Ok(mut avail) => avail.next(),
                Err(virtio_queue::Error::QueueNotReady) => None,
                Err(e) => {
                    self.warn.warn(format_args!("request queue unusable: {e}"));
                    self.broken = true;
                    out.failed = true;
                    return out;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let result = self.serve(chain, ctx);
            let len = match result {
                Ok(len) => len,
                Err(Broken(why)) => {
                    self.warn.warn(format_args!("descriptor chain {head} unusable ({why}); device needs a reset"));
                    // Hand the buffers back (nothing written) if the ring allows it, then stop.
                    if ctx.queues[0].add_used(ctx.mem, head, 0).is_ok() {
                        out.used = true;
                    }
                    self.broken = true;
                    out.failed = true;
                    return out;
                }
            };
            if let Err(e) = ctx.queues[0].add_used(ctx.mem, head, len) {
                self.warn.warn(format_args!("used ring unusable: {e}"));
                self.broken = true;
                out.failed = true;
                return out;
            }
            out.used = true;
        }
        out
    }

    fn reset(&mut self) {
        self.write_through = true;
        self.broken = false;
    }

    /// The negotiated cache mode and whether a chain broke the device (the image itself is not device state).
    fn save(&self) -> Vec<u8> {
        vec![self.write_through as u8, self.broken as u8]
    }

    fn decode_state(&self, state: &[u8]) -> Result<DeviceState, String> {
        match *state {
            [write_through @ (0 | 1), broken @ (0 | 1)] => Ok(DeviceState::new((write_through == 1, broken == 1))),
            _ => Err(format!("virtio-blk state must be two flag bytes, got {state:?}")),
        }
    }

    fn apply_state(&mut self, state: DeviceState) {
        (self.write_through, self.broken) = state.take();
    }
}

/// A chain that cannot be completed with a status: the device stops until reset.
#[derive(Debug)]
struct Broken(&'static str);

/// Why a request failed (the chain itself is fine and gets a status).
enum Fail {
    Unsupported(u32),
    Guest(&'static str),
    Host(io::Error),
}

/// The buffers of one request: device-readable ones (header, then data for OUT), device-writable ones (data for
/// IN / GET_ID, then the status byte, which is the last writable byte and not part of `writable`).
struct Layout {
    readable: Vec<Segment>,
    readable_len: u64,
    writable: Vec<Segment>,
    writable_len: u64,
    status: GuestAddress,
}

impl Layout {
    fn parse(
        chain: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
        mem: &GuestMemory,
    ) -> Result<Layout, Broken> {
        let buffers = chain::walk(chain, MAX_CHAIN_DESCRIPTORS).map_err(|e| match e {
            ChainError::TooLong => Broken("too many descriptors"),
            ChainError::Broken => Broken("chain is truncated, loops or points outside the table"),
        })?;
        let (readable_len, mut writable_len) = (buffers.readable_len(), buffers.writable_len());
        let Buffers { readable, mut writable, out_of_order } = buffers;
        // The status byte is the last writable byte.
        while writable.last().is_some_and(|s| s.1 == 0) {
            writable.pop();
        }
        let Some(last) = writable.last_mut() else {
            return Err(Broken("no writable status byte"));
        };
        let status = last.0.checked_add(last.1 - 1).ok_or(Broken("status byte address overflows"))?;
        if !mem.check_range(status, 1, Permissions::Write) {
            return Err(Broken("status byte outside guest memory"));
        }
        last.1 -= 1;
        writable_len -= 1;
        let mut layout = Layout { readable, readable_len, writable, writable_len, status };
        if out_of_order {
            // Still completable: make sure the request fails rather than guessing which buffer is what.
            layout.readable_len = 0;
            layout.readable.clear();
        }
        Ok(layout)
    }

    /// Bytes the device may write before the status byte.
    fn data_in_len(&self) -> u64 {
        self.writable_len
    }
}

#[cfg(test)]
mod tests {
    //! The device driven through a real split queue in guest RAM (`MockSplitQueue` plays the driver), with
    //! the gate in front of either a recorder or the real host backend.

    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};

    use super::*;
    use crate::gate::OutputGate;
    use crate::host::HostBackend;
    use crate::virtio::testing::{rig_derefs_to_driver, Buf, Driver, RAM};

    const RAM_SIZE: u64 = 16 << 20;
    /// Guest buffers are allocated from here on (the queue sits at the start of RAM).
    const HEAP: u64 = RAM + 0x10_0000;
    const DISK_SECTORS: u64 = 2048; // 1 MiB
    const R: u16 = 0;
    const W: u16 = VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;

    /// A disk image in the temp dir, removed on drop.
    struct Image(PathBuf);

    impl Image {
        fn new(len: u64) -> Image {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "kemari-blk-test-{}-{}.img",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let f = File::create(&p).unwrap();
            f.set_len(len).unwrap();
            // A recognisable pattern in the first sectors.
            let pattern: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
            f.write_all_at(&pattern, 0).unwrap();
            Image(p)
        }

        fn bytes(&self) -> Vec<u8> {
            std::fs::read(&self.0).unwrap()
        }

        fn reader(&self) -> File {
            File::open(&self.0).unwrap()
        }

        fn writer(&self) -> File {
            std::fs::OpenOptions::new().write(true).open(&self.0).unwrap()
        }
    }

    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn pattern_at(offset: u64, len: usize) -> Vec<u8> {
        (offset..offset + len as u64).map(|i| if i < 64 * 1024 { (i % 251) as u8 } else { 0 }).collect()
    }

    enum Backing {
        Recorder,
        Host,
    }

    /// The shared driver with a block device behind it.
    struct Rig {
        drv: Driver,
        dev: Block,
        image: Image,
        /// Next free heap address.
        heap: u64,
    }

    rig_derefs_to_driver!(Rig);

    impl Rig {
        fn new(backing: Backing, readonly: bool) -> Rig {
            let image = Image::new(DISK_SECTORS * SECTOR_SIZE);
            let drv = match backing {
                Backing::Recorder => Driver::new(RAM_SIZE, &[QUEUE_SIZE]),
                Backing::Host => {
                    let mut host = HostBackend::new(Box::new(io::sink()));
                    assert_eq!(host.add_disk(image.writer()), 0);
                    Driver::with_gate(RAM_SIZE, &[QUEUE_SIZE], OutputGate::new(Box::new(host)))
                }
            };
            let mut dev = Block::new(0, image.reader(), readonly, "kemari-disk0").unwrap();
            dev.activate(dev.features() | crate::virtio::VIRTIO_F_VERSION_1);
            Rig { drv, dev, image, heap: HEAP }
        }

        fn recorded(&self) -> Vec<Effect> {
            self.drv.effects()
        }

        fn alloc(&mut self, len: u64) -> u64 {
            let a = self.heap;
            self.heap += len.div_ceil(16) * 16;
            a
        }

        fn header(&mut self, kind: u32, sector: u64) -> Buf {
            let a = self.alloc(16);
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            self.ram.write(a, &h).unwrap();
            Buf { addr: a, len: 16, flags: R }
        }

        fn data_out(&mut self, data: &[u8]) -> Buf {
            let a = self.alloc(data.len() as u64);
            self.ram.write(a, data).unwrap();
            Buf { addr: a, len: data.len() as u32, flags: R }
        }

        fn data_in(&mut self, len: u32) -> Buf {
            let a = self.alloc(len as u64);
            // Poison, so a test sees what the device wrote.
            self.ram.write(a, &vec![0xee; len as usize]).unwrap();
            Buf { addr: a, len, flags: W }
        }

        fn status(&mut self) -> Buf {
            let a = self.alloc(1);
            self.ram.write(a, &[0xff]).unwrap();
            Buf { addr: a, len: 1, flags: W }
        }

        /// Publishes a chain of the buffers (linked in order) and returns its head.
        fn offer(&mut self, bufs: &[Buf]) -> u16 {
            self.drv.offer(0, bufs)
        }

        fn offer_raw(&mut self, descs: &[RawDescriptor]) {
            self.drv.offer_raw(0, descs)
        }

        fn process(&mut self) -> Processed {
            let Rig { drv, dev, .. } = self;
            dev.process_queue(0, &mut drv.ctx())
        }

        /// The used ring entries added since the last call: (head, len).
        fn used(&mut self) -> Vec<(u32, u32)> {
            self.drv.used(0)
        }

        fn read_byte(&self, addr: u64) -> u8 {
            let mut b = [0u8];
            self.ram.read(addr, &mut b).unwrap();
            b[0]
        }

        fn read_guest(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut b = vec![0u8; len];
            self.ram.read(addr, &mut b).unwrap();
            b
        }

        /// One complete request: header, data, status. Returns (status, used length, data read).
        fn request(&mut self, kind: u32, sector: u64, out: Option<&[u8]>, in_len: u32) -> (u8, u32, Vec<u8>) {
            let mut bufs = vec![self.header(kind, sector)];
            if let Some(d) = out {
                bufs.push(self.data_out(d));
            }
            let data_in = (in_len > 0).then(|| self.data_in(in_len));
            let (din_addr, din_len) = data_in.as_ref().map_or((0, 0), |b| (b.addr, b.len));
            bufs.extend(data_in);
            let status = self.status();
            let st_addr = status.addr;
            bufs.push(status);
            let head = self.offer(&bufs);
            let p = self.process();
            assert_eq!(p, Processed { used: true, failed: false });
            let used = self.used();
            assert_eq!(used.len(), 1);
            assert_eq!(used[0].0, head as u32);
            let data = if din_len > 0 { self.read_guest(din_addr, din_len as usize) } else { Vec::new() };
            (self.read_byte(st_addr), used[0].1, data)
        }

        fn write(&mut self, sector: u64, data: &[u8]) -> u8 {
            let (st, len, _) = self.request(VIRTIO_BLK_T_OUT, sector, Some(data), 0);
            assert_eq!(len, 1, "a write puts only the status into guest memory");
            st
        }

        fn read(&mut self, sector: u64, len: u32) -> (u8, Vec<u8>) {
            let (st, used, data) = self.request(VIRTIO_BLK_T_IN, sector, None, len);
            if st == VIRTIO_BLK_S_OK as u8 {
                assert_eq!(used, len + 1);
            } else {
                assert_eq!(used, 1);
            }
            (st, data)
        }
    }

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

    #[test]
    fn describes_itself() {
        let rig = Rig::new(Backing::Recorder, false);
        assert_eq!(rig.dev.device_type(), 2);
        assert_eq!(rig.dev.queue_max_sizes(), &[256]);
        let f = rig.dev.features();
        assert_ne!(f & bit(VIRTIO_BLK_F_FLUSH), 0);
        assert_eq!(f & bit(VIRTIO_BLK_F_RO), 0);
        let mut cap = [0u8; 8];
        rig.dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
        let mut w = [0u8; 4];
        rig.dev.read_config(12, &mut w);
        assert_eq!(u32::from_le_bytes(w), SEG_MAX);
        rig.dev.read_config(8, &mut w);
        assert_eq!(u32::from_le_bytes(w), SIZE_MAX);
        assert!(u64::from(SEG_MAX) * u64::from(SIZE_MAX) <= MAX_REQUEST_BYTES);
        // Past the described fields and far out: zeros, no panic.
        rig.dev.read_config(20, &mut w);
        assert_eq!(w, [0; 4]);
        rig.dev.read_config(u64::MAX - 1, &mut w);
        assert_eq!(w, [0; 4]);
        let ro = Rig::new(Backing::Recorder, true);
        assert_ne!(ro.dev.features() & bit(VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn reads_the_image() {
        let mut rig = Rig::new(Backing::Recorder, false);
        let (st, data) = rig.read(3, 4096);
        assert_eq!(st, OK);
        assert_eq!(data, pattern_at(3 * 512, 4096));
        // The last sector of the disk is readable.
        let (st, data) = rig.read(DISK_SECTORS - 1, 512);
        assert_eq!(st, OK);
        assert_eq!(data, vec![0u8; 512]);
        assert!(rig.recorded().is_empty(), "reads are no effects");
    }

    #[test]
    fn reads_into_guest_memory_mark_the_dirty_log() {
        let mut rig = Rig::new(Backing::Recorder, false);
        rig.ram.take_dirty();
        rig.read(0, 8192);
        let dirty = rig.ram.take_dirty();
        // The data pages, the status byte and the used ring are all logged.
        let page = |a: u64| (a - RAM) / kemari_memory::PAGE_SIZE;
        assert!(dirty.contains(&page(HEAP + 32)), "data buffer page dirty: {dirty:?}");
        assert!(dirty.contains(&page(HEAP + 32 + 8191)), "data buffer end page dirty: {dirty:?}");
    }

    #[test]
    fn write_then_read_back_in_pass_through() {
        let mut rig = Rig::new(Backing::Host, false);
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(rig.write(10, &data), OK);
        // Performed at once: the file has it, and a read returns it.
        assert_eq!(&rig.image.bytes()[10 * 512..10 * 512 + 1024], &data[..]);
        let (st, back) = rig.read(9, 2048);
        assert_eq!(st, OK);
        assert_eq!(&back[..512], &pattern_at(9 * 512, 512)[..]);
        assert_eq!(&back[512..1536], &data[..]);
        assert_eq!(&back[1536..], &pattern_at(12 * 512, 512)[..]);
    }

    #[test]
    fn reads_see_writes_the_gate_still_holds_and_the_file_waits_for_release() {
        let mut rig = Rig::new(Backing::Host, false);
        rig.gate.set_holding(true);
        let before = rig.image.bytes();
        let a = vec![0xa1u8; 1024];
        let b = vec![0xb2u8; 512];
        assert_eq!(rig.write(4, &a), OK, "a held write completes to the guest (the gate carries its data)");
        assert_eq!(rig.write(5, &b), OK);
        assert_eq!(rig.image.bytes(), before, "nothing reaches the file while the gate holds it");
        let (st, back) = rig.read(3, 2048);
        assert_eq!(st, OK);
        assert_eq!(&back[..512], &pattern_at(3 * 512, 512)[..]);
        assert_eq!(&back[512..1024], &a[..512]);
        assert_eq!(&back[1024..1536], &b[..], "the later held write wins");
        assert_eq!(&back[1536..], &pattern_at(6 * 512, 512)[..]);
        // Releasing performs them in order.
        let seq = rig.gate.next_seq() - 1;
        rig.gate.release_through(seq).unwrap();
        let after = rig.image.bytes();
        assert_eq!(&after[4 * 512..5 * 512], &a[..512]);
        assert_eq!(&after[5 * 512..6 * 512], &b[..]);
    }

    #[test]
    fn every_write_and_flush_goes_through_the_gate() {
        let mut rig = Rig::new(Backing::Recorder, false);
        let before = rig.image.bytes();
        let data = vec![0x5au8; 1536];
        assert_eq!(rig.write(100, &data), OK);
        assert_eq!(rig.request(VIRTIO_BLK_T_FLUSH, 0, None, 0).0, OK);
        assert_eq!(rig.write(0, &data[..512]), OK);
        assert_eq!(
            rig.recorded(),
            vec![
                Effect::BlockWrite { disk: 0, offset: 100 * 512, data: data.clone() },
                Effect::BlockFlush { disk: 0 },
                Effect::BlockWrite { disk: 0, offset: 0, data: data[..512].to_vec() },
            ]
        );
        assert_eq!(rig.image.bytes(), before, "the device itself never writes the image");
    }

    #[test]
    fn held_effects_carry_a_copy_of_the_data() {
        let mut rig = Rig::new(Backing::Recorder, false);
        rig.gate.set_holding(true);
        let data = vec![0x11u8; 512];
        let hdr = rig.header(VIRTIO_BLK_T_OUT, 7);
        let buf = rig.data_out(&data);
        let buf_addr = buf.addr;
        let st = rig.status();
        rig.offer(&[hdr, buf, st]);
        rig.process();
        // The guest reuses its buffer at once; the held write is unaffected.
        rig.ram.write(buf_addr, &[0x22; 512]).unwrap();
        let held: Vec<_> = rig.gate.held().map(|(_, e)| e.clone()).collect();
        assert_eq!(held, vec![Effect::BlockWrite { disk: 0, offset: 7 * 512, data }]);
    }

    #[test]
    fn flush_is_an_effect() {
        let mut rig = Rig::new(Backing::Recorder, false);
        let (st, len, _) = rig.request(VIRTIO_BLK_T_FLUSH, 0, None, 0);
        assert_eq!((st, len), (OK, 1));
        assert_eq!(rig.recorded(), vec![Effect::BlockFlush { disk: 0 }]);
    }

    #[test]
    fn without_negotiated_flush_every_write_is_made_durable() {
        let mut rig = Rig::new(Backing::Recorder, false);
        rig.dev.activate(crate::virtio::VIRTIO_F_VERSION_1);
        assert_eq!(rig.write(1, &[3u8; 512]), OK);
        assert_eq!(
            rig.recorded(),
            vec![Effect::BlockWrite { disk: 0, offset: 512, data: vec![3u8; 512] }, Effect::BlockFlush { disk: 0 }]
        );
    }

    #[test]
    fn get_id() {
        let mut rig = Rig::new(Backing::Recorder, false);
        let (st, len, id) = rig.request(VIRTIO_BLK_T_GET_ID, 0, None, 20);
        assert_eq!((st, len), (OK, 21));
        let mut want = b"kemari-disk0".to_vec();
        want.resize(20, 0);
        assert_eq!(id, want);
        // A long id is cut to 20 bytes.
        let dev = Block::new(0, rig.image.reader(), false, "0123456789abcdefghijKLMNOP").unwrap();
        assert_eq!(&dev.id, b"0123456789abcdefghij");
    }

    /// A block device (here a loop device) reports length 0 in its metadata: its capacity must come from
    /// seeking to its end, or the guest sees an empty disk.
    #[test]
    fn a_block_device_has_its_capacity() {
        let dir = std::env::temp_dir().join(format!("kemari-blkdev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("backing.img");
        File::create(&file).unwrap().set_len(3 << 20).unwrap();
        let out = std::process::Command::new("losetup").args(["--find", "--show"]).arg(&file).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let loopdev = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let size = image_size_at(&loopdev);
        let dev = File::open(&loopdev).and_then(|f| Block::new(0, f, true, "loop"));
        std::process::Command::new("losetup").arg("-d").arg(&loopdev).status().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(size.unwrap(), 3 << 20);
        assert_eq!(dev.unwrap().sectors(), (3 << 20) / SECTOR_SIZE);
    }

    #[test]
    fn unsupported_requests_say_so() {
        let mut rig = Rig::new(Backing::Recorder, false);
        for kind in [2 /* SCSI */, 11 /* DISCARD */, 13 /* WRITE_ZEROES */, 0xdead_beef] {
            let (st, len, _) = rig.request(kind, 0, Some(&[0u8; 16]), 0);
            assert_eq!((st, len), (UNSUPP, 1), "type {kind}");
        }
        assert!(rig.recorded().is_empty());
    }

    #[test]
    fn out_of_range_and_malformed_transfers_fail_with_ioerr() {
        let mut rig = Rig::new(Backing::Recorder, false);
        let before = rig.image.bytes();
        // Past the end, straddling the end, and sector numbers that overflow.
        assert_eq!(rig.read(DISK_SECTORS, 512).0, IOERR);
        assert_eq!(rig.read(DISK_SECTORS - 1, 1024).0, IOERR);
        assert_eq!(rig.read(u64::MAX, 512).0, IOERR);
        assert_eq!(rig.read(u64::MAX / 512 + 1, 512).0, IOERR);
        assert_eq!(rig.write(DISK_SECTORS, &[1u8; 512]), IOERR);
        assert_eq!(rig.write(DISK_SECTORS - 1, &[1u8; 1024]), IOERR);
        assert_eq!(rig.write(u64::MAX, &[1u8; 512]), IOERR);
        // Not a whole number of sectors.
        assert_eq!(rig.read(0, 100).0, IOERR);
        assert_eq!(rig.write(0, &[1u8; 513]), IOERR);
        // The data buffer was left alone on failure.
        let (st, data) = rig.read(DISK_SECTORS, 512);
        assert_eq!(st, IOERR);
        assert_eq!(data, vec![0xee; 512]);
        assert!(rig.recorded().is_empty());
        assert_eq!(rig.image.bytes(), before);
    }

    #[test]
    fn requests_above_the_size_cap_fail_with_ioerr() {
        let mut rig = Rig::new(Backing::Recorder, false);
        // Make the disk big enough that only the cap can refuse it.
        rig.image.writer().set_len(64 << 20).unwrap();
        rig.dev = Block::new(0, rig.image.reader(), false, "big").unwrap();
        let len = (MAX_REQUEST_BYTES + 512) as u32;
        assert_eq!(rig.read(0, len).0, IOERR);
        assert_eq!(rig.read(0, MAX_REQUEST_BYTES as u32).0, OK, "the cap itself is fine");
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let mut rig = Rig::new(Backing::Recorder, true);
        let before = rig.image.bytes();
        assert_eq!(rig.write(0, &[9u8; 512]), IOERR);
        let (st, data) = rig.read(0, 512);
        assert_eq!(st, OK);
        assert_eq!(data, pattern_at(0, 512));
        assert_eq!(rig.request(VIRTIO_BLK_T_FLUSH, 0, None, 0).0, OK, "nothing to flush");
        assert!(rig.recorded().is_empty(), "no effect at all from a read-only disk");
        assert_eq!(rig.image.bytes(), before);
    }

    #[test]
    fn any_layout_header_data_and_status_may_share_and_split_descriptors() {
        let mut rig = Rig::new(Backing::Recorder, false);
        // OUT: header and the first half of the data in one descriptor, the rest in a second one.
        let a = rig.alloc(16 + 256);
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        hdr[8..16].copy_from_slice(&2u64.to_le_bytes());
        rig.ram.write(a, &hdr).unwrap();
        rig.ram.write(a + 16, &[0x77; 256]).unwrap();
        let b = rig.data_out(&[0x88; 256]);
        let st = rig.status();
        let st_addr = st.addr;
        rig.offer(&[Buf { addr: a, len: 16 + 256, flags: R }, b, st]);
        rig.process();
        assert_eq!(rig.read_byte(st_addr), OK);
        let mut want = vec![0x77u8; 256];
        want.extend([0x88u8; 256]);
        assert_eq!(rig.recorded(), vec![Effect::BlockWrite { disk: 0, offset: 1024, data: want }]);
        rig.used();

        // IN: data and the status byte in one writable descriptor, split over two.
        let hdr = rig.header(VIRTIO_BLK_T_IN, 1);
        let d1 = rig.data_in(300);
        let d2 = rig.data_in(212 + 1);
        let (d1a, d2a) = (d1.addr, d2.addr);
        rig.offer(&[hdr, d1, d2]);
        rig.process();
        assert_eq!(rig.used()[0].1, 513);
        assert_eq!(rig.read_byte(d2a + 212), OK);
        let mut got = rig.read_guest(d1a, 300);
        got.extend(rig.read_guest(d2a, 212));
        assert_eq!(got, pattern_at(512, 512));
    }

    #[test]
    fn indirect_chains_work() {
        let mut rig = Rig::new(Backing::Recorder, false);
        let hdr = rig.header(VIRTIO_BLK_T_IN, 0);
        let d = rig.data_in(1024);
        let st = rig.status();
        let (d_addr, st_addr) = (d.addr, st.addr);
        let table = rig.alloc(48);
        for (i, b) in [hdr, d, st].iter().enumerate() {
            let flags = b.flags | if i < 2 { NEXT } else { 0 };
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&b.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&b.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&(i as u16 + 1).to_le_bytes());
            rig.ram.write(table + 16 * i as u64, &raw).unwrap();
        }
        rig.offer_raw(&[RawDescriptor::from(SplitDescriptor::new(table, 48, VRING_DESC_F_INDIRECT as u16, 0))]);
        assert_eq!(rig.process(), Processed { used: true, failed: false });
        assert_eq!(rig.used()[0].1, 1025);
        assert_eq!(rig.read_byte(st_addr), OK);
        assert_eq!(rig.read_guest(d_addr, 1024), pattern_at(0, 1024));
    }

    #[test]
    fn buffers_outside_ram_fail_the_request_not_the_host() {
        let mut rig = Rig::new(Backing::Recorder, false);
        let outside = RAM + RAM_SIZE;
        for (addr, len) in [(outside, 512u32), (outside - 256, 512), (0x1000, 512), (u64::MAX - 100, 512)] {
            // IN into memory that is not RAM.
            let hdr = rig.header(VIRTIO_BLK_T_IN, 0);
            let st = rig.status();
            let st_addr = st.addr;
            rig.offer(&[hdr, Buf { addr, len, flags: W }, st]);
            assert_eq!(rig.process(), Processed { used: true, failed: false });
            assert_eq!(rig.used()[0].1, 1);
            assert_eq!(rig.read_byte(st_addr), IOERR, "IN to {addr:#x}");
            // OUT from memory that is not RAM.
            let hdr = rig.header(VIRTIO_BLK_T_OUT, 0);
            let st = rig.status();
            let st_addr = st.addr;
            rig.offer(&[hdr, Buf { addr, len, flags: R }, st]);
            assert_eq!(rig.process(), Processed { used: true, failed: false });
            rig.used();
            assert_eq!(rig.read_byte(st_addr), IOERR, "OUT from {addr:#x}");
        }
        // A header outside RAM.
        let st = rig.status();
        let st_addr = st.addr;
        rig.offer(&[Buf { addr: outside, len: 16, flags: R }, st]);
        rig.process();
        rig.used();
        assert_eq!(rig.read_byte(st_addr), IOERR);
        // A header that is too short or missing.
        let st = rig.status();
        let st_addr = st.addr;
        let short = rig.data_out(&[0u8; 8]);
        rig.offer(&[short, st]);
        rig.process();
        rig.used();
        assert_eq!(rig.read_byte(st_addr), IOERR);
        assert!(rig.recorded().is_empty());
        // The untouched tail of RAM is still what it was.
        assert_eq!(rig.read_guest(RAM + RAM_SIZE - 256, 256), vec![0u8; 256]);
        // And the device still works.
        assert_eq!(rig.read(0, 512), (OK, pattern_at(0, 512)));
    }

    #[test]
    fn readable_after_writable_fails_the_request() {
        let mut rig = Rig::new(Backing::Recorder, false);
        let d = rig.data_in(512);
        let hdr = rig.header(VIRTIO_BLK_T_OUT, 0);
        let st = rig.status();
        let st_addr = st.addr;
        rig.offer(&[d, hdr, st]);
        rig.process();
        assert_eq!(rig.read_byte(st_addr), IOERR);
        assert!(rig.recorded().is_empty());
    }

    /// Chains without a usable status byte fail the device; it then ignores the queue until reset.
    fn assert_fails_device(rig: &mut Rig) {
        let p = rig.process();
        assert!(p.failed, "{p:?}");
        assert!(rig.recorded().is_empty());
        // Ignored until reset...
        rig.used();
        let hdr = rig.header(VIRTIO_BLK_T_FLUSH, 0);
        let st = rig.status();
        rig.offer(&[hdr, st]);
        assert_eq!(rig.process(), Processed::default());
        // ...and served again after it.
        rig.dev.reset();
        rig.dev.activate(rig.dev.features());
        assert_eq!(rig.process(), Processed { used: true, failed: false });
        assert_eq!(rig.recorded(), vec![Effect::BlockFlush { disk: 0 }]);
    }

    #[test]
    fn status_outside_ram_fails_the_device() {
        let mut rig = Rig::new(Backing::Recorder, false);
        let hdr = rig.header(VIRTIO_BLK_T_FLUSH, 0);
        rig.offer(&[hdr, Buf { addr: RAM + RAM_SIZE, len: 1, flags: W }]);
        assert_fails_device(&mut rig);
    }

    #[test]
    fn chain_without_writable_status_fails_the_device() {
        let mut rig = Rig::new(Backing::Recorder, false);
        let hdr = rig.header(VIRTIO_BLK_T_OUT, 0);
        let d = rig.data_out(&[1u8; 512]);
        rig.offer(&[hdr, d]);
        assert_fails_device(&mut rig);
    }

    #[test]
    fn looping_chain_fails_the_device_without_hanging() {
        let mut rig = Rig::new(Backing::Recorder, false);
        let hdr = rig.header(VIRTIO_BLK_T_FLUSH, 0);
        let st = rig.status();
        let base = rig.next_desc(0);
        rig.offer_raw(&[
            RawDescriptor::from(SplitDescriptor::new(hdr.addr, 16, NEXT, base + 1)),
            RawDescriptor::from(SplitDescriptor::new(st.addr, 1, W | NEXT, base)),
        ]);
        assert_fails_device(&mut rig);
    }

    #[test]
    fn next_index_outside_the_table_fails_the_device() {
        let mut rig = Rig::new(Backing::Recorder, false);
        let hdr = rig.header(VIRTIO_BLK_T_FLUSH, 0);
        let st = rig.status();
        let base = rig.next_desc(0);
        rig.offer_raw(&[
            RawDescriptor::from(SplitDescriptor::new(hdr.addr, 16, NEXT, base + 1)),
            RawDescriptor::from(SplitDescriptor::new(st.addr, 1, W | NEXT, 9999)),
        ]);
        assert_fails_device(&mut rig);
    }

    #[test]
    fn bogus_available_index_fails_the_device() {
        let mut rig = Rig::new(Backing::Recorder, false);
        rig.set_avail_idx(0, 1000);
        assert!(rig.process().failed);
    }

    #[test]
    fn nothing_available_is_nothing_used() {
        let mut rig = Rig::new(Backing::Recorder, false);
        assert_eq!(rig.process(), Processed::default());
        let Rig { drv, dev, .. } = &mut rig;
        assert_eq!(dev.process_queue(1, &mut drv.ctx()), Processed::default());
    }

    #[test]
    fn device_state_round_trips_and_garbage_is_refused() {
        let mut rig = Rig::new(Backing::Recorder, false);
        // Negotiated FLUSH (write-back) survives save/restore into a fresh device: no extra flush effects.
        let saved = rig.dev.save();
        rig.dev = Block::new(0, rig.image.reader(), false, "kemari-disk0").unwrap();
        rig.dev.apply_state(rig.dev.decode_state(&saved).unwrap());
        assert_eq!(rig.write(0, &[1u8; 512]), OK);
        assert_eq!(rig.recorded(), vec![Effect::BlockWrite { disk: 0, offset: 0, data: vec![1u8; 512] }]);
        for bad in [&[][..], &[1][..], &[2, 0][..], &[0, 0, 0][..]] {
            assert!(rig.dev.decode_state(bad).is_err(), "{bad:?} accepted");
        }
        // A broken device stays broken across restore.
        rig.dev.apply_state(rig.dev.decode_state(&[0, 1]).unwrap());
        let hdr = rig.header(VIRTIO_BLK_T_FLUSH, 0);
        let st = rig.status();
        rig.offer(&[hdr, st]);
        assert_eq!(rig.process(), Processed::default());
    }

    #[test]
    fn many_requests_in_one_notification() {
        let mut rig = Rig::new(Backing::Recorder, false);
        let mut statuses = Vec::new();
        for i in 0..10u64 {
            let hdr = rig.header(VIRTIO_BLK_T_OUT, i);
            let d = rig.data_out(&[i as u8; 512]);
            let st = rig.status();
            statuses.push(st.addr);
            rig.offer(&[hdr, d, st]);
        }
        assert_eq!(rig.process(), Processed { used: true, failed: false });
        assert_eq!(rig.used().len(), 10);
        assert!(statuses.iter().all(|&a| rig.read_byte(a) == OK));
        assert_eq!(rig.recorded().len(), 10);
    }
}
