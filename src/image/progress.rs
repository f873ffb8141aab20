//! Download progress: a bar with bytes, rate and ETA on a terminal, and one
//! log line every few seconds otherwise.

use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use crate::ui;

/// Time between plain progress lines when no bar is shown.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

const BAR_TEMPLATE: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
const SPINNER_TEMPLATE: &str = "{spinner} {msg} {bytes} {bytes_per_sec}";

/// Progress of one file's download, across resumed attempts.
pub(crate) struct DownloadProgress {
    bar: Option<ProgressBar>,
    name: String,
    position: u64,
    total: Option<u64>,
    started: Instant,
    started_at: u64,
    last_log: Instant,
}

impl DownloadProgress {
    /// Creates a progress display for `name`, which has `position` bytes already.
    pub fn new(name: &str, position: u64) -> DownloadProgress {
        let now = Instant::now();
        DownloadProgress {
            bar: None,
            name: name.to_string(),
            position,
            total: None,
            started: now,
            started_at: position,
            last_log: now,
        }
    }

    /// Sets the file's full size, once a response has given it, and the bytes already present.
    pub fn start(&mut self, total: Option<u64>, position: u64) {
        self.total = total;
        self.position = position;
        if self.bar.is_none() && ui::is_interactive() {
            let bar = match total {
                Some(length) => ui::bar(length, BAR_TEMPLATE),
                None => ui::spinner(SPINNER_TEMPLATE),
            };
            bar.set_message(self.name.clone());
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            if let Some(length) = total {
                bar.set_length(length);
            }
            bar.set_position(position);
        }
    }

    pub fn advance(&mut self, bytes: u64) {
        self.position += bytes;
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        } else if self.last_log.elapsed() >= LOG_INTERVAL {
            self.last_log = Instant::now();
            ui::detail(self.summary());
        }
    }

    /// Removes the bar, leaving the screen to the next status line.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn summary(&self) -> String {
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (self.position - self.started_at.min(self.position)) as f64 / seconds;
        let done = mebibytes(self.position);
        match self.total {
            Some(total) => format!(
                "{}: {done} of {} MiB, {} MiB/s",
                self.name,
                mebibytes(total),
                mebibytes(rate as u64)
            ),
            None => format!(
                "{}: {done} MiB, {} MiB/s",
                self.name,
                mebibytes(rate as u64)
            ),
        }
    }
}

impl Drop for DownloadProgress {
    fn drop(&mut self) {
        self.finish();
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}
