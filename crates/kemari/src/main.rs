//! The `kemari` binary: command line, console and exit codes.
//!
//! Exit codes: 0 when the guest powers off (or a bare-metal test passes); 1 when the guest crashes; 2 for bad
//! input (a one-line error naming the problem); a failing bare-metal test exits with its HTIF failure code.

mod api;
mod config;
mod console;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kemari_board::{DiskConfig, Machine, MachineConfig, NetConfig, RunOutcome};

#[derive(Parser)]
#[command(name = "kemari", version, about = "A virtual machine monitor with transparent fault tolerance")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM with its console on this terminal (Ctrl-A x quits).
    #[command(args_override_self = true)]
    Run(RunArgs),
    /// Start a VM from a snapshot directory (give its disks and taps again).
    Restore(RestoreArgs),
    /// Send a request to a running VM's control API.
    Ctl(CtlArgs),
    /// Live-migrate a running VM to a `kemari run --incoming` on another host, showing progress.
    Migrate(MigrateArgs),
    /// Be the secondary of a protected VM: hold its replica and take over when the primary fails.
    #[command(args_override_self = true)]
    Standby(StandbyArgs),
    /// Make certificates for the nodes of a VM: a cluster CA (unless --add) and one certificate per node.
    Certs(CertsArgs),
}

#[derive(Args)]
struct CertsArgs {
    /// Directory for ca.pem, ca.key and NODE.pem, NODE.key (keys are written 0600).
    #[arg(long)]
    dir: PathBuf,
    /// The VM the certificates are for (nodes of one VM accept only each other).
    #[arg(long)]
    vm: String,
    /// Sign with the CA already in --dir instead of making a new one.
    #[arg(long)]
    add: bool,
    /// The nodes to make certificates for.
    #[arg(required = true)]
    nodes: Vec<String>,
}

/// How this node's links to other nodes (replication, live migration) are secured.
#[derive(Args)]
struct LinkArgs {
    /// Mutual TLS with the credentials DIR/NODE.pem and DIR/NODE.key, and the cluster CA DIR/ca.pem (made by
    /// `kemari certs`): only nodes of the same cluster and VM are heard.
    #[arg(long, value_name = "DIR/NODE")]
    tls: Option<PathBuf>,
    /// Run the links as bare TCP, unauthenticated and unencrypted: anyone who reaches the port can push a
    /// guest of their choosing or read the guest's memory. Only for a link secured by other means.
    #[arg(long, conflicts_with = "tls")]
    insecure_plaintext: bool,
}

impl LinkArgs {
    /// The links' security, or `None` when neither flag was given.
    fn security(&self) -> Result<Option<kemari_transport::Security>, String> {
        if self.insecure_plaintext {
            kemari_board::say!(
                "WARNING: --insecure-plaintext: links to other nodes are neither authenticated nor \
                 encrypted; anyone who can reach them can inject a guest or read its memory"
            );
            return Ok(Some(kemari_transport::Security::Plaintext));
        }
        let Some(path) = &self.tls else { return Ok(None) };
        let (dir, node) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
            (Some(dir), Some(node)) => (if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir }, node),
            _ => return Err(format!("--tls {}: give DIR/NODE", path.display())),
        };
        let creds = kemari_transport::Credentials::load(dir, node).map_err(|e| format!("--tls: {e}"))?;
        Ok(Some(kemari_transport::Security::Tls(std::sync::Arc::new(creds))))
    }

    /// The links' security where a link is opened at once: one of the flags is needed.
    fn required(&self, what: &str) -> Result<kemari_transport::Security, String> {
        self.security()?.ok_or_else(|| LinkArgs::missing(what))
    }

    fn missing(what: &str) -> String {
        format!(
            "{what} needs credentials for its link: --tls DIR/NODE (make them with `kemari certs`), or \
             --insecure-plaintext for an unauthenticated link"
        )
    }
}

