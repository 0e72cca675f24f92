//! The machine: RAM, harts and devices, and the loop that runs them.
//!
//! One thread runs every hart round-robin in slices of a few thousand instructions (see ARCHITECTURE.md for
//! why). Between slices the board recomputes interrupt lines (timers, PLIC), feeds console input, and handles
//! SBI calls. A hart that waits in `wfi` costs nothing; when every hart waits, the thread sleeps until the next
//! timer deadline or console input.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kemari_engine::{irq, Bus, Engine, Exit, Hart};
use kemari_memory::GuestRam;

use crate::clint::Clint;
use crate::layout::{self, RAM_BASE};
use crate::loader::{self, LoadError};
use crate::plic::Plic;
use crate::sbi::{self, SbiOutcome};
use crate::uart::{self, Uart, UartIrq};
use crate::{clint, fdt, plic};
use kemari_devices::gate::{Input, Outlets, OutputGate, SharedEffects, Source};
use kemari_devices::host::{HostBackend, Wake};
use kemari_devices::memory::{device_view, GuestMemory};
use kemari_devices::tap::{RxQueue, Tap};
use kemari_devices::virtio::blk::Block;
use kemari_devices::virtio::mmio::MmioTransport;
use kemari_devices::virtio::net::Net;
use kemari_devices::virtio::rng::Rng;

/// Instructions a hart runs before the board looks at timers and input again.
const SLICE: u64 = 20_000;

/// What to boot.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    pub harts: usize,
    pub memory_mib: u64,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Bare-metal ELF started in M-mode (no built-in SBI).
    pub firmware: Option<PathBuf>,
    /// virtio-blk disks, in order (the first is /dev/vda).
    pub disks: Vec<DiskConfig>,
    /// virtio-net interfaces on taps.
    pub nets: Vec<NetConfig>,
    /// A virtio-rng device.
    pub rng: bool,
    /// Fault all guest RAM in before anything runs (`--prealloc`): the guest, a restore or an incoming
    /// migration then never waits for the host to find it memory.
    pub prealloc: bool,
    /// How the harts run guest code (`--engine`).
    pub engine: Engine,
}

#[derive(Clone, Debug)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub readonly: bool,
}

#[derive(Clone, Debug)]
pub struct NetConfig {
    pub tap: String,
    pub mac: [u8; 6],
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("--cpus {0} is out of range: kemari supports 1 to {max} harts", max = layout::MAX_HARTS)]
    Harts(usize),
    #[error("--memory {0} MiB is out of range: use 16 to 65536 MiB")]
    MemorySize(u64),
    #[error("--memory {have} MiB is too small: kernel, initrd and device tree need at least {need} MiB")]
    MemoryTooSmall { have: u64, need: u64 },
    #[error("nothing to boot: give --kernel or --firmware")]
    NothingToBoot,
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot allocate guest RAM: {0}")]
    Ram(#[from] kemari_memory::RamError),
    #[error("cannot preallocate guest RAM (--prealloc): {0}")]
    Prealloc(std::io::Error),
    #[error("--prealloc on a receiver needs --memory (the size to map while it waits)")]
    PreallocNeedsMemory,
    #[error("cannot build the device tree: {0}")]
    Fdt(String),
    #[error("cannot open disk {path}: {source}")]
    Disk { path: String, source: std::io::Error },
    #[error("cannot use tap {tap}: {why}")]
    Tap { tap: String, why: String },
    #[error("too many devices: {0} virtio devices, the board has {max} slots", max = layout::VIRTIO_SLOTS)]
    TooManyDevices(usize),
}

/// The largest guest RAM the board supports, in MiB.
pub(crate) const MAX_MEMORY_MIB: u64 = 65536;

fn check_memory_size(memory_mib: u64) -> Result<(), BuildError> {
    match memory_mib {
        16..=MAX_MEMORY_MIB => Ok(()),
        _ => Err(BuildError::MemorySize(memory_mib)),
    }
}

