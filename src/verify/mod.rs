//! Boots a built kernel directly in QEMU, with an initramfs whose /init calls
//! the new syscall, and judges the value it returns.

mod accel;
pub mod console;
mod initramfs;
mod qemu;
mod test_program;

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

pub use accel::choose_accel;
pub(crate) use accel::kvm_verdict;
pub use test_program::render_test_program;

use crate::exit::Failure;
use crate::project::Project;
use console::{Outcome, RunEnd};

/// Console lines quoted in an infrastructure error.
const QUOTED_LINES: usize = 40;

/// QEMU accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// Returns the name QEMU's `-accel` option takes.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Accel {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Accel> {
        match text {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(Failure::usage(format!(
                "unknown accelerator {other:?}; use kvm or tcg"
            ))),
        }
    }
}

/// Settings of one direct boot.
#[derive(Debug, Clone, Default)]
pub struct DirectOptions {
    /// Forces an accelerator; `None` probes for KVM.
    pub accel: Option<Accel>,
    /// Overrides `[test] timeout` of the project file.
    pub timeout: Option<Duration>,
}

/// Whether the syscall returned the expected value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed {
        actual: i64,
    },
    Failed {
        /// The value the kernel returned; `None` when the test printed no result.
        actual: Option<i64>,
        /// Symbolic name of a negative errno value, such as `ENOSYS`.
        errno_name: Option<String>,
        reason: String,
    },
}

/// The result of a direct boot that reached a verdict.
#[derive(Debug, Clone)]
pub struct Report {
    pub verdict: Verdict,
    pub console_log: PathBuf,
    pub accel: Accel,
    /// Wall time of the QEMU run.
    pub elapsed: Duration,
    /// Kernel release from the console banner, such as `6.1.158`.
    pub release: Option<String>,
}

/// Boots `kernel_image` with an initramfs whose /init calls syscall `number`,
/// and judges the result.
///
/// A wrong value, an errno or a crash after /init started is an `Ok` report
/// with `Verdict::Failed`. A boot that never reaches a verdict (a panic
/// before /init, QEMU exiting early, a timeout) is an infrastructure error
/// that quotes the last console lines.
pub async fn verify_direct(
    project: &Project,
    kernel_image: &Path,
    number: u32,
    options: &DirectOptions,
) -> anyhow::Result<Report> {
    let qemu = project.kernel.arch.qemu_binary();
    qemu::require_binary(qemu)?;
    if !kernel_image.is_file() {
        return Err(Failure::usage(format!(
            "kernel image {} not found; build the kernel first",
            kernel_image.display()
        )));
    }

    let initramfs = prepare_initramfs(project, number).await?;
    let accel = choose_accel(options.accel, qemu).await;
    let deadline = options
        .timeout
        .unwrap_or(Duration::from_secs(project.test.timeout_secs));
    let log_dir = project.log_dir();
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let console_log = log_dir.join(format!("console-direct-{}.log", timestamp()));

    let args = qemu::direct_boot_args(accel, kernel_image, &initramfs);
    let run = qemu::run(qemu, &args, &console_log, deadline).await?;
    tracing::debug!("{qemu} ended with {:?} after {:?}", run.status, run.elapsed);

    let scan = console::scan(&run.lines);
    let end = if run.status.is_some() {
        RunEnd::Exited
    } else {
        RunEnd::TimedOut
    };
    match console::judge(&scan, number, project.test.expect, end) {
        Outcome::Verdict(verdict) => Ok(Report {
            verdict,
            console_log,
            accel,
            elapsed: run.elapsed,
            release: scan.release,
        }),
        outcome => Err(boot_failure(outcome, &run, &console_log, deadline, accel)),
    }
}

/// Compiles the test program and packs it into the initramfs, returning its path.
async fn prepare_initramfs(project: &Project, number: u32) -> anyhow::Result<PathBuf> {
    let verify_dir = project.state_dir().join("verify");
    let source = render_test_program(project, number)?;
    let init = test_program::compile(&source, &verify_dir).await?;
    let initramfs = verify_dir.join("initramfs.cpio.gz");
    initramfs::write_initramfs(&init, &initramfs)?;
    Ok(initramfs)
}

