//! Checks the free disk space where kbuild writes: the cache, and a
//! project's build and state folders.

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::Check;
use crate::project::Project;
use crate::ui;

const GIB: u64 = 1 << 30;

/// A folder kbuild fills, with the free space below which doctor warns.
struct Need {
    name: &'static str,
    min_free: u64,
    reason: &'static str,
}

const CACHE: Need = Need {
    name: "disk-cache",
    min_free: 5 * GIB,
    reason: "the cache contains downloaded VM images, each up to a few GiB once unpacked \
             or converted",
};

const BUILD: Need = Need {
    name: "disk-build",
    min_free: 20 * GIB,
    reason: "a kernel build folder with a distribution config needs about 15-20 GiB \
             (tinyconfig far less)",
};

const STATE: Need = Need {
    name: "disk-state",
    min_free: 10 * GIB,
    reason: "the state folder contains the unpacked kernel source and the VM's disk overlay, \
             which grows up to the profile's disk_gib (20 GiB by default)",
};

/// Checks the cache folder and, with a project, its build and state folders.
pub fn check_disks(project: Option<&Project>) -> Vec<Check> {
    let mut checks = vec![check_free(&CACHE, &crate::paths::cache_dir())];
    if let Some(project) = project {
        checks.push(check_free(&BUILD, &project.build.dir));
        checks.push(check_free(&STATE, &project.state_dir()));
    }
    checks
}

/// Measures the free space for `folder` on the nearest folder that exists,
/// since kbuild creates the folder itself on first use.
fn check_free(need: &Need, folder: &Path) -> Check {
    let Some(existing) = nearest_existing(folder) else {
        let detail = format!("no folder of {} exists to measure", folder.display());
        return Check::warn(need.name, false, detail);
    };
    let free = match free_bytes(&existing) {
        Ok(free) => free,
        Err(error) => {
            let detail = format!(
                "cannot read the free space of {}: {error}",
                existing.display()
            );
            return Check::warn(need.name, false, detail);
        }
    };
    let mut detail = format!("{} free for {}", ui::bytes(free), folder.display());
    if existing != folder {
        detail += &format!(" (measured on {})", existing.display());
    }
    if free >= need.min_free {
        Check::ok(need.name, false, detail)
    } else {
        detail += &format!(", below {}: {}", ui::bytes(need.min_free), need.reason);
        Check::warn(need.name, false, detail)
    }
}

/// Returns `path` or its nearest ancestor that exists; a relative path
/// ends at the current folder.
fn nearest_existing(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    absolute
        .ancestors()
        .find(|candidate| candidate.exists())
        .map(Path::to_path_buf)
}

/// Returns the bytes an unprivileged user may still write on the file
/// system that contains `path`, from statvfs(3).
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let mut stat = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string and `stat` has room for
    // the struct statvfs writes.
    if unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between targets, so cast rather than convert.
    #[allow(clippy::unnecessary_cast)]
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    Ok(free)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn nearest_existing_walks_up() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b/c");
        assert_eq!(nearest_existing(&missing), Some(dir.path().to_path_buf()));
        assert_eq!(nearest_existing(dir.path()), Some(dir.path().to_path_buf()));
    }

    #[test]
    fn free_bytes_of_temp_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
    }

    #[test]
    fn free_bytes_of_missing_path_fails() {
        let error = free_bytes(Path::new("/nonexistent/kbuild-doctor")).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn low_space_warns_with_reason() {
        let dir = tempfile::tempdir().unwrap();
        let huge = Need {
            name: "disk-test",
            min_free: u64::MAX,
            reason: "test reason",
        };
        let check = check_free(&huge, &dir.path().join("not-yet"));
        assert_eq!(check.status, Status::Warn);
        assert!(check.detail.contains("measured on"), "{}", check.detail);
        assert!(check.detail.ends_with("test reason"), "{}", check.detail);
    }

    #[test]
    fn enough_space_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let tiny = Need {
            name: "disk-test",
            min_free: 0,
            reason: "",
        };
        let check = check_free(&tiny, dir.path());
        assert_eq!(check.status, Status::Ok);
        assert!(!check.detail.contains("measured on"), "{}", check.detail);
    }
}
