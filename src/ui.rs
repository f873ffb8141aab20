//! Everything kbuild shows the user: status lines, warnings and progress bars.
//!
//! Status lines go to stderr as a right-aligned verb and a message, the way
//! cargo prints them. Progress bars appear only when stderr is a terminal and
//! `CI` is unset; otherwise long work prints plain log lines.

use std::fmt::Display;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Hides status and detail lines; warnings, errors and results still print.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// True when stderr is a terminal and no CI system is driving kbuild.
pub fn is_interactive() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("CI").is_none()
}

fn paint(text: &str, ansi: &str) -> String {
    if is_interactive() {
        format!("\x1b[{ansi}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Prints one status line, such as `    Building linux-6.1 with -j2`.
pub fn status(verb: &str, message: impl Display) {
    if quiet() {
        return;
    }
    eprintln!("{} {message}", paint(&format!("{verb:>12}"), "1;32"));
}

/// Prints a warning line.
pub fn warn(message: impl Display) {
    eprintln!("{} {message}", paint("warning:", "1;33"));
}

/// Prints an error line followed by its causes.
pub fn error(error: &anyhow::Error) {
    eprintln!("{} {error}", paint("error:", "1;31"));
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// Prints an indented detail line under the last status line.
pub fn detail(message: impl Display) {
    if quiet() {
        return;
    }
    eprintln!("             {message}");
}

/// Prints a result line to stdout, where scripts read it.
pub fn result(message: impl Display) {
    println!("{message}");
}

/// Prints a line that a guest command wrote to its stderr.
pub fn remote_stderr(line: &str) {
    eprintln!("{line}");
}

/// Creates a progress bar with a known length, hidden when not interactive.
pub fn bar(length: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(length), draw_target());
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Creates a spinner for work of unknown length, hidden when not interactive.
pub fn spinner(template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, draw_target());
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn draw_target() -> ProgressDrawTarget {
    if is_interactive() && !quiet() {
        ProgressDrawTarget::stderr_with_hz(5)
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// Formats a duration as seconds with one decimal, as status lines show it.
pub fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// Formats a byte count in B, KiB, MiB or GiB with one decimal.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_small_in_bytes() {
        assert_eq!(bytes(512), "512 B");
    }

    #[test]
    fn bytes_large_in_binary_units() {
        assert_eq!(bytes(24_118), "23.6 KiB");
        assert_eq!(bytes(323_084_497), "308.1 MiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
