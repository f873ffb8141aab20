//! QEMU processes: running the tools, launching a detached VM, and finding,
//! signalling and waiting for the process by its recorded pid.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::AsyncReadExt;

use crate::exit::Failure;

/// How often `wait_for_exit` checks the process.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Bytes of QEMU's stderr kept for messages.
const STDERR_LIMIT: usize = 16 * 1024;

/// Outcome of a detached launch.
#[derive(Debug)]
pub enum Launch {
    /// QEMU initialized and detached; its pid file exists.
    Started,
    /// QEMU exited before detaching; its exit status and stderr.
    Failed { status: String, stderr: String },
}

/// Fails with an infrastructure error that names the installer unless
/// `program` is an executable file in `PATH`.
pub fn require_binary(program: &str) -> anyhow::Result<PathBuf> {
    crate::host::find_program(program).ok_or_else(|| missing_binary(program))
}

fn missing_binary(program: &str) -> anyhow::Error {
    Failure::infrastructure(format!(
        "{program} not found in PATH; install QEMU with scripts/install-host-tools.sh \
         (on Debian: apt-get install qemu-system-x86 qemu-utils)"
    ))
}

/// Runs `program` with `args` to completion and returns its stdout; a
/// non-zero exit is an error that quotes stderr.
pub async fn run_tool(program: &str, args: &[String]) -> anyhow::Result<String> {
    tracing::debug!("running {program} {}", args.join(" "));
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|error| match error.kind() {
            ErrorKind::NotFound => missing_binary(program),
            _ => anyhow::Error::new(error).context(format!("running {program}")),
        })?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("reading the output of {program}"))
}

/// Starts `program` with `args` (which contain `-daemonize`) and waits up to
/// `deadline` for the foreground process to exit, which QEMU does once the
/// VM is initialized or has failed to start.
pub async fn launch(program: &str, args: &[String], deadline: Duration) -> anyhow::Result<Launch> {
    tracing::debug!("running {program} {}", args.join(" "));
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| match error.kind() {
            ErrorKind::NotFound => missing_binary(program),
            _ => anyhow::Error::new(error).context(format!("starting {program}")),
        })?;
    let stderr = child.stderr.take();
    let stderr_text = tokio::spawn(async move {
        let mut bytes = Vec::new();
        if let Some(stderr) = stderr {
            let _ = stderr
                .take(STDERR_LIMIT as u64)
                .read_to_end(&mut bytes)
                .await;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });

    let status = tokio::time::timeout(deadline, child.wait())
        .await
        .map_err(|_| {
            Failure::infrastructure(format!(
                "{program} did not finish starting within {}s",
                deadline.as_secs()
            ))
        })?
        .with_context(|| format!("waiting for {program}"))?;
    if status.success() {
        return Ok(Launch::Started);
    }
    // The pipe closes when the last QEMU process exits; don't wait long for it.
    let stderr = tokio::time::timeout(Duration::from_secs(2), stderr_text)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    Ok(Launch::Failed {
        status: status.to_string(),
        stderr,
    })
}

/// Reads the pid QEMU wrote; `None` when the file is missing.
pub fn read_pidfile(path: &Path) -> anyhow::Result<Option<u32>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let pid = text
        .trim()
        .parse()
        .with_context(|| format!("parsing the pid in {}: {:?}", path.display(), text.trim()))?;
    Ok(Some(pid))
}

/// Reports whether `pid` is a live process whose command line passes
/// `pidfile`, which identifies the QEMU of one VM folder even after the pid
/// was reused. A zombie counts as gone: a detached QEMU is reparented to
/// init, which may reap it late or not at all.
pub fn is_vm_process(pid: u32, pidfile: &Path) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid_t, 0) } != 0 {
        return false;
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    if matches!(process_state(&stat), Some('Z' | 'X') | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let expected = pidfile.as_os_str().as_encoded_bytes();
    cmdline.split(|byte| *byte == 0).any(|arg| arg == expected)
}

/// Returns the state letter of a `/proc/PID/stat` line, found after the
/// command name, which is in parentheses and may itself contain `)`.
fn process_state(stat: &str) -> Option<char> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// Sends `signal` to `pid`; a process that is already gone is no error.
pub fn send_signal(pid: u32, signal: libc::c_int) -> anyhow::Result<()> {
    let pid_t = libc::pid_t::try_from(pid).with_context(|| format!("pid {pid} out of range"))?;
    // SAFETY: kill has no memory effects; the pid was checked to be our VM's QEMU.
    if unsafe { libc::kill(pid_t, signal) } == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ESRCH) {
        return Ok(());
    }
    Err(error).with_context(|| format!("sending signal {signal} to QEMU pid {pid}"))
}

/// Waits up to `within` for the VM's process to go; returns whether it did.
pub async fn wait_for_exit(pid: u32, pidfile: &Path, within: Duration) -> bool {
    let start = Instant::now();
    loop {
        if !is_vm_process(pid, pidfile) {
            return true;
        }
        if start.elapsed() >= within {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL.min(within.saturating_sub(start.elapsed()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_after_parenthesized_name() {
        let stat = "26171 (qemu (x) y) Z 1 26162 26162 0 -1";
        assert_eq!(process_state(stat), Some('Z'));
        assert_eq!(process_state("12 (sh) S 1"), Some('S'));
        assert_eq!(process_state("garbage"), None);
    }

    #[test]
    fn own_process_not_vm() {
        let pid = std::process::id();
        assert!(!is_vm_process(pid, Path::new("/nonexistent/qemu.pid")));
    }

    #[test]
    fn child_with_pidfile_arg_is_vm() {
        let pidfile = Path::new("/nonexistent/vm/qemu.pid");
        // sh keeps `-pidfile PATH` as its positional arguments.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true", "sh", "-pidfile"])
            .arg(pidfile)
            .spawn()
            .expect("starting sh");
        // Until sh has run exec, /proc shows the test binary's command line.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_vm_process(child.id(), pidfile) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(is_vm_process(child.id(), pidfile));
        assert!(!is_vm_process(
            child.id(),
            Path::new("/nonexistent/other.pid")
        ));
        child.kill().expect("killing sh");
        // Unreaped, the child is a zombie, which must count as gone.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!is_vm_process(child.id(), pidfile));
        child.wait().expect("reaping sh");
    }

    #[test]
    fn pidfile_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_pidfile(&dir.path().join("qemu.pid")).unwrap(), None);
    }

    #[test]
    fn pidfile_parses_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qemu.pid");
        std::fs::write(&path, "4242\n").unwrap();
        assert_eq!(read_pidfile(&path).unwrap(), Some(4242));
        std::fs::write(&path, "junk\n").unwrap();
        assert!(read_pidfile(&path).is_err());
    }

    #[tokio::test]
    async fn run_tool_missing_is_infrastructure() {
        let error = run_tool("qemu-img-none", &[]).await.unwrap_err();
        let code = crate::exit::exit_code_of(&error, crate::exit::ExitCode::Usage);
        assert_eq!(code, crate::exit::ExitCode::Infrastructure);
        assert!(
            error.to_string().contains("scripts/install-host-tools.sh"),
            "{error}"
        );
    }

    #[test]
    fn require_binary_names_installer() {
        let error = require_binary("qemu-system-none").unwrap_err();
        assert!(
            error.to_string().contains("scripts/install-host-tools.sh"),
            "{error}"
        );
    }
}