/// Checks a machine shape given in part (a receiver checks what its command line names before any sender
/// comes): harts and RAM size within what the board supports, and a size given when RAM is to be
/// preallocated.
pub fn check_shape(harts: Option<usize>, memory_mib: Option<u64>, prealloc: bool) -> Result<(), BuildError> {
    if let Some(h) = harts.filter(|&h| h == 0 || h > layout::MAX_HARTS) {
        return Err(BuildError::Harts(h));
    }
    if prealloc && memory_mib.is_none() {
        return Err(BuildError::PreallocNeedsMemory);
    }
    memory_mib.map_or(Ok(()), check_memory_size)
}

/// RAM for a receiver (`run --incoming`, `standby`) to build its machine on ([`Machine::empty_on`]): with
/// `prealloc`, mapped and faulted in on a thread of its own while it waits for its sender, so that incoming
/// pages land in memory that is already there (a failure to fault in is only logged: pages then fault in on
/// first use). Preallocating needs the size (`memory_mib`, from --memory).
pub fn receiver_ram(prealloc: bool, memory_mib: Option<u64>) -> Result<Option<Arc<GuestRam>>, BuildError> {
    let mib = match (prealloc, memory_mib) {
        (false, _) => return Ok(None),
        (true, None) => return Err(BuildError::PreallocNeedsMemory),
        (true, Some(mib)) => mib,
    };
    check_memory_size(mib)?;
    let ram = Arc::new(GuestRam::new(RAM_BASE, mib << 20)?);
    let r = ram.clone();
    std::thread::Builder::new()
        .name("prealloc".into())
        .spawn(move || {
            if let Err(e) = r.prefault() {
                tracing::warn!("cannot preallocate guest RAM ({e}); pages fault in as they arrive");
            }
        })
        .map_err(BuildError::Prealloc)?;
    Ok(Some(ram))
}

pub use kemari_machine::{Round, RunOutcome};

/// Guest time: a monotonic host clock in timebase ticks, plus an offset so that a restored guest continues.
#[derive(Clone, Debug)]
pub struct GuestClock {
    start: Instant,
    offset: u64,
    /// A paused machine's time stands still (so a restored guest sees no jump, and save → restore → save is
    /// exact).
    paused: bool,
    /// Moves only by [`GuestClock::advance`] (never with the host clock).
    manual: bool,
}

impl GuestClock {
    /// A running clock starting at `offset` ticks.
    pub fn new(offset: u64) -> GuestClock {
        GuestClock { start: Instant::now(), offset, paused: false, manual: false }
    }

    /// A stopped clock at `offset` ticks.
    pub fn paused(offset: u64) -> GuestClock {
        GuestClock { start: Instant::now(), offset, paused: true, manual: false }
    }

    /// A clock at `offset` ticks that moves only when told to: guest time as a function of the run, not of the
    /// host, so that two runs of one guest can be compared round by round (the engines' lockstep test).
    pub fn manual(offset: u64) -> GuestClock {
        GuestClock { start: Instant::now(), offset, paused: true, manual: true }
    }

    /// Moves a manual clock on by `ticks`.
    pub fn advance(&mut self, ticks: u64) {
        assert!(self.manual, "only a manual clock is advanced");
        self.offset = self.offset.saturating_add(ticks);
    }

    pub fn now(&self) -> u64 {
        if self.paused {
            return self.offset;
        }
        self.offset.saturating_add((self.start.elapsed().as_nanos() as u64) / (1_000_000_000 / layout::TIMEBASE_HZ))
    }

