//! Counts the objects kbuild builds and shows progress: a bar on a terminal,
//! a few plain lines otherwise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

/// Quiet-output tags (`  CC      kernel/fork.o`) of steps that compile,
/// assemble, archive or link one object.
const OBJECT_TAGS: &[&[u8]] = &[
    b"CC", b"AS", b"AR", b"LD", b"LDS", b"HOSTCC", b"HOSTCXX", b"HOSTLD", b"LINK", b"OBJCOPY",
];

/// Minimum time between two plain progress lines.
const PLAIN_INTERVAL: Duration = Duration::from_secs(30);

/// Minimum share of the expected total between two plain progress lines.
const PLAIN_STEP_PERCENT: u64 = 10;

/// Returns the object path of a kbuild quiet-output line that builds an
/// object, such as `kernel/fork.o` for `  CC      kernel/fork.o`.
pub fn object_of(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"  ")?;
    let tag_end = rest.iter().position(|&byte| byte == b' ')?;
    if !OBJECT_TAGS.contains(&&rest[..tag_end]) {
        return None;
    }
    let path = rest[tag_end..].trim_ascii_start();
    // Module objects carry a tag: `  CC [M]  fs/ext4/super.o`.
    let path = path.strip_prefix(b"[M]").unwrap_or(path).trim_ascii_start();
    (!path.is_empty()).then_some(path)
}

/// Counts object lines and updates the display, on the thread that reads make's output.
pub struct Tracker {
    count: Arc<AtomicU64>,
    bar: Option<ProgressBar>,
    plain: Option<PlainReport>,
}

/// The caller's side of a [`Tracker`], read after make exits.
pub struct Handle {
    count: Arc<AtomicU64>,
    bar: Option<ProgressBar>,
}

/// Creates a tracker and its handle. `expected` is the object count of the
/// last full build, if one is known.
pub fn track(expected: Option<u64>) -> (Tracker, Handle) {
    let count = Arc::new(AtomicU64::new(0));
    let (bar, plain) = if crate::ui::is_interactive() {
        let bar = match expected {
            Some(total) => crate::ui::bar(
                total,
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} objects, ETA {eta} {wide_msg}",
            ),
            None => crate::ui::spinner("{spinner} [{elapsed_precise}] {pos} objects {wide_msg}"),
        };
        (Some(bar), None)
    } else {
        (None, Some(PlainReport::new(expected, Instant::now())))
    };
    let handle = Handle {
        count: count.clone(),
        bar: bar.clone(),
    };
    (Tracker { count, bar, plain }, handle)
}

impl Tracker {
    /// Counts `line` if it builds an object and updates the display.
    pub fn on_line(&mut self, line: &[u8]) {
        let Some(object) = object_of(line) else {
            return;
        };
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(bar) = &self.bar {
            if bar.length().is_some_and(|length| count > length) {
                bar.set_length(count);
            }
            bar.set_position(count);
            bar.set_message(String::from_utf8_lossy(object).into_owned());
        }
        if let Some(plain) = &mut self.plain {
            if let Some(line) = plain.line(count, Instant::now()) {
                crate::ui::detail(line);
            }
        }
    }
}

impl Handle {
    /// Clears the bar and returns the number of objects built.
    pub fn finish(self) -> u64 {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        self.count.load(Ordering::Relaxed)
    }
}

/// Decides when to print a plain progress line: at most one per
/// [`PLAIN_INTERVAL`], and with a known total at most one per
/// [`PLAIN_STEP_PERCENT`] of it.
pub struct PlainReport {
    expected: Option<u64>,
    started: Instant,
    last_line: Instant,
    last_count: u64,
}

impl PlainReport {
    pub fn new(expected: Option<u64>, now: Instant) -> PlainReport {
        PlainReport {
            expected,
            started: now,
            last_line: now,
            last_count: 0,
        }
    }

    /// Returns the line to print for `count` objects at `now`, if one is due.
    pub fn line(&mut self, count: u64, now: Instant) -> Option<String> {
        if now.duration_since(self.last_line) < PLAIN_INTERVAL {
            return None;
        }
        let elapsed = crate::ui::seconds(now.duration_since(self.started));
        let line = match self.expected.filter(|&total| total > 0) {
            None => format!("{count} objects built, {elapsed} elapsed"),
            Some(total) => {
                let step = (total * PLAIN_STEP_PERCENT / 100).max(1);
                if count < self.last_count + step {
                    return None;
                }
                let percent = (count * 100 / total).min(100);
                format!("{count} of about {total} objects ({percent}%), {elapsed} elapsed")
            }
        };
        self.last_line = now;
        self.last_count = count;
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_of_compile_line() {
        let object = object_of(b"  CC      kernel/fork.o");
        assert_eq!(object, Some(&b"kernel/fork.o"[..]));
    }

    #[test]
    fn object_of_module_line() {
        let object = object_of(b"  CC [M]  fs/ext4/super.o");
        assert_eq!(object, Some(&b"fs/ext4/super.o"[..]));
    }

    #[test]
    fn object_of_host_and_archive_lines() {
        assert!(object_of(b"  HOSTCC  scripts/basic/fixdep").is_some());
        assert!(object_of(b"  AR      kernel/built-in.a").is_some());
    }

    #[test]
    fn object_of_ignores_other_steps() {
        assert_eq!(object_of(b"  CALL    scripts/checksyscalls.sh"), None);
        assert_eq!(object_of(b"  DESCEND objtool"), None);
        assert_eq!(object_of(b"  UPD     include/generated/compile.h"), None);
    }

    #[test]
    fn object_of_ignores_messages() {
        assert_eq!(object_of(b"kernel/fork.c:1: error: CC broken"), None);
        assert_eq!(object_of(b"   CC      indented.o"), None);
        assert_eq!(object_of(b"  CC"), None);
    }

    #[test]
    fn plain_report_waits_for_interval() {
        let start = Instant::now();
        let mut report = PlainReport::new(None, start);
        assert_eq!(report.line(50, start + Duration::from_secs(10)), None);
        let line = report.line(90, start + Duration::from_secs(31));
        assert_eq!(line.as_deref(), Some("90 objects built, 31.0s elapsed"));
    }

    #[test]
    fn plain_report_interval_restarts_after_line() {
        let start = Instant::now();
        let mut report = PlainReport::new(None, start);
        assert!(report.line(1, start + Duration::from_secs(30)).is_some());
        assert_eq!(report.line(2, start + Duration::from_secs(45)), None);
    }

    #[test]
    fn plain_report_waits_for_step_of_total() {
        let start = Instant::now();
        let mut report = PlainReport::new(Some(1000), start);
        assert_eq!(report.line(99, start + Duration::from_secs(60)), None);
        let line = report.line(100, start + Duration::from_secs(61));
        assert_eq!(
            line.as_deref(),
            Some("100 of about 1000 objects (10%), 61.0s elapsed")
        );
    }
}
