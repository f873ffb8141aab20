//! The JSON report of `kbuild run` (`--report FILE`), whose shape
//! `docs/run-report.schema.json` describes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;
use serde::Serialize;

use super::record::CheckRecord;

/// Schema name and version written into every report.
pub const SCHEMA: &str = "kbuild-run-report/1";

/// Status of one step in this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// The step ran and finished its work.
    Passed,
    /// Its record was still valid, so it did not run.
    Skipped,
    Failed,
    TimedOut,
    /// SIGINT or SIGTERM stopped it.
    Interrupted,
    /// An earlier step failed, or `--only` left it out.
    NotRun,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub name: String,
    pub status: StepStatus,
    /// The reason the step ran or was skipped, such as "inputs changed".
    pub reason: String,
    pub duration_s: f64,
    pub timeout_s: u64,
    pub produced: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Kernel {
    pub release: Option<String>,
    pub syscall: String,
    pub number: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TestResult {
    /// The value of `[test] expect`, or `None` when the project file did not load.
    pub expected: Option<i64>,
    pub actual: Option<i64>,
    /// The errno name of a negative value, such as `ENOSYS`.
    pub errno: Option<String>,
    /// `pass`, `fail`, or `not_run`.
    pub verdict: String,
}

/// Tool versions of the host and, for a VM run, of the guest.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tools {
    pub host: BTreeMap<String, String>,
    pub guest: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub kbuild_version: &'static str,
    pub project: String,
    /// `vm` or `direct`.
    pub mode: &'static str,
    pub started_at: String,
    pub duration_s: f64,
    /// `passed` or `failed`.
    pub status: String,
    pub exit_code: i32,
    pub failed_step: Option<String>,
    pub error: Option<String>,
    pub steps: Vec<StepReport>,
    pub kernel: Kernel,
    pub test: TestResult,
    pub checks: Vec<CheckRecord>,
    /// The last console lines, when a boot or a check failed.
    pub console_tail: Option<String>,
    pub tools: Tools,
    /// Commands that re-run the failed step; empty when the run passed.
    pub reproducer: Vec<String>,
}

impl Report {
    /// Writes the report as pretty JSON through a temporary file and a rename.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("serializing the run report")?;
        write_file(path, text.as_bytes())
    }
}

/// Writes `contents` to `path` through a temporary file and a rename,
/// creating its folder. The file is readable by all (0644), like a file a
/// shell redirect makes, so a CI upload step running as another user can
/// read it.
pub fn write_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    std::io::Write::write_all(&mut file, contents)
        .with_context(|| format!("writing report {}", path.display()))?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of report {}", path.display()))?;
    file.persist(path)
        .map_err(|error| error.error)
        .with_context(|| format!("writing report {}", path.display()))?;
    Ok(())
}

/// Formats a time as RFC 3339 in UTC, to the second.
pub fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}
