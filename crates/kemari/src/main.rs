//! The `kemari` binary: command line, console and exit codes.
//!
//! Exit codes: 0 when the guest powers off (or a bare-metal test passes); 1 when the guest crashes; 2 for bad
//! input (a one-line error naming the problem); a failing bare-metal test exits with its HTIF failure code.

mod console;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kemari_board::{Machine, MachineConfig, RunOutcome};

#[derive(Parser)]
#[command(name = "kemari", version, about = "A virtual machine monitor with transparent fault tolerance")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM with its console on this terminal (Ctrl-A x quits).
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// RISC-V Linux kernel Image.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (cpio, optionally compressed).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0")]
    append: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Number of harts (vCPUs), 1 to 8.
    #[arg(long, default_value_t = 1)]
    cpus: usize,
    /// Bare-metal ELF started in M-mode without the built-in SBI (e.g. OpenSBI's fw_jump.elf or a test).
    #[arg(long)]
    firmware: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let cfg = MachineConfig {
        harts: args.cpus,
        memory_mib: args.memory,
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.append,
        firmware: args.firmware,
    };
    let mut machine = match Machine::new(&cfg, Box::new(std::io::stdout())) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("kemari: {e}");
            return ExitCode::from(2);
        }
    };
    let console = console::Console::start();
    let outcome = machine.run(console.input());
    drop(console);
    match outcome {
        RunOutcome::PowerOff => ExitCode::SUCCESS,
        RunOutcome::Reboot => {
            eprintln!("kemari: guest requested a reboot; kemari stops instead");
            ExitCode::SUCCESS
        }
        RunOutcome::Quit => {
            eprintln!("kemari: quit");
            ExitCode::SUCCESS
        }
        RunOutcome::Crash(why) => {
            eprintln!("kemari: guest crashed: {why}");
            ExitCode::from(1)
        }
        RunOutcome::TestExit(0) => ExitCode::SUCCESS,
        RunOutcome::TestExit(code) => {
            eprintln!("kemari: test failed with code {code}");
            ExitCode::from(code.clamp(1, 255) as u8)
        }
    }
}
