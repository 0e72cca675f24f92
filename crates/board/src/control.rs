//! Control requests and replies (served by the runtime, `kemari-runtime`, between rounds).

pub use kemari_machine::control::*;
