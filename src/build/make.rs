//! Runs make and the kbuild scripts: command lines, output to the log file,
//! and errors with hints on failure.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use tokio::process::Command;

use super::hints;
use crate::exit::Failure;

/// How to call make on one tree and build folder.
#[derive(Debug, Clone)]
pub struct Make {
    pub tree: PathBuf,
    pub build_dir: PathBuf,
    /// The `ARCH=` value.
    pub arch: &'static str,
    /// The `CC=` value, such as `ccache gcc`, or `None` for the kernel's default.
    pub cc: Option<String>,
}

impl Make {
    /// Builds `make -C <tree> O=<build dir> ARCH=<arch> [CC=..] <args>`.
    ///
    /// The same CC goes to config and build steps: kconfig records the
    /// compiler's version, and kbuild reruns syncconfig when it changes.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut command = Command::new("make");
        command
            .arg("-C")
            .arg(&self.tree)
            .arg(prefixed("O=", &self.build_dir))
            .arg(format!("ARCH={}", self.arch));
        if let Some(cc) = &self.cc {
            command.arg(format!("CC={cc}"));
        }
        command.args(args);
        command
    }
}

fn prefixed(prefix: &str, path: &Path) -> OsString {
    let mut argument = OsString::from(prefix);
    argument.push(path.as_os_str());
    argument
}

/// Runs a command in `cwd` with its output appended to `log`. On a non-zero
/// exit returns `Failure::build` with the first error lines and hints.
pub async fn run_logged(
    command: Command,
    cwd: &Path,
    log: &Path,
    what: &str,
) -> anyhow::Result<()> {
    run(command, cwd, log, what, |_| {}).await
}

/// Runs a command in `cwd`, appending stdout and stderr, in the order they
/// were written, to `log` and passing each output line to `on_line` on a
/// blocking thread. Fails with `Failure::build` on a non-zero exit.
pub async fn run<F>(
    mut command: Command,
    cwd: &Path,
    log: &Path,
    what: &str,
    on_line: F,
) -> anyhow::Result<()>
where
    F: FnMut(&[u8]) + Send + 'static,
{
    let command_line = describe(&command);
    let (log_file, start_offset) = open_log(log, &command_line)?;
    tracing::debug!(cwd = %cwd.display(), "running {command_line}");

    let (reader, writer) = pipe().context("creating a pipe for make output")?;
    let writer_copy = writer
        .try_clone()
        .context("duplicating the make output pipe")?;
    // LC_ALL=C keeps compiler messages in English with ASCII quotes, which
    // the hints match on. KCONFIG_CONFIG and CONFIG_ would move or rename
    // the config that kbuild reads.
    command
        .current_dir(cwd)
        .env("LC_ALL", "C")
        .env_remove("KCONFIG_CONFIG")
        .env_remove("CONFIG_")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_copy)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|error| spawn_error(&command, error))?;
    // kill_on_drop stops make alone; when this future is dropped (a step
    // timeout), the guard also stops the sub-makes and compilers.
    let tree = crate::process_tree::TreeGuard::new(child.id());
    // The command holds the pipe's write ends. Dropping them lets the reader see
    // end of file when the child exits.
    drop(command);

    let copier = tokio::task::spawn_blocking(move || copy_lines(reader, log_file, on_line));
    let status = child
        .wait()
        .await
        .with_context(|| format!("waiting for {command_line}"))?;
    tree.disarm();
    copier
        .await
        .context("joining the make output reader")?
        .with_context(|| format!("writing build log {}", log.display()))?;
    if status.success() {
        return Ok(());
    }
    let output = read_from(log, start_offset)?;
    Err(Failure::build(hints::failure_message(
        what,
        &status.to_string(),
        &output,
        log,
    )))
}

/// Opens `log` for appending, writes the command line to it, and returns
/// the file and the offset where this command's output starts.
fn open_log(log: &Path, command_line: &str) -> anyhow::Result<(File, u64)> {
    let mut file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening build log {}", log.display()))?;
    writeln!(file, "$ {command_line}").with_context(|| format!("writing {}", log.display()))?;
    let start_offset = file
        .metadata()
        .with_context(|| format!("reading size of {}", log.display()))?
        .len();
    Ok((file, start_offset))
}

fn describe(command: &Command) -> String {
    let std = command.as_std();
    let mut words = vec![std.get_program().to_string_lossy().into_owned()];
    words.extend(std.get_args().map(|arg| {
        let arg = arg.to_string_lossy();
        if arg.contains(' ') || arg.is_empty() {
            format!("{arg:?}")
        } else {
            arg.into_owned()
        }
    }));
    words.join(" ")
}

