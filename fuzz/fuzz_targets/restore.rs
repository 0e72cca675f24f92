//! Arbitrary bytes as a state stream: `StateFile::decode` with the board's sections, `peek_shape`, then
//! `apply_checkpoint` (= `restore_into` and its undo) and `restore_pages` on a 16 MiB, one-hart machine without
//! devices, built once per process. Never a panic, a hang, or an access outside the guest.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kemari_fuzz::check(data));
