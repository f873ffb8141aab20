//! The VM side of `build`, `patch-and-build` and `verify`: build in the
//! guest or on the host, install in the guest, reboot into the new kernel
//! and run the checks there.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{CommandError, CommandResult, Phase};
use crate::build::BuildOptions;
use crate::cli::{BuildArgs, VerifyArgs};
use crate::exit::{ExitCode, Failure};
use crate::guest::check::{self, State};
use crate::guest::install::{self, Kernel};
use crate::guest::{boot, push, remote_build, Guest};
use crate::project::Project;
use crate::vm::project_vm::ProjectVm;
use crate::vm::VmStatus;
use crate::{patch, ui};

/// The machine a build runs on and the place its kernel goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On the host, for `verify --direct`.
    Host,
    /// In the VM, installed there.
    InGuest,
    /// On the host, sent to the VM and installed there.
    OnHost,
}

/// Picks the mode from the flags, or from whether the project's VM runs.
pub async fn mode(project: &Project, args: &BuildArgs) -> Result<Mode, CommandError> {
    if args.no_vm {
        return Ok(Mode::Host);
    }
    let runs = vm_runs(project).await.phase(ExitCode::Infrastructure)?;
    let explicit = match (args.on_host, args.in_guest) {
        (true, _) => Some(Mode::OnHost),
        (_, true) => Some(Mode::InGuest),
        _ => None,
    };
    match (explicit, runs) {
        (Some(mode), true) => Ok(mode),
        (Some(_), false) => Err(Failure::usage(
            "--in-guest and --on-host need the project's VM running; run `kbuild up` first, or \
             pass --no-vm to build on the host for `verify --direct`",
        ))
        .phase(ExitCode::Usage),
        (None, true) => {
            ui::status(
                "Building",
                "for the running VM, in the guest (--on-host builds here, --no-vm for the host)",
            );
            Ok(Mode::InGuest)
        }
        (None, false) => Ok(Mode::Host),
    }
}

/// True when the project has a VM and it is running.
pub async fn vm_runs(project: &Project) -> anyhow::Result<bool> {
    match ProjectVm::existing(project)? {
        Some(vm) => Ok(vm.machine.status().await? == VmStatus::Running),
        None => Ok(false),
    }
}

/// A kernel built for the VM and staged in the guest, not yet installed.
pub struct Staged {
    pub release: String,
    /// The build log: make's output, on the host or from the guest.
    pub log: std::path::PathBuf,
    /// `host` or `guest`.
    pub built_on: &'static str,
}

/// Builds the patched tree for the VM and installs the kernel there.
pub async fn build_for_vm(
    project: &Project,
    tree: &Path,
    args: &BuildArgs,
    mode: Mode,
) -> CommandResult {
    let guest = Guest::open(project).await.phase(ExitCode::Infrastructure)?;
    let number = syscall_number(project, tree)?;
    let options = BuildOptions { jobs: args.jobs };
    let staged = build_staged(project, tree, &guest, &options, mode).await?;
    let install_log = install_staged(project, &guest, &staged, number)?;
    ui::detail(format!(
        "logs: {} and {}",
        staged.log.display(),
        install_log.display()
    ));
    Ok(ExitCode::Passed)
}

/// Builds in the guest (`InGuest`) or on the host and sends the kernel
/// there (`OnHost`), leaving it staged for `install_staged`.
pub async fn build_staged(
    project: &Project,
    tree: &Path,
    guest: &Guest,
    options: &BuildOptions,
    mode: Mode,
) -> Result<Staged, CommandError> {
    // Compile and make errors carry exit code 3 themselves; what is left
    // here (SSH, SFTP, the guest's disk) is infrastructure.
    let staged = match mode {
        Mode::OnHost => {
            let pushed = push::build_and_push(project, tree, guest, options)
                .await
                .phase(ExitCode::Infrastructure)?;
            ui::detail(format!(
                "sent {} to VM {} in {}",
                ui::bytes(pushed.bytes_sent),
                guest.vm.name,
                ui::seconds(pushed.elapsed)
            ));
            Staged {
                release: pushed.built.release,
                log: pushed.built.log,
                built_on: "host",
            }
        }
        _ => {
            let built = remote_build::build_in_guest(project, tree, guest, options)
                .await
                .phase(ExitCode::Infrastructure)?;
            Staged {
                release: built.release,
                log: built.log,
                built_on: "guest",
            }
        }
    };
    Ok(staged)
}

