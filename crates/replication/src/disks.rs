//! Replicated disks brought in step at the start of every session.
//!
//! With `--storage replicated` each node has its own copy of each disk image. From the first checkpoint on, the
//! secondary's copy sees every write the primary's does (block writes travel inside checkpoints). What the two
//! copies held before that is not known in general:
//! - a fresh pair was given the same image (the copies are equal);
//! - a node that took over ran on its copy without a secondary, and the standby that comes to protect it again
//!   (typically the old primary's host, with the old primary's image) lacks what was written since, and the
//!   writes the old primary had not released yet when it died;
//! - a primary whose standby died went on alone and wrote; an operator brought a copy from elsewhere, or a
//!   blank image.
//!
//! So every session with replicated disks begins by comparing the copies, chunk by chunk:
//!
//! ```text
//!  secondary: reads its copy, SHA-256 of every CHUNK ──DIGESTS (disk, first chunk, digests)──►  primary
//!                                                        reads the same chunk of its copy; one that differs:
//!                                         ◄──DISK (disk, offset, the chunk)──
//!  ... the first CHECKPOINT follows the last DISK on the same ordered link
//! ```
//!
//! This finds exactly the chunks that differ, whatever happened to either copy; a blank image gets every
//! non-empty chunk (the full copy), equal copies get nothing. It costs one read of each copy (both hosts at
//! once, on threads of their own, so the guest runs on meanwhile); only differing chunks cross the link.
//!
//! Why the result is consistent: from the start of the session the primary's gate holds every guest write, so
//! the primary's copy does not change until the first checkpoint is acknowledged, and that checkpoint is queued
//! only after the last DISK. The secondary writes chunks only before its first commit, and makes them durable
//! before committing it; the commit then applies the held writes on top, in order.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes per compared chunk: a changed block costs at most this on the link; a digest per chunk costs 1/2048
/// of the disk (32 MiB of digests for 64 GiB), sent while the guest runs.
pub const CHUNK: u64 = 64 << 10;
/// Digests per DIGESTS message (32 KiB of them: below the primary's cap on what a secondary sends).
pub const DIGESTS_PER_MESSAGE: usize = 1024;
const DIGEST: usize = 32;
/// The disk index and the first chunk (DIGESTS) or byte offset (DISK) at the front of each message.
const HEAD: usize = 4 + 8;
/// How often the primary reports progress.
const REPORT_EVERY: Duration = Duration::from_secs(2);

type Digest = [u8; DIGEST];

fn digest(data: &[u8]) -> Digest {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn chunks_of(size: u64) -> u64 {
    size.div_ceil(CHUNK)
}

/// Bytes of chunk `index` of a disk of `size` bytes (the last one may be short).
fn chunk_len(size: u64, index: u64) -> usize {
    CHUNK.min(size - index * CHUNK) as usize
}

fn head(disk: usize, at: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEAD);
    v.extend_from_slice(&(disk as u32).to_le_bytes());
    v.extend_from_slice(&at.to_le_bytes());
    v
}

fn split_head(payload: &[u8]) -> Result<(usize, u64, &[u8]), String> {
    if payload.len() < HEAD {
        return Err("disk message too short".into());
    }
    let disk = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
    let at = u64::from_le_bytes(payload[4..HEAD].try_into().expect("8 bytes"));
    Ok((disk, at, &payload[HEAD..]))
}

// ------------------------------------------------------------------------------------------ secondary side --

