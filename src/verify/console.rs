//! Reads the serial console of a direct boot and judges what it shows.
//!
//! The test program prints `kbuild-test: start NAME nr=N` before the call and
//! `kbuild-test: result ret=R errno=E` after it. Everything here is a pure
//! function of the console lines, so the judgement is testable without QEMU.

use super::Verdict;

const START_MARKER: &str = "kbuild-test: start";
const RESULT_MARKER: &str = "kbuild-test: result ";
const PANIC_MARKER: &str = "Kernel panic - not syncing";
const RELEASE_MARKER: &str = "Linux version ";

/// Panic messages that mean the kernel found no usable /init, so the test never ran.
const NO_INIT_PANICS: &[&str] = &[
    "No working init found",
    "Unable to mount root fs",
    "Requested init /init failed",
];

/// Kernel messages after the start line that show the syscall crashed.
const CRASH_MARKERS: &[&str] = &["BUG:", "Oops", "general protection fault"];

/// Facts found in the console output of one boot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConsoleScan {
    /// The kernel release from the `Linux version` banner.
    pub release: Option<String>,
    /// The test program printed its start line.
    pub started: bool,
    /// `ret` and `errno` from the result line.
    pub result: Option<(i64, i32)>,
    /// The first `Kernel panic - not syncing` message.
    pub panic: Option<String>,
    /// The first oops or BUG message printed after the start line.
    pub crash: Option<String>,
}

/// The way a QEMU run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Exited,
    TimedOut,
}

/// The judgement of one boot.
#[derive(Debug)]
pub enum Outcome {
    /// The test program ran, and the verdict states whether the syscall passed.
    Verdict(Verdict),
    /// The kernel panicked before /init ran.
    PanicBeforeInit(String),
    /// QEMU exited before the kernel ran /init. The text is the panic message, if any.
    NeverReachedInit(Option<String>),
    /// The deadline passed.
    TimedOut { reached_init: bool },
}

/// Scans console lines for the banner, the test program's lines and panics.
pub fn scan(lines: &[String]) -> ConsoleScan {
    let mut scan = ConsoleScan::default();
    for line in lines {
        if scan.release.is_none() {
            scan.release = parse_release(line);
        }
        if line.contains(START_MARKER) {
            scan.started = true;
        }
        if scan.result.is_none() {
            scan.result = parse_result(line);
        }
        if scan.panic.is_none() {
            scan.panic = find_from(line, PANIC_MARKER);
        }
        if scan.started && scan.crash.is_none() {
            scan.crash = CRASH_MARKERS
                .iter()
                .find_map(|marker| find_from(line, marker));
        }
    }
    scan
}

/// Judges a boot from its console scan, the expected value and how QEMU ended.
///
/// A result line decides the verdict even when QEMU then hung, because the
/// syscall did run.
pub fn judge(scan: &ConsoleScan, number: u32, expect: i64, end: RunEnd) -> Outcome {
    if let Some((ret, errno)) = scan.result {
        return Outcome::Verdict(judge_value(number, expect, return_value(ret, errno)));
    }
    if end == RunEnd::TimedOut {
        return Outcome::TimedOut {
            reached_init: scan.started,
        };
    }
    if scan.started {
        return Outcome::Verdict(crashed(scan));
    }
    match &scan.panic {
        Some(panic) if NO_INIT_PANICS.iter().any(|text| panic.contains(text)) => {
            Outcome::NeverReachedInit(Some(panic.clone()))
        }
        Some(panic) => Outcome::PanicBeforeInit(panic.clone()),
        None => Outcome::NeverReachedInit(None),
    }
}

/// Returns the kernel's return value: `-errno` when libc reported an error, else `ret`.
pub fn return_value(ret: i64, errno: i32) -> i64 {
    if ret == -1 && errno != 0 {
        -i64::from(errno)
    } else {
        ret
    }
}

/// Judges the value the syscall returned against the expected one.
pub fn judge_value(number: u32, expect: i64, actual: i64) -> Verdict {
    if actual == expect {
        return Verdict::Passed { actual };
    }
    let errno_name = errno_name(actual).map(str::to_string);
    let reason = match errno_name.as_deref() {
        Some("ENOSYS") => format!(
            "syscall {number} returned -ENOSYS: the booted kernel has no such syscall; \
             was it built from the patched tree?"
        ),
        Some(name) => format!("expected {expect}, got -{name} ({actual}) from syscall {number}"),
        None => format!("expected {expect}, got {actual}"),
    };
    Verdict::Failed {
        actual: Some(actual),
        errno_name,
        reason,
    }
}

