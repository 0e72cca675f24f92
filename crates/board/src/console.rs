//! The console's output side: bytes the guest writes to the UART (or SBI putchar) go to a sink, and the board
//! watches them for the kernel's panic banner so that a crashed guest ends the run with a clear message.

use std::io::{self, Write};

const PANIC_START: &str = "Kernel panic - not syncing";
const PANIC_END: &str = "---[ end Kernel panic";

pub struct ConsoleOut {
    sink: Box<dyn Write + Send>,
    line: Vec<u8>,
    panic_line: Option<String>,
    panic_end: Option<String>,
}

impl ConsoleOut {
    pub fn new(sink: Box<dyn Write + Send>) -> ConsoleOut {
        ConsoleOut { sink, line: Vec::new(), panic_line: None, panic_end: None }
    }

    /// The first kernel panic line seen, if any.
    pub fn panic_line(&self) -> Option<&str> {
        self.panic_line.as_deref()
    }

    /// Set once the kernel printed the end of its panic report (it will do nothing more).
    pub fn panic_end(&self) -> Option<&str> {
        self.panic_end.as_ref().and(self.panic_line.as_deref())
    }

    fn scan(&mut self, byte: u8) {
        if byte != b'\n' {
            if self.line.len() < 512 {
                self.line.push(byte);
            }
            return;
        }
        let line = String::from_utf8_lossy(&self.line).trim_end().to_string();
        self.line.clear();
        if self.panic_line.is_none() {
            if let Some(at) = line.find(PANIC_START) {
                self.panic_line = Some(line[at..].to_string());
            }
        } else if line.contains(PANIC_END) {
            self.panic_end = Some(line);
        }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.scan(b);
        }
        self.sink.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}
