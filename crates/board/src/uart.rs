//! The 16550 UART (vm-superio's `Serial`) as the board wires it: its interrupt line, its output through the
//! gate, and its part of the machine state (the UART section).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kemari_devices::gate::{Effect, SharedEffects};
use kemari_state::{Reader, StateError, Writer};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

use crate::console::ConsoleOut;

pub type Uart = Serial<UartIrq, NoEvents, ConsoleOut>;

/// Bytes a 16550's receive FIFO holds.
const FIFO_BYTES: usize = 64;

/// A UART whose interrupt raises `irq` and whose output is an effect handed to `gate`.
pub fn new(irq: UartIrq, gate: SharedEffects) -> Uart {
    Serial::new(irq, ConsoleOut::new(Box::new(GateConsole(gate))))
}

/// Writes the registers and the receive FIFO.
pub fn save(u: &Uart, w: &mut Writer) {
    let mut s = u.state();
    for v in registers(&mut s) {
        w.u8(*v);
    }
    w.bytes(&s.in_buffer);
}

/// Decodes what `save` wrote into a UART wired like [`new`]'s; applying it is assigning it.
pub fn decode_state(r: &mut Reader, irq: UartIrq, gate: SharedEffects) -> Result<Uart, StateError> {
    let mut s = SerialState::default();
    for v in registers(&mut s) {
        *v = r.u8()?;
    }
    s.in_buffer = r.bytes(FIFO_BYTES)?.to_vec();
    Serial::from_state(&s, irq, NoEvents, ConsoleOut::new(Box::new(GateConsole(gate))))
        .map_err(|e| StateError::Invalid { tag: "UART".into(), why: format!("{e:?}") })
}

/// The registers a save carries, in stream order.
fn registers(s: &mut SerialState) -> [&mut u8; 9] {
    [
        &mut s.baud_divisor_low,
        &mut s.baud_divisor_high,
        &mut s.interrupt_enable,
        &mut s.interrupt_identification,
        &mut s.line_control,
        &mut s.line_status,
        &mut s.modem_control,
        &mut s.modem_status,
        &mut s.scratch,
    ]
}

/// UART interrupt trigger: vm-superio calls it; the board forwards it to the PLIC between accesses.
#[derive(Clone, Default)]
pub struct UartIrq(Arc<AtomicBool>);

impl UartIrq {
    /// Whether the UART raised its line since the last call.
    pub(crate) fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

impl Trigger for UartIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Console output as an effect: the UART's bytes leave through the gate like every other effect.
struct GateConsole(SharedEffects);

impl Write for GateConsole {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.with(|gate| gate.submit(Effect::Console(buf.to_vec())))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use kemari_devices::gate::{OutputGate, Recorder};

    use super::*;

    fn gate() -> SharedEffects {
        SharedEffects::new(&Arc::new(Mutex::new(OutputGate::new(Box::new(Recorder::default())))))
    }

    #[test]
    fn state_round_trips_and_an_overfull_fifo_is_refused() {
        let mut u = new(UartIrq::default(), gate());
        u.write(3, 0x83).unwrap(); // line control: DLAB, 8 bits
        u.write(0, 0x0c).unwrap(); // divisor low
        u.write(3, 0x03).unwrap();
        u.write(7, 0x5a).unwrap(); // scratch
        u.enqueue_raw_bytes(b"typed").unwrap();
        let mut w = Writer::default();
        save(&u, &mut w);
        let back = decode_state(&mut Reader::new(&w.0, "UART"), UartIrq::default(), gate()).unwrap();
        let mut again = Writer::default();
        save(&back, &mut again);
        assert_eq!(w.0, again.0);
        assert_eq!(back.state().in_buffer, b"typed");

        let mut w = Writer::default();
        for v in registers(&mut u.state()) {
            w.u8(*v);
        }
        w.bytes(&[b'x'; FIFO_BYTES + 1]);
        assert!(decode_state(&mut Reader::new(&w.0, "UART"), UartIrq::default(), gate()).is_err());
    }
}
