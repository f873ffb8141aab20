use std::time::Duration;

use super::{CommandResult, Phase};
use crate::cli::UpArgs;
use crate::exit::ExitCode;
use crate::project::Project;
use crate::ui;
use crate::vm::up::{up, UpOptions};

pub async fn run(project: &Project, args: &UpArgs) -> CommandResult {
    let options = UpOptions {
        allow_unverified: args.allow_unverified,
        accel: args.accel,
        boot_timeout: Duration::from_secs(args.boot_timeout),
    };
    let ready = up(project, &options)
        .await
        .phase(ExitCode::Infrastructure)?;
    let target = ready.session.target();
    let installed = &ready.provisioned.installed;
    if !installed.is_empty() {
        ui::status("Installed", format!("{} packages", installed.len()));
    }
    ui::status(
        "Ready",
        format!(
            "VM {} ({}), {} CPUs, {} MiB; `kbuild ssh` logs in as {}",
            ready.vm.name,
            ready.vm.machine.backend().name(),
            ready.provisioned.resources.cpus,
            ready.provisioned.resources.memory_kib / 1024,
            target.user
        ),
    );
    ui::detail(format!("console: {}", ready.state.console_log.display()));
    Ok(ExitCode::Passed)
}