    pub fn pause(&mut self) {
        if !self.paused {
            self.offset = self.now();
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if self.paused && !self.manual {
            self.start = Instant::now();
            self.paused = false;
        }
    }

    fn until(&self, tick: u64) -> Duration {
        if self.manual {
            // Waiting would not bring the deadline closer.
            return Duration::ZERO;
        }
        let now = self.now();
        Duration::from_nanos(tick.saturating_sub(now).saturating_mul(1_000_000_000 / layout::TIMEBASE_HZ))
    }
}

/// Everything a hart reaches through the bus.
pub struct Devices {
    pub clock: GuestClock,
    pub clint: Clint,
    pub plic: Plic,
    pub uart: Uart,
    pub(crate) uart_irq: UartIrq,
    /// With the built-in SBI: each hart's supervisor timer deadline (SBI set_timer).
    pub stimecmp: Vec<u64>,
    /// What firmware asked for through the SiFive test device.
    pub reset_request: Option<RunOutcome>,
    /// Guest memory as devices see it.
    pub mem: GuestMemory,
    /// The one exit for the guest's effects.
    pub gate: Arc<Mutex<OutputGate>>,
    /// virtio-mmio slots in order; slot `i` is at `VIRTIO_BASE + i * VIRTIO_SIZE` with PLIC source
    /// `VIRTIO_IRQ_BASE + i`.
    pub virtio: Vec<MmioTransport>,
    /// Each network interface's queue of received frames (a failover puts replayed frames in front).
    pub(crate) nic_rx: Vec<RxQueue>,
}

impl Devices {
    /// Lets every device bring in outside work (received frames) and raises the interrupts that follow.
    fn poll_virtio(&mut self) {
        let mut gate = self.gate.lock().expect("gate lock");
        for (slot, t) in self.virtio.iter_mut().enumerate() {
            if t.poll(&self.mem, gate.effects()) {
                self.plic.raise(layout::VIRTIO_IRQ_BASE + slot as u32);
            }
        }
    }

    fn sync_uart_irq(&mut self) {
        if self.uart_irq.take() {
            self.plic.raise(layout::UART_IRQ);
        }
    }
}

impl Bus for Devices {
    fn load(&mut self, _hart: usize, addr: u64, size: u8) -> Option<u64> {
        match addr {
            a if (clint::BASE..clint::BASE + clint::SIZE).contains(&a) => {
                self.clint.load(a - clint::BASE, size, self.clock.now())
            }
            a if (plic::BASE..plic::BASE + plic::SIZE).contains(&a) => self.plic.load(a - plic::BASE, size),
            a if (layout::TEST_BASE..layout::TEST_BASE + layout::TEST_SIZE).contains(&a) => Some(0),
            a if (layout::UART_BASE..layout::UART_BASE + layout::UART_SIZE).contains(&a) => {
                if size != 1 {
                    return None;
                }
                let v = self.uart.read((a - layout::UART_BASE) as u8);
                self.sync_uart_irq();
                Some(v as u64)
            }
            a if (layout::VIRTIO_BASE..layout::VIRTIO_BASE + layout::VIRTIO_SIZE * layout::VIRTIO_SLOTS as u64)
                .contains(&a) =>
            {
                let slot = ((a - layout::VIRTIO_BASE) / layout::VIRTIO_SIZE) as usize;
                // Empty slots read as zero (magic 0: no device).
                Some(self.virtio.get_mut(slot).map_or(0, |t| t.read(a % layout::VIRTIO_SIZE, size)))
            }
            _ => None,
        }
    }

    fn store(&mut self, _hart: usize, addr: u64, size: u8, value: u64) -> bool {
        match addr {
            a if (clint::BASE..clint::BASE + clint::SIZE).contains(&a) => {
                self.clint.store(a - clint::BASE, size, value)
            }
            a if (plic::BASE..plic::BASE + plic::SIZE).contains(&a) => self.plic.store(a - plic::BASE, size, value),
            a if (layout::TEST_BASE..layout::TEST_BASE + layout::TEST_SIZE).contains(&a) => {
                // QEMU's encoding: 0x5555 power off, 0x3333 | code << 16 failure, 0x7777 reset.
                self.reset_request = match value & 0xffff {
                    0x5555 => Some(RunOutcome::PowerOff),
                    0x3333 => {
                        Some(RunOutcome::Crash(format!("firmware reported failure code {}", (value >> 16) & 0xffff)))
                    }
                    0x7777 => Some(RunOutcome::Reboot),
                    _ => self.reset_request.take(),
                };
                true
            }
            a if (layout::UART_BASE..layout::UART_BASE + layout::UART_SIZE).contains(&a) => {
                if size != 1 {
                    return false;
                }
                // A console that cannot be written loses the byte, like a real UART with no cable.
                let _ = self.uart.write((a - layout::UART_BASE) as u8, value as u8);
                self.sync_uart_irq();
                true
            }
            a if (layout::VIRTIO_BASE..layout::VIRTIO_BASE + layout::VIRTIO_SIZE * layout::VIRTIO_SLOTS as u64)
                .contains(&a) =>
            {
                let slot = ((a - layout::VIRTIO_BASE) / layout::VIRTIO_SIZE) as usize;
                if let Some(t) = self.virtio.get_mut(slot) {
                    let mut gate = self.gate.lock().expect("gate lock");
                    if t.write(a % layout::VIRTIO_SIZE, size, value, &self.mem, gate.effects()) {
                        self.plic.raise(layout::VIRTIO_IRQ_BASE + slot as u32);
                    }
                }
                true
            }
            _ => false,
        }
    }

