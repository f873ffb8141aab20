//! The host's record of what the guest's copy contains: a scan of the kernel
//! tree, the JSON manifest written after each sync, and the plan that
//! compares the two.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::exit::Failure;
use crate::ui;

/// Format version of the manifest; a record of another version counts as missing.
const FORMAT_VERSION: u32 = 1;

/// State of one regular file or symlink, as far as the sync compares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Entry {
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub executable: bool,
    /// Target of a symlink; `None` for a regular file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// Files of a tree by their path relative to its top, with `/` separators.
pub(super) type Files = BTreeMap<String, Entry>;

/// Record of the last sync that the guest applied.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub version: u32,
    /// Random id that the guest's copy also keeps in `.kbuild-sync-id`.
    pub sync_id: String,
    pub remote_dir: String,
    pub files: Files,
}

impl Manifest {
    pub fn new(sync_id: String, remote_dir: &str, files: Files) -> Manifest {
        Manifest {
            version: FORMAT_VERSION,
            sync_id,
            remote_dir: remote_dir.to_string(),
            files,
        }
    }
}

/// Reason why a sync sends the whole tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FullReason {
    NoRecord,
    RemoteDirChanged,
    GuestIdMissing,
    GuestIdDiffers,
}

impl fmt::Display for FullReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FullReason::NoRecord => "no record of an earlier sync",
            FullReason::RemoteDirChanged => "the guest folder changed",
            FullReason::GuestIdMissing => "the guest has no complete copy",
            FullReason::GuestIdDiffers => "the guest's copy is from another sync",
        })
    }
}

/// Paths a sync sends and deletes.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// Set when the guest's copy is replaced as a whole.
    pub full: Option<FullReason>,
    pub changed: Vec<String>,
    pub deleted: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.full.is_none() && self.changed.is_empty() && self.deleted.is_empty()
    }
}

/// Compares the last applied sync with the current scan.
///
/// The record counts only when the guest keeps the same sync id in the same
/// folder; otherwise every file is sent. A file counts as changed when its
/// size, mtime, executable bit or symlink target differs.
pub(super) fn plan(
    record: Option<&Manifest>,
    guest_id: Option<&str>,
    remote_dir: &str,
    current: &Files,
) -> Plan {
    let full_reason = match (record, guest_id) {
        (None, _) => Some(FullReason::NoRecord),
        (Some(record), _) if record.remote_dir != remote_dir => Some(FullReason::RemoteDirChanged),
        (Some(_), None) => Some(FullReason::GuestIdMissing),
        (Some(record), Some(id)) if record.sync_id != id => Some(FullReason::GuestIdDiffers),
        (Some(_), Some(_)) => None,
    };
    let previous = match (full_reason, record) {
        (None, Some(record)) => &record.files,
        _ => {
            return Plan {
                full: full_reason,
                changed: current.keys().cloned().collect(),
                deleted: Vec::new(),
            }
        }
    };
    let changed = current
        .iter()
        .filter(|(path, entry)| previous.get(*path) != Some(*entry))
        .map(|(path, _)| path.clone())
        .collect();
    let deleted = previous
        .keys()
        .filter(|path| !current.contains_key(*path))
        .cloned()
        .collect();
    Plan {
        full: None,
        changed,
        deleted,
    }
}

/// Lists the regular files and symlinks under `tree`, without following symlinks.
///
/// A top-level `.git`, `.kbuild` and any top-level name that starts with
/// `.kbuild-sync` are skipped. Folders appear only through their files, and
/// sockets, pipes and device files are skipped.
pub(super) fn scan(tree: &Path) -> anyhow::Result<Files> {
    let mut files = Files::new();
    scan_folder(tree, "", &mut files)?;
    Ok(files)
}

fn is_skipped_top_level(name: &str) -> bool {
    name == ".git" || name == ".kbuild" || name.starts_with(".kbuild-sync")
}

