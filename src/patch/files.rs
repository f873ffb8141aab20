//! The files a patch touches, held in memory until every check passed, and
//! the all-or-nothing writes that put them into the tree.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::ui;

/// Mode of a file that kbuild creates in the tree.
const NEW_FILE_MODE: u32 = 0o644;

/// One file's content at three points. `None` means the file does not exist.
#[derive(Debug, Clone)]
pub struct FileState {
    /// Content before kbuild's first change.
    pub pristine: Option<Vec<u8>>,
    /// Content in the tree now.
    pub current: Option<Vec<u8>>,
    /// Content the tree should end up with.
    pub desired: Option<Vec<u8>>,
}

/// Files of one tree by path relative to the tree.
#[derive(Debug)]
pub struct FileSet {
    tree: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

impl FileSet {
    pub fn new(tree: &Path) -> FileSet {
        FileSet {
            tree: tree.to_path_buf(),
            files: BTreeMap::new(),
        }
    }

    /// Adds a file whose desired content starts as its pristine content.
    pub fn insert(&mut self, path: &Path, pristine: Option<Vec<u8>>, current: Option<Vec<u8>>) {
        let desired = pristine.clone();
        let state = FileState {
            pristine,
            current,
            desired,
        };
        self.files.insert(path.to_path_buf(), state);
    }

    /// Adds a file as it is in the tree now, reading it from disk.
    pub fn insert_from_tree(&mut self, path: &Path) -> anyhow::Result<()> {
        let current = read_optional(&self.tree.join(path))?;
        self.insert(path, current.clone(), current);
        Ok(())
    }

    pub fn tree(&self) -> &Path {
        &self.tree
    }

    /// Formats a path relative to the tree for messages.
    pub fn display(&self, path: &Path) -> String {
        self.tree.join(path).display().to_string()
    }

    pub fn get(&self, path: &Path) -> Option<&FileState> {
        self.files.get(path)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PathBuf, &FileState)> {
        self.files.iter()
    }

    /// Returns the desired content of `path` as text.
    pub fn text(&self, path: &Path) -> anyhow::Result<&str> {
        let state = self
            .files
            .get(path)
            .with_context(|| format!("{} was not loaded before planning", path.display()))?;
        let bytes = state
            .desired
            .as_deref()
            .with_context(|| format!("{} not found", self.display(path)))?;
        std::str::from_utf8(bytes)
            .with_context(|| format!("{} is not UTF-8 text", self.display(path)))
    }

    /// Sets the desired content of `path`, which must have been inserted.
    pub fn set_text(&mut self, path: &Path, text: String) -> anyhow::Result<()> {
        let state = self
            .files
            .get_mut(path)
            .with_context(|| format!("{} was not loaded before planning", path.display()))?;
        state.desired = Some(text.into_bytes());
        Ok(())
    }
}

/// Reads a file, returning `None` if it does not exist.
pub fn read_optional(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `bytes` to a temporary file next to `path` and renames it over
/// `path`, so that a hard-linked original stays untouched and a failed write
/// leaves no half-written file. Keeps the mode of the file it replaces.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mode = match std::fs::metadata(path) {
        Ok(metadata) => metadata.permissions().mode(),
        Err(_) => NEW_FILE_MODE,
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".kbuild-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    temp.write_all(bytes)
        .and_then(|()| {
            temp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(mode))
        })
        .and_then(|()| temp.as_file().sync_all())
        .with_context(|| format!("writing {}", temp.path().display()))?;
    temp.persist(path)
        .map_err(|error| error.error)
        .with_context(|| format!("renaming a temporary file over {}", path.display()))?;
    Ok(())
}

/// Deletes a file if it exists.
pub fn remove_optional(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("deleting {}", path.display())),
    }
}

/// Sets a file's content, or deletes it for `None`.
pub fn put(path: &Path, content: Option<&[u8]>) -> anyhow::Result<()> {
    match content {
        Some(bytes) => write_atomic(path, bytes),
        None => remove_optional(path),
    }
}

/// Brings every file of `files` in the tree to its desired content, or
/// restores the ones already written if one write fails. Returns the paths
/// it wrote or deleted.
pub fn write_desired(files: &FileSet) -> anyhow::Result<Vec<PathBuf>> {
    let mut written: Vec<(&PathBuf, &FileState)> = Vec::new();
    for (path, state) in files.iter() {
        if state.current == state.desired {
            continue;
        }
        let target = files.tree.join(path);
        if let Err(error) = put(&target, state.desired.as_deref()) {
            restore_current(files, &written);
            return Err(error);
        }
        written.push((path, state));
    }
    Ok(written.into_iter().map(|(path, _)| path.clone()).collect())
}

/// Puts back the content that `written` files had before, warning on each
/// file that cannot be restored.
fn restore_current(files: &FileSet, written: &[(&PathBuf, &FileState)]) {
    for (path, state) in written.iter().rev() {
        let target = files.tree.join(path);
        if let Err(error) = put(&target, state.current.as_deref()) {
            ui::warn(format!("could not restore {}: {error:#}", target.display()));
        }
    }
}

/// Inserts `new_line` after line `after` (counting from 1) of `text`, or at
/// the end if `text` has fewer lines.
///
/// If `after` is the last line and it has no trailing newline, the new line
/// becomes the last line and has none either.
pub fn insert_after(text: &str, after: usize, new_line: &str) -> String {
    let mut output = String::with_capacity(text.len() + new_line.len() + 1);
    let mut inserted = false;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        output.push_str(line);
        if index + 1 == after {
            if line.ends_with('\n') {
                output.push_str(new_line);
                output.push('\n');
            } else {
                output.push('\n');
                output.push_str(new_line);
            }
            inserted = true;
        }
    }
    if !inserted {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(new_line);
        output.push('\n');
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_after_middle_line() {
        assert_eq!(insert_after("a\nb\nc\n", 2, "x"), "a\nb\nx\nc\n");
    }

    #[test]
    fn insert_after_last_line_without_newline() {
        assert_eq!(insert_after("a\nb", 2, "x"), "a\nb\nx");
    }

    #[test]
    fn insert_after_past_end_appends() {
        assert_eq!(insert_after("a", 5, "x"), "a\nx\n");
    }

    #[test]
    fn write_atomic_keeps_hard_link_target() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("original");
        let link = dir.path().join("link");
        std::fs::write(&original, "old").unwrap();
        std::fs::hard_link(&original, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&original).unwrap(), "old");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new");
    }

    #[test]
    fn write_atomic_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        write_atomic(&path, b"new").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
    }

    #[test]
    fn write_desired_restores_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "old").unwrap();
        let mut files = FileSet::new(dir.path());
        files.insert_from_tree(Path::new("a")).unwrap();
        files.set_text(Path::new("a"), "new".into()).unwrap();
        files.insert(Path::new("missing/b"), None, None);
        files
            .set_text(Path::new("missing/b"), "new".into())
            .unwrap();
        assert!(write_desired(&files).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a")).unwrap(),
            "old"
        );
    }
}
