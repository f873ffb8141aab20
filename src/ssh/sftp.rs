//! File transfer over SFTP: streamed in fixed-size chunks, written under a
//! temporary name and renamed into place, file mode kept.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ssh2::{FileStat, OpenFlags, OpenType};

use super::Session;
use crate::exit::Failure;

/// Bytes moved per read and write; also the maximum a transfer keeps in memory.
const CHUNK_BYTES: usize = 256 * 1024;

/// Suffix of the temporary name a file has while it is being written.
const PARTIAL_SUFFIX: &str = ".kbuild-partial";

/// SFTP status code for a request the server does not implement
/// (`LIBSSH2_FX_OP_UNSUPPORTED`).
const FX_OP_UNSUPPORTED: i32 = 8;

impl Session {
    /// Copies the local file `local` to `remote` in the guest and returns the
    /// byte count; `progress` receives the bytes sent so far after each chunk.
    ///
    /// The data goes to a temporary file beside `remote`, which takes the
    /// local file's mode and is then renamed over `remote`.
    pub fn upload(
        &self,
        local: &Path,
        remote: &str,
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        let vm = &self.target.name;
        let context = || format!("uploading {} to {remote} on VM {vm}", local.display());
        let mut source =
            File::open(local).with_context(|| format!("opening {}", local.display()))?;
        let metadata = source
            .metadata()
            .with_context(|| format!("reading metadata of {}", local.display()))?;
        let mode = metadata.permissions().mode() & 0o7777;
        let partial = partial_path(remote)?;
        let sftp = self.ssh.sftp().with_context(context)?;

        let result = (|| -> anyhow::Result<u64> {
            let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
            let mut file = sftp.open_mode(&partial, flags, 0o600, OpenType::File)?;
            let total = copy_chunks(&mut source, &mut file, &mut progress)?;
            match file.fsync() {
                Err(error) if error.code() != ssh2::ErrorCode::SFTP(FX_OP_UNSUPPORTED) => {
                    return Err(error.into())
                }
                _ => {}
            }
            file.setstat(mode_only(mode))?;
            drop(file);
            self.rename_in_guest(&sftp, &partial, remote)?;
            Ok(total)
        })();
        if result.is_err() {
            let _ = sftp.unlink(&partial);
        }
        result.with_context(context)
    }

    /// Copies `remote` from the guest to the local file `local` and returns
    /// the byte count; `progress` receives the bytes received so far after
    /// each chunk.
    ///
    /// The data goes to a temporary file beside `local`, which takes the
    /// remote file's mode and is then renamed over `local`.
    pub fn download(
        &self,
        remote: &str,
        local: &Path,
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        let vm = &self.target.name;
        let context = || format!("downloading {remote} from VM {vm} to {}", local.display());
        let sftp = self.ssh.sftp().with_context(context)?;
        let mut source = sftp.open(Path::new(remote)).with_context(context)?;
        let stat = source.stat().with_context(context)?;
        if !stat.is_file() {
            return Err(Failure::usage(format!(
                "cannot download {remote} from VM {vm}: it is not a regular file"
            )));
        }
        let mode = stat.perm.unwrap_or(0o644) & 0o7777;

        let (dir, name) = split_local(local)?;
        let mut partial = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(PARTIAL_SUFFIX)
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        let total =
            copy_chunks(&mut source, partial.as_file_mut(), &mut progress).with_context(context)?;
        partial
            .as_file()
            .set_permissions(fs::Permissions::from_mode(mode))
            .and_then(|()| partial.as_file().sync_all())
            .with_context(|| format!("finishing a temporary file in {}", dir.display()))?;
        partial
            .persist(local)
            .with_context(|| format!("renaming a temporary file to {}", local.display()))?;
        Ok(total)
    }

    /// Renames `from` to `to` in the guest, replacing `to` if it exists.
    fn rename_in_guest(&self, sftp: &ssh2::Sftp, from: &Path, to: &str) -> anyhow::Result<()> {
        match sftp.rename(from, Path::new(to), None) {
            Ok(()) => Ok(()),
            Err(error) => {
                // OpenSSH's sftp-server speaks SFTP version 3, whose rename
                // fails when the target exists, and the ssh2 crate exposes no
                // posix-rename@openssh.com; mv(1) replaces the file atomically.
                tracing::debug!(%error, to, "sftp rename failed, renaming with mv");
                let from = from.to_str().context("temporary path is not UTF-8")?;
                self.exec_checked(&["mv", "-f", "--", from, to])?;
                Ok(())
            }
        }
    }
}

/// Returns the temporary name used while uploading to `remote`.
fn partial_path(remote: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(remote);
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .filter(|_| !remote.ends_with('/'))
        .ok_or_else(|| {
            Failure::usage(format!(
                "upload target {remote:?} does not end in a file name"
            ))
        })?;
    Ok(path.with_file_name(format!(".{name}{PARTIAL_SUFFIX}")))
}

fn split_local(local: &Path) -> anyhow::Result<(&Path, String)> {
    let name = local.file_name().ok_or_else(|| {
        Failure::usage(format!(
            "download target {} does not end in a file name",
            local.display()
        ))
    })?;
    let dir = match local.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    Ok((dir, name.to_string_lossy().into_owned()))
}

fn mode_only(mode: u32) -> FileStat {
    FileStat {
        size: None,
        uid: None,
        gid: None,
        perm: Some(mode),
        atime: None,
        mtime: None,
    }
}

/// Copies `reader` to `writer` one chunk at a time, reporting the running total.
fn copy_chunks(
    reader: &mut impl Read,
    writer: &mut impl Write,
    progress: &mut impl FnMut(u64),
) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        let count = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        writer.write_all(&buffer[..count])?;
        total += count as u64;
        progress(total);
    }
    writer.flush()?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_path_is_hidden_sibling() {
        let path = partial_path("/root/work/vmlinux").unwrap();
        assert_eq!(path, PathBuf::from("/root/work/.vmlinux.kbuild-partial"));
        assert_eq!(
            partial_path("a.txt").unwrap(),
            PathBuf::from(".a.txt.kbuild-partial")
        );
    }

    #[test]
    fn partial_path_rejects_folder() {
        assert!(partial_path("/root/work/").is_err());
        assert!(partial_path("/").is_err());
    }

    #[test]
    fn copy_chunks_reports_running_total() {
        let data = vec![7u8; CHUNK_BYTES * 2 + 5];
        let mut output = Vec::new();
        let mut totals = Vec::new();
        let total =
            copy_chunks(&mut data.as_slice(), &mut output, &mut |n| totals.push(n)).unwrap();
        assert_eq!(total, data.len() as u64);
        assert_eq!(output, data);
        assert_eq!(totals.last(), Some(&(data.len() as u64)));
        assert!(
            totals.windows(2).all(|pair| pair[0] < pair[1]),
            "{totals:?}"
        );
    }
}