/// Builds the infrastructure error for a boot that reached no verdict.
fn boot_failure(
    outcome: Outcome,
    run: &qemu::QemuRun,
    console_log: &Path,
    deadline: Duration,
    accel: Accel,
) -> anyhow::Error {
    let headline = match outcome {
        Outcome::Verdict(_) => unreachable!("verdicts are reports, not errors"),
        Outcome::PanicBeforeInit(panic) => format!(
            "the kernel panicked before /init ran: {panic}; check the kernel configuration \
             (the boot fragment must be merged)"
        ),
        Outcome::NeverReachedInit(panic) => {
            let detail = panic.unwrap_or_else(|| qemu_exit_detail(run));
            format!(
                "the kernel never reached /init ({detail}); check that the image is a bzImage \
                 built with the boot fragment (CONFIG_BLK_DEV_INITRD, CONFIG_RD_GZIP, \
                 CONFIG_BINFMT_ELF, CONFIG_SERIAL_8250_CONSOLE)"
            )
        }
        Outcome::TimedOut { reached_init } => {
            let progress = if reached_init {
                "/init had started but printed no result"
            } else {
                "/init never ran"
            };
            format!(
                "QEMU ({accel}) timed out after {}s and was killed; {progress}; raise \
                 `timeout` in [test] of kbuild.toml or pass --timeout",
                deadline.as_secs_f64()
            )
        }
    };
    Failure::infrastructure(format!(
        "{headline}\n{}\nconsole log: {}",
        quote_tail(&run.lines),
        console_log.display()
    ))
}

/// Describes how QEMU exited, with the first line of its stderr.
fn qemu_exit_detail(run: &qemu::QemuRun) -> String {
    let status = match run.status.map(|status| (status.code(), status.signal())) {
        Some((Some(code), _)) => format!("QEMU exited with status {code}"),
        Some((None, Some(signal))) => format!("QEMU was killed by signal {signal}"),
        _ => "QEMU ended".to_string(),
    };
    match run.stderr.lines().find(|line| !line.trim().is_empty()) {
        Some(line) => format!("{status}: {}", line.trim()),
        None => format!("{status} without a panic message"),
    }
}

/// Formats the last console lines, indented under a heading.
fn quote_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        return "the console stayed empty".to_string();
    }
    let start = lines.len().saturating_sub(QUOTED_LINES);
    let mut text = format!("last {} console lines:", lines.len() - start);
    for line in &lines[start..] {
        text.push_str("\n  | ");
        text.push_str(line);
    }
    text
}

/// Formats the current UTC time as `YYYYMMDD-HHMMSS.mmm` for log file names.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = now.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}.{:03}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        now.subsec_millis()
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian date, using
/// Howard Hinnant's `civil_from_days` algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Writes a file through a temporary file in the same folder and a rename, so
/// a failed write never leaves a half-written file behind.
fn write_atomic(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;

    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", file.path().display()))?;
    file.persist(path)
        .with_context(|| format!("renaming a temporary file to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Loads a project whose `[test]` table is `test`, in a fresh temporary folder
    /// that lives as long as the returned `TempDir`.
    pub fn project(test: &str) -> (tempfile::TempDir, Project) {
        let temp = tempfile::tempdir().expect("creating a temporary folder");
        let dir = temp.path();
        let text = format!(
            "[syscall]\nname = \"kbuild_add\"\n\
             args = [{{ type = \"long\", name = \"a\" }}, {{ type = \"long\", name = \"b\" }}]\n\
             [test]\n{test}\n[kernel]\nsource = \"linux\"\n"
        );
        let path = dir.join("kbuild.toml");
        std::fs::write(&path, text).expect("writing kbuild.toml");
        (temp, Project::load(&path).expect("loading kbuild.toml"))
    }

    #[test]
    fn accel_parses_names() {
        assert_eq!("kvm".parse::<Accel>().unwrap(), Accel::Kvm);
        assert_eq!("tcg".parse::<Accel>().unwrap(), Accel::Tcg);
        assert!("hvf".parse::<Accel>().is_err());
    }

    #[test]
    fn civil_date_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_061), (2024, 12, 4));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn quote_tail_keeps_last_forty() {
        let lines: Vec<String> = (0..50).map(|i| format!("line {i}")).collect();
        let quoted = quote_tail(&lines);
        assert!(quoted.starts_with("last 40 console lines:"), "{quoted}");
        assert!(!quoted.contains("line 9\n"), "{quoted}");
        assert!(quoted.ends_with("  | line 49"), "{quoted}");
    }

    #[tokio::test]
    async fn missing_image_is_usage_error() {
        let (_dir, project) = project("args = [1, 2]");
        let options = DirectOptions::default();
        let error = verify_direct(&project, Path::new("/nonexistent/bzImage"), 451, &options)
            .await
            .unwrap_err();
        let code = crate::exit::exit_code_of(&error, crate::exit::ExitCode::Infrastructure);
        assert_eq!(code, crate::exit::ExitCode::Usage);
    }
}
