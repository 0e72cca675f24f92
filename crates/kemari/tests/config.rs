//! `--config FILE`: a real guest booted from a TOML file, flags overriding it, and bad files refused with one
//! line naming the key.

mod common;

use std::path::PathBuf;

use common::{ctl, guest_file, run_to_end, Vm};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kemari-config-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The guest boots from the file (kernel, initrd, two disks with paths relative to the file, a name); the
/// command line overrides the file's harts and adds a control socket. The guest sees both disks and the
/// harts of the flag; the name is in status, in the metrics labels and in kemari's own log lines.
#[test]
fn a_guest_boots_from_a_config_file_and_flags_override_it() {
    let dir = scratch("boot");
    for (name, len) in [("a.img", 8u64 << 20), ("b.img", 4 << 20)] {
        std::fs::File::create(dir.join(name)).unwrap().set_len(len).unwrap();
    }
    let file = dir.join("vm.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"web1\"\nkernel = {:?}\ninitrd = {:?}\nmemory = 256\ncpus = 1\n\
             [[disk]]\npath = \"a.img\"\n[[disk]]\npath = \"b.img\"\nreadonly = true\n",
            guest_file("Image"),
            guest_file("initramfs.cpio.gz")
        ),
    )
    .unwrap();
    let api = dir.join("api.sock").display().to_string();
    let mut vm = Vm::start(&["run", "--config", file.to_str().unwrap(), "--cpus", "2", "--api", &api]);
    vm.expect("KEMARI-GUEST-READY");
    let harts = vm.sh("grep -c ^processor /proc/cpuinfo");
    assert!(harts.lines().any(|l| l.trim() == "2"), "the flag's --cpus 2 must win: {harts}");
    let sizes = vm.sh("cat /sys/block/vda/size /sys/block/vdb/size /sys/block/vdb/ro");
    let words: Vec<&str> = sizes.split_whitespace().collect();
    for want in ["16384", "8192", "1"] {
        assert!(words.contains(&want), "both disks from the file, the second read-only: {sizes}");
    }
    let (ok, status) = ctl(&api, &["status"]);
    assert!(ok, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!((status["name"].as_str(), status["harts"].as_u64()), (Some("web1"), Some(2)), "{status}");
    let (ok, metrics) = ctl(&api, &["metrics"]);
    assert!(ok && metrics.contains("vm=\"web1\""), "{metrics}");
    // SIGTERM: kemari says it quits.
    vm.signal(15);
    assert_eq!(vm.wait().code(), Some(0), "{}", vm.stderr());
    let err = vm.stderr();
    assert!(err.lines().any(|l| l.starts_with("kemari[web1]: ")), "log lines carry the name: {err}");
    assert!(!err.lines().any(|l| l.starts_with("kemari: ")), "no line without the name: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A malformed or contradictory file: exit 2, one line naming the file and the key.
#[test]
fn a_bad_config_file_is_refused_with_one_line_naming_the_key() {
    let dir = scratch("bad");
    let cases = [
        ("run", "memroy = 256\n", "unknown field `memroy`"),
        ("run", "cpus = \"two\"\n", "cpus: invalid type"),
        ("run", "kernel = \"Image\"\n[protection]\npeer = \"10.0.0.2:7700\"\n", "protection.arbiter: missing"),
        ("run", "tls = \"certs/a\"\ninsecure_plaintext = true\n", "insecure_plaintext: contradicts tls"),
        ("standby", "kernel = \"Image\"\n", "kernel: only for `kemari run`"),
        ("run", "kernel = [\n", "line "),
    ];
    for (i, (command, text, want)) in cases.into_iter().enumerate() {
        let file = dir.join(format!("bad{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let (code, _, err) = run_to_end(&[command, "--config", file.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{text:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{text:?}: not one line: {err}");
        assert!(lines[0].contains(file.to_str().unwrap()) && lines[0].contains(want), "{text:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
