//! Snapshots through the control API, restored in a new process: the guest carries on exactly where it was.

mod common;

use common::{guest_file, Vm};

fn ctl(api: &str, args: &[&str]) -> String {
    let (ok, text) = common::ctl(api, args);
    assert!(ok, "kemari ctl {args:?} failed: {text}");
    text
}

/// The tick numbers printed on the console, in order.
fn ticks(console: &str) -> Vec<u64> {
    console.lines().filter_map(|l| l.trim().strip_prefix("tick-")).filter_map(|n| n.parse().ok()).collect()
}

#[test]
fn restored_guest_continues_its_counter_and_open_file() {
    let dir = std::env::temp_dir().join(format!("kemari-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let api = dir.join("api.sock").to_str().unwrap().to_string();
    let snap = dir.join("snap").to_str().unwrap().to_string();
    let kernel = guest_file("Image");
    let initrd = guest_file("initramfs.cpio.gz");

    let mut vm = Vm::start(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cpus",
        "2",
        "--api",
        &api,
    ]);
    vm.expect("KEMARI-GUEST-READY");
    // A counter on the console, and the same numbers into a file held open on fd 3.
    vm.send("exec 3>/tmp/counter; i=0; while true; do i=$((i+1)); echo tick-$i; echo $i >&3; sleep 0.05; done &");
    vm.expect("tick-20");
    assert!(ctl(&api, &["pause"]).contains("\"ok\":true"));
    // Paused: let any output in flight drain, then note the last tick the original printed.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = ticks(&vm.output());
    let last = *before.last().unwrap();
    assert!(ctl(&api, &["snapshot", &snap]).contains("\"ok\":true"));
    drop(vm); // SIGKILL: the original process is gone.

    // (--prealloc: the restored machine's RAM is faulted in before the state is written into it.)
    let mut restored = Vm::start(&["restore", &snap, "--prealloc"]);
    restored.expect(&format!("tick-{}", last + 10));
    let after = ticks(&restored.output());
    assert_eq!(after[0], last + 1, "the first tick after restore must follow the last one before it: {after:?}");
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "gap or repeat in {after:?}");
    // The file opened before the snapshot is still open and written by the loop.
    restored.send("kill %1; sleep 0.2; echo T''AIL=$(tail -n 1 /tmp/counter) L''ENGTH=$(wc -l < /tmp/counter)");
    let line = restored.expect("LENGTH=");
    let out = restored.expect("\n");
    let tail: u64 = line.rsplit("TAIL=").next().unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let length: u64 = out.trim().parse().unwrap();
    assert!(tail >= last + 10, "the open file kept being written after restore (tail {tail}, last {last})");
    assert_eq!(length, tail, "the file holds every number once");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restore_rejects_a_corrupt_snapshot_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("kemari-badsnap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("state"), b"KEMARIST\x09\0\0\0\0\0\0\0").unwrap();
    let (code, _, err) = common::run_to_end(&["restore", dir.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("version 9 is not supported"), "{err}");
    let (code, _, err) = common::run_to_end(&["restore", "/nonexistent-snapshot"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot read snapshot"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
