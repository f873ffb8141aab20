//! Reading an HTTP response for a resumable download: whether its body
//! continues the part file, and whether a failure is worth a retry.

use anyhow::anyhow;
use reqwest::header::CONTENT_RANGE;
use reqwest::{Response, StatusCode};

use super::part_file::PartFile;
use crate::ui;

/// Next step after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Recovery {
    /// Try the same URL again after a delay, resuming from the bytes already saved.
    Retry,
    /// Give up on this URL, for example after a 404.
    NextMirror,
    /// Stop the whole download, for example when the disk is full.
    Abort,
}

/// A failed attempt and what to do about it.
pub(super) struct AttemptError {
    pub error: anyhow::Error,
    pub next: Recovery,
}

impl AttemptError {
    pub fn new(next: Recovery, error: anyhow::Error) -> AttemptError {
        AttemptError { error, next }
    }
}

/// Use of a response's body for the part file.
pub(super) enum Plan {
    /// Append the body. The whole file has `total` bytes, if known.
    Stream { total: Option<u64> },
    /// The part file already contains the whole file.
    Complete,
}

/// Decides from the status and `Content-Range` how the body continues the part file.
///
/// Only a 206 whose range starts exactly at the part's length is appended. A
/// 200 restarts the file, because the server ignored the range request.
pub(super) fn plan(
    url: &str,
    response: &Response,
    part: &mut PartFile,
) -> Result<Plan, AttemptError> {
    let offset = part.len();
    let restart = |part: &mut PartFile| {
        part.restart()
            .map_err(|error| AttemptError::new(Recovery::Abort, error))
    };
    let content_range = response
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    match response.status() {
        StatusCode::OK => {
            if offset > 0 {
                ui::detail(format!(
                    "{url} ignored the range request; downloading from the start"
                ));
                restart(part)?;
            }
            Ok(Plan::Stream {
                total: response.content_length(),
            })
        }
        StatusCode::PARTIAL_CONTENT => match parse_content_range(content_range) {
            Some((start, total)) if start == offset => Ok(Plan::Stream { total }),
            _ => {
                restart(part)?;
                let error = anyhow!(
                    "{url} responded to a request for bytes {offset}- with Content-Range \
                     {content_range:?}; starting over"
                );
                Err(AttemptError::new(Recovery::Retry, error))
            }
        },
        StatusCode::RANGE_NOT_SATISFIABLE => {
            if parse_unsatisfied_range(content_range) == Some(offset) {
                return Ok(Plan::Complete);
            }
            restart(part)?;
            let error =
                anyhow!("{url} cannot resume at byte {offset} ({content_range:?}); starting over");
            Err(AttemptError::new(Recovery::Retry, error))
        }
        status => Err(status_error(url, status)),
    }
}

/// Returns the innermost cause of a reqwest error, such as "Connection refused
/// (os error 111)", because reqwest's own message repeats the URL in each layer.
pub(super) fn root_cause(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

pub(super) fn status_error(url: &str, status: StatusCode) -> AttemptError {
    let transient = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    let next = if transient {
        Recovery::Retry
    } else {
        Recovery::NextMirror
    };
    AttemptError::new(next, anyhow!("HTTP {status} from {url}"))
}

/// Parses `bytes START-END/TOTAL` (TOTAL may be `*`) into START and TOTAL.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        number => Some(number.parse().ok()?),
    };
    Some((start, total))
}

/// Parses the `bytes */TOTAL` of a 416 response into TOTAL.
fn parse_unsatisfied_range(value: &str) -> Option<u64> {
    value.trim().strip_prefix("bytes */")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_with_total() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
    }

    #[test]
    fn content_range_unknown_total() {
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
    }

    #[test]
    fn content_range_malformed() {
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
        assert_eq!(parse_content_range("items 0-5/10"), None);
        assert_eq!(parse_content_range(""), None);
    }

    #[test]
    fn unsatisfied_range_total() {
        assert_eq!(parse_unsatisfied_range("bytes */4096"), Some(4096));
        assert_eq!(parse_unsatisfied_range("bytes 0-1/2"), None);
    }

    #[test]
    fn status_404_moves_on() {
        let error = status_error("http://127.0.0.1/x", StatusCode::NOT_FOUND);
        assert_eq!(error.next, Recovery::NextMirror);
        assert!(error.error.to_string().contains("404"));
    }

    #[test]
    fn status_503_retries() {
        let error = status_error("http://127.0.0.1/x", StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.next, Recovery::Retry);
    }
}
