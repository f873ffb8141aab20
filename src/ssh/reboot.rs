//! Rebooting a guest: the boot id before, the reboot request, and the wait
//! until SSH accepts a login again and the boot id differs.

use std::time::{Duration, Instant};

use super::exec::ExecOptions;
use super::{wait_for_ssh, ExitStatus, Session};
use crate::exit::Failure;

/// Reboots as root directly, or through `sudo -n` for a cloud image's user.
/// Under systemd, `systemctl reboot --force` skips the services' stop jobs,
/// which take several seconds under TCG, but still kills every process and
/// unmounts or remounts each file system read-only before the reboot.
const REBOOT_SCRIPT: &str = "c=reboot; \
     if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then \
     c='systemctl reboot --force'; fi; \
     if [ \"$(id -u)\" = 0 ]; then exec $c; else exec sudo -n $c; fi";

/// A random UUID that Linux makes anew at every boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Maximum time reading the boot id may take.
const BOOT_ID_TIMEOUT: Duration = Duration::from_secs(15);

/// Maximum time the `reboot` command may run before the dropped connection is
/// taken as the reboot under way.
const REBOOT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause before reading the boot id again when it is still the old one, as
/// it is while the guest shuts down with sshd still running.
const POLL_DELAY: Duration = Duration::from_secs(1);

impl Session {
    /// Asks the guest to reboot, as root or through `sudo -n`. A connection
    /// that drops while `reboot` runs counts as the reboot under way.
    pub fn request_reboot(&self) -> anyhow::Result<()> {
        let options = ExecOptions {
            log: None,
            timeout: Some(REBOOT_COMMAND_TIMEOUT),
        };
        let mut stderr = String::new();
        let result = self.exec(&["sh", "-c", REBOOT_SCRIPT], &options, |_, line| {
            stderr.push_str(line);
            stderr.push('\n');
        });
        match result {
            Ok(ExitStatus::Code(code)) if code != 0 => Err(Failure::infrastructure(format!(
                "`reboot` failed on VM {} with exit code {code}: {}",
                self.target.name,
                stderr.trim()
            ))),
            Ok(status) => {
                tracing::debug!(vm = %self.target.name, %status, "reboot requested");
                Ok(())
            }
            Err(error) => {
                tracing::debug!(
                    vm = %self.target.name,
                    error = format!("{error:#}"),
                    "connection dropped during reboot, as expected"
                );
                Ok(())
            }
        }
    }

    /// Reads the guest's boot id, a UUID that changes at every boot.
    ///
    /// The read has a deadline, because a connection made while the guest
    /// shuts down can stay open after the guest's side is gone.
    pub fn boot_id(&self) -> anyhow::Result<String> {
        let options = ExecOptions {
            log: None,
            timeout: Some(BOOT_ID_TIMEOUT),
        };
        let mut stdout = String::new();
        let status = self.exec(&["cat", BOOT_ID_PATH], &options, |_, line| {
            stdout.push_str(line);
        })?;
        if !status.success() {
            return Err(Failure::infrastructure(format!(
                "reading {BOOT_ID_PATH} on VM {} failed with {status}",
                self.target.name
            )));
        }
        parse_boot_id(&stdout).ok_or_else(|| {
            Failure::infrastructure(format!(
                "VM {} returned an invalid boot id from {BOOT_ID_PATH}: {:?}",
                self.target.name,
                stdout.trim()
            ))
        })
    }

    /// Reboots the guest and waits until SSH accepts a login again and the
    /// boot id differs, then replaces this session with the new connection.
    ///
    /// The connection dropping while `reboot` runs is expected. At
    /// `deadline` the error carries `console_tail`'s text when SSH never came
    /// back, or the unchanged boot id when the guest did not reboot.
    pub fn reboot_and_wait(
        &mut self,
        deadline: Instant,
        console_tail: impl Fn() -> String,
    ) -> anyhow::Result<()> {
        let mut control = LiveReboot {
            session: self,
            console_tail: &console_tail,
        };
        let new_id = wait_for_new_boot(&mut control, deadline, POLL_DELAY)?;
        tracing::debug!(vm = %self.target.name, boot_id = %new_id, "guest rebooted");
        Ok(())
    }
}

/// The steps of a reboot, separate from SSH so the waiting logic can be
/// tested without a VM.
trait BootControl {
    fn vm_name(&self) -> &str;
    fn boot_id(&mut self) -> anyhow::Result<String>;
    fn request_reboot(&mut self) -> anyhow::Result<()>;
    /// Connects again, waiting for SSH until `deadline`.
    fn reconnect(&mut self, deadline: Instant) -> anyhow::Result<()>;
}

/// Reads the boot id, requests the reboot, then reconnects until the boot
/// id differs; returns the new boot id.
fn wait_for_new_boot(
    control: &mut impl BootControl,
    deadline: Instant,
    poll_delay: Duration,
) -> anyhow::Result<String> {
    let old_id = control.boot_id()?;
    control.request_reboot()?;
    loop {
        control.reconnect(deadline)?;
        let last = match control.boot_id() {
            Ok(id) if id != old_id => return Ok(id),
            Ok(_) => "SSH answered from the old boot".to_string(),
            Err(error) => format!("{error:#}"),
        };
        if Instant::now() + poll_delay >= deadline {
            return Err(Failure::infrastructure(format!(
                "VM {} did not reboot before the deadline: its boot id is still {old_id} \
                 ({last}); check that the guest user may run `reboot`",
                control.vm_name()
            )));
        }
        std::thread::sleep(poll_delay);
    }
}

