//! `kbuild run`: the steps of the whole pipeline, the records that let a
//! second run skip what is still valid, and the reports a CI system reads.

pub mod junit;
pub mod record;
pub mod report;
pub mod versions;

use std::fmt;
use std::time::Duration;

/// One step of `kbuild run`, in pipeline order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    Image,
    Vm,
    Deps,
    Source,
    Patch,
    Build,
    Install,
    Reboot,
    Verify,
}

impl Step {
    pub const ALL: [Step; 9] = [
        Step::Image,
        Step::Vm,
        Step::Deps,
        Step::Source,
        Step::Patch,
        Step::Build,
        Step::Install,
        Step::Reboot,
        Step::Verify,
    ];

    /// The steps of a direct run, which boots the host build with QEMU.
    pub const DIRECT: [Step; 4] = [Step::Source, Step::Patch, Step::Build, Step::Verify];

    pub fn name(self) -> &'static str {
        match self {
            Step::Image => "image",
            Step::Vm => "vm",
            Step::Deps => "deps",
            Step::Source => "source",
            Step::Patch => "patch",
            Step::Build => "build",
            Step::Install => "install",
            Step::Reboot => "reboot",
            Step::Verify => "verify",
        }
    }

    pub fn parse(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.name() == name)
    }

    /// Returns the steps of one mode.
    pub fn of(direct: bool) -> &'static [Step] {
        if direct {
            &Step::DIRECT
        } else {
            &Step::ALL
        }
    }

    /// Returns the time a step may take unless `[run.timeouts]` sets another.
    ///
    /// The figures suit QEMU under TCG on 2 cores. Measured here, the test
    /// guest boots to SSH in 27-61 s alone and up to 170 s beside other VMs,
    /// and a tinyconfig build takes 3-10 minutes on the host. An in-guest
    /// build of a distribution config takes hours (an estimate), so the
    /// build gets four.
    pub fn default_timeout(self) -> Duration {
        let seconds = match self {
            Step::Image => 3600,
            Step::Vm => 900,
            Step::Deps => 1800,
            Step::Source => 1800,
            Step::Patch => 120,
            Step::Build => 4 * 3600,
            Step::Install => 1200,
            Step::Reboot => 900,
            Step::Verify => 900,
        };
        Duration::from_secs(seconds)
    }

    /// Returns a summary of this step for `--help` and the docs.
    pub fn summary(self) -> &'static str {
        match self {
            Step::Image => "download and verify the profile's image (or find it in the cache)",
            Step::Vm => "create and boot the VM, log in over SSH",
            Step::Deps => "install the build dependencies in the VM",
            Step::Source => "find or download and unpack the kernel source",
            Step::Patch => "add the syscall to the tree",
            Step::Build => "build the kernel; a VM run sends it to the VM",
            Step::Install => "install the kernel in the VM and arm a one-time boot entry",
            Step::Reboot => "reboot the VM into the new kernel",
            Step::Verify => "run the checks (with --direct: boot the kernel in QEMU first)",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The steps and their default timeouts, for `kbuild run --help`. A test
/// checks it against `Step::default_timeout` and `Step::summary`.
pub const STEPS_HELP: &str = "\
Steps (default timeout; change it under [run.timeouts] in kbuild.toml):
  image    1h   download and verify the profile's image (or find it in the cache)
  vm       15m  create and boot the VM, log in over SSH
  deps     30m  install the build dependencies in the VM
  source   30m  find or download and unpack the kernel source
  patch    2m   add the syscall to the tree
  build    4h   build the kernel; a VM run sends it to the VM
  install  20m  install the kernel in the VM and arm a one-time boot entry
  reboot   15m  reboot the VM into the new kernel
  verify   15m  run the checks (with --direct: boot the kernel in QEMU first)
With --direct: source, patch, build, verify.

A step runs when it has no record, failed last time, its inputs changed (project
file, profile, templates, kernel tree files, the steps before it) or what it made
is gone; otherwise it is skipped. Records live in .kbuild/run/.";

/// Returns the step names joined for messages: `image, vm, ...`.
pub fn step_names() -> String {
    Step::ALL.map(Step::name).join(", ")
}

/// The steps a run forces, from `--fresh`, `--from` and `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Runs the steps whose records are missing, failed or out of date.
    Resume,
    /// Runs every step.
    Fresh,
    /// Runs this step and every later one; earlier ones as in `Resume`.
    From(Step),
    /// Runs this step alone; the others' records stand as they are.
    Only(Step),
}

/// The plan for one step before its record is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Run it whatever its record contains.
    Force,
    /// Run it unless its record is still valid.
    IfStale,
    /// Leave it alone and use its record.
    Keep,
}

impl Selection {
    pub fn plan(self, step: Step) -> Plan {
        match self {
            Selection::Resume => Plan::IfStale,
            Selection::Fresh => Plan::Force,
            Selection::From(first) if step >= first => Plan::Force,
            Selection::From(_) => Plan::IfStale,
            Selection::Only(only) if step == only => Plan::Force,
            Selection::Only(_) => Plan::Keep,
        }
    }

    /// Returns the command-line flag that makes this selection.
    pub fn flag(self) -> String {
        match self {
            Selection::Resume => String::new(),
            Selection::Fresh => "--fresh".to_string(),
            Selection::From(step) => format!("--from {step}"),
            Selection::Only(step) => format!("--only {step}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for step in Step::ALL {
            assert_eq!(Step::parse(step.name()), Some(step));
        }
        assert_eq!(Step::parse("compile"), None);
    }

    #[test]
    fn direct_steps_keep_pipeline_order() {
        let mut sorted = Step::DIRECT;
        sorted.sort();
        assert_eq!(sorted, Step::DIRECT);
    }

    #[test]
    fn steps_help_matches_timeouts() {
        for step in Step::ALL {
            let minutes = step.default_timeout().as_secs() / 60;
            let duration = if minutes % 60 == 0 {
                format!("{}h", minutes / 60)
            } else {
                format!("{minutes}m")
            };
            let line = format!("  {:<8} {:<4} {}", step.name(), duration, step.summary());
            assert!(STEPS_HELP.contains(&line), "missing line {line:?}");
        }
    }

    #[test]
    fn selection_plans() {
        use Plan::*;
        let plans = |selection: Selection| Step::ALL.map(|step| selection.plan(step));
        assert_eq!(plans(Selection::Resume), [IfStale; 9]);
        assert_eq!(plans(Selection::Fresh), [Force; 9]);
        assert_eq!(
            plans(Selection::From(Step::Build)),
            [IfStale, IfStale, IfStale, IfStale, IfStale, Force, Force, Force, Force]
        );
        assert_eq!(
            plans(Selection::Only(Step::Patch)),
            [Keep, Keep, Keep, Keep, Force, Keep, Keep, Keep, Keep]
        );
    }
}
