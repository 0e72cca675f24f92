//! The real-world backend of the output gate: the console sink, disk image files and tap devices.
//!
//! This is the only code in kemari that writes to them.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::gate::{Backend, Effect};

/// Wakes the machine loop from another thread (e.g. when a frame arrived).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// Fault injection for tests: every disk flush takes this many more milliseconds (a slow shared disk).
pub const FLUSH_DELAY_ENV: &str = "KEMARI_FAULT_FLUSH_DELAY_MS";

pub struct HostBackend {
    console: Box<dyn Write + Send>,
    disks: Vec<File>,
    taps: Vec<File>,
    flush_delay: Option<std::time::Duration>,
}

impl HostBackend {
    pub fn new(console: Box<dyn Write + Send>) -> HostBackend {
        let flush_delay =
            std::env::var(FLUSH_DELAY_ENV).ok().and_then(|v| v.parse().ok()).map(std::time::Duration::from_millis);
        HostBackend { console, disks: Vec::new(), taps: Vec::new(), flush_delay }
    }

    /// Registers a disk's write handle; returns its index for `Effect::BlockWrite`.
    pub fn add_disk(&mut self, file: File) -> usize {
        self.disks.push(file);
        self.disks.len() - 1
    }

    /// Registers a tap's write handle; returns its index for `Effect::NetTx`.
    pub fn add_tap(&mut self, file: File) -> usize {
        self.taps.push(file);
        self.taps.len() - 1
    }
}

fn unknown(what: &str, i: usize) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no {what} {i}"))
}

impl Backend for HostBackend {
    fn perform(&mut self, effect: &Effect) -> io::Result<()> {
        match effect {
            Effect::Console(bytes) => {
                self.console.write_all(bytes)?;
                self.console.flush()
            }
            Effect::NetTx { nic, frame } => {
                let tap = self.taps.get(*nic).ok_or_else(|| unknown("tap", *nic))?;
                // A tap takes one frame per write; a short write would be a truncated frame.
                let n = (&*tap).write(frame)?;
                if n != frame.len() {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "short write to tap"));
                }
                Ok(())
            }
            Effect::BlockWrite { disk, offset, data } => {
                self.disks.get(*disk).ok_or_else(|| unknown("disk", *disk))?.write_all_at(data, *offset)
            }
            Effect::BlockFlush { disk } => {
                let file = self.disks.get(*disk).ok_or_else(|| unknown("disk", *disk))?;
                if let Some(delay) = self.flush_delay {
                    std::thread::sleep(delay);
                }
                file.sync_data()
            }
        }
    }
}
