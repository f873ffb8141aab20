//! Running commands in the guest: argument vectors quoted for the guest's
//! shell, output streamed as it arrives, and the real exit status.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{LineWriter, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Session;
use crate::exit::Failure;

/// libssh2's "operation would block" code (`LIBSSH2_ERROR_EAGAIN`).
const ERROR_EAGAIN: i32 = -37;

/// Maximum line length in bytes passed on whole; longer output without a newline is split.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Maximum single wait on the socket, so a missed wake-up costs at most this.
const MAX_POLL: Duration = Duration::from_secs(1);

/// Output stream of a remote command that a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Exit code or fatal signal of a remote command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// The command exited with this code.
    Code(i32),
    /// The command was killed by this signal, named without `SIG` (`KILL`).
    Signal(String),
}

impl ExitStatus {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// Exit status and whole output of a command run by `exec_capture`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: ExitStatus,
    /// Standard output; invalid UTF-8 is replaced with U+FFFD.
    pub stdout: String,
    pub stderr: String,
}

/// Settings for `Session::exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// A file that receives every output line, appended, stdout and stderr mixed.
    pub log: Option<PathBuf>,
    /// Time after which the command counts as hung; `None` waits for as long as it runs.
    pub timeout: Option<Duration>,
}

/// Quotes `arg` for a POSIX shell, so the shell passes it on unchanged.
///
/// Words made only of letters, digits and `-_./,:+@%` stay bare; anything
/// else goes inside single quotes, with each `'` written as `'\''`. A NUL
/// byte cannot be passed through a shell at all; `exec` rejects it.
pub fn shell_quote(arg: &str) -> String {
    let safe = |byte: u8| byte.is_ascii_alphanumeric() || b"-_./,:+@%".contains(&byte);
    if !arg.is_empty() && arg.bytes().all(safe) {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// Joins an argument vector into one shell command line, quoting every argument.
pub fn command_line<S: AsRef<str>>(argv: &[S]) -> String {
    let quoted: Vec<String> = argv.iter().map(|arg| shell_quote(arg.as_ref())).collect();
    quoted.join(" ")
}

impl Session {
    /// Runs `argv` in the guest and passes each output line, without its
    /// newline, to `on_line` as it arrives; returns how the command ended.
    ///
    /// The guest user's login shell runs `exec` with the quoted arguments, so
    /// it must be a POSIX shell and `argv[0]` a program, not a builtin such as
    /// `cd`. Lines keep their order within each stream. Across
    /// stdout and stderr the order holds only for lines written at different
    /// times, because libssh2 queues the two streams apart.
    pub fn exec(
        &self,
        argv: &[&str],
        options: &ExecOptions,
        on_line: impl FnMut(OutputStream, &str),
    ) -> anyhow::Result<ExitStatus> {
        let mut sink = LineSink {
            stdout: Vec::new(),
            stderr: Vec::new(),
            log: options.log.as_deref().map(open_log).transpose()?,
            on_line,
        };
        let result = self.run(argv, options.timeout, &mut |stream, data| {
            sink.push(stream, data)
        });
        sink.finish()?;
        result
    }

    /// Runs `argv` in the guest and returns its exit status and whole output.
    pub fn exec_capture(&self, argv: &[&str]) -> anyhow::Result<Output> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let status = self.run(argv, None, &mut |stream, data| {
            match stream {
                OutputStream::Stdout => stdout.extend_from_slice(data),
                OutputStream::Stderr => stderr.extend_from_slice(data),
            }
            Ok(())
        })?;
        Ok(Output {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// Runs `argv` and fails unless it exits with code 0; returns its output.
    pub(crate) fn exec_checked(&self, argv: &[&str]) -> anyhow::Result<Output> {
        let output = self.exec_capture(argv)?;
        if !output.status.success() {
            return Err(Failure::infrastructure(format!(
                "`{}` failed on VM {} with {}: {}",
                command_line(argv),
                self.target.name,
                output.status,
                output.stderr.trim()
            )));
        }
        Ok(output)
    }

    /// Starts the command, pumps its output into `on_data` until the channel
    /// closes, and reads the exit status.
    fn run(
        &self,
        argv: &[&str],
        timeout: Option<Duration>,
        on_data: &mut dyn FnMut(OutputStream, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<ExitStatus> {
        if argv.iter().any(|arg| arg.contains('\0')) {
            return Err(Failure::usage(format!(
                "an argument of `{}` contains a NUL byte, which no shell can pass on",
                command_line(argv).replace('\0', "\\0")
            )));
        }
        // `exec` makes the login shell replace itself with the command, so
        // a signal that kills the command reaches sshd as that signal.
        let line = format!("exec {}", command_line(argv));
        tracing::debug!(vm = %self.target.name, command = %line, "running over ssh");
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let context = || format!("running `{line}` on VM {}", self.target.name);

        let mut channel = self.ssh.channel_session().with_context(context)?;
        channel.exec(&line).with_context(context)?;
        let mut channel = NonBlockingChannel::new(&self.ssh, channel);
        self.pump(channel.get(), deadline, &line, on_data)?;
        loop {
            match channel.get_mut().wait_close() {
                Ok(()) => break,
                Err(error) if error.code() == ssh2::ErrorCode::Session(ERROR_EAGAIN) => {
                    self.wait_for_socket(deadline, &line)?
                }
                Err(error) => return Err(error).with_context(context),
            }
        }
        // NOTE: libssh2 reports exit code 0 when the server sent neither an
        // exit status nor a signal; OpenSSH always sends one of them.
        let signal = channel
            .get()
            .exit_signal()
            .with_context(context)?
            .exit_signal;
        match signal {
            Some(signal) => Ok(ExitStatus::Signal(signal)),
            None => Ok(ExitStatus::Code(
                channel.get().exit_status().with_context(context)?,
            )),
        }
    }

    /// Reads both streams until the guest signals end of file.
    fn pump(
        &self,
        channel: &ssh2::Channel,
        deadline: Option<Instant>,
        line: &str,
        on_data: &mut dyn FnMut(OutputStream, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut streams = [
            (OutputStream::Stdout, channel.stream(0)),
            (OutputStream::Stderr, channel.stderr()),
        ];
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            let mut received = false;
            for (kind, stream) in streams.iter_mut() {
                match stream.read(&mut buffer) {
                    Ok(0) => {}
                    Ok(count) => {
                        on_data(*kind, &buffer[..count])?;
                        received = true;
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(error) => {
                        return Err(error).with_context(|| {
                            format!("reading output of `{line}` on VM {}", self.target.name)
                        })
                    }
                }
            }
            if channel.eof() {
                return Ok(());
            }
            if !received {
                self.wait_for_socket(deadline, line)?;
            }
        }
    }

    /// Waits until the socket is ready in the direction libssh2 is blocked
    /// on, or fails once `deadline` has passed.
    fn wait_for_socket(&self, deadline: Option<Instant>, line: &str) -> anyhow::Result<()> {
        let mut wait = MAX_POLL;
        if let Some(deadline) = deadline {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Failure::infrastructure(format!(
                    "`{line}` on VM {} timed out; the command may still be running in the guest",
                    self.target.name
                )));
            }
            wait = wait.min(remaining);
        }
        let events = match self.ssh.block_directions() {
            ssh2::BlockDirections::Outbound => libc::POLLOUT,
            ssh2::BlockDirections::Both => libc::POLLIN | libc::POLLOUT,
            ssh2::BlockDirections::Inbound | ssh2::BlockDirections::None => libc::POLLIN,
        };
        let mut poll_fd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: `poll_fd` is one valid pollfd and the socket stays open
        // for as long as `self` lives.
        let rc = unsafe { libc::poll(&mut poll_fd, 1, wait.as_millis() as libc::c_int) };
        if rc < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(error).context("waiting on the ssh socket");
            }
        }
        Ok(())
    }
}

/// A running command's channel, with the session in non-blocking mode
/// until the channel is dropped.
///
/// The channel is freed while the session is still non-blocking. Freeing it
/// in blocking mode before the command ended (after a timeout or a callback
/// error) would wait until the command ends. NOTE: such a command keeps
/// running in the guest, because the ssh2 crate exposes no way to signal it.
struct NonBlockingChannel<'a> {
    ssh: &'a ssh2::Session,
    channel: Option<ssh2::Channel>,
}

impl<'a> NonBlockingChannel<'a> {
    fn new(ssh: &'a ssh2::Session, channel: ssh2::Channel) -> Self {
        ssh.set_blocking(false);
        NonBlockingChannel {
            ssh,
            channel: Some(channel),
        }
    }

    fn get(&self) -> &ssh2::Channel {
        self.channel.as_ref().expect("the channel lives until drop")
    }

    fn get_mut(&mut self) -> &mut ssh2::Channel {
        self.channel.as_mut().expect("the channel lives until drop")
    }
}

impl Drop for NonBlockingChannel<'_> {
    fn drop(&mut self) {
        drop(self.channel.take());
        self.ssh.set_blocking(true);
    }
}

fn open_log(path: &Path) -> anyhow::Result<LineWriter<File>> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log file {}", path.display()))?;
    Ok(LineWriter::new(file))
}

