//! The record of an applied patch: pristine copies of the files
//! it changed, a manifest with the sha256 of what it wrote, and the change as
//! a unified diff.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::files::{read_optional, remove_optional, write_atomic, FileSet, FileState};
use crate::exit::Failure;

const MANIFEST: &str = "manifest.toml";
const DIFF: &str = "applied.diff";
const PRISTINE: &str = "pristine";

/// The manifest of an applied patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Absolute, canonical path of the patched tree.
    pub tree: PathBuf,
    pub arch: String,
    pub name: String,
    pub number: u32,
    #[serde(rename = "file", default)]
    pub files: Vec<FileRecord>,
}

/// One file that kbuild changed or created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path relative to the tree.
    pub path: PathBuf,
    /// True if kbuild created the file, so it has no pristine copy.
    pub created: bool,
    /// sha256 of the content kbuild wrote, in hex.
    pub sha256: String,
}

impl Manifest {
    pub fn record(&self, path: &Path) -> Option<&FileRecord> {
        self.files.iter().find(|record| record.path == path)
    }
}

/// The patch record folder, `<state>/patch`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn diff_path(&self) -> PathBuf {
        self.dir.join(DIFF)
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }

    /// Returns where the pristine copy of `path` (relative to the tree) lives.
    pub fn pristine_path(&self, path: &Path) -> PathBuf {
        self.dir.join(PRISTINE).join(path)
    }

    /// Reads the manifest's raw bytes, `None` if no patch is recorded.
    pub fn manifest_bytes(&self) -> anyhow::Result<Option<Vec<u8>>> {
        read_optional(&self.manifest_path())
    }

    /// Reads the manifest, `None` if no patch is recorded.
    pub fn load(&self) -> anyhow::Result<Option<Manifest>> {
        let Some(bytes) = self.manifest_bytes()? else {
            return Ok(None);
        };
        let path = self.manifest_path();
        let text = String::from_utf8(bytes)
            .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
        let manifest = toml::from_str(&text).map_err(|error| {
            Failure::usage(format!(
                "invalid patch record {}: {}; restore the kernel tree (for example unpack it \
                 again) and delete {}",
                path.display(),
                error.message().trim_end(),
                self.dir.display()
            ))
        })?;
        Ok(Some(manifest))
    }

    /// Writes the manifest, or restores earlier raw bytes with `None` to delete it.
    pub fn put_manifest(&self, bytes: Option<&[u8]>) -> anyhow::Result<()> {
        create_dir(&self.dir)?;
        super::files::put(&self.manifest_path(), bytes)
    }

    /// Reads the pristine content of a recorded file: `None` for a created file.
    pub fn read_pristine(&self, record: &FileRecord) -> anyhow::Result<Option<Vec<u8>>> {
        if record.created {
            return Ok(None);
        }
        let path = self.pristine_path(&record.path);
        let bytes = read_optional(&path)?.ok_or_else(|| {
            Failure::usage(format!(
                "the patch record in {} has no pristine copy {}; restore the kernel tree \
                 (for example unpack it again) and delete {}",
                self.dir.display(),
                path.display(),
                self.dir.display()
            ))
        })?;
        Ok(Some(bytes))
    }

    /// Saves the pristine copy of `path` unless an identical one is there.
    pub fn save_pristine(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        let target = self.pristine_path(path);
        if read_optional(&target)?.as_deref() == Some(bytes) {
            return Ok(());
        }
        create_dir(target.parent().unwrap_or(&self.dir))?;
        write_atomic(&target, bytes)
    }

    /// Deletes the pristine copy of `path`, if any.
    pub fn remove_pristine(&self, path: &Path) -> anyhow::Result<()> {
        remove_optional(&self.pristine_path(path))
    }

    /// Writes `text` to `applied.diff` unless it already contains exactly that.
    pub fn save_diff(&self, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.diff_path();
        if read_optional(&path)?.as_deref() != Some(text.as_bytes()) {
            create_dir(&self.dir)?;
            write_atomic(&path, text.as_bytes())?;
        }
        Ok(path)
    }

    /// Deletes the whole record.
    pub fn clear(&self) -> anyhow::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error).with_context(|| format!("deleting {}", self.dir.display())),
        }
    }
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Formats the sha256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Checks that each file still has the content kbuild wrote, or its pristine
/// content, before kbuild `action`s it.
pub fn check_untouched(
    store: &Store,
    manifest: &Manifest,
    files: &FileSet,
    action: &str,
) -> anyhow::Result<()> {
    for record in &manifest.files {
        let Some(state) = files.get(&record.path) else {
            continue;
        };
        let as_written = state.current.as_deref().map(sha256_hex) == Some(record.sha256.clone());
        if as_written || state.current == state.pristine {
            continue;
        }
        let original = if record.created {
            "delete it".to_string()
        } else {
            format!(
                "copy {} over it",
                store.pristine_path(&record.path).display()
            )
        };
        return Err(Failure::usage(format!(
            "{} changed since kbuild wrote it, so {action} would lose that edit; undo the \
             edit or {original}, then try again",
            files.display(&record.path)
        )));
    }
    Ok(())
}

/// Renders the change from pristine to desired content of every file as a
/// unified diff that `patch -p1` applies to a pristine tree.
pub fn unified_diff(files: &FileSet) -> anyhow::Result<String> {
    let mut output = String::new();
    for (path, state) in files.iter() {
        if state.pristine != state.desired {
            output.push_str(&file_diff(path, state)?);
        }
    }
    Ok(output)
}

fn file_diff(path: &Path, state: &FileState) -> anyhow::Result<String> {
    let text = |bytes: &Option<Vec<u8>>| -> anyhow::Result<String> {
        let bytes = bytes.as_deref().unwrap_or_default();
        String::from_utf8(bytes.to_vec())
            .with_context(|| format!("{} is not UTF-8 text", path.display()))
    };
    let old = text(&state.pristine)?;
    let new = text(&state.desired)?;
    let side = |prefix: &str, content: &Option<Vec<u8>>| match content {
        Some(_) => format!("{prefix}/{}", path.display()),
        None => "/dev/null".to_string(),
    };
    let diff = similar::TextDiff::from_lines(&old, &new);
    let body = diff
        .unified_diff()
        .context_radius(3)
        .header(&side("a", &state.pristine), &side("b", &state.desired))
        .to_string();
    Ok(body)
}
