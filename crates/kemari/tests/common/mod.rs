//! Test support: start the real `kemari` binary on the real guest and talk to its console.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous bound on how long a guest may take to reach a console marker. It only keeps a broken build from
/// hanging the suite; no test asserts on time.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(300);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

pub fn kemari_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kemari"))
}

/// A guest artifact built by `scripts/guest-build`.
pub fn guest_file(name: &str) -> PathBuf {
    let p = repo_root().join("target/guest").join(name);
    assert!(p.exists(), "{} is missing: run scripts/guest-build first", p.display());
    p
}

/// A running kemari process with its console captured.
pub struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    /// How much of the output earlier `expect` calls consumed.
    seen: usize,
}

fn drain(mut r: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
}

impl Vm {
    pub fn start(args: &[&str]) -> Vm {
        let mut child = Command::new(kemari_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kemari");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        drain(child.stdout.take().unwrap(), out.clone());
        drain(child.stderr.take().unwrap(), err.clone());
        let stdin = child.stdin.take();
        Vm { child, stdin, out, err, seen: 0 }
    }

    /// Boots the built guest with `cpus` harts.
    pub fn boot(cpus: usize) -> Vm {
        let kernel = guest_file("Image");
        let initrd = guest_file("initramfs.cpio.gz");
        let cpus = cpus.to_string();
        let mut vm = Vm::start(&[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cpus",
            &cpus,
            "--memory",
            "256",
        ]);
        vm.expect("KEMARI-GUEST-READY");
        vm
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Waits until `needle` appears in the console output after what earlier calls consumed; returns the output
    /// up to and including it.
    pub fn expect(&mut self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            {
                let out = self.out.lock().unwrap();
                let hay = String::from_utf8_lossy(&out[self.seen..]).into_owned();
                if let Some(at) = hay.find(needle) {
                    let end = at + needle.len();
                    self.seen += hay[..end].len();
                    return hay[..end].to_string();
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "kemari exited ({status}) before printing {needle:?}\n--- console ---\n{}\n--- stderr ---\n{}",
                    self.output(),
                    self.stderr()
                );
            }
            if start.elapsed() > GUEST_TIMEOUT {
                let _ = self.child.kill();
                panic!("no {needle:?} on the console\n--- console ---\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types a line on the guest console.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Runs a shell command and returns what it printed between two unique markers.
    pub fn sh(&mut self, cmd: &str) -> String {
        // The markers are built by the shell from two parts, so the echoed command line never matches them.
        self.send(&format!("echo KM''-BEGIN; {cmd}; echo KM''-END"));
        self.expect("KM-BEGIN");
        let body = self.expect("KM-END");
        body.trim_end_matches("KM-END").trim().replace('\r', "")
    }

    /// Waits for the process to end.
    pub fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Let the drain threads pick up the last output.
                std::thread::sleep(Duration::from_millis(100));
                return s;
            }
            if start.elapsed() > GUEST_TIMEOUT {
                let _ = self.child.kill();
                panic!("kemari did not exit\n--- console ---\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs kemari to completion with no console input; returns (exit code, stdout, stderr).
pub fn run_to_end(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(kemari_bin()).args(args).stdin(Stdio::null()).output().expect("run kemari");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