    fn time(&self) -> u64 {
        self.clock.now()
    }
}

pub struct Machine {
    pub ram: Arc<GuestRam>,
    pub harts: Vec<Hart>,
    pub dev: Devices,
    /// The VMM implements SBI (no firmware in the guest).
    pub builtin_sbi: bool,
    /// HTIF `tohost` address of a bare-metal program.
    pub tohost: Option<u64>,
    /// Console input not yet accepted by the UART FIFO.
    pending_input: VecDeque<u8>,
    /// The last round ended early to let the driver send logged inputs.
    flushed_inputs: bool,
}

impl Machine {
    /// Builds the machine and loads what `cfg` boots.
    pub fn new(cfg: &MachineConfig, console: Box<dyn Write + Send>, wake: Wake) -> Result<Machine, BuildError> {
        Machine::build(cfg, console, wake, true)
    }

    /// A machine of `cfg`'s shape and devices with zeroed RAM and nothing loaded, for a restore (or a
    /// replication secondary) to fill in.
    pub fn empty(cfg: &MachineConfig, console: Box<dyn Write + Send>, wake: Wake) -> Result<Machine, BuildError> {
        Machine::build(cfg, console, wake, false)
    }

    /// Like [`Machine::empty`], on RAM mapped earlier (e.g. faulted in while a receiver waited for its sender;
    /// see [`receiver_ram`]). The RAM must be untouched (all zeros) and of `cfg`'s size.
    pub fn empty_on(
        ram: Arc<GuestRam>,
        cfg: &MachineConfig,
        console: Box<dyn Write + Send>,
        wake: Wake,
    ) -> Result<Machine, BuildError> {
        assert_eq!(ram.size(), cfg.memory_mib << 20, "pre-mapped RAM of another size");
        Machine::build_on(Some(ram), cfg, console, wake, false)
    }

    /// Console input for the guest, as if typed.
    pub fn push_input(&mut self, bytes: &[u8]) {
        self.pending_input.extend(bytes);
    }

    /// Builds the machine: boots it (loads kernel, initrd, device tree or firmware) or leaves RAM zeroed for a
    /// restore to fill in.
    pub(crate) fn build(
        cfg: &MachineConfig,
        console: Box<dyn Write + Send>,
        wake: Wake,
        boot: bool,
    ) -> Result<Machine, BuildError> {
        Machine::build_on(None, cfg, console, wake, boot)
    }