#[derive(Args)]
struct StandbyArgs {
    /// Settings from a TOML file (see README); flags given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the primary connects (ADDR:PORT).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: String,
    /// Guest RAM in MiB (optional: taken from the primary, checked when given).
    #[arg(long)]
    memory: Option<u64>,
    /// Number of harts (optional: taken from the primary, checked when given).
    #[arg(long)]
    cpus: Option<usize>,
    /// After taking over, protect the guest again by replicating to the `kemari standby` at HOST:PORT
    /// (retried until it answers; shared storage).
    #[arg(long, value_name = "HOST:PORT")]
    reprotect: Option<String>,
    #[command(flatten)]
    ft: FtArgs,
    #[command(flatten)]
    devices: DeviceArgs,
    #[command(flatten)]
    link: LinkArgs,
}

/// Fault-tolerance settings, common to the primary (`run --protect`) and the secondary (`standby`).
#[derive(Args)]
struct FtArgs {
    /// Arbiter that decides which node is active: file:DIR (a lease in a directory both nodes reach) or
    /// etcd:HOST:PORT[,HOST:PORT...][/PREFIX] (a lease in an etcd cluster; PREFIX, default /kemari, one per VM).
    #[arg(long, value_name = "file:DIR|etcd:ENDPOINTS[/PREFIX]")]
    arbiter: Option<String>,
    /// This node's name at the arbiter (default: primary-PID or secondary-PID).
    #[arg(long)]
    node: Option<String>,
    /// shared: both nodes name the same disk image; replicated: each has its own copy (brought in step at the start of every session).
    #[arg(long, default_value = "shared")]
    storage: kemari_replication::Storage,
    /// Heartbeat interval (and lease renewal) in ms.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Silence after which the peer counts as failed, in ms (also the lease's time to live).
    #[arg(long, default_value_t = 200)]
    heartbeat_timeout_ms: u64,
}

#[derive(Args)]
struct MigrateArgs {
    /// The running VM's control socket (its --api).
    #[arg(long)]
    api: PathBuf,
    /// Where the receiving kemari listens (HOST:PORT).
    #[arg(long)]
    to: String,
    /// Stop-and-copy once the remaining dirty memory would take at most this long to send.
    #[arg(long, default_value_t = api::DEFAULT_DOWNTIME_MS)]
    downtime_ms: u64,
}

#[derive(Args)]
struct RestoreArgs {
    /// Snapshot directory written by `kemari ctl snapshot`.
    dir: PathBuf,
    #[command(flatten)]
    devices: DeviceArgs,
    #[command(flatten)]
    link: LinkArgs,
}

#[derive(Args)]
struct CtlArgs {
    /// The VM's control socket (its --api).
    #[arg(long)]
    api: PathBuf,
    #[command(subcommand)]
    op: CtlOp,
}

#[derive(Subcommand)]
enum CtlOp {
    /// Show the VM's state (with role and protection figures on a protected pair).
    Status,
    /// Print the status as Prometheus text.
    Metrics,
    /// Stop the guest (harts and guest time).
    Pause,
    /// Let a paused guest run again.
    Resume,
    /// Write a snapshot (machine state and memory) into DIR.
    Snapshot { dir: PathBuf },
}

#[derive(Args)]
struct RunArgs {
    /// Settings from a TOML file (see README); flags given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// RISC-V Linux kernel Image.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (cpio, optionally compressed).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0")]
    append: String,
    /// Guest RAM in MiB (default 256; with --incoming, optional: the sender's, checked when given).
    #[arg(long)]
    memory: Option<u64>,
    /// Number of harts (vCPUs), 1 to 8.
    #[arg(long, default_value_t = 1)]
    cpus: usize,
    /// Bare-metal ELF started in M-mode without the built-in SBI (e.g. OpenSBI's fw_jump.elf or a test).
    #[arg(long)]
    firmware: Option<PathBuf>,
    /// Receive a live-migrating VM on ADDR:PORT instead of booting (give the same devices as the sender).
    #[arg(long, value_name = "ADDR:PORT", conflicts_with_all = ["kernel", "firmware", "protect"])]
    incoming: Option<String>,
    #[command(flatten)]
    devices: DeviceArgs,
    #[command(flatten)]
    protect: ProtectArgs,
    #[command(flatten)]
    link: LinkArgs,
}

