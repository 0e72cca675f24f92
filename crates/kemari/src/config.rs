//! `--config FILE` for `kemari run` and `kemari standby`: a VM described in TOML instead of a long command
//! line.
//!
//! ```toml
//! name = "web1"                       # in every log line, in status and as the metrics label `vm`
//! kernel = "Image"                    # run only: kernel, initrd, cmdline, firmware
//! initrd = "initramfs.cpio.gz"
//! cmdline = "console=ttyS0"
//! memory = 256                        # MiB (a standby: checked against the primary's)
//! cpus = 2
//! api = "/run/kemari/web1.sock"
//! prealloc = false
//! engine = "jit"                      # or "interp" (default: jit on x86-64 hosts)
//! rng = true
//! tls = "certs/a"                     # DIR/NODE, or insecure_plaintext = true
//!
//! [[disk]]
//! path = "web1.img"
//! readonly = false
//!
//! [[net]]
//! tap = "tap0"
//! mac = "52:54:00:12:34:56"
//!
//! [protection]
//! peer = "10.0.9.2:7700"              # run: the standby to replicate to
//! listen = "10.0.9.2:7700"            # standby: where the primary connects
//! reprotect = "10.0.9.3:7700"         # standby: whom to protect to after a takeover
//! arbiter = "file:/shared/arb"
//! node = "a"
//! storage = "shared"                  # or "replicated"
//! sync = "event"                      # or "interval" (run only, as window_us, interval_ms, strict)
//! window_us = 0
//! console_sync = "burst"              # or "each"
//! input_log = true                    # replay at failover what the last checkpoint had not seen
//! heartbeat_ms = 50
//! heartbeat_timeout_ms = 200
//! ```
//!
//! The file becomes command-line flags placed before the user's own, so a flag given on the command line
//! overrides the file's setting; a `--disk` or `--net` given there replaces the file's whole list, and
//! `--tls`/`--insecure-plaintext` its link setting. Relative paths are relative to the file's directory. A
//! file that does not parse, has a key kemari does not know, or contradicts itself is refused with one line
//! naming the key.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a config file was refused: the file, the key (empty for a syntax error), and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}{why}", file.display(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
pub struct ConfigError {
    file: PathBuf,
    key: String,
    why: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VmFile {
    name: Option<String>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    firmware: Option<PathBuf>,
    memory: Option<u64>,
    cpus: Option<usize>,
    api: Option<PathBuf>,
    prealloc: Option<bool>,
    engine: Option<String>,
    rng: Option<bool>,
    tls: Option<PathBuf>,
    insecure_plaintext: Option<bool>,
    #[serde(default)]
    disk: Vec<DiskEntry>,
    #[serde(default)]
    net: Vec<NetEntry>,
    protection: Option<Protection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskEntry {
    path: PathBuf,
    #[serde(default)]
    readonly: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetEntry {
    tap: String,
    mac: Option<String>,
}

impl NetEntry {
    /// As `--net` takes it.
    fn spec(&self) -> String {
        format!("tap={}{}", self.tap, self.mac.as_ref().map(|m| format!(",mac={m}")).unwrap_or_default())
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Protection {
    peer: Option<String>,
    listen: Option<String>,
    reprotect: Option<String>,
    arbiter: Option<String>,
    node: Option<String>,
    storage: Option<Storage>,
    sync: Option<Sync>,
    window_us: Option<u64>,
    interval_ms: Option<u64>,
    strict: Option<bool>,
    console_sync: Option<ConsoleSync>,
    input_log: Option<bool>,
    heartbeat_ms: Option<u64>,
    heartbeat_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Storage {
    Shared,
    Replicated,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ConsoleSync {
    Burst,
    Each,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Sync {
    Event,
    Interval,
}

/// The command a file is read for: each takes only its own keys.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Run,
    Standby,
}

/// `argv` with the `--config FILE` of `run` or `standby` expanded: the file's settings as flags right after
/// the subcommand, the user's own flags after them (so they win). Any other command line is returned as is.
pub fn expand(argv: Vec<OsString>) -> Result<Vec<OsString>, ConfigError> {
    let role = match argv.get(1).and_then(|a| a.to_str()) {
        Some("run") => Role::Run,
        Some("standby") => Role::Standby,
        _ => return Ok(argv),
    };
    let user: Vec<String> = argv[2..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let Some(file) = config_path(&user) else { return Ok(argv) };
    let err = |key: &str, why: String| ConfigError { file: file.clone(), key: key.into(), why };
    let text = std::fs::read_to_string(&file).map_err(|e| err("", e.to_string()))?;
    let vm: VmFile = parse(&text).map_err(|(key, why)| err(&key, why))?;
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let flags = vm.flags(role, &dir, &user).map_err(|(key, why)| err(key, why))?;
    let mut out = argv[..2].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend(argv[2..].iter().cloned());
    Ok(out)
}

/// The `--config` value among the user's flags.
fn config_path(user: &[String]) -> Option<PathBuf> {
    user.iter().enumerate().find_map(|(i, a)| match a.strip_prefix("--config") {
        Some("") => user.get(i + 1).map(PathBuf::from),
        Some(v) => v.strip_prefix('=').map(PathBuf::from),
        None => None,
    })
}

/// Parses the file; an error as (the key's path, one line of why).
fn parse(text: &str) -> Result<VmFile, (String, String)> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let why = inner.message().trim().replace('\n', " ");
        match (path.as_str(), line) {
            ("" | ".", Some(n)) => (String::new(), format!("line {n}: {why}")),
            ("" | ".", None) => (String::new(), why),
            _ => (path, why),
        }
    })
}

/// Whether the user gave one of `flags` (as `--flag` or `--flag=...`).
fn user_gave(user: &[String], flags: &[&str]) -> bool {
    user.iter().any(|a| flags.iter().any(|f| a == f || a.strip_prefix(f).is_some_and(|v| v.starts_with('='))))
}

type Refusal = (&'static str, String);

impl VmFile {
    /// The file as command-line flags for `role`, with what the user's own flags replace left out.
    fn flags(&self, role: Role, dir: &Path, user: &[String]) -> Result<Vec<String>, Refusal> {
        self.check(role)?;
        let path = |p: &Path| dir.join(p).display().to_string();
        let mut f: Vec<String> = Vec::new();
        let mut put = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                f.push(flag.into());
                f.push(v);
            }
        };
        put("--name", self.name.clone());
        // A receiver (run --incoming) boots nothing and protects nothing of its own.
        if !user_gave(user, &["--incoming"]) {
            put("--kernel", self.kernel.as_deref().map(path));
            put("--initrd", self.initrd.as_deref().map(path));
            put("--firmware", self.firmware.as_deref().map(path));
            put("--protect", self.protection.as_ref().and_then(|p| p.peer.clone()));
        }
        put("--append", self.cmdline.clone());
        put("--memory", self.memory.map(|m| m.to_string()));
        put("--cpus", self.cpus.map(|c| c.to_string()));
        put("--api", self.api.as_deref().map(path));
        put("--engine", self.engine.clone());
        if !user_gave(user, &["--disk"]) {
            for d in &self.disk {
                put("--disk", Some(format!("{}{}", path(&d.path), if d.readonly { ",readonly" } else { "" })));
            }
        }
        if !user_gave(user, &["--net"]) {
            for n in &self.net {
                put("--net", Some(n.spec()));
            }
        }
        if !user_gave(user, &["--tls", "--insecure-plaintext"]) {
            put("--tls", self.tls.as_deref().map(path));
        }
        if let Some(p) = &self.protection {
            put("--listen", p.listen.clone());
            put("--reprotect", p.reprotect.clone());
            put("--arbiter", p.arbiter.clone());
            put("--node", p.node.clone());
            put(
                "--storage",
                p.storage.map(|s| if let Storage::Replicated = s { "replicated" } else { "shared" }.into()),
            );
            put("--sync", p.sync.map(|s| if s == Sync::Interval { "interval" } else { "event" }.into()));
            put("--window-us", p.window_us.map(|v| v.to_string()));
            put("--interval-ms", p.interval_ms.map(|v| v.to_string()));
            put(
                "--console-sync",
                p.console_sync.map(|c| if let ConsoleSync::Each = c { "each" } else { "burst" }.into()),
            );
            put("--input-log", p.input_log.map(|on| if on { "on" } else { "off" }.into()));
            put("--heartbeat-ms", p.heartbeat_ms.map(|v| v.to_string()));
            put("--heartbeat-timeout-ms", p.heartbeat_timeout_ms.map(|v| v.to_string()));
        }
        let switches = [
            ("--prealloc", self.prealloc == Some(true)),
            ("--no-rng", self.rng == Some(false)),
            (
                "--insecure-plaintext",
                self.insecure_plaintext == Some(true) && !user_gave(user, &["--tls", "--insecure-plaintext"]),
            ),
            ("--strict", self.protection.as_ref().is_some_and(|p| p.strict == Some(true))),
        ];
        f.extend(switches.into_iter().filter(|(_, on)| *on).map(|(s, _)| s.to_string()));
        Ok(f)
    }

    /// What the file may not say, or says twice: each refusal names its key.
    fn check(&self, role: Role) -> Result<(), Refusal> {
        if let Some(name) = &self.name {
            let ok = name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if name.is_empty() || name.len() > 64 || !ok {
                return Err(("name", format!("{name:?}: 1 to 64 letters, digits, '.', '_' or '-'")));
            }
        }
        if let Some(c) = self.cpus {
            kemari_board::check_shape(Some(c), None, false).map_err(|e| ("cpus", e.to_string()))?;
        }
        if let Some(m) = self.memory {
            kemari_board::check_shape(None, Some(m), false).map_err(|e| ("memory", e.to_string()))?;
        }
        if let Some(e) = &self.engine {
            e.parse::<kemari_board::Engine>().map_err(|why| ("engine", why))?;
        }
        if self.tls.is_some() && self.insecure_plaintext == Some(true) {
            return Err(("insecure_plaintext", "contradicts tls: the link is either TLS or plaintext".into()));
        }
        for (i, n) in self.net.iter().enumerate() {
            crate::parse_net(&n.spec()).map_err(|e| ("net", format!("entry {}: {e}", i + 1)))?;
        }
        let p = self.protection.as_ref();
        let standby_only =
            p.map(|p| [("protection.listen", p.listen.is_some()), ("protection.reprotect", p.reprotect.is_some())]);
        let run_only = [
            ("kernel", self.kernel.is_some()),
            ("initrd", self.initrd.is_some()),
            ("cmdline", self.cmdline.is_some()),
            ("firmware", self.firmware.is_some()),
            ("protection.peer", p.is_some_and(|p| p.peer.is_some())),
            ("protection.sync", p.is_some_and(|p| p.sync.is_some())),
            ("protection.window_us", p.is_some_and(|p| p.window_us.is_some())),
            ("protection.interval_ms", p.is_some_and(|p| p.interval_ms.is_some())),
            ("protection.strict", p.is_some_and(|p| p.strict.is_some())),
            ("protection.console_sync", p.is_some_and(|p| p.console_sync.is_some())),
            ("protection.input_log", p.is_some_and(|p| p.input_log.is_some())),
        ];
        match role {
            Role::Run => {
                if let Some((key, _)) = standby_only.iter().flatten().find(|(_, set)| *set) {
                    return Err((key, "only for `kemari standby`".into()));
                }
            }
            Role::Standby => {
                if let Some((key, _)) = run_only.iter().find(|(_, set)| *set) {
                    return Err((key, "only for `kemari run` (a standby takes the guest from its primary)".into()));
                }
            }
        }
        let Some(p) = p else { return Ok(()) };
        match role {
            Role::Run if p.peer.is_none() => {
                return Err(("protection.peer", "missing: the standby to replicate to (HOST:PORT)".into()))
            }
            Role::Standby if p.listen.is_none() => {
                return Err(("protection.listen", "missing: where the primary connects (ADDR:PORT)".into()))
            }
            _ => {}
        }
        if p.arbiter.is_none() {
            return Err(("protection.arbiter", "missing: e.g. \"file:/shared/dir\"".into()));
        }
        match p.sync {
            Some(Sync::Interval) if p.window_us.is_some() => {
                return Err(("protection.window_us", "only with sync = \"event\"".into()))
            }
            Some(Sync::Event) | None if p.interval_ms.is_some() => {
                return Err(("protection.interval_ms", "only with sync = \"interval\"".into()))
            }
            _ => {}
        }
        let (beat, timeout) = (p.heartbeat_ms.unwrap_or(50), p.heartbeat_timeout_ms.unwrap_or(200));
        if timeout <= beat {
            return Err((
                "protection.heartbeat_timeout_ms",
                format!("{timeout} must be longer than heartbeat_ms {beat}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(role: Role, text: &str, user: &[&str]) -> Result<Vec<String>, String> {
        let vm = parse(text).map_err(|(k, w)| format!("{k}: {w}"))?;
        let user: Vec<String> = user.iter().map(|s| s.to_string()).collect();
        vm.flags(role, Path::new("/etc/kemari"), &user).map_err(|(k, w)| format!("{k}: {w}"))
    }

    #[test]
    fn a_file_becomes_flags_with_paths_relative_to_it() {
        let text = r#"
            name = "web1"
            kernel = "Image"
            initrd = "/abs/initrd"
            memory = 512
            cpus = 2
            engine = "interp"
            rng = false
            tls = "certs/a"
            [[disk]]
            path = "web1.img"
            [[disk]]
            path = "iso.img"
            readonly = true
            [[net]]
            tap = "tap0"
            mac = "52:54:00:00:00:01"
            [protection]
            peer = "10.0.9.2:7700"
            arbiter = "file:/shared/arb"
            sync = "interval"
            interval_ms = 10
            strict = true
        "#;
        let f = flags(Role::Run, text, &[]).unwrap().join(" ");
        assert_eq!(
            f,
            "--name web1 --kernel /etc/kemari/Image --initrd /abs/initrd --protect 10.0.9.2:7700 --memory 512 \
             --cpus 2 --engine interp --disk /etc/kemari/web1.img --disk /etc/kemari/iso.img,readonly --net \
             tap=tap0,mac=52:54:00:00:00:01 --tls /etc/kemari/certs/a --arbiter file:/shared/arb --sync interval \
             --interval-ms 10 --no-rng --strict"
        );
    }

    #[test]
    fn lists_and_the_link_given_on_the_command_line_replace_the_files() {
        let text = "tls = \"certs/a\"\n[[disk]]\npath = \"a.img\"\n[[net]]\ntap = \"tap0\"\n";
        let f = flags(Role::Run, text, &["--disk=b.img", "--net", "tap=tap9", "--insecure-plaintext"]).unwrap();
        assert!(f.is_empty(), "{f:?}");
        let f = flags(
            Role::Run,
            "kernel = \"Image\"\n[protection]\npeer = \"h:1\"\narbiter = \"file:/a\"\n",
            &["--incoming", "0:7"],
        );
        assert_eq!(f.unwrap(), ["--arbiter", "file:/a"]);
    }

    #[test]
    fn a_bad_file_is_refused_naming_the_key() {
        let cases = [
            (Role::Run, "memroy = 5\n", "unknown field `memroy`"),
            (Role::Run, "memory = \"lots\"\n", "memory: invalid type"),
            (
                Role::Run,
                "[protection]\npeer = \"h:1\"\narbiter = \"file:/a\"\nsync = \"often\"\n",
                "protection.sync: unknown variant",
            ),
            (Role::Run, "[[disk]]\nreadonly = true\n", "disk"),
            (Role::Run, "memory = 5\n", "memory: "),
            (Role::Run, "cpus = 99\n", "cpus: "),
            (Role::Run, "engine = \"fast\"\n", "engine: unknown engine \"fast\" (interp or jit)"),
            (Role::Run, "name = \"web 1\"\n", "name: "),
            (Role::Run, "tls = \"c/a\"\ninsecure_plaintext = true\n", "insecure_plaintext: contradicts tls"),
            (
                Role::Run,
                "[[net]]\ntap = \"t\"\nmac = \"01:00:00:00:00:00\"\n",
                "net: entry 1: MAC address 01:00:00:00:00:00 is multicast",
            ),
            (Role::Run, "[protection]\narbiter = \"file:/a\"\n", "protection.peer: missing"),
            (Role::Run, "[protection]\npeer = \"h:1\"\n", "protection.arbiter: missing"),
            (
                Role::Run,
                "[protection]\npeer = \"h:1\"\narbiter = \"file:/a\"\nlisten = \"0:1\"\n",
                "protection.listen: only for `kemari standby`",
            ),
            (
                Role::Run,
                "[protection]\npeer = \"h:1\"\narbiter = \"file:/a\"\nsync = \"interval\"\nwindow_us = 5\n",
                "protection.window_us: only with sync = \"event\"",
            ),
            (
                Role::Run,
                "[protection]\npeer = \"h:1\"\narbiter = \"file:/a\"\ninterval_ms = 5\n",
                "protection.interval_ms: only with",
            ),
            (
                Role::Run,
                "[protection]\npeer = \"h:1\"\narbiter = \"file:/a\"\nheartbeat_ms = 300\n",
                "protection.heartbeat_timeout_ms: 200 must be longer",
            ),
            (Role::Standby, "kernel = \"Image\"\n", "kernel: only for `kemari run`"),
            (Role::Standby, "[protection]\narbiter = \"file:/a\"\n", "protection.listen: missing"),
            (Role::Run, "memory = 256\nmemory = 512\n", "line 2: duplicate key"),
        ];
        for (role, text, want) in cases {
            let got = flags(role, text, &[]).expect_err(text);
            assert!(got.contains(want), "{text:?}: {got:?} lacks {want:?}");
            assert!(!got.contains('\n'), "not one line: {got:?}");
        }
    }

    #[test]
    fn only_run_and_standby_with_config_are_expanded() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            expand(argv(&["kemari", "ctl", "--config", "x"])).unwrap(),
            argv(&["kemari", "ctl", "--config", "x"])
        );
        assert_eq!(
            expand(argv(&["kemari", "run", "--memory", "5"])).unwrap(),
            argv(&["kemari", "run", "--memory", "5"])
        );
        let e = expand(argv(&["kemari", "run", "--config=/nonexistent/vm.toml"])).unwrap_err().to_string();
        assert!(e.starts_with("/nonexistent/vm.toml: "), "{e}");
    }
}
