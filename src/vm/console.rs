//! The serial console log of a VM: a boot marker before each start, and the
//! last lines, cleaned of terminal escapes, for messages.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::Context;

/// Bytes read from the end of the log to find the last lines.
const TAIL_BYTES: u64 = 64 * 1024;

/// Appends a line that marks where the output of a new boot starts.
pub fn append_marker(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "\n===== kbuild: {text} =====")
        .with_context(|| format!("writing {}", path.display()))
}

/// Returns the last `lines` non-empty lines of the log, or an empty string
/// when it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match read_end(path) {
        Ok(bytes) => last_lines(&String::from_utf8_lossy(&bytes), lines),
        Err(error) => {
            tracing::debug!("cannot read console log {}: {error:#}", path.display());
            String::new()
        }
    }
}

fn read_end(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let length = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    file.seek(SeekFrom::Start(length.saturating_sub(TAIL_BYTES)))
        .with_context(|| format!("seeking in {}", path.display()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}

/// Cleans `text` of escape sequences and returns its last `count` non-empty lines.
fn last_lines(text: &str, count: usize) -> String {
    let cleaned = strip_escapes(text);
    let lines: Vec<&str> = cleaned
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// Removes ANSI CSI sequences (`ESC [ ... final`), other two-byte escapes and
/// control characters except newline and tab, as GRUB and systemd send them.
fn strip_escapes(text: &str) -> String {
    let mut cleaned = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next_if_eq(&'[').is_some() {
                // Parameters and intermediates run until a final byte in @..~.
                for next in chars.by_ref() {
                    if ('@'..='~').contains(&next) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
            continue;
        }
        if c == '\n' || c == '\t' || !c.is_control() {
            cleaned.push(c);
        }
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        let text = "one\r\ntwo\r\n\r\nthree\r\nfour\r\n";
        assert_eq!(last_lines(text, 2), "three\nfour");
        assert_eq!(last_lines(text, 10), "one\ntwo\nthree\nfour");
    }

    #[test]
    fn tail_strips_escapes() {
        let text = "\x1b[0;32m  OK  \x1b[0m] Started ssh.service\n\x1b[2J\x1b[1;1Hgrub\x1bc\n";
        assert_eq!(last_lines(text, 5), "  OK  ] Started ssh.service\ngrub");
    }

    #[test]
    fn tail_of_missing_log_empty() {
        assert_eq!(tail(Path::new("/nonexistent/console.log"), 5), "");
    }

    #[test]
    fn marker_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, "old boot\n").unwrap();
        append_marker(&path, "starting").unwrap();
        assert_eq!(tail(&path, 5), "old boot\n===== kbuild: starting =====");
    }
}