fn scan_folder(folder: &Path, prefix: &str, files: &mut Files) -> anyhow::Result<()> {
    let context = || format!("reading folder {}", folder.display());
    for item in fs::read_dir(folder).with_context(context)? {
        let item = item.with_context(context)?;
        let path = item.path();
        let name = item.file_name();
        let name = name.to_str().ok_or_else(|| non_utf8(&path))?;
        if prefix.is_empty() && is_skipped_top_level(name) {
            continue;
        }
        let relative = match prefix {
            "" => name.to_string(),
            _ => format!("{prefix}/{name}"),
        };
        // DirEntry::metadata does not follow symlinks.
        let metadata = item
            .metadata()
            .with_context(|| format!("reading metadata of {}", path.display()))?;
        let file_type = metadata.file_type();
        if file_type.is_dir() {
            scan_folder(&path, &relative, files)?;
        } else if file_type.is_file() || file_type.is_symlink() {
            files.insert(relative, entry_of(&path, &metadata)?);
        } else {
            tracing::debug!(path = %path.display(), "skipping a special file");
        }
    }
    Ok(())
}

/// Builds the entry of `path` from its metadata, read without following symlinks.
pub(super) fn entry_of(path: &Path, metadata: &fs::Metadata) -> anyhow::Result<Entry> {
    let link = if metadata.file_type().is_symlink() {
        let target =
            fs::read_link(path).with_context(|| format!("reading symlink {}", path.display()))?;
        Some(
            target
                .into_os_string()
                .into_string()
                .map_err(|_| non_utf8(path))?,
        )
    } else {
        None
    };
    let mtime_ns = metadata
        .mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(metadata.mtime_nsec());
    Ok(Entry {
        size: metadata.len(),
        mtime_ns,
        executable: link.is_none() && metadata.mode() & 0o111 != 0,
        link,
    })
}

// NOTE: the manifest keys are JSON strings, so names and symlink targets
// that are not UTF-8 are rejected rather than sent.
fn non_utf8(path: &Path) -> anyhow::Error {
    Failure::usage(format!(
        "{path:?} has a name or symlink target that is not UTF-8, which kbuild cannot send \
         to the VM: rename it or remove it from the kernel tree"
    ))
}

/// Reads the manifest at `path`; a missing, unreadable or older record is `None`.
pub(super) fn load(path: &Path) -> anyhow::Result<Option<Manifest>> {
    let file = match File::open(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        result => result.with_context(|| format!("opening {}", path.display()))?,
    };
    match serde_json::from_reader::<_, Manifest>(BufReader::new(file)) {
        Ok(manifest) if manifest.version == FORMAT_VERSION => Ok(Some(manifest)),
        Ok(manifest) => {
            tracing::debug!(
                version = manifest.version,
                "ignoring a sync record of another format"
            );
            Ok(None)
        }
        Err(error) => {
            ui::warn(format!(
                "ignoring the invalid sync record {} ({error}); the whole tree is sent again",
                path.display()
            ));
            Ok(None)
        }
    }
}

/// Writes `manifest` to a temporary file beside `path` and renames it over `path`.
pub(super) fn save(manifest: &Manifest, path: &Path) -> anyhow::Result<()> {
    let folder = path.parent().unwrap_or(Path::new("."));
    let context = || format!("writing the sync record {}", path.display());
    let mut temporary = tempfile::Builder::new()
        .prefix(".sync-manifest.")
        .suffix(".tmp")
        .tempfile_in(folder)
        .with_context(context)?;
    let mut writer = BufWriter::new(temporary.as_file_mut());
    serde_json::to_writer(&mut writer, manifest).with_context(context)?;
    writer.flush().with_context(context)?;
    drop(writer);
    temporary.as_file().sync_all().with_context(context)?;
    temporary.persist(path).with_context(context)?;
    Ok(())
}

/// Returns 16 random bytes from /dev/urandom as hex, as a new sync id.
pub(super) fn new_sync_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut bytes))
        .context("reading /dev/urandom for a sync id")?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