struct LiveReboot<'a> {
    session: &'a mut Session,
    console_tail: &'a dyn Fn() -> String,
}

impl BootControl for LiveReboot<'_> {
    fn vm_name(&self) -> &str {
        &self.session.target.name
    }

    fn boot_id(&mut self) -> anyhow::Result<String> {
        self.session.boot_id()
    }

    fn request_reboot(&mut self) -> anyhow::Result<()> {
        self.session.request_reboot()
    }

    fn reconnect(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let target = self.session.target.clone();
        *self.session = wait_for_ssh(&target, deadline, self.console_tail)?;
        Ok(())
    }
}

/// Returns the boot id in `text` in lower case, or `None` unless it is one UUID.
fn parse_boot_id(text: &str) -> Option<String> {
    let id = text.trim();
    let groups: Vec<&str> = id.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|group| group.len()).collect();
    let hex = groups
        .iter()
        .all(|group| group.bytes().all(|byte| byte.is_ascii_hexdigit()));
    (lengths == [8, 4, 4, 4, 12] && hex).then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reboot_script_is_valid_shell() {
        let status = std::process::Command::new("sh")
            .args(["-n", "-c", REBOOT_SCRIPT])
            .status()
            .unwrap();
        assert!(status.success());
    }
    use std::collections::VecDeque;

    /// A guest whose boot id reads return the scripted answers in order.
    struct FakeGuest {
        boot_ids: VecDeque<anyhow::Result<String>>,
        reboot_error: Option<String>,
        reconnect_error: Option<String>,
        reboots: u32,
        reconnects: u32,
    }

    impl FakeGuest {
        fn new(ids: &[&str]) -> Self {
            FakeGuest {
                boot_ids: ids.iter().map(|id| Ok(id.to_string())).collect(),
                reboot_error: None,
                reconnect_error: None,
                reboots: 0,
                reconnects: 0,
            }
        }
    }

    impl BootControl for FakeGuest {
        fn vm_name(&self) -> &str {
            "fake"
        }

        fn boot_id(&mut self) -> anyhow::Result<String> {
            match self.boot_ids.pop_front() {
                Some(answer) => answer,
                None => Ok("old".to_string()),
            }
        }

        fn request_reboot(&mut self) -> anyhow::Result<()> {
            self.reboots += 1;
            match &self.reboot_error {
                Some(message) => Err(anyhow::anyhow!("{message}")),
                None => Ok(()),
            }
        }

        fn reconnect(&mut self, _deadline: Instant) -> anyhow::Result<()> {
            self.reconnects += 1;
            match &self.reconnect_error {
                Some(message) => Err(anyhow::anyhow!("{message}")),
                None => Ok(()),
            }
        }
    }

    fn in_seconds(seconds: f64) -> Instant {
        Instant::now() + Duration::from_secs_f64(seconds)
    }

    #[test]
    fn reboot_waits_for_new_id() {
        let mut guest = FakeGuest::new(&["old", "old", "old", "new"]);
        let id = wait_for_new_boot(&mut guest, in_seconds(5.0), Duration::from_millis(1)).unwrap();
        assert_eq!(id, "new");
        assert_eq!(guest.reboots, 1);
        assert_eq!(guest.reconnects, 3);
    }

    #[test]
    fn reboot_retries_after_read_error() {
        let mut guest = FakeGuest::new(&["old"]);
        guest
            .boot_ids
            .push_back(Err(anyhow::anyhow!("connection reset")));
        guest.boot_ids.push_back(Ok("new".to_string()));
        let id = wait_for_new_boot(&mut guest, in_seconds(5.0), Duration::from_millis(1)).unwrap();
        assert_eq!(id, "new");
        assert_eq!(guest.reconnects, 2);
    }

    #[test]
    fn reboot_deadline_names_old_id() {
        let mut guest = FakeGuest::new(&["old"]);
        let error =
            wait_for_new_boot(&mut guest, in_seconds(0.2), Duration::from_millis(50)).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("VM fake"), "{message}");
        assert!(message.contains("still old"), "{message}");
        assert!(
            guest.reconnects >= 2,
            "reconnected {} times",
            guest.reconnects
        );
    }

    #[test]
    fn reboot_request_error_stops() {
        let mut guest = FakeGuest::new(&["old", "new"]);
        guest.reboot_error = Some("reboot: permission denied".into());
        let error =
            wait_for_new_boot(&mut guest, in_seconds(5.0), Duration::from_millis(1)).unwrap_err();
        assert!(error.to_string().contains("permission denied"), "{error}");
        assert_eq!(guest.reconnects, 0);
    }

    #[test]
    fn reboot_reconnect_error_stops() {
        let mut guest = FakeGuest::new(&["old", "new"]);
        guest.reconnect_error = Some("timed out waiting for SSH".into());
        let error =
            wait_for_new_boot(&mut guest, in_seconds(5.0), Duration::from_millis(1)).unwrap_err();
        assert!(
            error.to_string().contains("timed out waiting for SSH"),
            "{error}"
        );
    }

    #[test]
    fn parse_boot_id_accepts_uuid() {
        let id = parse_boot_id("3F2504E0-4F89-11D3-9A0C-0305E82C3301\n");
        assert_eq!(id.as_deref(), Some("3f2504e0-4f89-11d3-9a0c-0305e82c3301"));
    }

    #[test]
    fn parse_boot_id_rejects_other_text() {
        assert_eq!(parse_boot_id(""), None);
        assert_eq!(parse_boot_id("cat: no such file"), None);
        assert_eq!(parse_boot_id("3f2504e0-4f89-11d3-9a0c-0305e82c330g"), None);
    }
}
