//! The user's console: stdin feeds the guest's UART; on a terminal it is in raw mode and Ctrl-A x quits, as
//! in QEMU. The terminal mode is restored when the console is dropped.
//!
//! SIGTERM, SIGINT and SIGHUP quit the same way (a service manager stopping kemari, or the terminal going
//! away): the run ends through the normal path, which restores the terminal and removes the control socket.
//! A second signal while that takes its time ends the process at once.

use std::io::Read;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use kemari_devices::host::Wake;

use kemari_runtime::Event;

const CTRL_A: u8 = 0x01;

pub struct Console {
    rx: Receiver<Event>,
    tx: Sender<Event>,
    saved: Option<libc::termios>,
}

impl Console {
    pub fn start() -> Console {
        let saved = raw_mode();
        let (tx, rx) = channel();
        let tx_keep = tx.clone();
        let escapes = saved.is_some();
        std::thread::Builder::new()
            .name("console-in".into())
            .spawn(move || {
                let mut stdin = std::io::stdin().lock();
                let mut buf = [0u8; 256];
                let mut after_escape = false;
                loop {
                    let n = match stdin.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut out = Vec::with_capacity(n);
                    for &b in &buf[..n] {
                        if escapes && after_escape {
                            after_escape = false;
                            match b {
                                b'x' | b'X' => {
                                    let _ = tx.send(Event::Quit);
                                    return;
                                }
                                CTRL_A => out.push(CTRL_A),
                                _ => {}
                            }
                        } else if escapes && b == CTRL_A {
                            after_escape = true;
                        } else {
                            out.push(b);
                        }
                    }
                    if !out.is_empty() && tx.send(Event::Console(out)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn console thread");
        quit_on_signals(tx_keep.clone(), saved);
        Console { rx, tx: tx_keep, saved }
    }

    pub fn input(&self) -> &Receiver<Event> {
        &self.rx
    }

    /// A sender into the machine loop's event channel (for the control API).
    pub fn sender(&self) -> Sender<Event> {
        self.tx.clone()
    }

    /// Wakes the machine loop from a device thread.
    pub fn waker(&self) -> Wake {
        let tx = Mutex::new(self.tx.clone());
        Arc::new(move || {
            let _ = tx.lock().map(|t| t.send(Event::Wake));
        })
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores the attributes read from fd 0 by `raw_mode`; the struct is fully initialised.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// Turns SIGTERM, SIGINT and SIGHUP into a quit request; a second one exits at once (terminal restored).
fn quit_on_signals(tx: Sender<Event>, saved: Option<libc::termios>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            kemari_board::say!("cannot handle termination signals ({e}); they end kemari at once");
            return;
        }
    };
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut asked = false;
        for sig in signals.forever() {
            if asked {
                if let Some(t) = saved {
                    // SAFETY: restores the attributes read from fd 0 by `raw_mode`; the struct is fully initialised.
                    unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
                }
                kemari_board::say!("signal {sig} again: exiting now");
                std::process::exit(128 + sig);
            }
            asked = true;
            kemari_board::say!("signal {sig}: quitting");
            let _ = tx.send(Event::Quit);
        }
    });
    if let Err(e) = spawned {
        kemari_board::say!("cannot handle termination signals ({e})");
    }
}

/// Puts a terminal stdin in raw mode; returns the previous attributes, or None when stdin is not a terminal.
fn raw_mode() -> Option<libc::termios> {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(0) } != 1 {
        return None;
    }
    // SAFETY: termios is plain data; tcgetattr fills it and we check its result before use.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 is a terminal (checked above) and `t` is a valid out-pointer.
    if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
        return None;
    }
    let saved = t;
    // SAFETY: cfmakeraw only edits the struct we own.
    unsafe { libc::cfmakeraw(&mut t) };
    // Keep output post-processing so the host terminal renders the guest's "\n" sensibly.
    t.c_oflag |= libc::OPOST;
    // SAFETY: applies attributes to fd 0, a terminal.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
    Some(saved)
}
