//! The RISC-V board behind the machine seam (`kemari_machine::Machine`): the only way the runtime, migration
//! and replication reach it.

use std::sync::{Arc, Mutex};

use kemari_devices::gate::{Input, OutputGate};
use kemari_machine::{InputSink, Pages, Refused, Round, Shape};
use kemari_memory::GuestRam;
use kemari_state::StateError;

use crate::machine::Machine;

impl kemari_machine::Machine for Machine {
    fn shape(&self) -> Shape {
        Shape { arch: crate::persist::ARCH, cpus: self.harts.len(), memory: self.ram.size() }
    }

    fn memory(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    fn gate(&self) -> &Arc<Mutex<OutputGate>> {
        &self.dev.gate
    }

    fn step_round(&mut self) -> Round {
        Machine::step_round(self)
    }

    fn stop_time(&mut self) {
        Machine::stop_time(self)
    }

    fn instructions(&self) -> u64 {
        self.harts.iter().map(|h| h.state().instret).sum()
    }

    fn save(&self, pages: Pages) -> Result<Vec<u8>, StateError> {
        Machine::save(self, pages)
    }

    fn restore_pages(&mut self, bytes: &[u8]) -> Result<u64, StateError> {
        Machine::restore_pages(self, bytes)
    }

    fn apply_checkpoint(&mut self, bytes: &[u8]) -> Result<(), Refused> {
        Machine::apply_checkpoint(self, bytes).map_err(|e| Refused(e.to_string()))
    }

    fn max_state_len(&self) -> u64 {
        crate::persist::max_state_len(self.ram.size())
    }

    fn log_frames_on_arrival(&mut self, sink: Option<InputSink>) {
        Machine::log_frames_on_arrival(self, sink)
    }

    fn discard_received_frames(&mut self) -> usize {
        Machine::discard_received_frames(self)
    }

    fn replay_inputs(&mut self, inputs: Vec<Input>) -> usize {
        Machine::replay_inputs(self, inputs)
    }

    fn push_input(&mut self, bytes: &[u8]) {
        Machine::push_input(self, bytes)
    }

    fn announce(&mut self) {
        Machine::announce(self)
    }
}
