//! virtio-rng: entropy from the host's getrandom for every writable buffer the driver posts.
//!
//! Entropy flows into the guest only (an input), so nothing passes the output gate.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{device_type, Ctx, Processed, VirtioDevice};

/// Largest request served at once; bigger buffers get a partial fill, which the spec allows.
const MAX_CHUNK: u32 = 64 * 1024;

#[derive(Default)]
pub struct Rng;

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[64]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(&mut self, _index: usize, ctx: &mut Ctx) -> Processed {
        let mut out = Processed::default();
        let q: &mut Queue = &mut ctx.queues[0];
        while let Some(chain) = q.pop_descriptor_chain(ctx.mem) {
            let head = chain.head_index();
            let mut written = 0u32;
            for desc in chain {
                if !desc.is_write_only() {
                    continue;
                }
                let len = desc.len().min(MAX_CHUNK - written);
                let mut buf = vec![0u8; len as usize];
                if getrandom(&mut buf).is_err() || ctx.mem.write_slice(&buf, GuestAddress(desc.addr().0)).is_err() {
                    break;
                }
                written += len;
                if written >= MAX_CHUNK {
                    break;
                }
            }
            if q.add_used(ctx.mem, head, written).is_err() {
                out.failed = true;
                return out;
            }
            out.used = true;
        }
        out
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which we own mutably.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}
