//! virtio devices behind the virtio-mmio transport ([`mmio::MmioTransport`]).
//!
//! A device implements [`VirtioDevice`]: it describes itself (type, features, queue sizes, config space) and
//! processes its queues when the driver notifies them. Queues belong to the transport (their state is
//! transport state, saved in one place); the device gets them, guest memory and the gate's [`Effects`] handle
//! for each call. Every effect a device has on the outside goes through the gate; devices hold no handle that
//! writes to the outside world, and cannot hold or release effects.

pub mod blk;
pub(crate) mod chain;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
pub(crate) mod testing;

use virtio_queue::Queue;

use crate::gate::Effects;
use crate::memory::GuestMemory;

/// virtio device IDs.
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const RNG: u32 = 4;
}

/// Feature bit every modern device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// What a device call needs besides the device itself.
pub struct Ctx<'a> {
    pub queues: &'a mut [Queue],
    pub mem: &'a GuestMemory,
    pub gate: Effects<'a>,
}

/// Outcome of processing: whether the used ring changed (the transport then interrupts the driver), and
/// whether the guest misprogrammed the device beyond recovery (the transport sets DEVICE_NEEDS_RESET).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Processed {
    pub used: bool,
    pub failed: bool,
}

pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Device-specific feature bits offered (the transport adds `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (most devices ignore writes).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK with these features.
    fn activate(&mut self, _acked_features: u64) {}
    /// The driver notified queue `index`.
    fn process_queue(&mut self, index: usize, ctx: &mut Ctx) -> Processed;
    /// Called by the machine loop between slices: brings in work from outside (e.g. received frames).
    fn poll(&mut self, _ctx: &mut Ctx) -> Processed {
        Processed::default()
    }
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// Makes the device known on its network after the VM moved hosts (network devices send RARP).
    fn announce(&mut self, _gate: &mut Effects) {}
    /// Device-specific state beyond queues and registers (most devices have none).
    fn save(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Checks and decodes what `save` produced (the bytes are untrusted) without changing the device.
    fn decode_state(&self, state: &[u8]) -> Result<DeviceState, String> {
        if state.is_empty() {
            Ok(DeviceState::new(()))
        } else {
            Err(format!("{} unexpected bytes of device state", state.len()))
        }
    }
    /// Applies what this device's `decode_state` returned; cannot fail.
    fn apply_state(&mut self, _state: DeviceState) {}
}

/// A device's own state as its [`VirtioDevice::decode_state`] decoded it, for its `apply_state`. Opaque to the
/// transport, which keeps each device's state with the device that decoded it.
pub struct DeviceState(Box<dyn std::any::Any + Send>);

impl DeviceState {
    pub fn new<T: std::any::Any + Send>(state: T) -> DeviceState {
        DeviceState(Box::new(state))
    }

    /// The state a device decoded; panics on another type, which only a device applying another device's
    /// state could cause (the transport never does).
    pub fn take<T: std::any::Any>(self) -> T {
        *self.0.downcast::<T>().expect("a device's own decoded state")
    }
}
