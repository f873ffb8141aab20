//! HTTP downloads that resume, retry with exponential backoff, and fall back
//! to the next mirror.
//!
//! The body streams through a bounded channel into a `.part` file on a
//! blocking thread that also hashes it, so memory use stays at a few MiB
//! whatever the file's size, and hashing overlaps with the network.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context};
use futures_util::StreamExt;
use reqwest::header::RANGE;
use reqwest::Response;

use super::checksum::Digests;
use super::part_file::PartFile;
use super::progress::DownloadProgress;
use super::response::{plan, root_cause, status_error, AttemptError, Plan, Recovery};
use super::FetchOptions;
use crate::exit::Failure;
use crate::profile::DigestAlgorithm;
use crate::ui;

/// Maximum network chunks waiting for the writer thread. hyper 1.x reads at most
/// 408 KiB at once over HTTP/1, so the queue holds at most about 6.5 MiB.
const CHANNEL_CHUNKS: usize = 16;

/// Maximum wait between two attempts on one URL.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Fetches files over HTTP(S) with the timeouts and retry policy of `FetchOptions`.
pub(crate) struct Downloader {
    client: reqwest::Client,
    retries: u32,
    backoff: Duration,
    stall_timeout: Duration,
}

/// The part file and its progress display, moved into the writer thread and back.
struct Sink {
    part: PartFile,
    progress: DownloadProgress,
}

impl Downloader {
    pub fn new(options: &FetchOptions) -> anyhow::Result<Downloader> {
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.stall_timeout)
            .user_agent(concat!("kbuild/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("creating the HTTP client")?;
        Ok(Downloader {
            client,
            retries: options.retries,
            backoff: options.backoff,
            stall_timeout: options.stall_timeout,
        })
    }

    /// Downloads the file that `urls` mirror into `part_path`, one URL after another.
    ///
    /// `verify` checks each finished file. A file that fails it is deleted
    /// and the next URL tried. Returns the digests of the verified file.
    pub async fn fetch(
        &self,
        urls: &[String],
        part_path: &Path,
        extra: Option<DigestAlgorithm>,
        verify: impl Fn(&str, &Digests) -> anyhow::Result<()>,
    ) -> anyhow::Result<Digests> {
        let name = part_path.file_stem().unwrap_or_default().to_string_lossy();
        let mut failures: Vec<(&str, anyhow::Error)> = Vec::new();
        for url in urls {
            let error = match self.fetch_one(url, part_path, extra).await {
                Ok(digests) => match verify(url, &digests) {
                    Ok(()) => return Ok(digests),
                    Err(error) => {
                        // The bytes are wrong, so resuming them from another mirror cannot help.
                        super::cache::remove_file_if_present(part_path)?;
                        error
                    }
                },
                Err(attempt) if attempt.next == Recovery::Abort => return Err(attempt.error),
                Err(attempt) => attempt.error,
            };
            ui::warn(format!("downloading {url} failed: {error:#}"));
            failures.push((url, error));
        }
        let lines: Vec<String> = failures
            .iter()
            .map(|(url, error)| format!("  {url}: {error:#}"))
            .collect();
        Err(Failure::infrastructure(format!(
            "downloading {name} failed from every URL:\n{}\n\
             check the network connection, or update the profile's urls if the files moved",
            lines.join("\n")
        )))
    }

    /// Downloads one URL with retries, resuming the part file left by an earlier attempt or run.
    async fn fetch_one(
        &self,
        url: &str,
        part_path: &Path,
        extra: Option<DigestAlgorithm>,
    ) -> Result<Digests, AttemptError> {
        let part = open_part(part_path, extra).await?;
        let name = url.rsplit('/').next().unwrap_or(url);
        let progress = DownloadProgress::new(name, part.len());
        let mut sink = Sink { part, progress };
        let mut failures = 0u32;
        loop {
            let before = sink.part.len();
            let (returned, result) = self.attempt(url, sink).await?;
            sink = returned;
            let error = match result {
                Ok(()) => break,
                Err(error) if error.next != Recovery::Retry => return Err(error),
                Err(error) => error,
            };
            // A cut connection that delivered data resets the count, so a long
            // download over a flaky link keeps resuming.
            failures = if sink.part.len() > before {
                1
            } else {
                failures + 1
            };
            if failures > self.retries {
                let attempts = failures;
                let error = error
                    .error
                    .context(format!("gave up after {attempts} attempts"));
                return Err(AttemptError::new(Recovery::NextMirror, error));
            }
            let delay = self.delay(failures);
            ui::warn(format!(
                "{:#}; retrying in {} from byte {}",
                error.error,
                ui::seconds(delay),
                sink.part.len()
            ));
            tokio::time::sleep(delay).await;
        }
        sink.progress.finish();
        Ok(sink.part.finish())
    }

    fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }

    /// Makes one request and streams its body into the sink.
    ///
    /// The outer error means the writer thread was lost, and the sink with it.
    async fn attempt(
        &self,
        url: &str,
        mut sink: Sink,
    ) -> Result<(Sink, Result<(), AttemptError>), AttemptError> {
        let offset = sink.part.len();
        let response = match self.request(url, offset).await {
            Ok(response) => response,
            Err(error) => return Ok((sink, Err(error))),
        };
        match plan(url, &response, &mut sink.part) {
            Ok(Plan::Complete) => Ok((sink, Ok(()))),
            Ok(Plan::Stream { total }) => self.stream_body(url, response, sink, total).await,
            Err(error) => Ok((sink, Err(error))),
        }
    }

