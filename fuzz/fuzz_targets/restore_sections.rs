//! Like `restore`, but the input is a list of sections (`selector u8, len u16 LE, payload`) that is framed with
//! valid CRCs before it is restored, so mutations reach the value checks behind the checksums instead of
//! dying at the first CRC.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kemari_fuzz::check(&kemari_fuzz::framed(data)));
