//! The end of `kbuild run`: the summary line, the reproducer, the JSON and
//! JUnit reports, and the exit code.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::steps::Steps;
use crate::cli::RunArgs;
use crate::exit::ExitCode;
use crate::project::Project;
use crate::run::report::{self, Kernel, Report, StepReport, TestResult, Tools};
use crate::run::{junit, versions, Step};
use crate::ssh::shell_quote;
use crate::ui;
use crate::verify::Verdict;

pub struct Finish<'a> {
    pub project: &'a Project,
    pub args: &'a RunArgs,
    pub started_at: SystemTime,
    pub elapsed: Duration,
    pub reports: Vec<StepReport>,
    pub failure: Option<(Step, &'a anyhow::Error, ExitCode)>,
}

impl Finish<'_> {
    /// Prints the summary and the reproducer, writes the reports, and
    /// returns the exit code.
    pub fn conclude(self, steps: &mut Steps<'_>) -> ExitCode {
        let code = self.failure.as_ref().map_or(ExitCode::Passed, |f| f.2);
        let reproducer = match &self.failure {
            Some((step, _, _)) => reproducer(self.project, self.args, *step),
            None => Vec::new(),
        };
        let ran = self
            .reports
            .iter()
            .filter(|step| step.status == report::StepStatus::Passed)
            .count();
        let skipped = self
            .reports
            .iter()
            .filter(|step| step.status == report::StepStatus::Skipped)
            .count();
        match &self.failure {
            None => ui::status(
                "Passed",
                format!(
                    "{} in {} (steps run: {ran}, still valid: {skipped})",
                    self.project.syscall.name,
                    ui::seconds(self.elapsed)
                ),
            ),
            Some((step, _, code)) => {
                ui::status(
                    "Failed",
                    format!(
                        "at step {step} after {} (exit {})",
                        ui::seconds(self.elapsed),
                        code.code()
                    ),
                );
                for command in &reproducer {
                    ui::detail(format!("reproduce: {command}"));
                }
            }
        }
        if self.args.report.is_none() && self.args.junit.is_none() {
            return code;
        }
        let report = self.report(steps, code, reproducer);
        let mut code = code;
        if let Some(path) = &self.args.report {
            code = write_or_warn(code, path, "JSON report", report.write(path));
        }
        if let Some(path) = &self.args.junit {
            let written = report::write_file(path, junit::render(&report).as_bytes());
            code = write_or_warn(code, path, "JUnit file", written);
        }
        code
    }

    fn report(&self, steps: &mut Steps<'_>, code: ExitCode, reproducer: Vec<String>) -> Report {
        let mut tools = Tools {
            host: versions::host(),
            ..Tools::default()
        };
        if let Some(guest) = steps.open_guest() {
            match versions::guest(guest) {
                Ok(guest) => tools.guest = guest,
                Err(error) => tracing::debug!("guest versions: {error:#}"),
            }
        }
        let release = steps
            .optional(Step::Verify, "release")
            .or_else(|| steps.optional(Step::Reboot, "release"))
            .or_else(|| steps.optional(Step::Build, "release"));
        let number = steps
            .optional(Step::Patch, "number")
            .and_then(|number| number.parse().ok());
        let test = test_result(self.project, steps);
        Report {
            schema: report::SCHEMA,
            kbuild_version: env!("CARGO_PKG_VERSION"),
            project: self.project.path.display().to_string(),
            mode: if self.args.direct { "direct" } else { "vm" },
            started_at: report::timestamp(self.started_at),
            duration_s: self.elapsed.as_secs_f64(),
            status: if code == ExitCode::Passed {
                "passed".into()
            } else {
                "failed".into()
            },
            exit_code: code.code(),
            failed_step: self.failure.as_ref().map(|f| f.0.name().to_string()),
            error: self.failure.as_ref().map(|f| format!("{:#}", f.1)),
            steps: self.reports.clone(),
            kernel: Kernel {
                release,
                syscall: self.project.syscall.name.clone(),
                number,
            },
            test,
            checks: steps.checks.clone(),
            console_tail: steps.console_tail.clone(),
            tools,
            reproducer,
        }
    }
}

/// Writes the reports of a run that stopped before its first step because
/// the project file did not load. Errors writing them are printed only.
pub fn write_load_failure(
    path: Option<&Path>,
    args: &RunArgs,
    error: &anyhow::Error,
    code: ExitCode,
) {
    if args.report.is_none() && args.junit.is_none() {
        return;
    }
    let report = Report {
        schema: report::SCHEMA,
        kbuild_version: env!("CARGO_PKG_VERSION"),
        project: path.map_or_else(
            || crate::project::FILE_NAME.to_string(),
            |path| path.display().to_string(),
        ),
        mode: if args.direct { "direct" } else { "vm" },
        started_at: report::timestamp(SystemTime::now()),
        duration_s: 0.0,
        status: "failed".into(),
        exit_code: code.code(),
        failed_step: None,
        error: Some(format!("{error:#}")),
        steps: Vec::new(),
        kernel: Kernel::default(),
        test: TestResult {
            verdict: "not_run".into(),
            ..TestResult::default()
        },
        checks: Vec::new(),
        console_tail: None,
        tools: Tools {
            host: versions::host(),
            ..Tools::default()
        },
        reproducer: Vec::new(),
    };
    if let Some(path) = &args.report {
        write_or_warn(code, path, "JSON report", report.write(path));
    }
    if let Some(path) = &args.junit {
        let written = report::write_file(path, junit::render(&report).as_bytes());
        write_or_warn(code, path, "JUnit file", written);
    }
}

