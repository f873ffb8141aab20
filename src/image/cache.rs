//! Layout of the image cache, its lock, and digest records.
//!
//! Each image gets one folder under `CACHE/images/`, named by the expected
//! digest of the download (`sha256-HEX`, `sha512-HEX`), or by the SHA-256 of
//! the first URL (`url-HEX`) when the profile has no checksum:
//!
//! ```text
//! images/sha512-HEX/
//!   .lock                  flock(2) taken while anything in the folder changes
//!   download/NAME.part     the download in progress, resumable
//!   download/NAME          the verified download, mode 0444
//!   download/NAME.sha256   SHA-256 of the download, written after verification
//!   disk.FORMAT            the unpacked disk image (archives only), mode 0444
//!   disk.FORMAT.sha256     SHA-256 of that disk image, for re-verification
//!   unpack.tmp/            scratch folder while unpacking
//! ```
//!
//! Files become visible only by rename from a temporary name, so a crash
//! leaves no half-written file under a final name.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::checksum::hash_file;
use crate::profile::DiskFormat;
use crate::ui;

/// One image's folder in the cache.
#[derive(Clone, Debug)]
pub(crate) struct ImageDir {
    pub root: PathBuf,
}

impl ImageDir {
    /// Creates `CACHE/images/KEY/download/` if needed.
    pub fn create(cache_dir: &Path, key: &str) -> anyhow::Result<ImageDir> {
        let root = cache_dir.join("images").join(key);
        let downloads = root.join("download");
        std::fs::create_dir_all(&downloads)
            .with_context(|| format!("creating cache folder {}", downloads.display()))?;
        Ok(ImageDir { root })
    }

    pub fn download(&self, name: &str) -> PathBuf {
        self.root.join("download").join(name)
    }

    pub fn part(&self, name: &str) -> PathBuf {
        self.root.join("download").join(format!("{name}.part"))
    }

    pub fn disk(&self, format: DiskFormat) -> PathBuf {
        self.root.join(format!("disk.{}", format.qemu_img_name()))
    }

    pub fn staging(&self) -> PathBuf {
        self.root.join("unpack.tmp")
    }
}

/// Returns the path of the SHA-256 record that belongs to `path`.
pub(crate) fn record_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    path.with_file_name(name)
}

/// Reads the SHA-256 hex recorded for `path`, or `None` if there is no valid record.
pub(crate) fn read_record(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(record_path(path)).ok()?;
    let hex = text.trim().strip_prefix("sha256:")?;
    let valid = hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit());
    valid.then(|| hex.to_string())
}

/// Records the SHA-256 of `path` next to it, through a temporary file.
pub(crate) fn write_record(path: &Path, sha256: &str) -> anyhow::Result<()> {
    let record = record_path(path);
    let temporary = record.with_extension("sha256.tmp");
    std::fs::write(&temporary, format!("sha256:{sha256}\n"))
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &record)
        .with_context(|| format!("renaming {} to {}", temporary.display(), record.display()))
}

/// Makes `temporary` read-only and renames it to `target`.
pub(crate) fn publish(temporary: &Path, target: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(temporary, std::fs::Permissions::from_mode(0o444))
        .with_context(|| format!("making {} read-only", temporary.display()))?;
    std::fs::rename(temporary, target)
        .with_context(|| format!("renaming {} to {}", temporary.display(), target.display()))
}

/// Deletes a file and its SHA-256 record, if they exist.
pub(crate) fn remove_with_record(path: &Path) -> anyhow::Result<()> {
    remove_file_if_present(path)?;
    remove_file_if_present(&record_path(path))
}

pub(crate) fn remove_file_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("deleting {}", path.display())),
    }
}