    fn build_on(
        ram: Option<Arc<GuestRam>>,
        cfg: &MachineConfig,
        console: Box<dyn Write + Send>,
        wake: Wake,
        boot: bool,
    ) -> Result<Machine, BuildError> {
        check_shape(Some(cfg.harts), Some(cfg.memory_mib), false)?;
        if boot && cfg.kernel.is_none() && cfg.firmware.is_none() {
            return Err(BuildError::NothingToBoot);
        }
        let ram_size = cfg.memory_mib << 20;
        let ram = match ram {
            Some(ram) => ram,
            None => {
                let ram = Arc::new(GuestRam::new(RAM_BASE, ram_size)?);
                if cfg.prealloc {
                    ram.prefault().map_err(BuildError::Prealloc)?;
                }
                ram
            }
        };
        let builtin_sbi = cfg.firmware.is_none();
        let mut harts: Vec<Hart> = (0..cfg.harts)
            .map(|i| {
                let mut h = Hart::new(i as u64, builtin_sbi);
                h.set_engine(cfg.engine);
                h
            })
            .collect();

        // Layout: kernel at RAM + 2 MiB, device tree in the last 64 KiB (2 MiB-aligned region below the end for
        // firmware that relocates it), initrd just below the device tree, page-aligned.
        let dtb_addr = RAM_BASE + ram_size - 0x10000;
        let mut kernel_end = RAM_BASE;
        let mut kernel_entry = None;
        if let Some(k) = cfg.kernel.as_ref().filter(|_| boot) {
            let initrd_size = match &cfg.initrd {
                Some(p) => loader::file_size("initrd", p)?,
                None => 0,
            };
            let k_size = loader::file_size("kernel", k)?;
            // Check the total before loading so that a small --memory gets one clear message.
            let need = layout::KERNEL_OFFSET + k_size + initrd_size + 0x10000;
            if need + (4 << 20) > ram_size {
                return Err(BuildError::MemoryTooSmall {
                    have: cfg.memory_mib,
                    need: (need + (4 << 20)).div_ceil(1 << 20),
                });
            }
            let loaded = loader::load_kernel(&ram, k)?;
            kernel_end = loaded.end;
            kernel_entry = Some(loaded.entry);
        }
        let mut initrd = None;
        if let Some(p) = cfg.initrd.as_ref().filter(|_| boot) {
            let size = loader::file_size("initrd", p)?;
            let start = (dtb_addr - size) & !0xfff;
            if start < kernel_end {
                return Err(BuildError::MemoryTooSmall {
                    have: cfg.memory_mib,
                    need: (kernel_end - RAM_BASE + size + 0x10000 + (4 << 20)).div_ceil(1 << 20),
                });
            }
            let end = loader::load_initrd(&ram, p, start)?;
            initrd = Some((start, end));
        }
        // Devices first: their slots go into the device tree. Only the gate's backend writes to the outside.
        let mut backend = HostBackend::new(console);
        let (virtio, outlets, nic_rx) = build_virtio(cfg, &mut backend, wake.clone())?;
        let slots: Vec<(u64, u32)> = (0..virtio.len())
            .map(|i| (layout::VIRTIO_BASE + i as u64 * layout::VIRTIO_SIZE, layout::VIRTIO_IRQ_BASE + i as u32))
            .collect();
        let mut gate = OutputGate::new(Box::new(backend));
        gate.set_outlets(outlets);
        let gate = Arc::new(Mutex::new(gate));
        let dtb = fdt::build(&fdt::FdtConfig {
            harts: cfg.harts,
            ram_base: RAM_BASE,
            ram_size,
            bootargs: &cfg.cmdline,
            initrd,
            virtio: &slots,
        })
        .map_err(|e| BuildError::Fdt(e.to_string()))?;
        if dtb.len() > 0x10000 {
            return Err(BuildError::Fdt(format!("device tree of {} bytes exceeds 64 KiB", dtb.len())));
        }
        if boot {
            ram.write(dtb_addr, &dtb).expect("inside RAM");
        }

        let mut tohost = None;
        if let Some(fw) = cfg.firmware.as_ref().filter(|_| boot) {
            let elf = loader::load_elf(&ram, fw)?;
            tohost = elf.tohost;
            // Firmware convention (OpenSBI): every hart enters at the ELF entry with a0 = hart id, a1 = FDT.
            for h in harts.iter_mut() {
                h.set_pc(elf.entry);
                h.set_reg(10, h.id());
                h.set_reg(11, dtb_addr);
            }
        } else if let Some(entry) = kernel_entry {
            // Linux boot protocol: hart 0 starts in S-mode with a0 = hart id, a1 = FDT; the others wait for
            // SBI HSM hart_start.
            for h in harts.iter_mut() {
                h.set_stopped(h.id() != 0);
            }
            harts[0].set_pc(entry);
            harts[0].set_reg(10, 0);
            harts[0].set_reg(11, dtb_addr);
        }

        let uart_irq = UartIrq::default();
        let dev = Devices {
            clock: GuestClock::new(0),
            clint: Clint::new(cfg.harts),
            plic: Plic::new(cfg.harts),
            uart: uart::new(uart_irq.clone(), SharedEffects::new(&gate)),
            uart_irq,
            stimecmp: vec![u64::MAX; cfg.harts],
            reset_request: None,
            mem: device_view(&ram),
            gate,
            virtio,
            nic_rx,
        };
        Ok(Machine { ram, harts, dev, builtin_sbi, tohost, pending_input: VecDeque::new(), flushed_inputs: false })
    }