    async fn request(&self, url: &str, offset: u64) -> Result<Response, AttemptError> {
        let mut request = self.client.get(url);
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        tracing::debug!("GET {url} from byte {offset}");
        request.send().await.map_err(|error| {
            let next = if error.is_builder() {
                Recovery::NextMirror
            } else {
                Recovery::Retry
            };
            AttemptError::new(
                next,
                anyhow!("requesting {url} failed: {}", root_cause(&error)),
            )
        })
    }

    async fn stream_body(
        &self,
        url: &str,
        response: Response,
        mut sink: Sink,
        total: Option<u64>,
    ) -> Result<(Sink, Result<(), AttemptError>), AttemptError> {
        sink.progress.start(total, sink.part.len());
        let (sender, receiver) = tokio::sync::mpsc::channel(CHANNEL_CHUNKS);
        let writer = spawn_writer(sink, receiver);
        let mut stream = response.bytes_stream();
        let mut network = Ok(());
        while let Some(item) = stream.next().await {
            let chunk = match item {
                Ok(chunk) => chunk,
                Err(error) => {
                    network = Err(error);
                    break;
                }
            };
            // A send fails only when the writer stopped on an error, which it returns below.
            if sender.send(chunk).await.is_err() {
                break;
            }
        }
        drop(sender);
        let (sink, written) = writer.await.map_err(|error| {
            AttemptError::new(
                Recovery::Abort,
                anyhow!(error).context("the download writer thread failed"),
            )
        })?;
        let result = self.body_result(url, &sink.part, total, written, network);
        Ok((sink, result))
    }

    fn body_result(
        &self,
        url: &str,
        part: &PartFile,
        total: Option<u64>,
        written: anyhow::Result<()>,
        network: Result<(), reqwest::Error>,
    ) -> Result<(), AttemptError> {
        if let Err(error) = written {
            return Err(AttemptError::new(Recovery::Abort, error));
        }
        let received = part.len();
        if let Err(error) = network {
            let error = if error.is_timeout() {
                anyhow!("no data from {url} for {}", ui::seconds(self.stall_timeout))
            } else {
                anyhow!(
                    "reading {url} failed at byte {received}: {}",
                    root_cause(&error)
                )
            };
            return Err(AttemptError::new(Recovery::Retry, error));
        }
        match total {
            Some(total) if received != total => Err(AttemptError::new(
                Recovery::Retry,
                anyhow!("{url} closed the connection at byte {received} of {total}"),
            )),
            _ => Ok(()),
        }
    }

    /// Downloads a small text file, such as a sums file, into memory.
    pub async fn fetch_text(&self, url: &str, max_bytes: usize) -> anyhow::Result<String> {
        let mut failures = 0u32;
        loop {
            let error = match self.fetch_text_once(url, max_bytes).await {
                Ok(text) => return Ok(text),
                Err(error) if error.next != Recovery::Retry => return Err(error.error),
                Err(error) => error.error,
            };
            failures += 1;
            if failures > self.retries {
                return Err(error.context(format!("gave up after {failures} attempts")));
            }
            let delay = self.delay(failures);
            ui::warn(format!("{error:#}; retrying in {}", ui::seconds(delay)));
            tokio::time::sleep(delay).await;
        }
    }

    async fn fetch_text_once(&self, url: &str, max_bytes: usize) -> Result<String, AttemptError> {
        let response = self.request(url, 0).await?;
        if !response.status().is_success() {
            return Err(status_error(url, response.status()));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(item) = stream.next().await {
            let chunk = item.map_err(|error| {
                AttemptError::new(
                    Recovery::Retry,
                    anyhow!("reading {url} failed: {}", root_cause(&error)),
                )
            })?;
            body.extend_from_slice(&chunk);
            if body.len() > max_bytes {
                let error =
                    anyhow!("{url} is larger than {max_bytes} bytes; is it really a sums file?");
                return Err(AttemptError::new(Recovery::NextMirror, error));
            }
        }
        String::from_utf8(body).map_err(|_| {
            AttemptError::new(Recovery::NextMirror, anyhow!("{url} is not UTF-8 text"))
        })
    }
}

/// Starts the thread that appends each received chunk to the part file.
fn spawn_writer<T: AsRef<[u8]> + Send + 'static>(
    mut sink: Sink,
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> tokio::task::JoinHandle<(Sink, anyhow::Result<()>)> {
    tokio::task::spawn_blocking(move || {
        while let Some(chunk) = receiver.blocking_recv() {
            let chunk = chunk.as_ref();
            if let Err(error) = sink.part.append(chunk) {
                return (sink, Err(error));
            }
            sink.progress.advance(chunk.len() as u64);
        }
        (sink, Ok(()))
    })
}

async fn open_part(path: &Path, extra: Option<DigestAlgorithm>) -> Result<PartFile, AttemptError> {
    let path = path.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || PartFile::open(&path, extra))
        .await
        .context("hashing the partial download");
    match opened {
        Ok(Ok(part)) => Ok(part),
        Ok(Err(error)) | Err(error) => Err(AttemptError::new(Recovery::Abort, error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_and_caps() {
        let options = FetchOptions {
            backoff: Duration::from_secs(1),
            ..FetchOptions::default()
        };
        let downloader = Downloader::new(&options).unwrap();
        assert_eq!(downloader.delay(1), Duration::from_secs(1));
        assert_eq!(downloader.delay(3), Duration::from_secs(4));
        assert_eq!(downloader.delay(40), MAX_BACKOFF);
    }
}