/// Re-hashes a cached file and compares it with its SHA-256 record.
///
/// Returns the SHA-256 when they match. Otherwise deletes the file and its
/// record, so the caller makes it again, and returns `None`.
pub(crate) fn reuse_recorded(path: &Path) -> anyhow::Result<Option<String>> {
    if !path.exists() {
        remove_file_if_present(&record_path(path))?;
        return Ok(None);
    }
    let recorded = read_record(path);
    let actual = hash_file(path, None)?.sha256;
    if recorded.as_deref() == Some(actual.as_str()) {
        return Ok(Some(actual));
    }
    let expected = recorded.map_or("no record".to_string(), |hex| format!("sha256:{hex}"));
    ui::warn(format!(
        "cached {} changed (expected {expected}, got sha256:{actual}); making it again",
        path.display()
    ));
    remove_with_record(path)?;
    Ok(None)
}

/// An exclusive flock(2) on an image folder's `.lock`, released on drop.
///
/// flock locks belong to the open file description, so two tasks of one
/// process exclude each other as well as two processes do.
pub(crate) struct CacheLock {
    _file: File,
}

/// Locks `dir`, waiting for another kbuild run that holds the lock.
pub(crate) fn lock_blocking(dir: &ImageDir) -> anyhow::Result<CacheLock> {
    let path = dir.root.join(".lock");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    if !flock(&file, libc::LOCK_EX | libc::LOCK_NB)? {
        ui::status(
            "Waiting",
            format!("for another kbuild run that holds {}", path.display()),
        );
        flock(&file, libc::LOCK_EX)?;
    }
    // The pid is only a hint for a person looking at a stuck lock.
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    Ok(CacheLock { _file: file })
}

/// Locks `dir` from async code without blocking the runtime's worker thread.
pub(crate) async fn lock(dir: &ImageDir) -> anyhow::Result<CacheLock> {
    let dir = dir.clone();
    tokio::task::spawn_blocking(move || lock_blocking(&dir))
        .await
        .context("waiting for the cache lock")?
}

/// Calls flock(2). Returns false when `LOCK_NB` was given and another holder exists.
fn flock(file: &File, operation: i32) -> anyhow::Result<bool> {
    loop {
        // SAFETY: the descriptor belongs to `file`, which outlives the call.
        let status = unsafe { libc::flock(file.as_raw_fd(), operation) };
        if status == 0 {
            return Ok(true);
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if operation & libc::LOCK_NB != 0 => return Ok(false),
            _ => return Err(error).context("locking the image cache with flock"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.qcow2");
        write_record(&path, &"a".repeat(64)).unwrap();
        assert_eq!(read_record(&path), Some("a".repeat(64)));
        assert!(dir.path().join("disk.qcow2.sha256").is_file());
    }

    #[test]
    fn record_invalid_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.qcow2");
        std::fs::write(record_path(&path), "sha256:xyz\n").unwrap();
        assert_eq!(read_record(&path), None);
    }

    #[test]
    fn publish_makes_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let temporary = dir.path().join("a.part");
        let target = dir.path().join("a");
        std::fs::write(&temporary, b"x").unwrap();
        publish(&temporary, &target).unwrap();
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
        assert!(!temporary.exists());
    }

    #[test]
    fn reuse_recorded_detects_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, b"abc").unwrap();
        write_record(&path, &hash_file(&path, None).unwrap().sha256).unwrap();
        assert!(reuse_recorded(&path).unwrap().is_some());
        std::fs::write(&path, b"abd").unwrap();
        assert_eq!(reuse_recorded(&path).unwrap(), None);
        assert!(!path.exists());
        assert!(!record_path(&path).exists());
    }

    #[test]
    fn lock_excludes_second_holder() {
        let cache = tempfile::tempdir().unwrap();
        let dir = ImageDir::create(cache.path(), "key").unwrap();
        let first = lock_blocking(&dir).unwrap();
        let file = File::open(dir.root.join(".lock")).unwrap();
        assert!(!flock(&file, libc::LOCK_EX | libc::LOCK_NB).unwrap());
        drop(first);
        assert!(flock(&file, libc::LOCK_EX | libc::LOCK_NB).unwrap());
    }
}