fn test_result(project: &Project, steps: &Steps<'_>) -> TestResult {
    let mut result = TestResult {
        expected: Some(project.test.expect),
        verdict: "not_run".to_string(),
        ..TestResult::default()
    };
    match &steps.verdict {
        Some(Verdict::Passed { actual }) => {
            result.actual = Some(*actual);
            result.verdict = "pass".into();
        }
        Some(Verdict::Failed {
            actual, errno_name, ..
        }) => {
            result.actual = *actual;
            result.errno = errno_name.clone();
            result.verdict = "fail".into();
        }
        None => {
            // A skipped verify step: its record contains the last verdict.
            if let Some(verdict) = steps.optional(Step::Verify, "verdict") {
                result.verdict = verdict;
                result.actual = steps
                    .optional(Step::Verify, "actual")
                    .and_then(|actual| actual.parse().ok());
                result.errno = steps.optional(Step::Verify, "errno");
            }
        }
    }
    result
}

fn write_or_warn(code: ExitCode, path: &Path, what: &str, written: anyhow::Result<()>) -> ExitCode {
    match written {
        Ok(()) => {
            ui::detail(format!("{what}: {}", path.display()));
            code
        }
        Err(error) => {
            ui::error(&error.context(format!(
                "writing the {what} to {}; check that its folder is writable",
                path.display()
            )));
            if code == ExitCode::Passed {
                ExitCode::Infrastructure
            } else {
                code
            }
        }
    }
}

/// Returns the commands that re-run the failed step: `kbuild run --from STEP`, and
/// the step-by-step command that does the same work.
pub fn reproducer(project: &Project, args: &RunArgs, step: Step) -> Vec<String> {
    let base = format!(
        "kbuild --project {}",
        shell_quote(&project.path.display().to_string())
    );
    let direct = if args.direct { " --direct" } else { "" };
    let mut options = String::new();
    if let Some(accel) = args.accel {
        options.push_str(&format!(" --accel {accel}"));
    }
    if let Some(jobs) = args.jobs {
        options.push_str(&format!(" -j {jobs}"));
    }
    let in_guest = if args.in_guest { " --in-guest" } else { "" };
    let mut commands = vec![format!(
        "{base} run{direct}{in_guest}{options} --from {step}"
    )];
    let build_flag = match (args.direct, args.in_guest) {
        (true, _) => "--no-vm",
        (false, true) => "--in-guest",
        (false, false) => "--on-host",
    };

    let accel = args
        .accel
        .map_or_else(String::new, |accel| format!(" --accel {accel}"));
    let jobs = args
        .jobs
        .map_or_else(String::new, |jobs| format!(" -j {jobs}"));
    let single = match step {
        Step::Image | Step::Vm | Step::Deps => format!("up{accel}"),
        Step::Source | Step::Patch => "patch".to_string(),
        Step::Build | Step::Install => format!("patch-and-build {build_flag}{jobs}"),
        Step::Reboot => "verify".to_string(),
        Step::Verify if args.direct => format!("verify --direct{accel}"),
        Step::Verify => "verify".to_string(),
    };
    commands.push(format!("{base} {single}"));
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(direct: bool) -> RunArgs {
        RunArgs {
            direct,
            in_guest: false,
            from: None,
            only: None,
            fresh: false,
            report: None,
            junit: None,
            jobs: None,
            accel: None,
        }
    }

    #[test]
    fn reproducer_names_the_step_and_its_command() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kbuild.toml");
        std::fs::write(
            &path,
            "[syscall]\nname = \"kbuild_add\"\n[kernel]\nsource = \"linux\"\n",
        )
        .unwrap();
        let project = Project::load(&path).unwrap();
        let commands = reproducer(&project, &args(false), Step::Build);
        assert!(commands[0].ends_with(" run --from build"), "{commands:?}");
        assert!(
            commands[1].ends_with(" patch-and-build --on-host"),
            "{commands:?}"
        );
        let direct = reproducer(&project, &args(true), Step::Verify);
        assert!(
            direct[0].ends_with(" run --direct --from verify"),
            "{direct:?}"
        );
        assert!(direct[1].ends_with(" verify --direct"), "{direct:?}");
    }
}
