//! Makes a guest ready for kernel builds: checks its disk and memory and
//! installs the profile's build dependencies. Runs over a blocking SSH session.

pub mod packages;
pub mod resources;

use std::path::Path;

use crate::exit::Failure;
use crate::profile::Profile;
use crate::ssh::{ExecOptions, OutputStream, Session};
use crate::ui;

/// Lines of a failed install command quoted in the error.
const QUOTED_LINES: usize = 15;

/// Result of provisioning: the guest's resources and the packages installed.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub resources: resources::GuestResources,
    /// Packages that were missing and are now installed; empty when nothing was to do.
    pub installed: Vec<String>,
}

/// Checks the guest's resources and installs the missing build dependencies.
/// Every command's output goes to `log`.
pub fn provision(session: &Session, profile: &Profile, log: &Path) -> anyhow::Result<Provisioned> {
    let resources = probe_resources(session)?;
    for shortfall in resources::shortfalls(&resources) {
        ui::warn(format!("VM {}: {shortfall}", session.target().name));
    }

    wait_for_cloud_init(session, log)?;
    let manager = profile.packages.manager;
    let wanted = &profile.packages.build_deps;
    let missing = missing_packages(session, manager, wanted)?;
    if missing.is_empty() {
        ui::status(
            "Fresh",
            format!("all {} build dependencies are installed", wanted.len()),
        );
        return Ok(Provisioned {
            resources,
            installed: Vec::new(),
        });
    }

    ui::status(
        "Installing",
        format!("{} packages: {}", missing.len(), missing.join(" ")),
    );
    ui::detail(format!("log: {}", log.display()));
    for command in packages::install_commands(manager, &missing) {
        run_logged(session, &command, log)?;
    }

    let still_missing = missing_packages(session, manager, wanted)?;
    if !still_missing.is_empty() {
        return Err(Failure::infrastructure(format!(
            "packages still missing after the install in VM {}: {}; check the names in profile \
             {} and the log {}",
            session.target().name,
            still_missing.join(" "),
            profile.origin,
            log.display()
        )));
    }
    Ok(Provisioned {
        resources,
        installed: missing,
    })
}

fn probe_resources(session: &Session) -> anyhow::Result<resources::GuestResources> {
    let output = session.exec_capture(&["sh", "-c", resources::PROBE_COMMAND])?;
    resources::parse(&output.stdout).map_err(|message| {
        Failure::infrastructure(format!("VM {}: {message}", session.target().name))
    })
}

/// Waits for cloud-init's first boot to finish, because it may still hold
/// the package manager's lock.
fn wait_for_cloud_init(session: &Session, log: &Path) -> anyhow::Result<()> {
    let script = "if command -v cloud-init >/dev/null 2>&1; then \
                  cloud-init status --wait >/dev/null 2>&1 || true; fi";
    run_logged(session, script, log)
}

fn missing_packages(
    session: &Session,
    manager: crate::profile::PackageManager,
    wanted: &[String],
) -> anyhow::Result<Vec<String>> {
    let command = packages::missing_command(manager, wanted);
    let output = session.exec_capture(&["sh", "-c", &command])?;
    if !output.status.success() {
        return Err(Failure::infrastructure(format!(
            "checking installed packages in VM {} failed ({}): {}",
            session.target().name,
            output.status,
            output.stderr.trim()
        )));
    }
    Ok(output
        .stdout
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// Runs one shell command in the guest, its output appended to `log` and
/// shown as a spinner message on a terminal.
fn run_logged(session: &Session, script: &str, log: &Path) -> anyhow::Result<()> {
    let spinner = ui::spinner("{spinner} {elapsed} {msg}");
    let mut last_lines: Vec<String> = Vec::new();
    let options = ExecOptions {
        log: Some(log.to_path_buf()),
        timeout: None,
    };
    let status = session.exec(&["sh", "-c", script], &options, |stream, line| {
        if stream == OutputStream::Stdout {
            spinner.set_message(line.chars().take(70).collect::<String>());
        }
        last_lines.push(line.to_string());
        if last_lines.len() > QUOTED_LINES {
            last_lines.remove(0);
        }
    });
    spinner.finish_and_clear();
    let status = status?;
    if !status.success() {
        return Err(Failure::infrastructure(format!(
            "`{script}` failed in VM {} ({status}); last lines:\n{}\nfull log: {}",
            session.target().name,
            last_lines.join("\n"),
            log.display()
        )));
    }
    Ok(())
}
