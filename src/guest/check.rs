//! The checks `kbuild verify` runs inside the VM once the new kernel is up:
//! the release, the syscall's symbol, the test program compiled with the
//! guest's compiler, and the kernel log line of a built-in template.

use std::fmt;
use std::time::Duration;

use super::install::Installed;
use super::Guest;
use crate::exit::Failure;
use crate::project::{Project, TemplateRef};
use crate::ssh::{ExecOptions, ExitStatus};
use crate::verify::console;
use crate::verify::{render_test_program, Verdict};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pass,
    Fail,
    Skip,
}

/// One line of the verify report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub state: State,
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self.state {
            State::Pass => "PASS",
            State::Fail => "FAIL",
            State::Skip => "SKIP",
        };
        write!(f, "{word} {:<10} {}", self.name, self.detail)
    }
}

/// All checks, and the syscall's verdict among them.
pub struct Checks {
    pub checks: Vec<Check>,
    pub verdict: Verdict,
}

impl Checks {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|check| check.state != State::Fail)
    }
}

/// Runs every check in the guest, which must run the installed kernel.
pub fn run_checks(
    guest: &Guest,
    project: &Project,
    installed: &Installed,
) -> anyhow::Result<Checks> {
    let running = guest.capture(&["uname", "-r"])?.trim().to_string();
    if running != installed.release {
        return Err(Failure::infrastructure(format!(
            "VM {} runs linux {running}, not the installed {}: it booted the old kernel; run \
             `kbuild verify` to reboot into the new one",
            guest.vm.name, installed.release
        )));
    }
    let name = &project.syscall.name;
    let mut checks = vec![Check {
        name: "kernel",
        state: State::Pass,
        detail: format!("running linux {running}"),
    }];
    checks.push(symbol_check(guest, name)?);
    let verdict = run_test_program(guest, project, installed.number)?;
    checks.push(syscall_check(&verdict, name, installed.number));
    checks.push(log_check(guest, project)?);
    Ok(Checks { checks, verdict })
}

/// Looks for the syscall's entry point in /proc/kallsyms.
fn symbol_check(guest: &Guest, name: &str) -> anyhow::Result<Check> {
    let symbols = [format!("__x64_sys_{name}"), format!("sys_{name}")];
    let script = "awk -v a=\"$1\" -v b=\"$2\" '$3 == a || $3 == b { print $3 }' /proc/kallsyms";
    let found = guest.capture(&["sh", "-c", script, "sh", &symbols[0], &symbols[1]])?;
    let found: Vec<&str> = found.lines().collect();
    Ok(match found.first() {
        Some(symbol) => Check {
            name: "symbol",
            state: State::Pass,
            detail: format!("{symbol} in /proc/kallsyms"),
        },
        None => Check {
            name: "symbol",
            state: State::Fail,
            detail: format!(
                "neither {} nor {} is in /proc/kallsyms; the running kernel lacks the syscall",
                symbols[0], symbols[1]
            ),
        },
    })
}

/// Writes the test program to the guest and compiles it with the guest's
/// compiler, unless the binary there already comes from the same source.
/// Returns the binary's path. `verify` calls it before the reboot, because
/// the program does not depend on the running kernel.
pub fn prepare_test_program(
    guest: &Guest,
    project: &Project,
    number: u32,
) -> anyhow::Result<String> {
    let dirs = guest.dirs();
    let source = render_test_program(project, number)?;
    let stem = format!("{}/{}-test", dirs.test, project.syscall.name);
    guest.capture(&["mkdir", "-p", &dirs.test])?;
    guest.upload_text(&source, &format!("{stem}.c.new"))?;
    let compile =
        "if [ -x \"$1\" ] && cmp -s \"$1.c.new\" \"$1.c\"; then rm -f \"$1.c.new\"; exit 0; fi; \
                   mv -f \"$1.c.new\" \"$1.c\"; \
                   if command -v cc >/dev/null; then c=cc; elif command -v gcc >/dev/null; then \
                   c=gcc; else echo 'no C compiler (cc or gcc) in the guest' >&2; exit 127; fi; \
                   exec \"$c\" -O2 -Wall -o \"$1\" \"$1.c\"";
    guest
        .capture(&["sh", "-c", compile, "sh", &stem])
        .map_err(|error| {
            Failure::infrastructure(format!(
                "compiling the test program in VM {} failed: {error:#}; install gcc there \
                 (the profile's build_deps have it; `kbuild up` installs them)",
                guest.vm.name
            ))
        })?;
    Ok(stem)
}

/// Runs the test program (compiling it first if needed) and judges the
/// value it printed.
fn run_test_program(guest: &Guest, project: &Project, number: u32) -> anyhow::Result<Verdict> {
    let stem = prepare_test_program(guest, project, number)?;
    let options = ExecOptions {
        log: None,
        timeout: Some(Duration::from_secs(project.test.timeout_secs)),
    };
    let mut lines = Vec::new();
    let status = tokio::task::block_in_place(|| {
        guest.session.exec(&[stem.as_str()], &options, |_, line| {
            lines.push(line.to_string())
        })
    });
    if let Some((ret, errno)) = console::scan(&lines).result {
        let actual = console::return_value(ret, errno);
        return Ok(console::judge_value(number, project.test.expect, actual));
    }
    let ended = match status {
        Ok(ExitStatus::Signal(signal)) => format!("was killed by signal {signal}"),
        Ok(status) => format!("ended with {status}"),
        Err(error) => format!("did not finish: {error:#}"),
    };
    Ok(Verdict::Failed {
        actual: None,
        errno_name: None,
        reason: format!(
            "the test program {ended} before printing a result; the syscall may have crashed \
             (see `kbuild ssh -- sudo dmesg`)"
        ),
    })
}

fn syscall_check(verdict: &Verdict, name: &str, number: u32) -> Check {
    match verdict {
        Verdict::Passed { actual } => Check {
            name: "syscall",
            state: State::Pass,
            detail: format!("{name} (nr {number}) returned {actual}"),
        },
        Verdict::Failed { reason, .. } => Check {
            name: "syscall",
            state: State::Fail,
            detail: reason.clone(),
        },
    }
}

/// Looks in the kernel log for the line a built-in template prints.
fn log_check(guest: &Guest, project: &Project) -> anyhow::Result<Check> {
    let name = &project.syscall.name;
    if let TemplateRef::File(path) = &project.syscall.template {
        return Ok(Check {
            name: "log",
            state: State::Skip,
            detail: format!(
                "template {} is the user's, so there is no expected log line",
                path.display()
            ),
        });
    }
    let expected = format!("kbuild: {name} called");
    let log = guest.capture(&guest.as_root(&["dmesg"]))?;
    Ok(
        match log.lines().rev().find(|line| line.contains(&expected)) {
            Some(line) => Check {
                name: "log",
                state: State::Pass,
                detail: line.trim().to_string(),
            },
            None => Check {
                name: "log",
                state: State::Fail,
                detail: format!("no kernel log line contains {expected:?}"),
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_line_format() {
        let check = Check {
            name: "symbol",
            state: State::Pass,
            detail: "__x64_sys_kbuild_add in /proc/kallsyms".into(),
        };
        assert_eq!(
            check.to_string(),
            "PASS symbol     __x64_sys_kbuild_add in /proc/kallsyms"
        );
    }

    #[test]
    fn syscall_check_fails_on_wrong_value() {
        let verdict = Verdict::Failed {
            actual: Some(41),
            errno_name: None,
            reason: "expected 42, got 41".into(),
        };
        let check = syscall_check(&verdict, "kbuild_add", 451);
        assert_eq!(check.state, State::Fail);
    }
}