/// Installs the staged kernel and arms its one-time boot entry; returns the
/// install log.
pub fn install_staged(
    project: &Project,
    guest: &Guest,
    staged: &Staged,
    number: u32,
) -> Result<std::path::PathBuf, CommandError> {
    let kernel = Kernel {
        release: &staged.release,
        number,
        built_on: staged.built_on,
    };
    let install_log = project.log_dir().join("install.log");
    let installed =
        install::install(guest, project, &kernel, &install_log).phase(ExitCode::Infrastructure)?;
    ui::status(
        "Installed",
        format!(
            "linux {} in VM {}; `kbuild verify` reboots into it once",
            installed.release, guest.vm.name
        ),
    );
    Ok(install_log)
}

/// Reboots the VM into the installed kernel when it does not run it yet,
/// then runs the checks and prints one line per check.
pub async fn verify_in_vm(project: &Project, args: &VerifyArgs) -> CommandResult {
    let installed = installed_record(project)?;
    let mut guest = Guest::open(project).await.phase(ExitCode::Infrastructure)?;
    let timeout = args
        .timeout
        .map_or(crate::vm::up::DEFAULT_BOOT_TIMEOUT, Duration::from_secs);
    let rebooted = reboot_if_needed(project, &mut guest, &installed, timeout).await?;
    let checks = run_checks(project, &guest, &installed)?;
    if checks.passed() {
        let after = rebooted.map_or_else(String::new, |started: Instant| {
            format!(
                ", {} after the reboot request",
                ui::seconds(started.elapsed())
            )
        });
        ui::status(
            "Passed",
            format!("{} in VM {}{after}", project.syscall.name, guest.vm.name),
        );
        return Ok(ExitCode::Passed);
    }
    Ok(ExitCode::VerificationFailed)
}

/// Reads the install record of the project's syscall; the error names the command to run.
pub fn installed_record(project: &Project) -> Result<install::Installed, CommandError> {
    let installed = install::load(project)
        .phase(ExitCode::Usage)?
        .ok_or_else(|| {
            Failure::usage(
                "no kernel is installed in the VM yet; run `kbuild patch-and-build` with the VM \
                 up (or pass --direct to boot the host build with QEMU)",
            )
        })
        .phase(ExitCode::Usage)?;
    if installed.syscall != project.syscall.name {
        return Err(Failure::usage(format!(
            "the kernel in the VM was built for syscall {}, not {}; run `kbuild patch-and-build`",
            installed.syscall, project.syscall.name
        )))
        .phase(ExitCode::Usage);
    }
    Ok(installed)
}

/// Reboots into the installed kernel unless the VM runs it in a boot after
/// the install; re-arms the one-time entry when the VM rebooted since.
/// Returns when the reboot was requested, or `None` without a reboot.
pub async fn reboot_if_needed(
    project: &Project,
    guest: &mut Guest,
    installed: &install::Installed,
    timeout: Duration,
) -> Result<Option<Instant>, CommandError> {
    let boot_id =
        tokio::task::block_in_place(|| guest.session.boot_id()).phase(ExitCode::Infrastructure)?;
    let running = guest
        .capture(&["uname", "-r"])
        .phase(ExitCode::Infrastructure)?;
    if boot_id != installed.boot_id && running.trim() == installed.release {
        return Ok(None);
    }
    if boot_id != installed.boot_id {
        // The VM rebooted since the install, so GRUB used up the one-time entry.
        ui::status(
            "Arming",
            format!("the one-time boot of linux {} again", installed.release),
        );
        let log = project.log_dir().join("install.log");
        install::arm(guest, installed, &log).phase(ExitCode::Infrastructure)?;
    }
    check::prepare_test_program(guest, project, installed.number)
        .phase(ExitCode::Infrastructure)?;
    let requested = Instant::now();
    boot::boot_installed(guest, installed, timeout)
        .await
        .phase(ExitCode::Infrastructure)?;
    Ok(Some(requested))
}

/// Runs the checks in the VM and prints one line per check, and a summary
/// line when one failed.
pub fn run_checks(
    project: &Project,
    guest: &Guest,
    installed: &install::Installed,
) -> Result<check::Checks, CommandError> {
    let checks = check::run_checks(guest, project, installed).phase(ExitCode::Infrastructure)?;
    for line in &checks.checks {
        ui::result(line);
    }
    if !checks.passed() {
        let failed: Vec<&str> = checks
            .checks
            .iter()
            .filter(|check| check.state == State::Fail)
            .map(|check| check.name)
            .collect();
        ui::status("Failed", format!("checks: {}", failed.join(", ")));
    }
    Ok(checks)
}

pub fn syscall_number(project: &Project, tree: &Path) -> Result<u32, CommandError> {
    let name = &project.syscall.name;
    patch::syscall_number(tree, project.kernel.arch, name)
        .phase(ExitCode::Usage)?
        .ok_or_else(|| {
            Failure::usage(format!(
                "syscall {name} is not in the syscall table of {}; run `kbuild patch-and-build`",
                tree.display()
            ))
        })
        .phase(ExitCode::Usage)
}
