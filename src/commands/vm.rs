//! `kbuild status`, `ssh`, `down` and `destroy`: the project's existing VM.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::{CommandError, CommandResult, Phase};
use crate::cli::{DownArgs, SshArgs};
use crate::exit::{ExitCode, Failure};
use crate::project::Project;
use crate::ssh::{self, ExecOptions, OutputStream};
use crate::ui;
use crate::vm::project_vm::{vm_dir, ProjectVm};
use crate::vm::{VmState, VmStatus};

/// Seconds `kbuild ssh` waits for a VM that is still booting.
const SSH_WAIT: Duration = Duration::from_secs(60);

fn open(project: &Project) -> Result<ProjectVm, CommandError> {
    ProjectVm::existing(project)
        .phase(ExitCode::Infrastructure)?
        .ok_or_else(|| Failure::usage("this project has no VM; run `kbuild up` first"))
        .phase(ExitCode::Usage)
}

async fn running_state(vm: &ProjectVm) -> Result<VmState, CommandError> {
    let status = vm.machine.status().await.phase(ExitCode::Infrastructure)?;
    let state = vm.machine.state().phase(ExitCode::Infrastructure)?;
    match (status, state) {
        (VmStatus::Running, Some(state)) => Ok(state),
        _ => Err(Failure::infrastructure(format!(
            "VM {} is not running; run `kbuild up` to start it",
            vm.name
        )))
        .phase(ExitCode::Infrastructure),
    }
}

pub async fn status(project: &Project) -> CommandResult {
    let Some(vm) = ProjectVm::existing(project).phase(ExitCode::Infrastructure)? else {
        ui::result(format!(
            "no VM for this project (folder {})",
            vm_dir(project).display()
        ));
        return Ok(ExitCode::Passed);
    };
    let status = vm.machine.status().await.phase(ExitCode::Infrastructure)?;
    let backend = vm.machine.backend().name();
    let word = match status {
        VmStatus::Running => "running",
        VmStatus::Stopped => "stopped",
        VmStatus::Missing => "missing",
    };
    let mut line = format!("VM {} ({backend}): {word}", vm.name);
    if let (VmStatus::Running, Some(state)) =
        (status, vm.machine.state().phase(ExitCode::Infrastructure)?)
    {
        line.push_str(&format!(
            ", SSH on 127.0.0.1:{} as {}",
            state.ssh_port, vm.user
        ));
        ui::result(line);
        ui::detail(format!("console: {}", state.console_log.display()));
    } else {
        ui::result(line);
    }
    Ok(ExitCode::Passed)
}

/// Runs a command over SSH, or hands the terminal to the system's ssh client.
/// Returns the remote command's exit status as kbuild's own.
pub async fn ssh(project: &Project, args: &SshArgs) -> Result<i32, CommandError> {
    let vm = open(project)?;
    let state = running_state(&vm).await?;
    let target = vm.target(project, &state);
    if args.command.is_empty() {
        return interactive(&target);
    }

    let command = args.command.clone();
    let machine = vm.machine.clone();
    let status = tokio::task::spawn_blocking(move || -> anyhow::Result<ssh::ExitStatus> {
        let console = move || machine.console_tail(20);
        let session = ssh::wait_for_ssh(&target, Instant::now() + SSH_WAIT, console)?;
        let argv: Vec<&str> = command.iter().map(String::as_str).collect();
        session.exec(
            &argv,
            &ExecOptions::default(),
            |stream, line| match stream {
                OutputStream::Stdout => ui::result(line),
                OutputStream::Stderr => ui::remote_stderr(line),
            },
        )
    })
    .await
    .context("the SSH task panicked")
    .phase(ExitCode::Infrastructure)?
    .phase(ExitCode::Infrastructure)?;
    Ok(match status {
        ssh::ExitStatus::Code(code) => code,
        ssh::ExitStatus::Signal(_) => 128 + 9,
    })
}

/// Runs OpenSSH's client with the project's key and the VM's known_hosts,
/// because a terminal session needs its handling of ptys and signals.
fn interactive(target: &ssh::Target) -> Result<i32, CommandError> {
    let program = crate::host::find_program("ssh")
        .ok_or_else(|| {
            Failure::infrastructure(
                "an interactive shell needs the ssh client (apt-get install openssh-client); \
                 `kbuild ssh COMMAND` works without it",
            )
        })
        .phase(ExitCode::Infrastructure)?;
    let status = std::process::Command::new(program)
        .arg("-i")
        .arg(&target.key)
        .arg("-p")
        .arg(target.port.to_string())
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            target.known_hosts.display()
        ))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg(format!("{}@{}", target.user, target.host))
        .status()
        .context("running ssh")
        .phase(ExitCode::Infrastructure)?;
    Ok(status.code().unwrap_or(128 + 9))
}

pub async fn down(project: &Project, args: &DownArgs) -> CommandResult {
    let vm = open(project)?;
    ui::status("Stopping", format!("VM {}", vm.name));
    vm.machine
        .stop(Duration::from_secs(args.timeout))
        .await
        .phase(ExitCode::Infrastructure)?;
    ui::status("Stopped", format!("VM {}", vm.name));
    Ok(ExitCode::Passed)
}

pub async fn destroy(project: &Project) -> CommandResult {
    let dir = vm_dir(project);
    if !dir.exists() {
        ui::result("no VM for this project; nothing to destroy");
        return Ok(ExitCode::Passed);
    }
    if let Some(vm) = ProjectVm::existing(project).phase(ExitCode::Infrastructure)? {
        ui::status("Destroying", format!("VM {}", vm.name));
        vm.machine.destroy().await.phase(ExitCode::Infrastructure)?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing {}", dir.display()))
            .phase(ExitCode::Infrastructure)?;
    }
    ui::status(
        "Destroyed",
        format!(
            "{} (the cached image and the project's SSH key stay)",
            dir.display()
        ),
    );
    Ok(ExitCode::Passed)
}
