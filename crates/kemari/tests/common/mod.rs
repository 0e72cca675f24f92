//! Test support: start the real `kemari` binary on the real guest and talk to its console.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
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

/// `kemari run` of the built guest (kernel and initramfs), then `extra`.
pub fn guest_run(extra: &[&str]) -> Vec<String> {
    let kernel = guest_file("Image").display().to_string();
    let initrd = guest_file("initramfs.cpio.gz").display().to_string();
    let mut args: Vec<String> = vec!["run".into(), "--kernel".into(), kernel, "--initrd".into(), initrd];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
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
        Vm::start_with_env(args, &[])
    }

    /// Starts kemari with more environment variables (e.g. a fault to inject).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Vm {
        let mut child = Command::new(kemari_bin())
            .args(args)
            .envs(env.iter().copied())
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
        let args = guest_run(&["--cpus", &cpus.to_string(), "--memory", "256"]);
        let mut vm = Vm::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
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

    /// The kemari process id (for signals).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends signal `sig` (e.g. `libc::SIGKILL`, `libc::SIGSTOP`) to the kemari process. Panics if it already
    /// ended (its pid could belong to someone else once reaped).
    pub fn signal(&mut self, sig: i32) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("kemari already exited ({status}) before signal {sig}\n--- stderr ---\n{}", self.stderr());
        }
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet (checked above), so it is still ours.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}): {}", self.pid(), std::io::Error::last_os_error());
    }

    /// Everything the process printed on stdout so far, as bytes.
    pub fn output_bytes(&self) -> Vec<u8> {
        self.out.lock().unwrap().clone()
    }

    /// How many bytes the process printed on stdout so far.
    pub fn output_len(&self) -> usize {
        self.out.lock().unwrap().len()
    }

    /// How many complete lines the process printed on stderr so far (a mark for [`Vm::expect_stderr_after`]).
    pub fn stderr_lines(&self) -> usize {
        self.err.lock().unwrap().iter().filter(|&&b| b == b'\n').count()
    }

    /// Waits until a line of stderr (from the start, nothing is consumed) contains `needle`; returns that line.
    /// Panics with both streams if the process exits first or after [`GUEST_TIMEOUT`].
    pub fn expect_stderr(&mut self, needle: &str) -> String {
        self.expect_stderr_after(needle, 0)
    }

    /// Like [`Vm::expect_stderr`], looking only at lines after the first `mark` ones (see [`Vm::stderr_lines`]).
    pub fn expect_stderr_after(&mut self, needle: &str, mark: usize) -> String {
        // Whole lines only: the last one may still be arriving.
        let find = |vm: &Vm| {
            let err = vm.stderr();
            let whole = &err[..err.rfind('\n').map_or(0, |i| i + 1)];
            whole.lines().skip(mark).find(|l| l.contains(needle)).map(str::to_string)
        };
        let start = Instant::now();
        loop {
            if let Some(line) = find(self) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // The drain thread may still hold the last lines.
                std::thread::sleep(Duration::from_millis(100));
                if let Some(line) = find(self) {
                    return line;
                }
                panic!(
                    "kemari exited ({status}) before printing {needle:?} on stderr\n--- stderr ---\n{}\n--- console ---\n{}",
                    self.stderr(),
                    self.output()
                );
            }
            if start.elapsed() > GUEST_TIMEOUT {
                panic!(
                    "no {needle:?} on stderr\n--- stderr ---\n{}\n--- console ---\n{}",
                    self.stderr(),
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has ended, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
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

/// `kemari ctl --api API ARGS...`: whether it succeeded, and what it printed (stdout, then stderr).
pub fn ctl(api: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(kemari_bin()).args(["ctl", "--api", api]).args(args).output().expect("kemari ctl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// Connects to `addr` from the calling thread's namespace, retrying while nothing listens yet.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => {
                s.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
                s.set_write_timeout(Some(GUEST_TIMEOUT)).unwrap();
                return s;
            }
            Err(e) => {
                assert!(start.elapsed() < GUEST_TIMEOUT, "cannot connect to {addr}: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Accepts one connection (waiting at most [`GUEST_TIMEOUT`]).
pub fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
                s.set_write_timeout(Some(GUEST_TIMEOUT)).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(start.elapsed() < GUEST_TIMEOUT, "the guest never connected");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A host tool from e2fsprogs, which lives in /sbin or /usr/sbin (often not on a test's PATH).
pub fn e2fs_tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("host {name} not found: install e2fsprogs (scripts/guest-build does, as root)");
}

/// Reads `path` inside the ext4 image through the host's debugfs (no mount needed).
pub fn debugfs_cat(image: &Path, path: &str) -> Vec<u8> {
    let out = Command::new(e2fs_tool("debugfs"))
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .stderr(Stdio::null())
        .output()
        .expect("run debugfs");
    assert!(out.status.success(), "debugfs cat {path} failed");
    out.stdout
}

/// A small tmpfs (a file system that fills up) mounted on a fresh directory, unmounted when dropped. Needs root;
/// a test that uses it fails (does not skip) without.
pub struct SmallFs(pub PathBuf);

impl SmallFs {
    pub fn mount(at: PathBuf, bytes: u64) -> SmallFs {
        std::fs::create_dir_all(&at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs root to mount a small tmpfs on {}: {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        SmallFs(at)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}