fn crashed(scan: &ConsoleScan) -> Verdict {
    let cause = scan
        .panic
        .as_ref()
        .or(scan.crash.as_ref())
        .map_or_else(|| "no panic message".to_string(), |text| text.clone());
    let reason = if scan.panic.is_some() {
        format!("the syscall crashed the kernel after /init started: {cause}")
    } else {
        format!("/init started but printed no result before QEMU exited ({cause})")
    };
    Verdict::Failed {
        actual: None,
        errno_name: None,
        reason,
    }
}

/// Returns the symbolic name of a negative errno value, such as `ENOSYS` for -38.
///
/// The values come from the host's libc, which match the guest's on x86_64 Linux.
pub fn errno_name(value: i64) -> Option<&'static str> {
    const NAMES: &[(i32, &str)] = &[
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::ESRCH, "ESRCH"),
        (libc::EINTR, "EINTR"),
        (libc::EIO, "EIO"),
        (libc::ENXIO, "ENXIO"),
        (libc::E2BIG, "E2BIG"),
        (libc::EBADF, "EBADF"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::EACCES, "EACCES"),
        (libc::EFAULT, "EFAULT"),
        (libc::EBUSY, "EBUSY"),
        (libc::EEXIST, "EEXIST"),
        (libc::ENODEV, "ENODEV"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::ERANGE, "ERANGE"),
        (libc::ENAMETOOLONG, "ENAMETOOLONG"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::EOVERFLOW, "EOVERFLOW"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::ETIMEDOUT, "ETIMEDOUT"),
    ];
    let errno = i32::try_from(value.checked_neg()?).ok()?;
    NAMES
        .iter()
        .find(|(code, _)| *code == errno)
        .map(|(_, name)| *name)
}

fn parse_release(line: &str) -> Option<String> {
    let start = line.find(RELEASE_MARKER)? + RELEASE_MARKER.len();
    let release = line[start..].split_whitespace().next()?;
    Some(release.to_string())
}

/// Parses `kbuild-test: result ret=R errno=E` anywhere in a line.
fn parse_result(line: &str) -> Option<(i64, i32)> {
    let start = line.find(RESULT_MARKER)? + RESULT_MARKER.len();
    let mut fields = line[start..].split_whitespace();
    let ret = fields.next()?.strip_prefix("ret=")?.parse().ok()?;
    let errno = fields.next()?.strip_prefix("errno=")?.parse().ok()?;
    Some((ret, errno))
}