    /// Recomputes every hart's interrupt lines from timers, CLINT and PLIC.
    fn update_irq_lines(&mut self) {
        let now = self.dev.clock.now();
        for (i, h) in self.harts.iter_mut().enumerate() {
            if self.builtin_sbi {
                h.set_irq_line(irq::STI, now >= self.dev.stimecmp[i]);
            } else {
                h.set_irq_line(irq::MTI, now >= self.dev.clint.mtimecmp[i]);
                h.set_irq_line(irq::MSI, self.dev.clint.msip[i]);
            }
            h.set_irq_line(irq::MEI, self.dev.plic.line(2 * i));
            h.set_irq_line(irq::SEI, self.dev.plic.line(2 * i + 1));
        }
    }

    /// Moves pending console input into the UART FIFO as space allows.
    fn feed_uart(&mut self) {
        while !self.pending_input.is_empty() && self.dev.uart.fifo_capacity() > 0 {
            let n = self.dev.uart.fifo_capacity().min(self.pending_input.len());
            let chunk: Vec<u8> = self.pending_input.drain(..n).collect();
            let _ = self.dev.uart.enqueue_raw_bytes(&chunk);
            self.dev.gate.lock().expect("gate lock").consume(Source::Console, &chunk);
        }
        self.dev.sync_uart_irq();
    }

    /// Delivers inputs another node's guest consumed after the state this machine holds (the replay of a
    /// failover), ahead of anything received here: frames in front of each interface's queue, console bytes
    /// in front of typed input, each source in the order given. Returns how many were taken; an input for an
    /// interface this machine does not have is dropped.
    pub fn replay_inputs(&mut self, inputs: Vec<Input>) -> usize {
        let mut frames: Vec<Vec<Vec<u8>>> = vec![Vec::new(); self.dev.nic_rx.len()];
        let mut console = Vec::new();
        let mut taken = 0;
        for input in inputs {
            match input.source {
                Source::Console => console.extend_from_slice(&input.bytes),
                Source::Nic(n) if n < frames.len() => frames[n].push(input.bytes),
                Source::Nic(_) => continue,
            }
            taken += 1;
        }
        for (rx, frames) in self.dev.nic_rx.iter().zip(frames) {
            rx.push_front(frames);
        }
        for b in console.into_iter().rev() {
            self.pending_input.push_front(b);
        }
        taken
    }

    /// Drops the frames waiting on the network interfaces; returns how many. A standby's taps see what the
    /// network floods to every host (broadcasts, multicast, unknown destinations): its primary's guest got
    /// those frames too, and what it got reaches a new primary through the input log. So at takeover the
    /// frames that waited here are not inputs of this guest, and delivering them would give it some twice.
    pub fn discard_received_frames(&mut self) -> usize {
        self.dev.nic_rx.iter().map(RxQueue::clear).sum()
    }

