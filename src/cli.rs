//! Command-line syntax.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::verify::Accel;

const EXIT_CODES: &str = "\
Exit codes:
  0   passed
  1   verification failed (the kernel booted; the syscall is missing or returned the wrong value)
  2   usage or configuration error (command line, kbuild.toml, kernel tree)
  3   build failed (kernel configuration or compilation)
  69  infrastructure failure (QEMU missing, the kernel or VM did not boot, timeout)
  130 kbuild run was interrupted (SIGINT or SIGTERM); its reports name the step

Environment:
  KBUILD_LOG        log filter for tracing output on stderr, for example `debug`
  KBUILD_CACHE_DIR  cache folder (default: $XDG_CACHE_HOME/kbuild or ~/.cache/kbuild)
  CI                when set, no progress bars: one plain line per step";

/// Add a system call to a Linux kernel, build it, boot it and prove the call works.
#[derive(Debug, Parser)]
#[command(name = "kbuild", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Project file (default: kbuild.toml in this folder or the nearest parent)
    #[arg(long, global = true, value_name = "PATH")]
    pub project: Option<PathBuf>,

    /// Print more detail: -v for debug logs, -vv for trace logs
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Print only warnings and errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented kbuild.toml that works as it is
    Init(InitArgs),
    /// Add the syscall to the kernel tree (or remove it with --revert)
    Patch(PatchArgs),
    /// Configure and build the kernel out of tree
    Build(BuildArgs),
    /// Add the syscall, then build the kernel
    PatchAndBuild(BuildArgs),
    /// Check the syscall: reboot the VM into the installed kernel, or boot the host build with --direct
    Verify(VerifyArgs),
    /// Download the profile's image, boot the VM, reach it over SSH, install build dependencies
    Up(UpArgs),
    /// Show whether the project's VM exists and runs, and how to reach it
    Status,
    /// Open a shell in the VM, or run COMMAND there and exit with its status
    Ssh(SshArgs),
    /// Shut the VM down (ACPI power button, then a forced stop after the timeout)
    Down(DownArgs),
    /// Stop the VM and delete it with its disk; the cached image stays
    Destroy,
    /// Run every step from the VM image to the checks, skipping the steps still valid
    #[command(after_help = crate::run::STEPS_HELP)]
    Run(RunArgs),
    /// Check the host: QEMU, KVM, VirtualBox, free disk, compilers and build tools
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Folder to write kbuild.toml into
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub dir: PathBuf,

    /// Syscall name, a C identifier
    #[arg(long, default_value = "kbuild_add")]
    pub name: String,

    /// Kernel tree or tarball (default: the newest /usr/src/linux-source-*.tar.xz)
    #[arg(long, value_name = "PATH")]
    pub source: Option<PathBuf>,

    /// Replace an existing kbuild.toml
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PatchArgs {
    /// Restore every file the last patch changed
    #[arg(long)]
    pub revert: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Parallel make jobs (default: build.jobs, else CPUs capped by available memory)
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,

    /// Build inside the project's VM and install the kernel there (default when the VM runs)
    #[arg(long, conflicts_with_all = ["on_host", "no_vm"])]
    pub in_guest: bool,

    /// Build on the host with the [vm] config, then send the kernel to the VM and install it
    #[arg(long, conflicts_with = "no_vm")]
    pub on_host: bool,

    /// Build on the host for `verify --direct` only, even when the VM runs
    #[arg(long)]
    pub no_vm: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Boot the kernel directly with QEMU (-kernel/-initrd) and run the test as /init
    #[arg(long)]
    pub direct: bool,

    /// Accelerator for --direct: kvm or tcg (default: KVM when a probe guest runs, else TCG)
    #[arg(long, value_name = "ACCEL", value_parser = parse_accel, requires = "direct")]
    pub accel: Option<Accel>,

    /// Seconds the boot may take (default: test.timeout in kbuild.toml, else 180, for
    /// --direct; 600 for a reboot of the VM)
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
}

fn parse_accel(value: &str) -> Result<Accel, String> {
    value.parse::<Accel>().map_err(|error| error.to_string())
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Use an image whose profile has no checksum (the download is not verified)
    #[arg(long)]
    pub allow_unverified: bool,

    /// Accelerator for QEMU: kvm or tcg (default: KVM when a probe guest runs, else TCG)
    #[arg(long, value_name = "ACCEL", value_parser = parse_accel)]
    pub accel: Option<Accel>,

    /// Seconds to wait for SSH after the VM starts
    #[arg(long, value_name = "SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub boot_timeout: u64,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// Command to run in the VM; without it, an interactive shell (needs the ssh client)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Seconds to wait for the guest to power off before forcing it
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Boot the host build directly with QEMU instead of using the VM
    #[arg(long)]
    pub direct: bool,

    /// Build inside the VM (default: build on the host and send the kernel to the VM)
    #[arg(long, conflicts_with = "direct")]
    pub in_guest: bool,

    /// Run this step and every later one even when their records are still valid
    #[arg(long, value_name = "STEP", conflicts_with_all = ["only", "fresh"])]
    pub from: Option<String>,

    /// Run only this step, whatever the records contain
    #[arg(long, value_name = "STEP", conflicts_with = "fresh")]
    pub only: Option<String>,

    /// Forget every step's record and run all steps
    #[arg(long)]
    pub fresh: bool,

    /// Write a JSON report of the run to FILE
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Write a JUnit XML file with one test case per step and per check to FILE
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,

    /// Parallel make jobs (default: build.jobs, else CPUs capped by available memory)
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,

    /// Accelerator for QEMU: kvm or tcg (default: KVM when a probe guest runs, else TCG)
    #[arg(long, value_name = "ACCEL", value_parser = parse_accel)]
    pub accel: Option<Accel>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the findings as one JSON object
    #[arg(long)]
    pub json: bool,
}
