//! Checks made before the first step of `kbuild run`: the report paths can
//! be written, and no other run uses the project.

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::super::{CommandError, Phase};
use crate::cli::RunArgs;
use crate::exit::{ExitCode, Failure};
use crate::project::Project;

/// An exclusive lock on the project's run records, released on drop.
pub struct RunLock {
    _file: std::fs::File,
}

/// Takes the project's run lock, or fails when another `kbuild run` holds it.
pub fn lock(project: &Project) -> Result<RunLock, CommandError> {
    let dir = project.state_dir().join("run");
    std::fs::create_dir_all(&dir)
        .map_err(|error| Failure::infrastructure(format!("creating {}: {error}", dir.display())))
        .phase(ExitCode::Infrastructure)?;
    let path = dir.join("lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| {
            Failure::infrastructure(format!("opening lock file {}: {error}", path.display()))
        })
        .phase(ExitCode::Infrastructure)?;
    // SAFETY: flock(2) on a file descriptor this function owns.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        return Err(Failure::usage(format!(
            "another `kbuild run` is using project {} (lock {}); wait for it to end",
            project.path.display(),
            path.display()
        )))
        .phase(ExitCode::Usage);
    }
    Ok(RunLock { _file: file })
}

/// Rejects report paths that would overwrite the project file or each
/// other, or that cannot be created, before any step runs. Creates their
/// folders and removes reports of an earlier run, so that an interrupted
/// run leaves no stale "passed" report behind.
pub fn prepare_reports(project: &Project, args: &RunArgs) -> Result<(), CommandError> {
    let paths: Vec<(&str, PathBuf)> = [("--report", &args.report), ("--junit", &args.junit)]
        .into_iter()
        .filter_map(|(flag, path)| Some((flag, absolute(path.as_ref()?))))
        .collect();
    if let [(_, first), (_, second)] = paths.as_slice() {
        if first == second {
            return usage(format!(
                "--report and --junit name the same file {}; give each its own file",
                first.display()
            ));
        }
    }
    for (flag, path) in &paths {
        check_report_path(project, flag, path)?;
    }
    for (_, path) in &paths {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn check_report_path(project: &Project, flag: &str, path: &Path) -> Result<(), CommandError> {
    if *path == absolute(&project.path) {
        return usage(format!(
            "{flag} {} is the project file; write the report to another file",
            path.display()
        ));
    }
    if path.is_dir() {
        return usage(format!(
            "{flag} {} is a folder; give a file name such as {}",
            path.display(),
            path.join("kbuild-report").display()
        ));
    }
    if let Some(dir) = path.parent() {
        if let Err(error) = std::fs::create_dir_all(dir) {
            return usage(format!(
                "{flag} {}: cannot create folder {}: {error}; choose a writable place",
                path.display(),
                dir.display()
            ));
        }
    }
    Ok(())
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn usage<T>(message: String) -> Result<T, CommandError> {
    Err(Failure::usage(message)).phase(ExitCode::Usage)
}
