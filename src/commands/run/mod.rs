//! `kbuild run`: every step in order, skipping the ones whose record is
//! still valid, with one line per step, per-step timeouts, and the JSON and
//! JUnit reports a CI system reads.

mod interrupt;
mod outcome;
mod preflight;
mod steps;

use std::time::{Duration, Instant, SystemTime};

use super::{CommandError, CommandResult, Phase};
use crate::cli::RunArgs;
use crate::exit::{exit_code_of, ExitCode, Failure};
use crate::project::Project;
use crate::run::record::{Fingerprint, Outcome, Records, StepRecord};
use crate::run::report::{StepReport, StepStatus};
use crate::run::{Plan, Selection, Step};
use crate::ui;
use outcome::Finish;
use steps::Steps;

/// Extra time a step gets after its timeout to stop by itself before
/// kbuild exits: work blocked in SSH cannot be cancelled from outside.
const STOP_GRACE: Duration = Duration::from_secs(60);

pub async fn run(project: &Project, args: &RunArgs) -> CommandResult {
    let selection = selection(args)?;
    preflight::prepare_reports(project, args)?;
    let _lock = preflight::lock(project)?;
    let mut interrupt = interrupt::listen();
    let path = Records::path(&project.state_dir(), args.direct);
    if args.fresh {
        match std::fs::remove_file(&path) {
            Ok(()) => ui::status("Forgot", format!("the records in {}", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(
                    anyhow::Error::new(error).context(format!("removing {}", path.display()))
                )
                .phase(ExitCode::Infrastructure)
            }
        }
    }
    let mut records = Records::load(&path).phase(ExitCode::Infrastructure)?;
    let mut steps = Steps::new(project, args.direct, args.in_guest);
    steps.jobs = args.jobs;
    steps.accel = args.accel;

    let started_at = SystemTime::now();
    let clock = Instant::now();
    let plan = Step::of(args.direct);
    let mut reports = Vec::new();
    let mut failure: Option<(Step, anyhow::Error, ExitCode)> = None;
    for (index, &step) in plan.iter().enumerate() {
        let timeout = project.run.timeout(step);
        if let Some((failed, _, _)) = &failure {
            reports.push(not_run(step, timeout, format!("step {failed} failed")));
            continue;
        }
        let position = format!("{}/{}", index + 1, plan.len());
        let mut fingerprint = Fingerprint::new(step);
        if let Some(&before) = index.checked_sub(1).and_then(|i| plan.get(i)) {
            fingerprint.add_record(before, records.get(before));
        }
        let input_error = steps.add_inputs(step, &mut fingerprint).err();
        let fingerprint = fingerprint.finish();
        let record = records.get(step).cloned();
        let cause = match (selection.plan(step), &record, input_error) {
            (_, _, Some(error)) => {
                let code = exit_code_of(&error.error, error.phase);
                ui::error(&error.error);
                let cause = "its inputs could not be read".to_string();
                reports.push(failed(
                    step,
                    timeout,
                    0.0,
                    &error.error,
                    StepStatus::Failed,
                    cause,
                ));
                failure = Some((step, error.error, code));
                continue;
            }
            (Plan::Keep, Some(record), _) => {
                steps.remember(step, record);
                reports.push(not_run(step, timeout, "left alone by --only".into()));
                continue;
            }
            (Plan::Keep, None, _) => {
                reports.push(not_run(
                    step,
                    timeout,
                    "left out by --only; no record".into(),
                ));
                continue;
            }
            (Plan::Force, _, _) => format!("forced by {}", selection.flag()),
            (Plan::IfStale, None, _) => "no record".to_string(),
            (Plan::IfStale, Some(record), _) if record.outcome == Outcome::Failed => {
                "failed last time".to_string()
            }
            (Plan::IfStale, Some(record), _) if record.fingerprint != fingerprint => {
                "inputs changed".to_string()
            }
            (Plan::IfStale, Some(record), _) => match steps.still_holds(step, record).await {
                Some(reason) => reason,
                None => {
                    ui::status("Skipped", format!("{step} ({position}): still valid"));
                    steps.remember(step, record);
                    print_recorded_checks(record);
                    reports.push(kept(step, timeout, record, "still valid"));
                    continue;
                }
            },
        };

        ui::status(
            "Step",
            format!("{step} ({position}): {}; {cause}", step.summary()),
        );
        let begun = Instant::now();
        let watchdog = Watchdog::arm(step, timeout);
        let (result, signal) = tokio::select! {
            result = tokio::time::timeout(timeout, steps.run(step, timeout)) => (result, None),
            name = interrupt::received(&mut interrupt) => (Ok(Err(interrupted(name))), Some(name)),
        };
        watchdog.disarm();
        let seconds = begun.elapsed().as_secs_f64();
        let timed_out = result.is_err();
        let result = result.unwrap_or_else(|_| {
            Err(Failure::infrastructure(format!(
                "step {step} timed out after {} s; raise it with `{} = SECONDS` under \
                 [run.timeouts] in {}",
                timeout.as_secs(),
                step.name(),
                project.path.display()
            )))
            .phase(ExitCode::Infrastructure)
        });
        match result {
            Ok(done) => {
                let outcome = if done.checks_failed {
                    Outcome::Failed
                } else {
                    Outcome::Passed
                };
                let record = StepRecord {
                    fingerprint,
                    outcome,
                    finished_at: crate::run::report::timestamp(SystemTime::now()),
                    duration_s: seconds,
                    produced: done.produced,
                    checks: done.checks,
                };
                steps.remember(step, &record);
                records.set(step, record.clone());
                save(&records, &path);
                if done.checks_failed {
                    let error = Failure::error(
                        ExitCode::VerificationFailed,
                        format!("a check of step {step} failed"),
                    );
                    ui::status(
                        "Failed",
                        format!("{step} after {}", ui::seconds(begun.elapsed())),
                    );
                    let mut report = ran(step, timeout, seconds, &record, cause);
                    report.status = StepStatus::Failed;
                    report.error = Some(error.to_string());
                    reports.push(report);
                    failure = Some((step, error, ExitCode::VerificationFailed));
                } else {
                    ui::status(
                        "Done",
                        format!("{step} in {}", ui::seconds(begun.elapsed())),
                    );
                    reports.push(ran(step, timeout, seconds, &record, cause));
                }
            }
            Err(error) => {
                let CommandError { error, phase } = error;
                let code = exit_code_of(&error, phase);
                ui::error(&error);
                records.set(
                    step,
                    StepRecord {
                        fingerprint,
                        outcome: Outcome::Failed,
                        finished_at: crate::run::report::timestamp(SystemTime::now()),
                        duration_s: seconds,
                        produced: Default::default(),
                        checks: Vec::new(),
                    },
                );
                save(&records, &path);
                let status = match (timed_out, signal) {
                    (true, _) => StepStatus::TimedOut,
                    (_, Some(_)) => StepStatus::Interrupted,
                    _ => StepStatus::Failed,
                };
                reports.push(failed(step, timeout, seconds, &error, status, cause));
                failure = Some((step, error, code));
            }
        }
    }

    let finish = Finish {
        project,
        args,
        started_at,
        elapsed: clock.elapsed(),
        reports,
        failure: failure
            .as_ref()
            .map(|(step, error, code)| (*step, error, *code)),
    };
    Ok(finish.conclude(&mut steps))
}

/// Builds the error of a step stopped by a signal.
fn interrupted(signal: &str) -> CommandError {
    CommandError {
        error: Failure::error(
            ExitCode::Interrupted,
            format!("{signal} received: the step was stopped"),
        ),
        phase: ExitCode::Interrupted,
    }
}

/// Writes the reports of a run whose project file did not load, then
/// returns the load error's exit code.
pub fn failed_to_load(
    path: Option<&std::path::Path>,
    args: &RunArgs,
    error: CommandError,
) -> CommandResult {
    let CommandError { error, phase } = error;
    let code = exit_code_of(&error, phase);
    ui::error(&error);
    outcome::write_load_failure(path, args, &error, code);
    Ok(code)
}

/// Reads `--from`, `--only` and `--fresh`, and checks that the step exists
/// in this mode.
fn selection(args: &RunArgs) -> Result<Selection, CommandError> {
    let parse = |name: &str| -> Result<Step, CommandError> {
        let mode = if args.direct { "--direct" } else { "a VM" };
        Step::parse(name)
            .filter(|step| Step::of(args.direct).contains(step))
            .ok_or_else(|| {
                let names: Vec<&str> = Step::of(args.direct).iter().map(|s| s.name()).collect();
                Failure::usage(format!(
                    "no step {name:?} in a run with {mode}; the steps are {}",
                    names.join(", ")
                ))
            })
            .phase(ExitCode::Usage)
    };
    Ok(match (&args.from, &args.only) {
        (Some(name), _) => Selection::From(parse(name)?),
        (_, Some(name)) => Selection::Only(parse(name)?),
        _ if args.fresh => Selection::Fresh,
        _ => Selection::Resume,
    })
}

/// Prints the checks of a skipped verify step as its run recorded them.
fn print_recorded_checks(record: &StepRecord) {
    for check in &record.checks {
        ui::result(format!(
            "{} {:<10} {} (recorded {})",
            check.status.to_uppercase(),
            check.name,
            check.detail,
            record.finished_at
        ));
    }
}

fn save(records: &Records, path: &std::path::Path) {
    if let Err(error) = records.save(path) {
        ui::warn(format!(
            "could not save the run records, so the next run repeats this step: {error:#}"
        ));
    }
}

fn ran(
    step: Step,
    timeout: Duration,
    seconds: f64,
    record: &StepRecord,
    cause: String,
) -> StepReport {
    StepReport {
        name: step.name().to_string(),
        status: StepStatus::Passed,
        reason: cause,
        duration_s: seconds,
        timeout_s: timeout.as_secs(),
        produced: record.produced.clone(),
        error: None,
        log: record.produced.get("log").cloned(),
    }
}

fn kept(step: Step, timeout: Duration, record: &StepRecord, cause: &str) -> StepReport {
    StepReport {
        name: step.name().to_string(),
        status: StepStatus::Skipped,
        reason: format!("{cause}; ran at {}", record.finished_at),
        duration_s: 0.0,
        timeout_s: timeout.as_secs(),
        produced: record.produced.clone(),
        error: None,
        log: record.produced.get("log").cloned(),
    }
}

fn not_run(step: Step, timeout: Duration, cause: String) -> StepReport {
    StepReport {
        name: step.name().to_string(),
        status: StepStatus::NotRun,
        reason: cause,
        duration_s: 0.0,
        timeout_s: timeout.as_secs(),
        produced: Default::default(),
        error: None,
        log: None,
    }
}

fn failed(
    step: Step,
    timeout: Duration,
    seconds: f64,
    error: &anyhow::Error,
    status: StepStatus,
    cause: String,
) -> StepReport {
    StepReport {
        name: step.name().to_string(),
        status,
        reason: cause,
        duration_s: seconds,
        timeout_s: timeout.as_secs(),
        produced: Default::default(),
        error: Some(format!("{error:#}")),
        log: None,
    }
}

/// Ends the process when a step overruns its timeout by `STOP_GRACE`, for
/// work that blocks in SSH or a file transfer where the timeout cannot
/// reach it.
struct Watchdog {
    done: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn arm(step: Step, timeout: Duration) -> Watchdog {
        let (done, finished) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                finished.recv_timeout(timeout + STOP_GRACE)
            {
                ui::error(&Failure::infrastructure(format!(
                    "step {step} ran {} s past its timeout of {} s and could not be stopped; \
                     exiting without reports",
                    STOP_GRACE.as_secs(),
                    timeout.as_secs()
                )));
                std::process::exit(ExitCode::Infrastructure.code());
            }
        });
        Watchdog { done }
    }

    fn disarm(self) {
        let _ = self.done.send(());
    }
}