/// Running as a protected primary.
#[derive(Args)]
struct ProtectArgs {
    /// Protect the VM: replicate it to the `kemari standby` at HOST:PORT (needs --arbiter).
    #[arg(long, value_name = "HOST:PORT")]
    protect: Option<String>,
    /// When to checkpoint: event (Kemari: on the first pending output) or interval (Remus: every --interval-ms).
    #[arg(long, default_value = "event", value_parser = ["event", "interval"])]
    sync: String,
    /// event: batch outputs arriving within this many microseconds of the first into one checkpoint.
    #[arg(long, default_value_t = 0)]
    window_us: u64,
    /// interval: checkpoint period in ms.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// event: console output alone is checkpointed at the end of its burst (burst: a line ends, a 2 ms pause,
    /// at most 20 ms after its first byte) or like any other output (each).
    #[arg(long, default_value = "burst", value_parser = ["burst", "each"])]
    console_sync: String,
    /// Send the inputs the guest consumes to the secondary, which replays those its last checkpoint had not
    /// seen at failover (on), or let them die with the primary, for clients to resend (off).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    input_log: String,
    /// Keep the guest paused until each checkpoint is acknowledged (default: speculative resume, only the
    /// outputs wait).
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    ft: FtArgs,
}

/// Devices and control, common to `run` and `restore`.
#[derive(Args)]
struct DeviceArgs {
    /// The VM's name: in every log line, in status and as the metrics label `vm`.
    #[arg(long)]
    name: Option<String>,
    /// A raw disk image as virtio-blk (repeatable; the first is /dev/vda): PATH[,readonly].
    #[arg(long = "disk", value_name = "PATH[,readonly]", value_parser = parse_disk)]
    disks: Vec<DiskConfig>,
    /// A virtio-net interface on a Linux tap (repeatable): tap=NAME[,mac=MAC]. kemari creates the tap if it
    /// does not exist (it then vanishes when kemari exits).
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]", value_parser = parse_net)]
    nets: Vec<NetConfig>,
    /// Leave out the virtio-rng entropy device.
    #[arg(long)]
    no_rng: bool,
    /// Serve the control API (line-delimited JSON) on this Unix socket.
    #[arg(long)]
    api: Option<PathBuf>,
    /// Fault all guest RAM in before the guest runs, so that it never waits for the host to find memory. A
    /// receiver (run --incoming, standby) does it while it waits for its sender; it then needs --memory.
    #[arg(long)]
    prealloc: bool,
    /// How the CPU runs guest code: jit (hot blocks compiled to host code; x86-64 hosts, the default there) or
    /// interp (the decode-once interpreter). The guest sees no difference.
    #[arg(long, value_name = "interp|jit", default_value_t = kemari_board::Engine::default())]
    engine: kemari_board::Engine,
}

fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let mut parts = s.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or("empty disk path")?;
    let mut readonly = false;
    for opt in parts {
        match opt {
            "readonly" | "ro" => readonly = true,
            other => return Err(format!("unknown disk option {other:?} (known: readonly)")),
        }
    }
    Ok(DiskConfig { path: PathBuf::from(path), readonly })
}

/// Default MACs: locally administered, QEMU's prefix, one per interface.
fn default_mac(index: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x34, 0x56 + index as u8]
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).map_err(|_| format!("bad MAC address {s:?}")))
        .collect::<Result<_, _>>()?;
    let mac: [u8; 6] = bytes.try_into().map_err(|_| format!("bad MAC address {s:?}: need 6 bytes"))?;
    if mac[0] & 1 != 0 {
        return Err(format!("MAC address {s} is multicast"));
    }
    Ok(mac)
}

fn parse_net(s: &str) -> Result<NetConfig, String> {
    let mut tap = None;
    let mut mac = None;
    for opt in s.split(',') {
        match opt.split_once('=') {
            Some(("tap", name)) if !name.is_empty() && name.len() < 16 => tap = Some(name.to_string()),
            Some(("tap", name)) => return Err(format!("bad tap name {name:?} (1 to 15 characters)")),
            Some(("mac", m)) => mac = Some(parse_mac(m)?),
            _ => return Err(format!("unknown net option {opt:?} (known: tap=NAME, mac=MAC)")),
        }
    }
    // The index is not known here; main assigns default MACs.
    Ok(NetConfig { tap: tap.ok_or("--net needs tap=NAME")?, mac: mac.unwrap_or([0; 6]) })
}

