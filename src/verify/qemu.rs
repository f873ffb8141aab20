//! Runs QEMU for a direct boot and records its serial console.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{ChildStderr, ChildStdout};

use super::Accel;
use crate::exit::Failure;

/// Maximum bytes of QEMU's stderr kept for error messages.
const STDERR_LIMIT: usize = 16 * 1024;

/// The kernel command line of a direct boot. `panic=-1` reboots at once on a
/// panic, and with `-no-reboot` QEMU then exits instead of booting again.
const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 rdinit=/init";

/// Builds the QEMU arguments that boot `kernel` with `initramfs` and send the
/// serial console to stdout.
pub fn direct_boot_args(accel: Accel, kernel: &Path, initramfs: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec!["-accel".into(), accel.name().into()];
    if accel == Accel::Kvm {
        args.extend(["-cpu".into(), "host".into()]);
    }
    let fixed = [
        "-m",
        "256M",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ];
    args.extend(fixed.iter().map(|arg| arg.to_string()));
    args.extend([
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initramfs.display().to_string(),
        "-append".into(),
        KERNEL_CMDLINE.into(),
    ]);
    args
}

/// Fails with an infrastructure error unless `binary` is an executable in `PATH`.
pub fn require_binary(binary: &str) -> anyhow::Result<PathBuf> {
    crate::host::find_program(binary).ok_or_else(|| {
        Failure::infrastructure(format!(
            "{binary} not found in PATH; install QEMU (apt-get install qemu-system-x86)"
        ))
    })
}

/// Console lines, exit status and stderr of one QEMU run.
#[derive(Debug)]
pub struct QemuRun {
    /// Serial console lines, without line endings.
    pub lines: Vec<String>,
    /// Exit status, or `None` when the deadline passed and QEMU was killed.
    pub status: Option<ExitStatus>,
    /// The start of QEMU's stderr.
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `qemu` with `args`, writing each console line to `log` as it arrives,
/// and kills QEMU when `deadline` passes.
pub async fn run(
    qemu: &str,
    args: &[String],
    log: &Path,
    deadline: Duration,
) -> anyhow::Result<QemuRun> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut log_writer = std::io::LineWriter::new(file);
    let mut command = tokio::process::Command::new(qemu);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tracing::debug!("running {command:?}");

    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {qemu}"))?;
    let stdout = child
        .stdout
        .take()
        .context("QEMU stdout was not captured")?;
    let stderr = child
        .stderr
        .take()
        .context("QEMU stderr was not captured")?;
    let stderr_task = tokio::spawn(read_stderr(stderr));

    let mut lines = Vec::new();
    let console = async {
        read_console(stdout, &mut lines, &mut log_writer).await?;
        child
            .wait()
            .await
            .with_context(|| format!("waiting for {qemu}"))
    };
    let status = match tokio::time::timeout(deadline, console).await {
        Ok(status) => Some(status?),
        Err(_elapsed) => {
            tracing::debug!("{qemu} passed its deadline of {deadline:?}; killing it");
            child
                .kill()
                .await
                .with_context(|| format!("killing {qemu}"))?;
            None
        }
    };
    let elapsed = started.elapsed();
    log_writer
        .flush()
        .with_context(|| format!("writing {}", log.display()))?;
    let stderr = stderr_task.await.unwrap_or_default();
    Ok(QemuRun {
        lines,
        status,
        stderr,
        elapsed,
    })
}

/// Reads the console until QEMU closes it, into `lines` and `log`.
async fn read_console(
    stdout: ChildStdout,
    lines: &mut Vec<String>,
    log: &mut impl Write,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stdout);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let read = reader
            .read_until(b'\n', &mut buffer)
            .await
            .context("reading the QEMU console")?;
        if read == 0 {
            return Ok(());
        }
        // The serial console ends lines with "\r\n" and may carry stray bytes.
        let line = String::from_utf8_lossy(&buffer);
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        writeln!(log, "{line}").context("writing the console log")?;
        lines.push(line);
    }
}

async fn read_stderr(stderr: ChildStderr) -> String {
    let mut bytes = Vec::new();
    let mut limited = stderr.take(STDERR_LIMIT as u64);
    if let Err(error) = limited.read_to_end(&mut bytes).await {
        tracing::debug!("reading QEMU stderr: {error}");
    }
    // Read past the limit too, so that QEMU cannot block on a full pipe.
    let mut rest = limited.into_inner();
    let _ = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(accel: Accel) -> Vec<String> {
        direct_boot_args(
            accel,
            Path::new("/k/bzImage"),
            Path::new("/v/initramfs.cpio.gz"),
        )
    }

    fn value_after(args: &[String], flag: &str) -> Option<String> {
        let index = args.iter().position(|arg| arg == flag)?;
        args.get(index + 1).cloned()
    }

    #[test]
    fn boot_args_tcg() {
        let expected = "-accel tcg -m 256M -smp 1 -nodefaults -no-user-config -display none \
                        -serial stdio -no-reboot -kernel /k/bzImage -initrd /v/initramfs.cpio.gz \
                        -append";
        let args = args(Accel::Tcg);
        assert_eq!(args[..args.len() - 1].join(" "), expected);
        assert_eq!(args.last().unwrap(), "console=ttyS0 panic=-1 rdinit=/init");
    }

    #[test]
    fn boot_args_kvm_uses_host_cpu() {
        let args = args(Accel::Kvm);
        assert_eq!(value_after(&args, "-accel").as_deref(), Some("kvm"));
        assert_eq!(value_after(&args, "-cpu").as_deref(), Some("host"));
    }

    #[test]
    fn boot_args_tcg_has_no_cpu() {
        assert_eq!(value_after(&args(Accel::Tcg), "-cpu"), None);
    }

    #[test]
    fn require_binary_names_package() {
        let error = require_binary("qemu-system-none").unwrap_err();
        assert!(error.to_string().contains("qemu-system-x86"), "{error}");
    }

    #[tokio::test]
    async fn run_records_lines_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let script = vec![
            "-c".to_string(),
            "printf 'one\\r\\ntwo\\n'; exit 3".to_string(),
        ];
        let run = run("sh", &script, &log, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(run.lines, ["one", "two"]);
        assert_eq!(run.status.and_then(|status| status.code()), Some(3));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\n");
    }

    #[tokio::test]
    async fn run_kills_at_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let script = vec!["-c".to_string(), "echo begun; exec sleep 30".to_string()];
        let run = run("sh", &script, &log, Duration::from_millis(500))
            .await
            .unwrap();
        assert!(run.status.is_none());
        assert_eq!(run.lines, ["begun"]);
        assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
    }
}