    /// Under protection: sends every frame the network interfaces receive to `sink` as it arrives, as an
    /// [`Input`] numbered the way the gate counts the frames the guest consumes (so a frame still waiting for
    /// the guest when the primary dies is replayed too; see `tap::RxQueue::log_arrivals`). The frames waiting
    /// now go first. `None` stops, and the gate logs frames when they are consumed again. Between rounds only
    /// (the consumed counts must not move meanwhile).
    pub fn log_frames_on_arrival(&mut self, sink: Option<kemari_machine::InputSink>) {
        let mut gate = self.dev.gate.lock().expect("gate lock");
        gate.set_nics_logged_on_arrival(sink.is_some());
        for (n, rx) in self.dev.nic_rx.iter().enumerate() {
            let source = Source::Nic(n);
            let report = sink.clone().map(|sink| -> kemari_devices::tap::ArrivalSink {
                Arc::new(move |seq, bytes| sink(Input { source, seq, bytes }))
            });
            rx.log_arrivals(gate.consumed(source), report);
        }
    }

    /// Takes one byte of console input for the legacy SBI getchar.
    pub(crate) fn take_input_byte(&mut self) -> Option<u8> {
        let b = self.pending_input.pop_front()?;
        self.dev.gate.lock().expect("gate lock").consume(Source::Console, &[b]);
        Some(b)
    }

    /// The earliest timer deadline of any hart, in ticks.
    fn next_deadline(&self) -> u64 {
        let cmps = if self.builtin_sbi { &self.dev.stimecmp } else { &self.dev.clint.mtimecmp };
        cmps.iter().copied().min().unwrap_or(u64::MAX)
    }

    /// Checks the HTIF `tohost` word of a bare-metal program.
    fn poll_htif(&mut self) -> Option<RunOutcome> {
        let addr = self.tohost?;
        let mut buf = [0u8; 8];
        self.ram.read(addr, &mut buf)?;
        let v = u64::from_le_bytes(buf);
        if v == 0 {
            return None;
        }
        let device = v >> 56;
        let cmd = (v >> 48) & 0xff;
        if device == 1 && cmd == 1 {
            // Console putchar.
            let _ = self.dev.uart.writer_mut().write_all(&[v as u8]);
            self.ram.write(addr, &[0; 8]);
            return None;
        }
        if device == 0 && v & 1 == 1 {
            return Some(RunOutcome::TestExit(v >> 1));
        }
        self.ram.write(addr, &[0; 8]);
        None
    }

    /// Runs every hart for one slice; returns quiesced (harts at instruction boundaries, device work done).
    /// When every hart waits it says until when ([`Round::Idle`]): the caller sleeps, not the board.
    pub fn step_round(&mut self) -> Round {
        self.dev.clock.resume();
        self.feed_uart();
        self.dev.poll_virtio();
        // Under protection, inputs the guest just took leave for the secondary before the guest runs on them
        // (the driver sends them between rounds): the window in which a request dies with the primary shrinks
        // to the moment it arrives. Not twice in a row, so a flood of input cannot starve the harts.
        let logged = self.dev.gate.lock().expect("gate lock").inputs_logged();
        if logged && !std::mem::replace(&mut self.flushed_inputs, true) {
            return Round::Ran;
        }
        self.flushed_inputs = false;
        let mut busy = false;
        for i in 0..self.harts.len() {
            self.update_irq_lines();
            let exit = self.harts[i].run(&self.ram, &mut self.dev, SLICE);
            match exit {
                Exit::Budget | Exit::MmioStore => busy = true,
                Exit::Wfi => {}
                Exit::Sbi => {
                    busy = true;
                    match sbi::handle(self, i) {
                        SbiOutcome::Continue => {}
                        SbiOutcome::Shutdown => return self.finish(RunOutcome::PowerOff),
                        SbiOutcome::Reboot => return self.finish(RunOutcome::Reboot),
                        SbiOutcome::Failure => {
                            return self.finish(RunOutcome::Crash("guest reported a system failure".into()));
                        }
                    }
                }
                Exit::MachineTrap { cause, tval, pc } => {
                    return self.finish(RunOutcome::Crash(format!(
                        "hart {i} took a trap no one handles (cause {cause:#x}, tval {tval:#x}) at pc {pc:#x}"
                    )));
                }
            }
            if let Some(out) = self.poll_htif() {
                return Round::Ended(out);
            }
            if let Some(out) = self.dev.reset_request.take() {
                return self.finish(out);
            }
        }
        if let Some(line) = self.dev.uart.writer().panic_end() {
            return Round::Ended(RunOutcome::Crash(format!("guest kernel panic: {line}")));
        }
        if busy {
            return Round::Ran;
        }
        // Every hart waits: until the next timer deadline, or input.
        match self.dev.clock.until(self.next_deadline()) {
            wait if wait.is_zero() => Round::Ran,
            wait => Round::Idle(wait),
        }
    }

