//! The control socket itself: it never replaces what is not a stale socket, only its owner can use it, a flood
//! of connections cannot exhaust the VMM, and a snapshot that does not fit leaves nothing behind. The VMs here
//! run bare-metal programs that spin forever (no guest kernel needed).

mod common;
#[path = "common/elf.rs"]
#[allow(dead_code)]
mod elf;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{kemari_bin, run_to_end, SmallFs, Vm, GUEST_TIMEOUT};

/// The API's cap on concurrent connections (`MAX_CONNECTIONS` in src/api.rs).
const MAX_CONNECTIONS: usize = 16;

/// A fresh, empty directory for one test.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kemari-api-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a program that spins forever and leaves `fill` non-zero bytes of RAM after its code.
fn spinning_firmware(dir: &Path, fill: usize) -> String {
    let mut image = 0x0000_006f_u32.to_le_bytes().to_vec(); // j .
    image.resize(4 + fill, 0x55);
    // `tohost` (0x1000..0x1008) must stay zero.
    if let Some(tohost) = image.get_mut(0x1000..0x1008) {
        tohost.fill(0);
    }
    let path = dir.join("spin.elf");
    std::fs::write(&path, elf::build_image(elf::EM_RISCV, &image)).unwrap();
    path.to_str().unwrap().to_string()
}

/// Writes a program that passes at once (kemari exits 0 right after serving the API).
fn passing_firmware(dir: &Path) -> String {
    let path = dir.join("pass.elf");
    std::fs::write(&path, elf::build(elf::EM_RISCV, &elf::tohost_program(1))).unwrap();
    path.to_str().unwrap().to_string()
}

/// Waits until the API at `api` answers a status request; panics if `alive` says the VM ended first.
fn wait_serving(api: &str, mut alive: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        let (ok, text) = common::ctl(api, &["status"]);
        if ok {
            return;
        }
        assert!(alive(), "kemari exited before serving {api}: {text}");
        assert!(start.elapsed() < GUEST_TIMEOUT, "{api} never answered: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spinning_vm(fw: &str, api: &str, memory_mib: &str) -> Vm {
    let mut vm = Vm::start(&["run", "--firmware", fw, "--memory", memory_mib, "--api", api]);
    wait_serving(api, || vm.try_status().is_none());
    vm
}

#[test]
fn api_refuses_to_replace_a_regular_file() {
    let dir = scratch("file");
    let fw = passing_firmware(&dir);
    let precious = dir.join("precious.txt");
    std::fs::write(&precious, b"keep me").unwrap();
    let (code, _, err) = run_to_end(&["run", "--firmware", &fw, "--api", precious.to_str().unwrap()]);
    assert_eq!(code, Some(2), "expected exit 2; stderr: {err}");
    assert!(err.contains("is not a socket"), "stderr: {err}");
    assert_eq!(std::fs::read(&precious).ok().as_deref(), Some(&b"keep me"[..]), "the file was replaced");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn api_replaces_a_stale_socket_but_not_a_served_one() {
    let dir = scratch("stale");
    let api = dir.join("api.sock").to_str().unwrap().to_string();
    // A socket nobody listens on any more, as a crashed kemari leaves behind.
    drop(UnixListener::bind(&api).unwrap());
    let fw = spinning_firmware(&dir, 0);
    let first = spinning_vm(&fw, &api, "16");

    let (code, _, err) = run_to_end(&["run", "--firmware", &passing_firmware(&dir), "--api", &api]);
    assert_eq!(code, Some(2), "a second kemari took over a served socket; stderr: {err}");
    assert!(err.contains("another process serves this socket"), "stderr: {err}");
    let (ok, text) = common::ctl(&api, &["status"]);
    assert!(ok, "the first VM lost its socket: {text}");
    drop(first);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills (and reaps) a kemari started without [`Vm`] when the test ends, even on a failed assertion.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn api_socket_is_private_under_umask_000() {
    let dir = scratch("umask");
    let api = dir.join("api.sock").to_str().unwrap().to_string();
    let fw = spinning_firmware(&dir, 0);
    let mut vm = Reaped(
        Command::new("sh")
            .args(["-c", "umask 000; exec \"$0\" \"$@\""])
            .arg(kemari_bin())
            .args(["run", "--firmware", &fw, "--api", &api])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start kemari under umask 000"),
    );
    wait_serving(&api, || matches!(vm.0.try_wait(), Ok(None)));
    let mode = std::fs::symlink_metadata(&api).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "socket mode {mode:o} under umask 000");
    // Nothing but our files is left next to the socket (no temporary directory).
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["api.sock", "spin.elf"]);
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A connection that holds one of the API's slots: it got a status answer, and now sits idle. (Retried while
/// refused: the thread of a connection that just closed may not have given its slot back yet.)
fn hold_slot(api: &str) -> UnixStream {
    let start = Instant::now();
    loop {
        let conn = UnixStream::connect(api).unwrap();
        (&conn).write_all(b"{\"op\":\"status\"}\n").unwrap();
        let mut reply = String::new();
        BufReader::new(&conn).read_line(&mut reply).unwrap();
        if reply.contains("\"ok\":true") {
            return conn;
        }
        assert!(start.elapsed() < GUEST_TIMEOUT, "no free slot: {reply}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn api_caps_concurrent_connections() {
    let dir = scratch("cap");
    let api = dir.join("api.sock").to_str().unwrap().to_string();
    let vm = spinning_vm(&spinning_firmware(&dir, 0), &api, "16");
    // Idle clients fill every slot.
    let idle: Vec<UnixStream> = (0..MAX_CONNECTIONS).map(|_| hold_slot(&api)).collect();
    let (ok, text) = common::ctl(&api, &["status"]);
    assert!(!ok, "a status request beyond the cap was served: {text}");
    assert_eq!(text.trim(), r#"{"ok":false,"error":"too many control connections"}"#);

    drop(idle);
    // The slots come back as their threads see the connections close.
    let start = Instant::now();
    loop {
        let (ok, text) = common::ctl(&api, &["status"]);
        if ok {
            break;
        }
        assert!(start.elapsed() < GUEST_TIMEOUT, "the API stayed full after its clients left: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every regular file under `dir`, with its size.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            found.extend(files_under(&entry.path()));
        } else {
            found.push((entry.path(), meta.len()));
        }
    }
    found
}

#[test]
fn snapshot_that_does_not_fit_leaves_no_temporary_file() {
    let dir = scratch("enospc");
    let full = SmallFs::mount(dir.join("small"), 1 << 20);
    let api = dir.join("api.sock").to_str().unwrap().to_string();
    // 2 MiB of non-zero RAM: the snapshot cannot fit in the 1 MiB filesystem.
    let vm = spinning_vm(&spinning_firmware(&dir, 2 << 20), &api, "16");
    let snap = full.0.join("snap");
    let (ok, text) = common::ctl(&api, &["snapshot", snap.to_str().unwrap()]);
    assert!(!ok, "the snapshot did not fail: {text}");
    assert!(text.contains("No space left on device"), "the error does not name the cause: {text}");
    assert!(!snap.join("state.tmp").exists(), "the temporary file was left behind");
    assert_eq!(files_under(&full.0), [], "the filesystem holds leftovers");
    // The VM carries on.
    assert!(common::ctl(&api, &["status"]).0);
    drop(vm);
    drop(full);
    let _ = std::fs::remove_dir_all(&dir);
}
