//! Stopping a VM's QEMU: ACPI power-off, then QMP `quit`, then signals.

use std::time::{Duration, Instant};

use super::args::VmFiles;
use super::process;
use crate::exit::Failure;
use crate::ui;
use crate::vm::qmp;

/// Time allowed for each QMP read or write.
pub const QMP_DEADLINE: Duration = Duration::from_secs(5);
/// Shortest wait after `quit` and after SIGTERM.
const MIN_STEP: Duration = Duration::from_millis(500);
/// Wait after SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Stops the QEMU with `pid` of VM `name`. The guest gets three quarters of
/// `timeout` to power off after an ACPI request. Then QMP `quit`, SIGTERM
/// and SIGKILL follow, each waiting an eighth of `timeout` (at least 0.5 s).
/// A zero `timeout` skips the ACPI request.
pub async fn shut_down(
    name: &str,
    files: &VmFiles,
    pid: u32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let grace = timeout * 3 / 4;
    if !grace.is_zero() {
        match power_off(files, pid, grace).await {
            Ok(true) => return Ok(()),
            Ok(false) => ui::warn(format!(
                "VM {name} did not power off within {}; stopping QEMU",
                ui::seconds(grace)
            )),
            Err(error) => ui::warn(format!(
                "cannot ask VM {name} to power off ({error:#}); stopping QEMU"
            )),
        }
    }

    let step = (timeout / 8).max(MIN_STEP);
    if let Err(error) = qmp::run_command(&files.qmp_socket, "quit", step).await {
        tracing::debug!("QMP quit of VM {name} failed: {error:#}");
    }
    if process::wait_for_exit(pid, &files.pidfile, step).await {
        return Ok(());
    }
    tracing::debug!("QEMU of VM {name} ignored quit; sending SIGTERM to pid {pid}");
    process::send_signal(pid, libc::SIGTERM)?;
    if process::wait_for_exit(pid, &files.pidfile, step).await {
        return Ok(());
    }
    tracing::debug!("QEMU of VM {name} ignored SIGTERM; sending SIGKILL to pid {pid}");
    process::send_signal(pid, libc::SIGKILL)?;
    if process::wait_for_exit(pid, &files.pidfile, KILL_WAIT).await {
        return Ok(());
    }
    Err(Failure::infrastructure(format!(
        "QEMU of VM {name} (pid {pid}) still runs after SIGKILL; check it with `ps -p {pid}`"
    )))
}

/// Sends an ACPI power-off request and waits up to `grace`; returns whether QEMU exited.
async fn power_off(files: &VmFiles, pid: u32, grace: Duration) -> anyhow::Result<bool> {
    let started = Instant::now();
    let deadline = QMP_DEADLINE.min(grace);
    qmp::run_command(&files.qmp_socket, "system_powerdown", deadline).await?;
    let rest = grace.saturating_sub(started.elapsed());
    Ok(process::wait_for_exit(pid, &files.pidfile, rest).await)
}