fn find_from(line: &str, marker: &str) -> Option<String> {
    line.find(marker)
        .map(|start| line[start..].trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BANNER: &str = "[    0.000000] Linux version 6.1.158 (root@host) (gcc (Debian 12.2.0-14) \
                          12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 Thu Dec 4 17:00:00 UTC 2025";

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    fn judge_text(text: &str, expect: i64, end: RunEnd) -> Outcome {
        judge(&scan(&lines(text)), 451, expect, end)
    }

    fn failed_reason(outcome: Outcome) -> (Option<i64>, Option<String>, String) {
        match outcome {
            Outcome::Verdict(Verdict::Failed {
                actual,
                errno_name,
                reason,
            }) => (actual, errno_name, reason),
            other => panic!("expected a failed verdict, got {other:?}"),
        }
    }

    #[test]
    fn scan_reads_release() {
        let scan = scan(&lines(BANNER));
        assert_eq!(scan.release.as_deref(), Some("6.1.158"));
    }

    #[test]
    fn judge_passes_expected_value() {
        let text = format!(
            "{BANNER}\nkbuild-test: start kbuild_add nr=451\nkbuild-test: result ret=42 errno=0\n\
             reboot: Restarting system"
        );
        let outcome = judge_text(&text, 42, RunEnd::Exited);
        assert!(
            matches!(outcome, Outcome::Verdict(Verdict::Passed { actual: 42 })),
            "{outcome:?}"
        );
    }

    #[test]
    fn judge_reports_wrong_value() {
        let text = "kbuild-test: start kbuild_add nr=451\nkbuild-test: result ret=7 errno=0";
        let (actual, errno_name, reason) = failed_reason(judge_text(text, 42, RunEnd::Exited));
        assert_eq!(actual, Some(7));
        assert_eq!(errno_name, None);
        assert_eq!(reason, "expected 42, got 7");
    }

    #[test]
    fn judge_names_enosys() {
        let text = "kbuild-test: start kbuild_add nr=451\nkbuild-test: result ret=-1 errno=38";
        let (actual, errno_name, reason) = failed_reason(judge_text(text, 42, RunEnd::Exited));
        assert_eq!(actual, Some(-38));
        assert_eq!(errno_name.as_deref(), Some("ENOSYS"));
        assert!(reason.contains("syscall 451 returned -ENOSYS"), "{reason}");
        assert!(reason.contains("patched tree"), "{reason}");
    }

    #[test]
    fn judge_names_efault() {
        let text = "kbuild-test: start kbuild_hello nr=451\nkbuild-test: result ret=-1 errno=14";
        let (actual, errno_name, reason) = failed_reason(judge_text(text, 5, RunEnd::Exited));
        assert_eq!(actual, Some(-14));
        assert_eq!(errno_name.as_deref(), Some("EFAULT"));
        assert!(reason.contains("-EFAULT (-14)"), "{reason}");
    }

    #[test]
    fn judge_passes_expected_errno() {
        let text = "kbuild-test: start kbuild_add nr=451\nkbuild-test: result ret=-1 errno=22";
        let outcome = judge_text(text, -22, RunEnd::Exited);
        assert!(
            matches!(outcome, Outcome::Verdict(Verdict::Passed { actual: -22 })),
            "{outcome:?}"
        );
    }

    #[test]
    fn judge_reads_result_between_kernel_messages() {
        let text = "[    1.5] random: crng init done kbuild-test: result ret=42 errno=0\n";
        let scan = scan(&lines(text));
        assert_eq!(scan.result, Some((42, 0)));
    }

    #[test]
    fn judge_fails_panic_after_start() {
        let text = "kbuild-test: start kbuild_add nr=451\n\
                    BUG: kernel NULL pointer dereference, address: 0000000000000000\n\
                    Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009";
        let (actual, _, reason) = failed_reason(judge_text(text, 42, RunEnd::Exited));
        assert_eq!(actual, None);
        assert!(reason.contains("crashed the kernel"), "{reason}");
        assert!(reason.contains("Attempted to kill init"), "{reason}");
    }

    #[test]
    fn judge_fails_exit_after_start() {
        let text = "kbuild-test: start kbuild_add nr=451\nOops: 0000 [#1] PREEMPT";
        let (_, _, reason) = failed_reason(judge_text(text, 42, RunEnd::Exited));
        assert!(reason.contains("printed no result"), "{reason}");
        assert!(reason.contains("Oops: 0000"), "{reason}");
    }

    #[test]
    fn judge_panic_before_init() {
        let text = format!("{BANNER}\nKernel panic - not syncing: VFS: out of memory");
        let outcome = judge_text(&text, 42, RunEnd::Exited);
        assert!(
            matches!(&outcome, Outcome::PanicBeforeInit(text) if text.contains("out of memory")),
            "{outcome:?}"
        );
    }

    #[test]
    fn judge_init_panic_never_reached_init() {
        let text = "Kernel panic - not syncing: No working init found.  Try passing init= option";
        let outcome = judge_text(text, 42, RunEnd::Exited);
        assert!(
            matches!(&outcome, Outcome::NeverReachedInit(Some(text)) if text.contains("No working")),
            "{outcome:?}"
        );
    }

    #[test]
    fn judge_silent_exit_never_reached_init() {
        let outcome = judge_text(BANNER, 42, RunEnd::Exited);
        assert!(
            matches!(outcome, Outcome::NeverReachedInit(None)),
            "{outcome:?}"
        );
    }

    #[test]
    fn judge_timeout_before_init() {
        let outcome = judge_text(BANNER, 42, RunEnd::TimedOut);
        assert!(
            matches!(
                outcome,
                Outcome::TimedOut {
                    reached_init: false
                }
            ),
            "{outcome:?}"
        );
    }

    #[test]
    fn judge_timeout_after_start() {
        let outcome = judge_text("kbuild-test: start x nr=451", 42, RunEnd::TimedOut);
        assert!(
            matches!(outcome, Outcome::TimedOut { reached_init: true }),
            "{outcome:?}"
        );
    }

    #[test]
    fn errno_name_covers_common_values() {
        assert_eq!(errno_name(-1), Some("EPERM"));
        assert_eq!(errno_name(-2), Some("ENOENT"));
        assert_eq!(errno_name(-36), Some("ENAMETOOLONG"));
        assert_eq!(errno_name(-38), Some("ENOSYS"));
    }

    #[test]
    fn errno_name_ignores_non_errno() {
        assert_eq!(errno_name(42), None);
        assert_eq!(errno_name(i64::MIN), None);
        assert_eq!(errno_name(-4000), None);
    }

    #[test]
    fn return_value_keeps_plain_minus_one() {
        assert_eq!(return_value(-1, 0), -1);
    }
}
