//! The command line: bare-metal runs end through HTIF with the right exit code, and bad input gets a one-line
//! error naming the problem, exit code 2, and no panic.

mod common;
#[path = "common/elf.rs"]
mod elf;

use std::path::PathBuf;

use common::{guest_file, run_to_end};

fn temp_file(name: &str, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kemari-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Asserts a clean input error: exit 2, one line on stderr mentioning `needle`, no panic.
fn assert_input_error(args: &[&str], needle: &str) {
    let (code, _out, err) = run_to_end(args);
    assert_eq!(code, Some(2), "expected exit 2 for {args:?}; stderr: {err}");
    assert!(!err.contains("panicked"), "kemari panicked: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got: {err}");
    assert!(lines[0].contains(needle), "error {:?} does not mention {needle:?}", lines[0]);
}

#[test]
fn bare_metal_program_that_passes_exits_zero() {
    let f = temp_file("pass.elf", &elf::build(elf::EM_RISCV, &elf::tohost_program(1)));
    let (code, _, err) = run_to_end(&["run", "--firmware", f.to_str().unwrap()]);
    assert_eq!(code, Some(0), "stderr: {err}");
}

#[test]
fn bare_metal_program_that_fails_reports_its_code() {
    // HTIF: value (7 << 1) | 1 means "failed test 7".
    let f = temp_file("fail.elf", &elf::build(elf::EM_RISCV, &elf::tohost_program(15)));
    let (code, _, err) = run_to_end(&["run", "--firmware", f.to_str().unwrap()]);
    assert_eq!(code, Some(7), "stderr: {err}");
    assert!(err.contains("failed with code 7"), "stderr: {err}");
}

#[test]
fn missing_kernel_is_named() {
    assert_input_error(&["run", "--kernel", "/nonexistent/Image"], "/nonexistent/Image");
}

#[test]
fn truncated_kernel_is_rejected() {
    let image = std::fs::read(guest_file("Image")).unwrap();
    let f = temp_file("truncated-Image", &image[..40]);
    assert_input_error(&["run", "--kernel", f.to_str().unwrap()], "truncated");
}

#[test]
fn kernel_that_is_not_an_image_is_rejected() {
    let f = temp_file("garbage-Image", &[0x5a; 4096]);
    assert_input_error(&["run", "--kernel", f.to_str().unwrap()], "not a RISC-V Linux Image");
}

#[test]
fn elf_for_another_architecture_is_rejected() {
    let f = temp_file("x86.elf", &elf::build(elf::EM_X86_64, &elf::tohost_program(1)));
    assert_input_error(&["run", "--firmware", f.to_str().unwrap()], "x86-64");
    assert_input_error(&["run", "--kernel", f.to_str().unwrap()], "x86-64");
}

#[test]
fn memory_too_small_for_kernel_and_initrd() {
    let kernel = guest_file("Image");
    let big_initrd = temp_file("big-initrd", &vec![0u8; 24 << 20]);
    assert_input_error(
        &["run", "--kernel", kernel.to_str().unwrap(), "--initrd", big_initrd.to_str().unwrap(), "--memory", "16"],
        "too small",
    );
}

#[test]
fn zero_cpus_is_rejected() {
    let kernel = guest_file("Image");
    assert_input_error(&["run", "--kernel", kernel.to_str().unwrap(), "--cpus", "0"], "--cpus 0");
}

#[test]
fn too_many_cpus_is_rejected() {
    let kernel = guest_file("Image");
    assert_input_error(&["run", "--kernel", kernel.to_str().unwrap(), "--cpus", "9"], "--cpus 9");
}

#[test]
fn a_preallocating_receiver_needs_to_know_the_size() {
    assert_input_error(&["run", "--incoming", "127.0.0.1:0", "--prealloc"], "needs --memory");
    // (Checked before the arbiter, whose directory does not even exist here.)
    let standby = ["standby", "--listen", "127.0.0.1:0", "--arbiter", "file:/nonexistent", "--prealloc"];
    assert_input_error(&standby, "needs --memory");
}

#[test]
fn a_directory_is_not_a_disk_even_readonly() {
    let fw = temp_file("pass-disk.elf", &elf::build(elf::EM_RISCV, &elf::tohost_program(1)));
    let dir = std::env::temp_dir().join(format!("kemari-cli-{}/not-a-disk", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.to_str().unwrap();
    for disk in [dir.to_string(), format!("{dir},readonly")] {
        assert_input_error(&["run", "--firmware", fw.to_str().unwrap(), "--disk", &disk], dir);
    }
    assert_input_error(
        &["run", "--firmware", fw.to_str().unwrap(), "--disk", &format!("{dir},readonly")],
        "is a directory",
    );
}

#[test]
fn a_receiver_refuses_an_impossible_shape_at_start() {
    // Refused before anything else is looked at (this arbiter directory does not even exist): a shape no
    // machine can have would otherwise refuse every primary or sender later.
    let standby = ["standby", "--listen", "127.0.0.1:0", "--arbiter", "file:/nonexistent"];
    assert_input_error(&[&standby[..], &["--memory", "5"]].concat(), "--memory 5");
    assert_input_error(&[&standby[..], &["--cpus", "9"]].concat(), "--cpus 9");
    assert_input_error(&["run", "--incoming", "127.0.0.1:0", "--memory", "5"], "--memory 5");
}

#[test]
fn certs_makes_a_cluster_ca_and_node_certificates_that_load() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("kemari-cli-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let (code, _, err) = run_to_end(&["certs", "--dir", d, "--vm", "web1", "pri", "sec"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run_to_end(&["certs", "--dir", d, "--vm", "web1", "--add", "third"]);
    assert_eq!(code, Some(0), "{err}");
    for node in ["pri", "sec", "third"] {
        let creds = kemari_transport::Credentials::load(&dir, node).unwrap();
        assert_eq!(creds.vm(), "web1.kemari");
        let mode = std::fs::metadata(dir.join(format!("{node}.key"))).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{node}.key is readable by others");
    }
    assert_input_error(&["certs", "--dir", d, "--vm", "bad name", "x"], "not a valid VM name");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_link_needs_credentials_or_an_explicit_plaintext_flag() {
    let arbiter = std::env::temp_dir().join(format!("kemari-cli-arbiter-{}", std::process::id()));
    std::fs::create_dir_all(&arbiter).unwrap();
    let arbiter = format!("file:{}", arbiter.display());
    let kernel = guest_file("Image");
    let kernel = kernel.to_str().unwrap();
    let standby = ["standby", "--listen", "127.0.0.1:0", "--arbiter", &arbiter];
    let protect = ["run", "--kernel", kernel, "--protect", "127.0.0.1:9", "--arbiter", &arbiter];
    let incoming = ["run", "--incoming", "127.0.0.1:0"];
    for args in [&standby[..], &protect[..], &incoming[..]] {
        assert_input_error(args, "needs credentials for its link: --tls DIR/NODE");
        assert_input_error(&[args, &["--tls", "/nonexistent/node"]].concat(), "/nonexistent/ca.pem");
    }
    let (code, _, err) = run_to_end(&[&incoming[..], &["--tls", "/x/n", "--insecure-plaintext"]].concat());
    assert_eq!(code, Some(2), "both --tls and --insecure-plaintext accepted: {err}");
}