/// Splits output chunks into lines for `exec`'s callback and log file.
struct LineSink<F> {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    log: Option<LineWriter<File>>,
    on_line: F,
}

impl<F: FnMut(OutputStream, &str)> LineSink<F> {
    fn push(&mut self, stream: OutputStream, data: &[u8]) -> anyhow::Result<()> {
        let mut pending = std::mem::take(self.buffer(stream));
        pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(end) = next_line_end(&pending[start..]) {
            let (line, next) = (&pending[start..start + end], start + end);
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            self.emit(stream, line)?;
            start = next;
        }
        pending.drain(..start);
        *self.buffer(stream) = pending;
        Ok(())
    }

    /// Passes on the last line of each stream when it lacks a newline.
    fn finish(&mut self) -> anyhow::Result<()> {
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let rest = std::mem::take(self.buffer(stream));
            if !rest.is_empty() {
                self.emit(stream, &rest)?;
            }
        }
        Ok(())
    }

    fn buffer(&mut self, stream: OutputStream) -> &mut Vec<u8> {
        match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        }
    }

    fn emit(&mut self, stream: OutputStream, line: &[u8]) -> anyhow::Result<()> {
        let text = String::from_utf8_lossy(line);
        if let Some(log) = self.log.as_mut() {
            writeln!(log, "{text}").context("writing the command log file")?;
        }
        (self.on_line)(stream, &text);
        Ok(())
    }
}

