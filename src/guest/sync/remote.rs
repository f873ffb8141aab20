//! The guest's side of a sync: the sync id, the free disk check and the
//! one shell script that applies an uploaded archive.
//!
//! Every script is a constant that takes its paths as positional
//! parameters, so each path reaches the guest shell-quoted by `command_line`
//! and the script only ever expands it inside double quotes.

use std::path::Path;

use anyhow::Context;

use crate::exit::Failure;
use crate::ssh::{ExecOptions, OutputStream, Session};

/// Name of the file in the guest's copy that contains the sync id.
const ID_FILE: &str = ".kbuild-sync-id";

/// Name of the uploaded archive, in the parent of the guest's copy.
const ARCHIVE_NAME: &str = ".kbuild-sync.tar.gz";

/// Prints the free KiB in `$1` (made if missing), then the KiB that `$2`
/// (the old copy) and `$3` (a leftover archive) use, which a full sync frees.
const DISK_PROBE: &str = r#"mkdir -p -- "$1" || exit 1
df -Pk -- "$1" | awk 'NR==2 {print $4}'
du -skc -- "$2" "$3" 2>/dev/null | tail -n 1 | cut -f1"#;

/// Replaces the folder `$2` in `$1` with the archive's content, every file
/// stamped with the time of extraction (so objects that a build folder kept
/// from an older copy are rebuilt), then writes the sync id `$3`. A folder that is the home folder or
/// contains it is never removed.
const FULL_SCRIPT: &str = r#"set -e
cd -- "$1"
archive="$(pwd)/.kbuild-sync.tar.gz"
trap 'rm -f -- "$archive"' EXIT
if [ -d "$2" ] && [ ! -L "$2" ]; then
  real=$(cd -P -- "$2" && pwd -P)
  home=$(cd && pwd -P)
  case "$home/" in
    "${real%/}"/*) echo "kbuild: not replacing $real because it contains the home folder" >&2; exit 3 ;;
  esac
fi
rm -rf -- "$2"
mkdir -- "$2"
cd -- "$2"
tar --no-same-owner -m -xzf "$archive"
printf '%s\n' "$3" > .kbuild-sync-id.tmp
mv -f .kbuild-sync-id.tmp .kbuild-sync-id"#;

/// Applies a delta archive to the folder `$2` in `$1`: removes the sync id
/// first (so a failure below makes the next run send the whole tree),
/// deletes the listed paths, extracts with `-m` (mtime = now, so make treats
/// the files as newer than the guest's objects) and writes the sync id `$3`.
const DELTA_SCRIPT: &str = r#"set -e
cd -- "$1"
archive="$(pwd)/.kbuild-sync.tar.gz"
trap 'rm -f -- "$archive"' EXIT
cd -- "$2"
rm -f .kbuild-sync-id
tar --no-same-owner -xzf "$archive" .kbuild-sync-deleted
xargs -0 -r rm -f -- < .kbuild-sync-deleted
tar --no-same-owner -m -xzf "$archive"
rm -f .kbuild-sync-deleted
printf '%s\n' "$3" > .kbuild-sync-id.tmp
mv -f .kbuild-sync-id.tmp .kbuild-sync-id"#;

/// Paths of a sync in the guest, derived from the configured folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RemotePaths {
    /// The guest's copy of the tree, without a trailing `/`.
    pub dir: String,
    /// Folder that contains `dir`; `.` when `dir` is relative to the home folder.
    pub parent: String,
    /// Last component of `dir`.
    pub name: String,
    /// Upload target of the archive, in `parent`.
    pub archive: String,
    pub id_file: String,
}

impl RemotePaths {
    /// Checks `remote_dir` and derives the paths from it.
    ///
    /// A relative folder is taken from the login's home folder. `/`, `~`,
    /// and `.` or `..` components are rejected because the full sync
    /// removes the folder.
    pub fn new(remote_dir: &str) -> anyhow::Result<RemotePaths> {
        let dir = remote_dir.trim_end_matches('/');
        let invalid = |why: &str| {
            Failure::usage(format!(
                "the guest folder {remote_dir:?} for the kernel tree {why}: use a folder such as \
                 /home/USER/linux or linux (inside the guest's home folder)"
            ))
        };
        if dir.is_empty() {
            return Err(invalid("is empty or the root folder"));
        }
        if dir.starts_with('~') {
            return Err(invalid("starts with ~, which kbuild does not expand"));
        }
        if dir.split('/').any(|part| part == "." || part == "..") {
            return Err(invalid("contains a . or .. component"));
        }
        let (parent, name) = match dir.rsplit_once('/') {
            Some((parent, name)) => (parent.trim_end_matches('/'), name),
            None => (".", dir),
        };
        let parent = if parent.is_empty() { "/" } else { parent };
        if name.starts_with(".kbuild-sync") {
            return Err(invalid("has a name that kbuild keeps for its own files"));
        }
        Ok(RemotePaths {
            dir: dir.to_string(),
            parent: parent.to_string(),
            name: name.to_string(),
            archive: format!("{}/{ARCHIVE_NAME}", parent.trim_end_matches('/')),
            id_file: format!("{dir}/{ID_FILE}"),
        })
    }
}

/// Reads the sync id of the guest's copy; `None` when the file is missing or empty.
pub(super) fn read_sync_id(
    session: &Session,
    paths: &RemotePaths,
) -> anyhow::Result<Option<String>> {
    let output = session.exec_capture(&["cat", "--", &paths.id_file])?;
    let id = output.stdout.trim();
    if !output.status.success() || id.is_empty() {
        return Ok(None);
    }
    Ok(Some(id.to_string()))
}

/// Fails unless the guest has `needed` bytes free for a full sync, counting
/// the space that removing the old copy frees. `need` describes the bytes for the message.
pub(super) fn check_free_disk(
    session: &Session,
    paths: &RemotePaths,
    needed: u64,
    need: &str,
) -> anyhow::Result<()> {
    let argv = [
        "sh",
        "-c",
        DISK_PROBE,
        "sh",
        &paths.parent,
        &paths.dir,
        &paths.archive,
    ];
    let output = session.exec_checked(&argv)?;
    let numbers: Vec<u64> = output
        .stdout
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()
        .filter(|numbers: &Vec<u64>| numbers.len() == 2)
        .with_context(|| format!("unexpected output of the disk probe: {:?}", output.stdout))?;
    let (free, reclaimed) = (numbers[0] * 1024, numbers[1] * 1024);
    if free + reclaimed >= needed {
        return Ok(());
    }
    let old_copy = match reclaimed {
        0 => String::new(),
        _ => " once its old copy is removed".to_string(),
    };
    Err(Failure::infrastructure(format!(
        "VM {} has {} free in {}{old_copy}, but the kernel tree needs {need}: raise disk_gib \
         under [machine] in the profile and recreate the VM (`kbuild destroy`, then `kbuild \
         up`), or build on the host with --on-host",
        session.target().name,
        crate::ui::bytes(free + reclaimed),
        paths.parent,
    )))
}

/// Runs the script that applies the uploaded archive, with its output
/// appended to `log`; the archive in the guest is removed either way.
pub(super) fn apply(
    session: &Session,
    paths: &RemotePaths,
    full: bool,
    sync_id: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let script = if full { FULL_SCRIPT } else { DELTA_SCRIPT };
    let argv = [
        "sh",
        "-c",
        script,
        "sh",
        &paths.parent,
        &paths.name,
        sync_id,
    ];
    let options = ExecOptions {
        log: Some(log.to_path_buf()),
        timeout: None,
    };
    // The first error line names the cause, because tar's last one only reports that it failed.
    let mut first_error = String::new();
    let status = session.exec(&argv, &options, |stream, line| {
        tracing::debug!(line, "sync script output");
        if stream == OutputStream::Stderr && first_error.is_empty() {
            first_error = line.trim().to_string();
        }
    })?;
    if status.success() {
        return Ok(());
    }
    Err(Failure::infrastructure(format!(
        "applying the kernel tree to {} on VM {} failed with {status}: {}; the next run sends \
         the whole tree again (the full output is in {})",
        paths.dir,
        session.target().name,
        first_error,
        log.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::super::archive::DELETED_LIST;
    use super::*;

    #[test]
    fn scripts_use_shared_names() {
        for script in [FULL_SCRIPT, DELTA_SCRIPT] {
            assert!(script.contains(ARCHIVE_NAME), "{script}");
            assert!(script.contains(ID_FILE), "{script}");
        }
        assert!(DELTA_SCRIPT.contains(DELETED_LIST));
    }

    #[test]
    fn remote_paths_absolute() {
        let paths = RemotePaths::new("/home/kb/src/linux/").unwrap();
        assert_eq!(paths.dir, "/home/kb/src/linux");
        assert_eq!(paths.parent, "/home/kb/src");
        assert_eq!(paths.name, "linux");
        assert_eq!(paths.archive, "/home/kb/src/.kbuild-sync.tar.gz");
        assert_eq!(paths.id_file, "/home/kb/src/linux/.kbuild-sync-id");
    }

    #[test]
    fn remote_paths_relative() {
        let paths = RemotePaths::new("linux tree").unwrap();
        assert_eq!(paths.parent, ".");
        assert_eq!(paths.archive, "./.kbuild-sync.tar.gz");
    }

    #[test]
    fn remote_paths_top_level() {
        let paths = RemotePaths::new("/linux").unwrap();
        assert_eq!(paths.parent, "/");
        assert_eq!(paths.archive, "/.kbuild-sync.tar.gz");
    }

    #[test]
    fn remote_paths_rejects_dangerous() {
        for dir in [
            "",
            "/",
            "//",
            "~",
            "~/linux",
            "a/../b",
            ".",
            "/x/.kbuild-sync-id",
        ] {
            assert!(RemotePaths::new(dir).is_err(), "{dir:?} was accepted");
        }
    }
}