    /// Stops guest time until the next round.
    pub fn stop_time(&mut self) {
        self.dev.clock.pause();
    }

    /// Announces every network interface's MAC (after the machine moved hosts), so switches learn its port.
    pub fn announce(&mut self) {
        let mut gate = self.dev.gate.lock().expect("gate lock");
        for t in &mut self.dev.virtio {
            t.announce(gate.effects());
        }
    }

    /// A reset request after a kernel panic is a crash, not a clean exit.
    fn finish(&mut self, outcome: RunOutcome) -> Round {
        let _ = self.dev.uart.writer_mut().flush();
        Round::Ended(match (&outcome, self.dev.uart.writer().panic_line()) {
            (RunOutcome::PowerOff | RunOutcome::Reboot, Some(line)) => {
                RunOutcome::Crash(format!("guest kernel panic: {line}"))
            }
            _ => outcome,
        })
    }
}

/// Creates the virtio devices of `cfg` in slot order: disks, network interfaces, entropy. Also returns what
/// the gate may take, and each interface's queue of received frames.
fn build_virtio(
    cfg: &MachineConfig,
    backend: &mut HostBackend,
    wake: Wake,
) -> Result<(Vec<MmioTransport>, Outlets, Vec<RxQueue>), BuildError> {
    let mut devices: Vec<MmioTransport> = Vec::new();
    let mut nic_rx = Vec::new();
    let mut outlets = Outlets { disk_bytes: Vec::new(), nics: cfg.nets.len() };
    for (i, d) in cfg.disks.iter().enumerate() {
        let path = d.path.display().to_string();
        let disk_err = |source| BuildError::Disk { path: path.clone(), source };
        // Checked before opening: a read-only open would accept a directory, and opening a FIFO would block.
        let kind = std::fs::metadata(&d.path).map_err(disk_err)?.file_type();
        if !kind.is_file() && !std::os::unix::fs::FileTypeExt::is_block_device(&kind) {
            let why = if kind.is_dir() { "is a directory" } else { "is not a regular file or a block device" };
            return Err(disk_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why)));
        }
        let open = |write: bool| std::fs::OpenOptions::new().read(true).write(write).open(&d.path).map_err(disk_err);
        let index = backend.add_disk(open(!d.readonly)?);
        let id = format!("kemari-disk{i}");
        let blk = Block::new(index, open(false)?, d.readonly, &id).map_err(disk_err)?;
        outlets.disk_bytes.push(blk.sectors() * 512);
        devices.push(MmioTransport::new(Box::new(blk)));
    }
    for n in &cfg.nets {
        let tap_err = |why: String| BuildError::Tap { tap: n.tap.clone(), why };
        let tap = Tap::open(&n.tap).map_err(|e| tap_err(e.to_string()))?;
        let index = backend.add_tap(tap.writer().map_err(|e| tap_err(e.to_string()))?);
        let rx = tap.spawn_reader(wake.clone()).map_err(|e| tap_err(e.to_string()))?;
        nic_rx.push(rx.clone());
        devices.push(MmioTransport::new(Box::new(Net::new(index, n.mac, rx))));
    }
    if cfg.rng {
        devices.push(MmioTransport::new(Box::new(Rng)));
    }
    if devices.len() > layout::VIRTIO_SLOTS {
        return Err(BuildError::TooManyDevices(devices.len()));
    }
    Ok((devices, outlets, nic_rx))
}
