//! Reboots the guest into the kernel that `install` armed for one boot,
//! watches the serial console for a panic, and falls back to the old kernel
//! with a reset when the new one does not come up.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use super::install::Installed;
use super::{Guest, CONSOLE_LINES};
use crate::exit::Failure;
use crate::ssh::{self, Session};
use crate::verify::console;
use crate::{ui, vm};

/// Maximum single wait for SSH before the console is read again.
const SSH_WINDOW: Duration = Duration::from_secs(5);

/// Pause before reading the boot id again while the old system shuts down.
const POLL_DELAY: Duration = Duration::from_secs(1);

/// Pause after a login that the shutting-down system rejected at once.
const REJECTED_DELAY: Duration = Duration::from_millis(250);

/// The reason the new kernel did not come up.
enum Failed {
    Panic(String),
    /// The last SSH error seen.
    Timeout(String),
}

/// Reboots into the installed kernel and returns the time from the reboot
/// request to the first SSH login on the new kernel.
///
/// A panic on the console or no login before `timeout` resets the VM, so
/// GRUB boots the default (old) kernel, and fails with exit 69 and the
/// console lines. A login on another release fails the same way, without
/// the reset.
pub async fn boot_installed(
    guest: &mut Guest,
    installed: &Installed,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let console_log = guest.console_log();
    let offset = match std::fs::metadata(&console_log) {
        Ok(meta) => meta.len(),
        Err(_) => {
            ui::warn(format!(
                "console log {} is missing, so kbuild cannot see a panic and waits for the \
                 whole timeout if the new kernel fails; `kbuild down` and `kbuild up` make a new one",
                console_log.display()
            ));
            0
        }
    };
    vm::console::append_marker(
        &console_log,
        &format!("rebooting into linux {}", installed.release),
    )?;
    ui::status(
        "Rebooting",
        format!(
            "VM {} into linux {} (up to {}s)",
            guest.vm.name,
            installed.release,
            timeout.as_secs()
        ),
    );
    let started = Instant::now();
    let old_boot = tokio::task::block_in_place(|| guest.session.boot_id())?;
    tokio::task::block_in_place(|| guest.session.request_reboot())?;
    let target = guest.session.target().clone();
    let deadline = started + timeout;
    let mut last_error = String::from("no SSH answer yet");
    let session = loop {
        if let Some(panic) = console_panic(&console_log, offset) {
            return Err(fall_back(guest, installed, Failed::Panic(panic)).await);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(fall_back(guest, installed, Failed::Timeout(last_error)).await);
        }
        let window = deadline.min(now + SSH_WINDOW);
        // While the old system shuts down, sshd still runs but pam_nologin
        // rejects users other than root, so a rejected login is retried too.
        match tokio::task::block_in_place(|| ssh::wait_for_ssh(&target, window, String::new)) {
            Ok(session) if new_boot(&session, &old_boot) => break session,
            Ok(_) => {
                last_error = "SSH still answered from the boot before the reboot".to_string();
                tokio::time::sleep(POLL_DELAY).await;
            }
            // A timed-out window needs no pause; a login rejected at once does.
            Err(error) => {
                let text = format!("{error:#}");
                last_error = text.lines().next().unwrap_or_default().to_string();
                if Instant::now() < window {
                    tokio::time::sleep(REJECTED_DELAY).await;
                }
            }
        }
    };
    let elapsed = started.elapsed();
    guest.session = session;
    let running = guest.capture(&["uname", "-r"])?.trim().to_string();
    if running != installed.release {
        return Err(Failure::infrastructure(format!(
            "VM {} booted the old kernel {running}; the new one was installed as {} (GRUB entry \
             {}) but GRUB did not start it; console log: {}",
            guest.vm.name,
            installed.release,
            installed.entry,
            console_log.display()
        )));
    }
    ui::status(
        "Booted",
        format!("linux {running} in {}", ui::seconds(elapsed)),
    );
    Ok(elapsed)
}

fn new_boot(session: &Session, old_boot: &str) -> bool {
    matches!(session.boot_id(), Ok(id) if id != old_boot)
}

/// Resets the VM so that GRUB boots the default kernel, waits for it, and
/// returns the error that describes what happened.
async fn fall_back(guest: &mut Guest, installed: &Installed, failed: Failed) -> anyhow::Error {
    let console_log = guest.console_log();
    let tail = vm::console::tail(&console_log, CONSOLE_LINES);
    let what = match &failed {
        Failed::Panic(panic) => format!("panicked at boot: {panic}"),
        Failed::Timeout(last) => {
            format!("did not answer over SSH before the deadline (last error: {last})")
        }
    };
    ui::warn(format!(
        "the new kernel {} {what}; resetting VM {} to boot the old kernel",
        installed.release, guest.vm.name
    ));
    let back = match reset_and_wait(guest).await {
        Ok(running) if running == installed.release => format!(
            "kbuild reset the VM but it booted linux {running} again: GRUB did not keep {} as \
             its default (check `kbuild ssh -- sudo grub-editenv list`)",
            installed.fallback
        ),
        Ok(running) => format!("kbuild reset the VM and it runs the old kernel {running} again"),
        Err(error) => format!(
            "kbuild reset the VM but it did not come back ({error:#}); run `kbuild down` and \
             `kbuild up`"
        ),
    };
    Failure::infrastructure(format!(
        "the new kernel {} {what}; {back}.\nlast console lines:\n{tail}\nconsole log: {}",
        installed.release,
        console_log.display()
    ))
}

/// Resets the VM, waits for SSH and returns the release that came up.
async fn reset_and_wait(guest: &mut Guest) -> anyhow::Result<String> {
    guest.vm.machine.reset().await?;
    let target = guest.session.target().clone();
    let deadline = Instant::now() + vm::up::DEFAULT_BOOT_TIMEOUT;
    let machine = guest.vm.machine.clone();
    guest.session = tokio::task::block_in_place(|| {
        ssh::wait_for_ssh(&target, deadline, || machine.console_tail(CONSOLE_LINES))
    })?;
    Ok(guest.capture(&["uname", "-r"])?.trim().to_string())
}

/// Returns the first kernel panic message written to the console log after
/// `offset`.
fn console_panic(path: &Path, offset: u64) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    console::scan(&lines).panic
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_panic_after_offset_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let old = "Kernel panic - not syncing: old boot\n";
        std::fs::write(
            &path,
            format!("{old}[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n"),
        )
        .unwrap();
        let panic = console_panic(&path, old.len() as u64).unwrap();
        assert!(panic.contains("VFS: Unable to mount root fs"), "{panic}");
    }

    #[test]
    fn console_panic_none_without_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, "Kernel panic - not syncing: old\nbooting\n").unwrap();
        assert_eq!(console_panic(&path, 32), None);
    }
}