fn spawn_error(command: &Command, error: std::io::Error) -> anyhow::Error {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    if error.kind() == std::io::ErrorKind::NotFound {
        return Failure::build(format!(
            "{program} not found on PATH; install it with `apt-get install {}`",
            package_for(&program)
        ));
    }
    anyhow::Error::new(error).context(format!("starting {program}"))
}

/// The Debian package that provides a build tool.
pub fn package_for(program: &str) -> &str {
    match program {
        "make" => "make",
        "gcc" | "cc" => "gcc",
        "bash" => "bash",
        "ccache" => "ccache",
        other => other,
    }
}

/// Creates a pipe whose ends are closed on exec, so only the child's copies
/// on stdout and stderr stay open in it.
fn pipe() -> std::io::Result<(File, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((File::from(reader), writer))
}

/// Copies `reader` into `log` unchanged, one write per read so the log
/// stays current, and passes each line, without its newline, to `on_line`.
fn copy_lines<F: FnMut(&[u8])>(
    mut reader: File,
    mut log: File,
    mut on_line: F,
) -> std::io::Result<()> {
    let mut buffer = vec![0; 64 * 1024];
    let mut partial_line = Vec::new();
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        let chunk = &buffer[..read];
        log.write_all(chunk)?;
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            if partial_line.is_empty() {
                on_line(&rest[..end]);
            } else {
                partial_line.extend_from_slice(&rest[..end]);
                on_line(&partial_line);
                partial_line.clear();
            }
            rest = &rest[end + 1..];
        }
        partial_line.extend_from_slice(rest);
    }
    if !partial_line.is_empty() {
        on_line(&partial_line);
    }
    Ok(())
}

/// Reads the log from `offset` on, as text.
pub fn read_from(log: &Path, offset: u64) -> anyhow::Result<String> {
    let mut file = File::open(log).with_context(|| format!("opening {}", log.display()))?;
    file.seek(SeekFrom::Start(offset))
        .with_context(|| format!("seeking in {}", log.display()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", log.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Finds `program` in the folders of `PATH`.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_in(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("build.log")
    }

    #[tokio::test]
    async fn run_logs_both_streams_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "echo one; echo two >&2; echo three"]);
        run_logged(command, dir.path(), &log_in(&dir), "test")
            .await
            .unwrap();
        let log = std::fs::read_to_string(log_in(&dir)).unwrap();
        assert!(log.ends_with("one\ntwo\nthree\n"), "{log}");
    }

    #[tokio::test]
    async fn run_passes_lines_without_newline() {
        let dir = tempfile::tempdir().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = lines.clone();
        let mut command = Command::new("printf");
        command.arg("a\nb");
        run(command, dir.path(), &log_in(&dir), "test", move |line| {
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(line).into_owned());
        })
        .await
        .unwrap();
        assert_eq!(*lines.lock().unwrap(), ["a", "b"]);
    }

    #[tokio::test]
    async fn run_joins_line_split_across_writes() {
        let dir = tempfile::tempdir().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = lines.clone();
        let mut command = Command::new("sh");
        command.args(["-c", "printf 'first '; sleep 0.2; printf 'half\\nnext\\n'"]);
        run(command, dir.path(), &log_in(&dir), "test", move |line| {
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(line).into_owned());
        })
        .await
        .unwrap();
        assert_eq!(*lines.lock().unwrap(), ["first half", "next"]);
    }

    #[tokio::test]
    async fn run_failure_has_errors_of_this_step_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(log_in(&dir), "old.c:1: error: earlier step\n").unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "echo 'new.c:2: error: broken' >&2; exit 2"]);
        let error = run_logged(command, dir.path(), &log_in(&dir), "make olddefconfig")
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("make olddefconfig failed"), "{message}");
        assert!(message.contains("new.c:2: error: broken"), "{message}");
        assert!(!message.contains("earlier step"), "{message}");
    }

    #[tokio::test]
    async fn run_missing_program_names_package() {
        let dir = tempfile::tempdir().unwrap();
        let command = Command::new("kbuild-no-such-program");
        let error = run_logged(command, dir.path(), &log_in(&dir), "test")
            .await
            .unwrap_err();
        assert!(error.to_string().contains("not found on PATH"), "{error}");
    }

    #[test]
    fn make_command_has_tree_dir_and_arch() {
        let make = Make {
            tree: "/src/linux".into(),
            build_dir: "/b".into(),
            arch: "x86_64",
            cc: Some("ccache gcc".into()),
        };
        let line = describe(&make.command(&["-j2"]));
        assert_eq!(
            line,
            "make -C /src/linux O=/b ARCH=x86_64 \"CC=ccache gcc\" -j2"
        );
    }

    #[test]
    fn find_on_path_finds_sh() {
        assert!(find_on_path("sh").is_some());
    }
}
