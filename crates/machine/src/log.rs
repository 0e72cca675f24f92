//! What kemari says on stderr: one line per event, prefixed with the VM's name when it has one
//! (`kemari[web1]: ...`), so that the logs of several VMs on one host tell them apart.

use std::sync::OnceLock;

static VM_NAME: OnceLock<String> = OnceLock::new();

/// Names the VM this process runs, for every later line (once; a second call is ignored).
pub fn set_vm_name(name: &str) {
    let _ = VM_NAME.set(name.to_string());
}

/// The VM's name, if it was given one.
pub fn vm_name() -> Option<&'static str> {
    VM_NAME.get().map(String::as_str)
}

/// The prefix of every line: `kemari: ` or `kemari[NAME]: `.
pub fn prefix() -> String {
    match vm_name() {
        Some(name) => format!("kemari[{name}]: "),
        None => "kemari: ".to_string(),
    }
}

/// Prints one line to stderr with the process's prefix (see the module doc).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}

/// Writes `msg` as one line in one write: stderr is unbuffered, and a line written in pieces can interleave
/// with another thread's, or be read half-written by whoever watches the log.
pub fn line(msg: std::fmt::Arguments) {
    use std::io::Write;
    let line = format!("{}{msg}\n", prefix());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
