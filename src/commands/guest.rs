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

/// Builds the patched tree for the VM and installs the kernel there.
pub async fn build_for_vm(
    project: &Project,
    tree: &Path,
    args: &BuildArgs,
    mode: Mode,
) -> CommandResult {
    let guest = Guest::open(project).await.phase(ExitCode::Infrastructure)?;
    let number = syscall_number(project, tree)?;
    // Compile and make errors carry exit code 3 themselves; what is left
    // here (SSH, SFTP, the guest's disk) is infrastructure.
    let options = BuildOptions { jobs: args.jobs };
    let (release, log, built_on) = match mode {
        Mode::OnHost => {
            let pushed = push::build_and_push(project, tree, &guest, &options)
                .await
                .phase(ExitCode::Infrastructure)?;
            ui::detail(format!(
                "sent {} to VM {} in {}",
                ui::bytes(pushed.bytes_sent),
                guest.vm.name,
                ui::seconds(pushed.elapsed)
            ));
            (pushed.built.release, pushed.built.log, "host")
        }
        _ => {
            let built = remote_build::build_in_guest(project, tree, &guest, &options)
                .await
                .phase(ExitCode::Infrastructure)?;
            (built.release, built.log, "guest")
        }
    };
    let kernel = Kernel {
        release: &release,
        number,
        built_on,
    };
    let install_log = project.log_dir().join("install.log");
    let installed =
        install::install(&guest, project, &kernel, &install_log).phase(ExitCode::Infrastructure)?;
    ui::status(
        "Installed",
        format!(
            "linux {} in VM {}; `kbuild verify` reboots into it once",
            installed.release, guest.vm.name
        ),
    );
    ui::detail(format!(
        "logs: {} and {}",
        log.display(),
        install_log.display()
    ));
    Ok(ExitCode::Passed)
}

/// Reboots the VM into the installed kernel when it does not run it yet,
/// then runs the checks and prints one line per check.
pub async fn verify_in_vm(project: &Project, args: &VerifyArgs) -> CommandResult {
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
    let mut guest = Guest::open(project).await.phase(ExitCode::Infrastructure)?;
    let boot_id =
        tokio::task::block_in_place(|| guest.session.boot_id()).phase(ExitCode::Infrastructure)?;
    let running = guest
        .capture(&["uname", "-r"])
        .phase(ExitCode::Infrastructure)?;
    let mut rebooted = None;
    if boot_id == installed.boot_id || running.trim() != installed.release {
        if boot_id != installed.boot_id {
            // The VM rebooted since the install, so GRUB used up the one-time entry.
            ui::status(
                "Arming",
                format!("the one-time boot of linux {} again", installed.release),
            );
            let log = project.log_dir().join("install.log");
            install::arm(&guest, &installed, &log).phase(ExitCode::Infrastructure)?;
        }
        check::prepare_test_program(&guest, project, installed.number)
            .phase(ExitCode::Infrastructure)?;
        let timeout = args
            .timeout
            .map_or(crate::vm::up::DEFAULT_BOOT_TIMEOUT, Duration::from_secs);
        rebooted = Some(Instant::now());
        boot::boot_installed(&mut guest, &installed, timeout)
            .await
            .phase(ExitCode::Infrastructure)?;
    }
    let checks = check::run_checks(&guest, project, &installed).phase(ExitCode::Infrastructure)?;
    for line in &checks.checks {
        ui::result(line);
    }
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
    let failed: Vec<&str> = checks
        .checks
        .iter()
        .filter(|check| check.state == State::Fail)
        .map(|check| check.name)
        .collect();
    ui::status("Failed", format!("checks: {}", failed.join(", ")));
    Ok(ExitCode::VerificationFailed)
}

fn syscall_number(project: &Project, tree: &Path) -> Result<u32, CommandError> {
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
