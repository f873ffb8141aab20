//! A minimal client for the QEMU Machine Protocol (QMP) over a unix socket.
//!
//! QMP sends one JSON object per line. After connecting, the server sends a
//! greeting, and the client must send `qmp_capabilities` before any other
//! command. Asynchronous events (`{"event": ...}`) can arrive between a
//! command and its reply, so the reader skips them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// An open QMP session, past the capabilities negotiation.
pub struct Qmp {
    socket: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Time allowed for each read or write.
    deadline: Duration,
}

impl Qmp {
    /// Connects to `socket`, reads the greeting and negotiates capabilities.
    pub async fn connect(socket: &Path, deadline: Duration) -> anyhow::Result<Qmp> {
        let stream = tokio::time::timeout(deadline, UnixStream::connect(socket))
            .await
            .map_err(|_| {
                anyhow::anyhow!("connecting to QMP socket {} timed out", socket.display())
            })?
            .with_context(|| format!("connecting to QMP socket {}", socket.display()))?;
        let (reader, writer) = stream.into_split();
        let mut qmp = Qmp {
            socket: socket.to_path_buf(),
            reader: BufReader::new(reader),
            writer,
            deadline,
        };
        let greeting = qmp.read_message("the greeting").await?;
        if greeting.get("QMP").is_none() {
            bail!(
                "{} sent {greeting} instead of a QMP greeting; is it a QMP socket?",
                socket.display()
            );
        }
        qmp.execute("qmp_capabilities").await?;
        Ok(qmp)
    }

    /// Sends a command without arguments and returns the value of its reply.
    pub async fn execute(&mut self, command: &str) -> anyhow::Result<Value> {
        let mut line = serde_json::json!({ "execute": command }).to_string();
        line.push('\n');
        tracing::debug!("QMP {}: sending {}", self.socket.display(), line.trim_end());
        tokio::time::timeout(self.deadline, self.writer.write_all(line.as_bytes()))
            .await
            .map_err(|_| self.timed_out(&format!("sending {command}")))?
            .with_context(|| format!("sending {command} to {}", self.socket.display()))?;

        loop {
            let message = self
                .read_message(&format!("the reply to {command}"))
                .await?;
            if let Some(event) = message.get("event") {
                tracing::debug!("QMP {}: event {event} while waiting", self.socket.display());
                continue;
            }
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                bail!(
                    "QMP command {command} failed on {}: {}: {}",
                    self.socket.display(),
                    error["class"].as_str().unwrap_or("unknown class"),
                    error["desc"].as_str().unwrap_or("no description")
                );
            }
            bail!(
                "unexpected QMP message from {} while waiting for {command}: {message}",
                self.socket.display()
            );
        }
    }

    /// Returns the guest's run state, such as `running`, `paused` or `shutdown`.
    pub async fn query_status(&mut self) -> anyhow::Result<String> {
        let reply = self.execute("query-status").await?;
        match reply.get("status").and_then(Value::as_str) {
            Some(status) => Ok(status.to_string()),
            None => bail!("query-status returned no status: {reply}"),
        }
    }

    /// Reads one JSON line; `expected` names the message for errors.
    async fn read_message(&mut self, expected: &str) -> anyhow::Result<Value> {
        let mut line = String::new();
        let read = tokio::time::timeout(self.deadline, self.reader.read_line(&mut line))
            .await
            .map_err(|_| self.timed_out(&format!("waiting for {expected}")))?
            .with_context(|| format!("reading {expected} from {}", self.socket.display()))?;
        if read == 0 {
            bail!(
                "QMP socket {} closed before {expected}",
                self.socket.display()
            );
        }
        serde_json::from_str(line.trim_end()).with_context(|| {
            format!(
                "parsing {expected} from {}: {:?}",
                self.socket.display(),
                line.trim_end()
            )
        })
    }

    fn timed_out(&self, action: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "QMP on {} timed out after {:.1}s {action}",
            self.socket.display(),
            self.deadline.as_secs_f64()
        )
    }
}

/// Connects, runs one command and closes the session.
pub async fn run_command(
    socket: &Path,
    command: &str,
    deadline: Duration,
) -> anyhow::Result<Value> {
    let mut qmp = Qmp::connect(socket, deadline).await?;
    qmp.execute(command).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"major": 10}}, "capabilities": []}}"#;

    /// Serves one connection: sends the greeting, then replies to each received
    /// line with the next entry of `replies` (which may hold several lines).
    fn serve(replies: Vec<&'static str>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("creating a temporary folder");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("binding the fake QMP socket");
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accepting");
            let (reader, mut writer) = stream.into_split();
            let mut lines = BufReader::new(reader).lines();
            writer
                .write_all(format!("{GREETING}\n").as_bytes())
                .await
                .unwrap();
            for reply in replies {
                if lines.next_line().await.unwrap().is_none() {
                    return;
                }
                writer
                    .write_all(format!("{reply}\n").as_bytes())
                    .await
                    .unwrap();
            }
            // Keep the connection open so that silence, not EOF, follows.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        (dir, path)
    }

    #[tokio::test]
    async fn qmp_reads_status() {
        let status = r#"{"return": {"status": "running", "running": true}}"#;
        let (_dir, path) = serve(vec![r#"{"return": {}}"#, status]);
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(qmp.query_status().await.unwrap(), "running");
    }

    #[tokio::test]
    async fn qmp_skips_events() {
        let reply = "{\"event\": \"POWERDOWN\", \"timestamp\": {}}\n{\"return\": {}}";
        let (_dir, path) = serve(vec![r#"{"return": {}}"#, reply]);
        let value = run_command(&path, "system_powerdown", Duration::from_secs(5)).await;
        assert_eq!(value.unwrap(), serde_json::json!({}));
    }

    #[tokio::test]
    async fn qmp_reports_error_reply() {
        let error = r#"{"error": {"class": "CommandNotFound", "desc": "no such command"}}"#;
        let (_dir, path) = serve(vec![r#"{"return": {}}"#, error]);
        let message = run_command(&path, "bogus", Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(message.contains("QMP command bogus failed"), "{message}");
        assert!(
            message.contains("CommandNotFound: no such command"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn qmp_times_out_on_silence() {
        let (_dir, path) = serve(vec![r#"{"return": {}}"#]);
        let mut qmp = Qmp::connect(&path, Duration::from_millis(300))
            .await
            .unwrap();
        let message = qmp.execute("query-status").await.unwrap_err().to_string();
        assert!(message.contains("timed out"), "{message}");
    }

    #[tokio::test]
    async fn qmp_missing_socket_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let error = Qmp::connect(&path, Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        assert!(format!("{error:#}").contains("absent.sock"), "{error:#}");
    }
}