/// Reads the secondary's copies and hands DIGESTS payloads to `out`, disk by disk, in chunk order. Runs on a
/// thread of its own; ends early when `out` is gone (the session ended). A read error is handed over too.
pub fn digest_copies(paths: Vec<PathBuf>, out: Sender<io::Result<Vec<u8>>>) {
    let run = || -> io::Result<()> {
        let mut buf = vec![0u8; CHUNK as usize];
        for (disk, path) in paths.iter().enumerate() {
            let file = File::open(path)?;
            let size = kemari_devices::virtio::blk::image_size(&file)?;
            let mut msg = head(disk, 0);
            for index in 0..chunks_of(size) {
                let data = &mut buf[..chunk_len(size, index)];
                file.read_exact_at(data, index * CHUNK)?;
                msg.extend_from_slice(&digest(data));
                if msg.len() == HEAD + DIGESTS_PER_MESSAGE * DIGEST || index + 1 == chunks_of(size) {
                    let next = head(disk, index + 1);
                    if out.send(Ok(std::mem::replace(&mut msg, next))).is_err() {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    };
    if let Err(e) = run() {
        let _ = out.send(Err(e));
    }
}

/// The secondary's copies, written with the chunks the primary sends.
pub struct Replica {
    disks: Vec<(File, u64)>,
    /// Chunks written (and bytes), reported when the copies are in step.
    pub chunks: u64,
    pub bytes: u64,
}

impl Replica {
    pub fn open(paths: &[&Path]) -> io::Result<Replica> {
        let disks = paths
            .iter()
            .map(|p| {
                let f = File::options().read(true).write(true).open(p)?;
                let size = kemari_devices::virtio::blk::image_size(&f)?;
                Ok((f, size))
            })
            .collect::<io::Result<_>>()?;
        Ok(Replica { disks, chunks: 0, bytes: 0 })
    }

    /// Writes one DISK message's chunk (untrusted: it must be a whole chunk of a disk this node has).
    pub fn write(&mut self, payload: &[u8]) -> Result<(), String> {
        let (disk, offset, data) = split_head(payload)?;
        let Some((file, size)) = self.disks.get(disk) else {
            return Err(format!("a chunk for disk {disk}, which this node does not have"));
        };
        if offset % CHUNK != 0 || offset >= *size || data.len() != chunk_len(*size, offset / CHUNK) {
            return Err(format!("a chunk of {} bytes at {offset} does not fit disk {disk} ({size} bytes)", data.len()));
        }
        file.write_all_at(data, offset).map_err(|e| format!("writing disk {disk} at {offset}: {e}"))?;
        self.chunks += 1;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Makes what was written durable (before the first commit builds on it).
    pub fn sync(&self) -> io::Result<()> {
        if self.chunks > 0 {
            for (f, _) in &self.disks {
                f.sync_data()?;
            }
        }
        Ok(())
    }
}

// -------------------------------------------------------------------------------------------- primary side --

/// What the comparison has done so far (shown by `status` while it runs, and kept afterwards).
#[derive(Default)]
pub struct Progress {
    pub compared: AtomicU64,
    pub differed: AtomicU64,
    pub total: u64,
    pub done: AtomicBool,
    pub failed: Mutex<Option<String>>,
}

impl Progress {
    pub fn report(&self) -> kemari_runtime::control::DiskComparison {
        kemari_runtime::control::DiskComparison {
            compared_bytes: self.compared.load(Ordering::Relaxed),
            total_bytes: self.total,
            differed_bytes: self.differed.load(Ordering::Relaxed),
            done: self.done.load(Ordering::SeqCst),
        }
    }
}

/// Queues a DISK payload on the link, in order with everything else; fails once the link is gone.
pub type Send = Box<dyn FnMut(Vec<u8>) -> Result<(), String> + std::marker::Send>;

/// The primary's side: a thread that takes the secondary's digests, compares them with this node's copies and
/// sends each chunk that differs, while the guest runs and writes on. Its writes are not held meanwhile: the
/// gate notes the chunks they touch ([`kemari_devices::gate::OutputGate::track_block_writes`]) and
/// [`Comparison::resend`] sends those again once the gate holds.
pub struct Comparison {
    pub progress: Arc<Progress>,
    copies: Arc<Vec<(File, u64)>>,
}

impl Comparison {
    /// Starts the thread. `digests` brings the secondary's DIGESTS payloads (from the link's reader).
    pub fn start(paths: &[PathBuf], digests: Receiver<Vec<u8>>, send: Send) -> io::Result<Comparison> {
        let copies = paths
            .iter()
            .map(|p| {
                let f = File::open(p)?;
                let size = kemari_devices::virtio::blk::image_size(&f)?;
                Ok((f, size))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let copies = Arc::new(copies);
        let progress = Arc::new(Progress { total: copies.iter().map(|c| c.1).sum(), ..Progress::default() });
        let (p, c) = (progress.clone(), copies.clone());
        std::thread::Builder::new().name("disk-compare".into()).spawn(move || {
            let next = vec![0; c.len()];
            let mut work = Work { copies: c, next, pending: VecDeque::new(), send, progress: p.clone() };
            match work.run(&digests) {
                Ok(()) => p.done.store(true, Ordering::SeqCst),
                Err(e) => *p.failed.lock().expect("progress lock") = Some(e),
            }
        })?;
        Ok(Comparison { progress, copies })
    }

    /// Every chunk compared and every differing one queued on the link.
    pub fn done(&self) -> bool {
        self.progress.done.load(Ordering::SeqCst)
    }

    pub fn failed(&self) -> Option<String> {
        self.progress.failed.lock().expect("progress lock").clone()
    }

    /// Sends `chunks` ((disk, chunk) pairs) as they are on this node's copies now. Returns the bytes sent.
    pub fn resend(
        &self,
        chunks: &[(usize, u64)],
        send: &mut dyn FnMut(Vec<u8>) -> Result<(), String>,
    ) -> Result<u64, String> {
        let mut bytes = 0;
        for &(disk, index) in chunks {
            let Some((file, size)) = self.copies.get(disk).filter(|(_, size)| index < chunks_of(*size)) else {
                continue; // past the end of the disk: the guest's write failed, nothing to send
            };
            let mut msg = head(disk, index * CHUNK);
            msg.resize(HEAD + chunk_len(*size, index), 0);
            file.read_exact_at(&mut msg[HEAD..], index * CHUNK).map_err(|e| format!("reading disk {disk}: {e}"))?;
            bytes += (msg.len() - HEAD) as u64;
            send(msg)?;
        }
        Ok(bytes)
    }
}

struct Work {
    copies: Arc<Vec<(File, u64)>>,
    /// Per disk, the next chunk whose digest the secondary owes.
    next: Vec<u64>,
    pending: VecDeque<(usize, u64, Digest)>,
    send: Send,
    progress: Arc<Progress>,
}

impl Work {
    fn run(&mut self, digests: &Receiver<Vec<u8>>) -> Result<(), String> {
        let started = Instant::now();
        let mut reported = Instant::now();
        let mut buf = vec![0u8; CHUNK as usize];
        while self.next.iter().zip(self.copies.iter()).any(|(n, c)| *n < chunks_of(c.1)) || !self.pending.is_empty() {
            if self.pending.is_empty() {
                let payload = digests.recv().map_err(|_| "the link to the secondary closed".to_string())?;
                self.accept(&payload)?;
            }
            while let Some((disk, index, theirs)) = self.pending.pop_front() {
                let (file, size) = &self.copies[disk];
                let data = &mut buf[..chunk_len(*size, index)];
                file.read_exact_at(data, index * CHUNK).map_err(|e| format!("reading disk {disk}: {e}"))?;
                if digest(data) != theirs {
                    let mut msg = head(disk, index * CHUNK);
                    msg.extend_from_slice(data);
                    (self.send)(msg)?;
                    self.progress.differed.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                self.progress.compared.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            if reported.elapsed() >= REPORT_EVERY {
                reported = Instant::now();
                kemari_machine::say!("replicated disks: {}", self.describe());
            }
        }
        kemari_machine::say!("replicated disks: {} in {} ms", self.describe(), started.elapsed().as_millis());
        Ok(())
    }

    fn describe(&self) -> String {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        format!(
            "compared {:.1} of {:.1} MiB with the secondary's copy; {:.1} MiB differed and were sent",
            mib(self.progress.compared.load(Ordering::Relaxed)),
            mib(self.progress.total),
            mib(self.progress.differed.load(Ordering::Relaxed)),
        )
    }

    /// Takes one DIGESTS payload (untrusted): the next chunks of one disk, in order.
    fn accept(&mut self, payload: &[u8]) -> Result<(), String> {
        let (disk, first, digests) = split_head(payload)?;
        let (Some(next), Some((_, size))) = (self.next.get_mut(disk), self.copies.get(disk)) else {
            return Err(format!("the secondary sent digests for disk {disk}, which this node does not have"));
        };
        let n = (digests.len() / DIGEST) as u64;
        if digests.len() % DIGEST != 0 || n == 0 || first != *next || first + n > chunks_of(*size) {
            return Err(format!(
                "the secondary sent {} bytes of digests for chunk {first} of disk {disk}, expected chunk {next} of {}",
                digests.len(),
                chunks_of(*size)
            ));
        }
        *next += n;
        for (i, d) in digests.chunks_exact(DIGEST).enumerate() {
            self.pending.push_back((disk, first + i as u64, d.try_into().expect("32 bytes")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Image(PathBuf);

    impl Image {
        fn new(tag: &str, data: &[u8]) -> Image {
            let p = std::env::temp_dir().join(format!("kemari-disks-{}-{tag}", std::process::id()));
            std::fs::write(&p, data).unwrap();
            Image(p)
        }
        fn read(&self) -> Vec<u8> {
            std::fs::read(&self.0).unwrap()
        }
    }

    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Runs both sides over channels (the link) until the comparison is done; returns the chunks sent.
    fn bring_in_step(primary: &[&Image], secondary: &[&Image]) -> u64 {
        let (digests_tx, digests_rx) = mpsc::channel();
        let paths: Vec<PathBuf> = secondary.iter().map(|i| i.0.clone()).collect();
        let reader = std::thread::spawn(move || digest_copies(paths, digests_tx));
        let (disk_tx, disk_rx) = mpsc::channel();
        let (to_compare, compare_rx) = mpsc::channel();
        let send = Box::new(move |m: Vec<u8>| disk_tx.send(m).map_err(|e| e.to_string()));
        let ours: Vec<PathBuf> = primary.iter().map(|i| i.0.clone()).collect();
        let cmp = Comparison::start(&ours, compare_rx, send).unwrap();
        for d in digests_rx {
            to_compare.send(d.unwrap()).unwrap();
        }
        reader.join().unwrap();
        while !cmp.done() {
            assert_eq!(cmp.failed(), None);
            std::thread::sleep(Duration::from_millis(1));
        }
        let secondary_paths: Vec<&Path> = secondary.iter().map(|i| i.0.as_path()).collect();
        let mut replica = Replica::open(&secondary_paths).unwrap();
        for m in disk_rx.try_iter() {
            replica.write(&m).unwrap();
        }
        replica.sync().unwrap();
        replica.chunks
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn only_the_chunks_that_differ_are_sent_and_the_copies_end_equal() {
        // Two disks; the second is not a whole number of chunks. Chunks 0, 5 and the short last one differ on
        // the first disk, none on the second.
        let len = 7 * CHUNK as usize + 100;
        let ours = pattern(len, 1);
        let mut theirs = ours.clone();
        theirs[10] ^= 1;
        theirs[5 * CHUNK as usize + 4000] ^= 0x80;
        theirs[len - 1] ^= 1;
        let (p, s) = (Image::new("p0", &ours), Image::new("s0", &theirs));
        let other = pattern(3 * CHUNK as usize, 9);
        let (p2, s2) = (Image::new("p1", &other), Image::new("s1", &other));
        assert_eq!(bring_in_step(&[&p, &p2], &[&s, &s2]), 3);
        assert!(s.read() == ours && s2.read() == other, "the secondary's copies equal the primary's");
        assert_eq!(bring_in_step(&[&p, &p2], &[&s, &s2]), 0, "equal copies cost nothing but the reads");
    }

    #[test]
    fn a_blank_copy_gets_every_chunk_that_is_not_blank() {
        let mut ours = pattern(4 * CHUNK as usize, 3);
        ours[CHUNK as usize..2 * CHUNK as usize].fill(0);
        let (p, s) = (Image::new("p2", &ours), Image::new("s2", &vec![0; ours.len()]));
        assert_eq!(bring_in_step(&[&p], &[&s]), 3);
        assert!(s.read() == ours);
    }

    #[test]
    fn hostile_digests_and_chunks_are_refused() {
        let data = pattern(2 * CHUNK as usize, 5);
        let img = Image::new("h", &data);
        let mut work = Work {
            copies: Arc::new(vec![(File::open(&img.0).unwrap(), data.len() as u64)]),
            next: vec![0],
            pending: VecDeque::new(),
            send: Box::new(|_| Ok(())),
            progress: Arc::default(),
        };
        let digests = |disk: usize, first: u64, n: usize| {
            let mut m = head(disk, first);
            m.extend(std::iter::repeat_n(0u8, n * DIGEST));
            m
        };
        assert!(work.accept(&digests(1, 0, 1)).unwrap_err().contains("does not have"));
        assert!(work.accept(&digests(0, 1, 1)).is_err(), "out of order");
        assert!(work.accept(&digests(0, 0, 3)).is_err(), "past the end");
        assert!(work.accept(&digests(0, 0, 0)).is_err(), "empty");
        let mut ragged = digests(0, 0, 1);
        ragged.pop();
        assert!(work.accept(&ragged).is_err(), "not whole digests");
        assert!(work.accept(&[0; 5]).is_err(), "truncated head");
        work.accept(&digests(0, 0, 2)).unwrap();
        assert!(work.accept(&digests(0, 2, 1)).is_err(), "more than the disk has");

        let mut replica = Replica::open(&[img.0.as_path()]).unwrap();
        let chunk = |disk: usize, offset: u64, len: usize| {
            let mut m = head(disk, offset);
            m.extend(std::iter::repeat_n(7u8, len));
            m
        };
        assert!(replica.write(&chunk(1, 0, CHUNK as usize)).is_err(), "another disk");
        assert!(replica.write(&chunk(0, 1, CHUNK as usize)).is_err(), "unaligned");
        assert!(replica.write(&chunk(0, 2 * CHUNK, CHUNK as usize)).is_err(), "past the end");
        assert!(replica.write(&chunk(0, 0, 10)).is_err(), "short");
        assert_eq!(img.read(), data, "nothing refused was written");
        replica.write(&chunk(0, CHUNK, CHUNK as usize)).unwrap();
        assert_eq!(&img.read()[CHUNK as usize..], &vec![7u8; CHUNK as usize][..]);
    }
}