/// Returns the length of the first line in `data` including its newline,
/// or `MAX_LINE_BYTES` when that many bytes have no newline.
fn next_line_end(data: &[u8]) -> Option<usize> {
    match data.iter().position(|&byte| byte == b'\n') {
        Some(index) => Some(index + 1),
        None if data.len() >= MAX_LINE_BYTES => Some(MAX_LINE_BYTES),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const NASTY: &[&str] = &[
        "'; rm -rf / #",
        "$(id)",
        "`id`",
        "a\nb\n",
        "it's",
        "''",
        "\"double\"",
        "back\\slash",
        "*",
        "~",
        "",
        " lead and trail ",
        "FOO=1",
        "tab\there",
        "é ünïcode",
        "-n",
        "!bang",
        "a;b|c&d>e<f",
    ];

    fn local_printf(arg: &str) -> String {
        let script = format!("printf %s {}", shell_quote(arg));
        let output = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        String::from_utf8(output.stdout).unwrap()
    }

    #[test]
    fn shell_quote_round_trips_locally() {
        for arg in NASTY {
            assert_eq!(local_printf(arg), *arg, "quoted as {}", shell_quote(arg));
        }
    }

    #[test]
    fn shell_quote_cases() {
        assert_eq!(shell_quote("abc-1.2/x"), "abc-1.2/x");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(id)"), "'$(id)'");
        assert_eq!(shell_quote("FOO=1"), "'FOO=1'");
        assert_eq!(shell_quote("~"), "'~'");
    }

    #[test]
    fn command_line_quotes_each_argument() {
        let line = command_line(&["printf", "%s\n", "a b", "'"]);
        assert_eq!(
            line,
            r"printf '%s
' 'a b' ''\'''"
        );
    }

    #[test]
    fn exit_status_success_only_for_zero() {
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Code(3).success());
        assert!(!ExitStatus::Signal("KILL".into()).success());
        assert_eq!(ExitStatus::Signal("KILL".into()).to_string(), "signal KILL");
    }

    fn collect(chunks: &[(OutputStream, &[u8])]) -> Vec<(OutputStream, String)> {
        let mut lines = Vec::new();
        let mut sink = LineSink {
            stdout: Vec::new(),
            stderr: Vec::new(),
            log: None,
            on_line: |stream, line: &str| lines.push((stream, line.to_string())),
        };
        for (stream, data) in chunks {
            sink.push(*stream, data).unwrap();
        }
        sink.finish().unwrap();
        lines
    }

    #[test]
    fn line_sink_joins_split_chunks() {
        use OutputStream::*;
        let lines = collect(&[
            (Stdout, b"one\ntw"),
            (Stderr, b"err\n"),
            (Stdout, b"o\nthree"),
        ]);
        let expected = vec![
            (Stdout, "one".to_string()),
            (Stderr, "err".to_string()),
            (Stdout, "two".to_string()),
            (Stdout, "three".to_string()),
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn line_sink_splits_long_lines() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let lines = collect(&[(OutputStream::Stdout, &long)]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].1.len(), MAX_LINE_BYTES);
        assert_eq!(lines[1].1.len(), 10);
    }
}