fn main() -> ExitCode {
    // Warnings (e.g. a guest misprogramming a device) go to stderr; KEMARI_LOG=debug etc. for more.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KEMARI_LOG").unwrap_or_else(|_| "warn".into()))
        .without_time()
        .init();
    let argv = match config::expand(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("kemari: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    let devices = match &cli.command {
        Command::Run(a) => Some(&a.devices),
        Command::Restore(a) => Some(&a.devices),
        Command::Standby(a) => Some(&a.devices),
        _ => None,
    };
    if let Some(name) = devices.and_then(|d| d.name.as_deref()) {
        kemari_board::log::set_vm_name(name);
    }
    match cli.command {
        Command::Run(args) => run(args),
        Command::Restore(args) => restore(args),
        Command::Ctl(args) => ctl(args),
        Command::Migrate(args) => migrate(args),
        Command::Standby(args) => standby(args),
        Command::Certs(args) => certs(args),
    }
}

fn certs(args: CertsArgs) -> ExitCode {
    let made = if args.add {
        args.nodes.iter().try_for_each(|n| kemari_transport::sign_node(&args.dir, &args.vm, n))
    } else {
        let nodes: Vec<&str> = args.nodes.iter().map(String::as_str).collect();
        kemari_transport::make_certs(&args.dir, &args.vm, &nodes)
    };
    match made {
        Ok(()) => {
            kemari_board::say!(
                "certificates for {} in {}: {}",
                args.vm,
                args.dir.display(),
                args.nodes.iter().map(|n| format!("{n}.pem {n}.key")).collect::<Vec<_>>().join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            kemari_board::say!("{e}");
            ExitCode::from(2)
        }
    }
}

/// Exit code of a node that found another one active and stopped without releasing anything.
const EXIT_FENCED: u8 = 3;

impl FtArgs {
    fn options(&self) -> kemari_replication::Options {
        kemari_replication::Options {
            storage: self.storage,
            heartbeat: std::time::Duration::from_millis(self.heartbeat_ms.max(1)),
            heartbeat_timeout: std::time::Duration::from_millis(self.heartbeat_timeout_ms.max(1)),
            ..kemari_replication::Options::default()
        }
    }

    fn arbiter(&self, role: &str) -> Result<Box<dyn kemari_replication::arbiter::Arbiter>, String> {
        let spec = self.arbiter.as_deref().ok_or("fault tolerance needs --arbiter file:DIR or etcd:HOST:PORT[,...]")?;
        if self.heartbeat_timeout_ms <= self.heartbeat_ms {
            return Err(format!(
                "--heartbeat-timeout-ms {} must be longer than --heartbeat-ms {}",
                self.heartbeat_timeout_ms, self.heartbeat_ms
            ));
        }
        let node = self.node.clone().unwrap_or_else(|| format!("{role}-{}", std::process::id()));
        kemari_replication::arbiter::from_spec(spec, &node, std::time::Duration::from_millis(self.heartbeat_timeout_ms))
            .map_err(|e| format!("--arbiter {spec}: {e}"))
    }
}

impl ProtectArgs {
    fn options(&self) -> kemari_replication::Options {
        let sync = if self.sync == "interval" {
            kemari_replication::SyncPolicy::Interval {
                period: std::time::Duration::from_millis(self.interval_ms.max(1)),
            }
        } else {
            kemari_replication::SyncPolicy::Event { window: std::time::Duration::from_micros(self.window_us) }
        };
        kemari_replication::Options {
            sync,
            speculative: !self.strict,
            console_bursts: self.console_sync == "burst",
            input_log: self.input_log == "on",
            ..self.ft.options()
        }
    }
}

fn disk_paths(cfg: &MachineConfig) -> Vec<std::path::PathBuf> {
    cfg.disks.iter().map(|d| d.path.clone()).collect()
}

fn standby(args: StandbyArgs) -> ExitCode {
    let machine = machine_config(&args.devices);
    // A shape no machine can have would refuse every primary later: refuse it now.
    if let Err(e) = kemari_board::check_shape(args.cpus, args.memory, machine.prealloc) {
        kemari_board::say!("{e}");
        return ExitCode::from(2);
    }
    let ram = match kemari_board::receiver_ram(machine.prealloc, args.memory) {
        Ok(ram) => ram,
        Err(e) => {
            kemari_board::say!("{e}");
            return ExitCode::from(2);
        }
    };
    let (arbiter, security) = match args.ft.arbiter("secondary").and_then(|a| Ok((a, args.link.required("standby")?))) {
        Ok(x) => x,
        Err(e) => {
            kemari_board::say!("{e}");
            return ExitCode::from(2);
        }
    };
    let console = console::Console::start();
    if let Some(path) = &args.devices.api {
        if let Err(e) = api::serve(path, console.sender()) {
            kemari_board::say!("cannot serve the control API on {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    // The replica: this node's devices, the primary's shape, on the RAM faulted in meanwhile (once).
    let (devices, wake, mut ram) = (machine.clone(), console.waker(), ram);
    let build = move |shape| empty_machine(&devices, shape, ram.take(), wake.clone());
    let cfg = kemari_replication::secondary::StandbyConfig {
        listen: args.listen,
        security: security.clone(),
        opts: args.ft.options(),
        arbiter,
        arch: kemari_board::ARCH,
        disks: disk_paths(&machine),
        build: Box::new(build),
        expect_cpus: args.cpus,
        expect_memory_mib: args.memory,
    };
    let end = kemari_replication::secondary::standby(cfg, console.input());
    match end {
        Ok(kemari_replication::secondary::StandbyEnd::Shutdown | kemari_replication::secondary::StandbyEnd::Quit) => {
            drop(console);
            if let Some(path) = &args.devices.api {
                let _ = std::fs::remove_file(path);
            }
            ExitCode::SUCCESS
        }
        Ok(kemari_replication::secondary::StandbyEnd::TookOver { machine, arbiter, metrics }) => {
            let opts = args.ft.options();
            let disks = disk_paths(&machine_config(&args.devices));
            let primary = kemari_replication::primary::PrimaryConfig {
                peer: args.reprotect.clone(),
                opts,
                arbiter,
                disks,
                security,
                wake: console.waker(),
                metrics: Some(metrics),
            };
            drive(*machine, console, args.devices.api.as_deref(), Driving::Primary(primary), true)
        }
        Err(e) => {
            drop(console);
            if let Some(path) = &args.devices.api {
                let _ = std::fs::remove_file(path);
            }
            kemari_board::say!("standby: {e}");
            ExitCode::from(match e {
                kemari_replication::secondary::StandbyError::Stale { .. } => EXIT_FENCED,
                _ => 2,
            })
        }
    }
}

/// An empty machine of `devices` in another's `shape` (a replica, a migration's receiver), on `ram` when it
/// was mapped (and faulted in) beforehand.
fn empty_machine(
    devices: &MachineConfig,
    shape: kemari_machine::Shape,
    ram: Option<std::sync::Arc<kemari_machine::GuestRam>>,
    wake: kemari_devices::host::Wake,
) -> Result<Machine, String> {
    let cfg = MachineConfig { harts: shape.cpus, memory_mib: shape.memory >> 20, ..devices.clone() };
    let stdout = Box::new(std::io::stdout());
    match ram {
        Some(ram) => Machine::empty_on(ram, &cfg, stdout, wake),
        None => Machine::empty(&cfg, stdout, wake),
    }
    .map_err(|e| e.to_string())
}

/// The primary driver for `run`/`restore` with --protect, or None.
fn protection(
    args: &ProtectArgs,
    security: Option<kemari_transport::Security>,
    cfg: &MachineConfig,
    console: &console::Console,
) -> Result<Option<kemari_replication::primary::PrimaryConfig>, String> {
    let Some(peer) = &args.protect else {
        if args.ft.arbiter.is_some() {
            return Err("--arbiter is for protected VMs: give --protect HOST:PORT too".into());
        }
        return Ok(None);
    };
    Ok(Some(kemari_replication::primary::PrimaryConfig {
        peer: Some(peer.clone()),
        opts: args.options(),
        arbiter: args.ft.arbiter("primary")?,
        disks: disk_paths(cfg),
        security: security.ok_or_else(|| LinkArgs::missing("a protected VM"))?,
        wake: console.waker(),
        metrics: None,
    }))
}

fn machine_config(devices: &DeviceArgs) -> MachineConfig {
    MachineConfig {
        harts: 1,
        memory_mib: 256,
        kernel: None,
        initrd: None,
        cmdline: String::new(),
        firmware: None,
        disks: devices.disks.clone(),
        nets: devices
            .nets
            .iter()
            .enumerate()
            .map(|(i, n)| NetConfig { mac: if n.mac == [0; 6] { default_mac(i) } else { n.mac }, ..n.clone() })
            .collect(),
        rng: !devices.no_rng,
        prealloc: devices.prealloc,
        engine: devices.engine,
    }
}

fn run(args: RunArgs) -> ExitCode {
    let cfg = MachineConfig {
        harts: args.cpus,
        memory_mib: args.memory.unwrap_or(256),
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.append,
        firmware: args.firmware,
        ..machine_config(&args.devices)
    };
    if args.incoming.is_some() {
        // The sender's shape must match what is given here: refuse one no machine can have at once.
        if let Err(e) = kemari_board::check_shape(None, args.memory, cfg.prealloc) {
            kemari_board::say!("{e}");
            return ExitCode::from(2);
        }
    }
    let security = match args.link.security() {
        Ok(s) => s,
        Err(e) => {
            kemari_board::say!("{e}");
            return ExitCode::from(2);
        }
    };
    let console = console::Console::start();
    if let Some(addr) = &args.incoming {
        let Some(security) = security else {
            drop(console);
            kemari_board::say!("{}", LinkArgs::missing("run --incoming"));
            return ExitCode::from(2);
        };
        let api = args.devices.api.as_deref();
        if let Some(path) = api {
            if let Err(e) = api::serve(path, console.sender()) {
                kemari_board::say!("cannot serve the control API on {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
        return match receive(addr, security.clone(), args.memory, &cfg, &console) {
            Ok(m) => drive(m, console, api, Driving::Standalone(Some(security)), true),
            Err(code) => {
                drop(console);
                if let Some(path) = api {
                    let _ = std::fs::remove_file(path);
                }
                code
            }
        };
    }
    let primary = match protection(&args.protect, security.clone(), &cfg, &console) {
        Ok(p) => p,
        Err(e) => {
            drop(console);
            kemari_board::say!("{e}");
            return ExitCode::from(2);
        }
    };
    let driving = match primary {
        Some(p) => Driving::Primary(p),
        None => Driving::Standalone(security),
    };
    match Machine::new(&cfg, Box::new(std::io::stdout()), console.waker()) {
        Ok(m) => drive(m, console, args.devices.api.as_deref(), driving, false),
        Err(e) => {
            kemari_board::say!("{e}");
            ExitCode::from(2)
        }
    }
}

/// `run --incoming`: the machine a sender migrates here (see `kemari_runtime::migrate::receive_guest`), or the
/// exit code when listening fails (2) or the user quits (0).
fn receive(
    addr: &str,
    security: kemari_transport::Security,
    memory: Option<u64>,
    cfg: &MachineConfig,
    console: &console::Console,
) -> Result<Machine, ExitCode> {
    let incoming =
        kemari_runtime::migrate::Incoming::bind(addr, security, kemari_board::ARCH, memory).map_err(|e| {
            kemari_board::say!("cannot receive a migration on {addr}: {e}");
            ExitCode::from(2)
        })?;
    // With --prealloc, the guest's RAM is mapped and faulted in while no sender is there yet (again after a
    // refused stream, which may have written to it).
    let mut first = Some(kemari_board::receiver_ram(cfg.prealloc, memory).map_err(|e| {
        kemari_board::say!("{e}");
        ExitCode::from(2)
    })?);
    let (cfg, wake) = (cfg.clone(), console.waker());
    let prepare = move || {
        let ram = first.take().unwrap_or_else(|| {
            kemari_board::receiver_ram(cfg.prealloc, memory).unwrap_or_else(|e| {
                kemari_board::say!("{e}; the next sender's pages fault in as they arrive");
                None
            })
        });
        let (cfg, wake) = (cfg.clone(), wake.clone());
        move |shape| empty_machine(&cfg, shape, ram, wake)
    };
    kemari_runtime::migrate::receive_guest(&incoming, console.input(), prepare).ok_or(ExitCode::SUCCESS)
}

/// One progress report of a running migration: on a terminal a bar redrawn in place (the full pass, then the
/// dirty rounds), elsewhere a line each time.
fn show_progress(m: &serde_json::Value) {
    use std::io::IsTerminal;
    let (bar, text) = progress_text(m);
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[Kkemari: migrating [{bar}] {text}");
    } else {
        kemari_board::say!("migrating: {text}");
    }
}

/// A bar of the full pass's progress, and the figures of a status reply's `migration` object.
fn progress_text(m: &serde_json::Value) -> (String, String) {
    const WIDTH: u64 = 30;
    let n = |k: &str| m[k].as_u64().unwrap_or(0);
    let (pages, left) = (n("pages").max(1), n("pages_left").min(n("pages")));
    let stage = match n("round") {
        0 => format!("full pass {:>3}%", (pages - left) * 100 / pages),
        r => format!("dirty round {r} ({} pages)", n("dirty_pages_last_round")),
    };
    let text = format!(
        "{} MiB sent, {stage}, guest dirtying {:.1} MiB/s",
        n("bytes") >> 20,
        n("dirty_rate") as f64 / (1 << 20) as f64
    );
    let done = (pages - left) * WIDTH / pages;
    (format!("{}{}", "#".repeat(done as usize), "-".repeat((WIDTH - done) as usize)), text)
}

fn migrate(args: MigrateArgs) -> ExitCode {
    // Progress from a second connection while the migrate request waits for its answer.
    let api_path = args.api.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    let progress = std::thread::spawn(move || {
        while !done2.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if let Ok(reply) = api::call(&api_path, &serde_json::json!({"op": "status"})) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&reply) {
                    let m = &v["migration"];
                    if m.is_object() {
                        show_progress(m);
                    }
                }
            }
        }
    });
    let request = serde_json::json!({"op": "migrate", "to": args.to, "downtime_ms": args.downtime_ms});
    let result = api::call(&args.api, &request);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = progress.join();
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    match result {
        Ok(reply) => {
            let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
            if v["ok"].as_bool() == Some(true) {
                println!("{reply}");
                kemari_board::say!(
                    "migrated to {} in {} ms: {} MiB, {} dirty rounds, downtime {:.1} ms",
                    args.to,
                    v["total_millis"],
                    v["bytes"].as_u64().unwrap_or(0) >> 20,
                    v["rounds"],
                    v["downtime_micros"].as_u64().unwrap_or(0) as f64 / 1000.0
                );
                ExitCode::SUCCESS
            } else {
                kemari_board::say!("{}", v["error"].as_str().unwrap_or(&reply));
                ExitCode::from(1)
            }
        }
        Err(e) => {
            kemari_board::say!("cannot reach the control API at {}: {e}", args.api.display());
            ExitCode::from(2)
        }
    }
}

fn restore(args: RestoreArgs) -> ExitCode {
    let path = args.dir.join(kemari_runtime::control::SNAPSHOT_STATE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            kemari_board::say!("cannot read snapshot {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let (harts, memory_mib) = match kemari_board::persist::peek_shape(&bytes) {
        Ok(shape) => shape,
        Err(e) => {
            kemari_board::say!("snapshot {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let cfg = MachineConfig { harts, memory_mib, ..machine_config(&args.devices) };
    let security = match args.link.security() {
        Ok(s) => s,
        Err(e) => {
            kemari_board::say!("{e}");
            return ExitCode::from(2);
        }
    };
    let console = console::Console::start();
    match Machine::restore(&cfg, &bytes, Box::new(std::io::stdout()), console.waker()) {
        Ok(m) => drive(m, console, args.devices.api.as_deref(), Driving::Standalone(security), false),
        Err(e) => {
            kemari_board::say!("cannot restore {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

fn ctl(args: CtlArgs) -> ExitCode {
    let request = match &args.op {
        CtlOp::Status => serde_json::json!({"op": "status"}),
        CtlOp::Metrics => serde_json::json!({"op": "metrics"}),
        CtlOp::Pause => serde_json::json!({"op": "pause"}),
        CtlOp::Resume => serde_json::json!({"op": "resume"}),
        CtlOp::Snapshot { dir } => {
            // The VM resolves the path in its own working directory: send an absolute one.
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            serde_json::json!({"op": "snapshot", "dir": dir})
        }
    };
    match api::call(&args.api, &request) {
        Ok(reply) => {
            let v = serde_json::from_str::<serde_json::Value>(&reply).unwrap_or_default();
            match (&args.op, v["text"].as_str()) {
                (CtlOp::Metrics, Some(text)) => print!("{text}"),
                _ => println!("{reply}"),
            }
            let ok = v["ok"].as_bool();
            if ok == Some(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            kemari_board::say!("cannot reach the control API at {}: {e}", args.api.display());
            ExitCode::from(2)
        }
    }
}

/// How a node runs its machine: on its own (live-migrating over a link of this security, if any), or as the
/// active node of a protected pair.
enum Driving {
    Standalone(Option<kemari_transport::Security>),
    Primary(kemari_replication::primary::PrimaryConfig),
}

/// Runs a built machine in the runtime, with the console (and the control API, if asked for), until it ends.
fn drive(
    mut machine: Machine,
    console: console::Console,
    api: Option<&std::path::Path>,
    driving: Driving,
    api_served: bool,
) -> ExitCode {
    if let Some(path) = api.filter(|_| !api_served) {
        if let Err(e) = api::serve(path, console.sender()) {
            kemari_board::say!("cannot serve the control API on {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    let ended = match driving {
        Driving::Standalone(link_security) => {
            let cfg = kemari_runtime::Config { wake: console.waker(), link_security };
            kemari_runtime::run(&mut machine, console.input(), &mut kemari_runtime::Standalone, cfg)
        }
        Driving::Primary(p) => kemari_replication::primary::run(&mut machine, console.input(), p),
    };
    let outcome = match ended {
        kemari_runtime::Ended::Machine(outcome) => outcome,
        kemari_runtime::Ended::Fenced(why) => {
            drop(console);
            kemari_board::say!("fenced: {why}; this copy stops without releasing its held outputs");
            // Leave at once: nothing held may leave through a destructor.
            std::process::exit(EXIT_FENCED.into());
        }
    };
    drop(console);
    if let Some(path) = api {
        api::drain(std::time::Duration::from_secs(2));
        let _ = std::fs::remove_file(path);
    }
    match outcome {
        RunOutcome::PowerOff => ExitCode::SUCCESS,
        RunOutcome::Reboot => {
            kemari_board::say!("guest requested a reboot; kemari stops instead");
            ExitCode::SUCCESS
        }
        RunOutcome::Migrated => {
            kemari_board::say!("the VM now runs on the migration target; this copy stops");
            ExitCode::SUCCESS
        }
        RunOutcome::Quit => {
            kemari_board::say!("quit");
            ExitCode::SUCCESS
        }
        RunOutcome::Crash(why) => {
            kemari_board::say!("guest crashed: {why}");
            ExitCode::from(1)
        }
        RunOutcome::TestExit(0) => ExitCode::SUCCESS,
        RunOutcome::TestExit(code) => {
            kemari_board::say!("test failed with code {code}");
            ExitCode::from(code.clamp(1, 255) as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::progress_text;

    #[test]
    fn progress_shows_the_full_pass_then_the_rounds() {
        let m = serde_json::json!({"round": 0, "bytes": 64 << 20, "pages": 65536, "pages_left": 16384,
                                   "dirty_pages_last_round": 0, "dirty_rate": 0});
        let (bar, text) = progress_text(&m);
        assert_eq!(bar, format!("{}{}", "#".repeat(22), "-".repeat(8)));
        assert_eq!(text, "64 MiB sent, full pass  75%, guest dirtying 0.0 MiB/s");
        let m = serde_json::json!({"round": 3, "bytes": 300 << 20, "pages": 65536, "pages_left": 0,
                                   "dirty_pages_last_round": 512, "dirty_rate": 25 << 20});
        let (bar, text) = progress_text(&m);
        assert_eq!(bar, "#".repeat(30));
        assert_eq!(text, "300 MiB sent, dirty round 3 (512 pages), guest dirtying 25.0 MiB/s");
    }
}
