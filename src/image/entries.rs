//! Safe extraction of archive entries: path checks and sparse copies.

use std::fs::File;
use std::io::{BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, Context};

use crate::exit::Failure;

/// Read size while copying an entry, and the granularity of hole detection.
const COPY_BUFFER: usize = 1 << 20;

/// Failure of an unpack, split by whether a new download can help.
#[derive(Debug)]
pub(crate) enum UnpackError {
    /// The archive cannot be read to its end: truncated, or a CRC or format
    /// error. Downloading it again may help.
    Damaged(anyhow::Error),
    /// Anything else: an unsafe entry, no disk image, a local write error.
    Other(anyhow::Error),
}

pub(crate) fn damaged(archive: &str) -> impl Fn(std::io::Error) -> UnpackError + '_ {
    move |error| UnpackError::Damaged(anyhow!(error).context(format!("reading archive {archive}")))
}

pub(crate) fn other(error: anyhow::Error) -> UnpackError {
    UnpackError::Other(error)
}

/// Checks an entry's name and returns where it goes under `staging`.
///
/// Returns `None` for a name that is only `.` components. Absolute names
/// and names with `..` are rejected.
pub(crate) fn destination(
    staging: &Path,
    archive: &str,
    entry: &str,
) -> Result<Option<PathBuf>, UnpackError> {
    let mut relative = PathBuf::new();
    for component in Path::new(entry).components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(escape_error(
                    archive,
                    entry,
                    "its path leaves the unpack folder",
                ));
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Ok(None);
    }
    Ok(Some(staging.join(relative)))
}

/// Rejects a link entry whose target lies outside the unpack folder.
///
/// `entry` is the link's own path in the archive. Symbolic link targets are
/// relative to the link's folder, hard link targets (`hard`) to the archive's
/// root. kbuild never creates the links, so a target that stays inside is
/// harmless and the entry is skipped.
pub(crate) fn check_link(
    archive: &str,
    entry: &str,
    target: &Path,
    hard: bool,
) -> Result<(), UnpackError> {
    let mut depth: Vec<&std::ffi::OsStr> = Vec::new();
    if !hard {
        let parent = Path::new(entry).parent().unwrap_or(Path::new(""));
        for component in parent.components() {
            if let Component::Normal(part) = component {
                depth.push(part);
            }
        }
    }
    for component in target.components() {
        match component {
            Component::Normal(part) => depth.push(part),
            Component::CurDir => {}
            Component::ParentDir if depth.pop().is_some() => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                let reason = format!(
                    "it links to {}, outside the unpack folder",
                    target.display()
                );
                return Err(escape_error(archive, entry, &reason));
            }
        }
    }
    tracing::debug!("skipping link {entry} -> {} in {archive}", target.display());
    Ok(())
}

fn escape_error(archive: &str, entry: &str, reason: &str) -> UnpackError {
    UnpackError::Other(Failure::infrastructure(format!(
        "archive {archive} contains the unsafe entry {entry:?}: {reason}; \
         kbuild rejects such archives, so use an image from a source you trust"
    )))
}

/// Copies an entry's data to `path` and returns the bytes copied.
///
/// Read errors mean a damaged archive, and write errors are local ones. Blocks of
/// zeros become holes, so a mostly empty raw disk stays small on disk.
pub(crate) fn copy_entry(
    archive: &str,
    reader: &mut dyn Read,
    path: &Path,
) -> Result<u64, UnpackError> {
    let write_error = |error: std::io::Error| {
        UnpackError::Other(anyhow!(error).context(format!("writing {}", path.display())))
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))
            .map_err(other)?;
    }
    let file = File::create(path).map_err(write_error)?;
    let mut writer = BufWriter::with_capacity(COPY_BUFFER, file);
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut copied = 0u64;
    loop {
        let count = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(damaged(archive)(error)),
        };
        let chunk = &buffer[..count];
        if chunk.iter().all(|&byte| byte == 0) {
            writer
                .seek(SeekFrom::Current(count as i64))
                .map_err(write_error)?;
        } else {
            writer.write_all(chunk).map_err(write_error)?;
        }
        copied += count as u64;
    }
    let file = writer
        .into_inner()
        .map_err(|error| write_error(error.into_error()))?;
    // A trailing hole needs the length set explicitly.
    file.set_len(copied).map_err(write_error)?;
    Ok(copied)
}

/// Rejects an entry whose data ended before the size its header gives.
pub(crate) fn check_size(
    archive: &str,
    entry: &str,
    copied: u64,
    expected: u64,
) -> Result<(), UnpackError> {
    if copied == expected {
        return Ok(());
    }
    Err(UnpackError::Damaged(anyhow!(
        "archive {archive} ends inside entry {entry:?} after {copied} of {expected} bytes"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_unsafe(result: Result<(), UnpackError>) -> bool {
        matches!(result, Err(UnpackError::Other(_)))
    }

    #[test]
    fn destination_plain_and_dot() {
        let staging = Path::new("/s");
        let path = destination(staging, "a.zip", "./dir/disk.img").unwrap();
        assert_eq!(path, Some(PathBuf::from("/s/dir/disk.img")));
        assert!(destination(staging, "a.zip", "./").unwrap().is_none());
    }

    #[test]
    fn destination_rejects_escapes() {
        for entry in ["../evil", "dir/../../evil", "/etc/passwd"] {
            let result = destination(Path::new("/s"), "a.tar", entry);
            assert!(matches!(result, Err(UnpackError::Other(_))), "{entry}");
        }
    }

    #[test]
    fn destination_error_names_entry() {
        let error = destination(Path::new("/s"), "a.tar", "../evil").unwrap_err();
        let UnpackError::Other(error) = error else {
            panic!("an escaping entry was reported as a damaged archive");
        };
        let message = error.to_string();
        assert!(message.contains("\"../evil\""), "{message}");
        assert!(message.contains("a.tar"), "{message}");
    }

    #[test]
    fn link_inside_allowed() {
        assert!(check_link("a", "dir/link", Path::new("../other"), false).is_ok());
        assert!(check_link("a", "link", Path::new("dir/file"), true).is_ok());
    }

    #[test]
    fn link_outside_rejected() {
        assert!(is_unsafe(check_link(
            "a",
            "dir/link",
            Path::new("../../x"),
            false
        )));
        assert!(is_unsafe(check_link(
            "a",
            "link",
            Path::new("/etc/passwd"),
            false
        )));
        assert!(is_unsafe(check_link(
            "a",
            "dir/link",
            Path::new("../x"),
            true
        )));
    }

    #[test]
    fn copy_keeps_content_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let mut data = vec![0u8; 3 * COPY_BUFFER];
        data[5] = 7;
        let copied = copy_entry("a", &mut data.as_slice(), &path).unwrap();
        assert_eq!(copied, data.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn copy_read_error_is_damaged() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::new(ErrorKind::UnexpectedEof, "truncated"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let result = copy_entry("a", &mut Failing, &dir.path().join("x"));
        assert!(matches!(result, Err(UnpackError::Damaged(_))));
    }
}
