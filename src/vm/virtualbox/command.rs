//! Runs VBoxManage: one process per call, arguments passed as a list and
//! never through a shell, with the full command line and stderr in errors.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

use crate::exit::Failure;

/// The environment variable that names the VBoxManage program to run.
pub const PROGRAM_VARIABLE: &str = "KBUILD_VBOXMANAGE";
/// Time allowed for a call that changes settings or state.
pub const CALL_DEADLINE: Duration = Duration::from_secs(120);
/// Time allowed for a call that copies a whole disk image.
pub const COPY_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// The VBoxManage program that every call goes through.
#[derive(Debug, Clone)]
pub struct VBoxManage {
    program: PathBuf,
}

impl VBoxManage {
    pub fn new(program: PathBuf) -> VBoxManage {
        VBoxManage { program }
    }

    /// Uses `KBUILD_VBOXMANAGE` when set, otherwise `VBoxManage` from PATH.
    pub fn from_env() -> VBoxManage {
        let program = std::env::var_os(PROGRAM_VARIABLE)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("VBoxManage"));
        VBoxManage::new(program)
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Runs one call and returns its standard output.
    pub async fn run(&self, args: &[OsString]) -> anyhow::Result<String> {
        self.run_within(args, CALL_DEADLINE).await
    }

    /// Runs one call, killing it after `deadline`, and returns its standard output.
    pub async fn run_within(
        &self,
        args: &[OsString],
        deadline: Duration,
    ) -> anyhow::Result<String> {
        let line = command_line(&self.program, args);
        tracing::debug!("running {line}");
        let child = tokio::process::Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| self.spawn_failure(&error))?;
        let output = match tokio::time::timeout(deadline, child.wait_with_output()).await {
            Ok(output) => output.with_context(|| format!("waiting for `{line}`"))?,
            Err(_) => {
                return Err(Failure::infrastructure(format!(
                    "`{line}` timed out after {} s; check that VirtualBox works \
                     (`VBoxManage list runningvms`) and run kbuild again",
                    deadline.as_secs()
                )))
            }
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(Failure::infrastructure(format!(
                "`{line}` failed ({}):\n{}",
                output.status,
                stderr.trim_end()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn spawn_failure(&self, error: &std::io::Error) -> anyhow::Error {
        Failure::infrastructure(format!(
            "cannot run {} ({error}); install VirtualBox 7, or set {PROGRAM_VARIABLE} to the \
             path of VBoxManage",
            self.program.display()
        ))
    }
}

/// Formats a call for messages, quoting arguments that a shell would split.
pub fn command_line(program: &Path, args: &[OsString]) -> String {
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(arg: &OsStr) -> String {
    let text = arg.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./,:=@+%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_quotes_spaces() {
        let args = [
            OsString::from("startvm"),
            OsString::from("my vm"),
            OsString::from(""),
        ];
        let line = command_line(Path::new("VBoxManage"), &args);
        assert_eq!(line, "VBoxManage startvm 'my vm' ''");
    }

    #[test]
    fn command_line_keeps_rules_plain() {
        let args = [OsString::from("ssh,tcp,127.0.0.1,2222,,22")];
        assert_eq!(
            command_line(Path::new("V"), &args),
            "V ssh,tcp,127.0.0.1,2222,,22"
        );
    }

    #[tokio::test]
    async fn run_reports_missing_program() {
        let vbox = VBoxManage::new(PathBuf::from("/nonexistent/VBoxManage"));
        let error = vbox.run(&[OsString::from("list")]).await.unwrap_err();
        assert!(format!("{error}").contains("KBUILD_VBOXMANAGE"), "{error}");
    }

    #[tokio::test]
    async fn run_shows_stderr_and_command() {
        let vbox = VBoxManage::new(PathBuf::from("sh"));
        let args = [
            OsString::from("-c"),
            OsString::from("echo 'VBoxManage: error: no' >&2; exit 1"),
        ];
        let error = format!("{}", vbox.run(&args).await.unwrap_err());
        assert!(error.contains("VBoxManage: error: no"), "{error}");
        assert!(error.starts_with("`sh -c "), "{error}");
    }
}
