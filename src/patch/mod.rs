//! Adds the project's syscall to a kernel tree and takes it out again.
//!
//! Every edit is planned in memory from the files' pristine content, so that
//! applying twice changes nothing and applying a changed project leaves the
//! tree as a fresh apply would. Nothing is written until every check passed.
//! The record in `<state>/patch` keeps the pristine copies, a manifest with
//! the sha256 of each file kbuild wrote, and the change as a unified diff.

mod driver;
mod files;
mod record;
mod source_files;
mod table;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use driver::{for_arch, Registration, Request, TableDriver};

use crate::exit::Failure;
use crate::project::{Arch, Project};
use crate::ui;
use files::{read_optional, FileSet};
use record::{FileRecord, Manifest, Store};

/// The result of `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub number: u32,
    /// False when the tree already contained exactly this patch.
    pub changed: bool,
    /// Every file the patch consists of, relative to the tree.
    pub files: Vec<PathBuf>,
    /// The patch as a unified diff for `patch -p1` in a pristine tree.
    pub diff: PathBuf,
}

/// The result of `revert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reverted {
    /// False when no patch was recorded.
    pub changed: bool,
    /// Files restored or deleted, relative to the tree.
    pub files: Vec<PathBuf>,
}

/// Applies the project's syscall to `tree`. Running it twice changes nothing.
pub fn apply(project: &Project, tree: &Path) -> anyhow::Result<Applied> {
    let spec = &project.syscall;
    let driver = driver::for_arch(project.kernel.arch);
    let tree = check_kernel_tree(tree, driver)?;
    let store = Store::new(project.state_dir().join("patch"));
    let previous = load_record(&store, &tree)?;

    let mut paths = driver.files();
    paths.extend(source_files::paths(&spec.name));
    let files = load_files(&store, previous.as_ref(), &tree, &paths)?;
    if let Some(manifest) = &previous {
        record::check_untouched(&store, manifest, &files, "applying again")?;
    }
    check_body_free(&files, previous.as_ref(), &spec.name)?;
    let (files, number) = plan(project, driver, files)?;

    let manifest = Manifest {
        tree: tree.clone(),
        arch: driver.arch().name().to_string(),
        name: spec.name.clone(),
        number,
        files: changed_records(&files),
    };
    let diff = record::unified_diff(&files)?;
    let written = commit(&store, &files, &manifest, previous.as_ref())?;
    let diff_path = store.save_diff(&diff)?;
    tracing::debug!(tree = %tree.display(), number, written = written.len(), "applied syscall");
    Ok(Applied {
        number,
        changed: !written.is_empty(),
        files: manifest
            .files
            .iter()
            .map(|record| record.path.clone())
            .collect(),
        diff: diff_path,
    })
}

/// Restores every file the last apply changed, exactly.
pub fn revert(project: &Project, tree: &Path) -> anyhow::Result<Reverted> {
    let tree = canonical_tree(tree)?;
    let store = Store::new(project.state_dir().join("patch"));
    let Some(manifest) = load_record(&store, &tree)? else {
        return Ok(Reverted {
            changed: false,
            files: Vec::new(),
        });
    };
    let paths: Vec<PathBuf> = manifest
        .files
        .iter()
        .map(|record| record.path.clone())
        .collect();
    let files = load_files(&store, Some(&manifest), &tree, &paths)?;
    record::check_untouched(&store, &manifest, &files, "revert")?;

    let written = files::write_desired(&files).with_context(|| {
        format!(
            "reverting the patch in {}; the files already restored were put back",
            tree.display()
        )
    })?;
    store.clear()?;
    Ok(Reverted {
        changed: !written.is_empty(),
        files: written,
    })
}

/// Looks the syscall up in the tree's table (the truth, not kbuild's records).
pub fn syscall_number(tree: &Path, arch: Arch, name: &str) -> anyhow::Result<Option<u32>> {
    let driver = driver::for_arch(arch);
    let tree = check_kernel_tree(tree, driver)?;
    let mut files = FileSet::new(&tree);
    for path in driver.files() {
        files.insert_from_tree(&path)?;
    }
    driver.lookup(&files, name)
}

/// Plans every edit on the in-memory files and returns them with the syscall number.
fn plan(
    project: &Project,
    driver: &dyn TableDriver,
    mut files: FileSet,
) -> anyhow::Result<(FileSet, u32)> {
    let spec = &project.syscall;
    let request = Request {
        name: &spec.name,
        number: spec.number,
    };
    let registration = driver.register(&mut files, &request)?;
    source_files::add_body(&mut files, project, registration.number)?;
    source_files::add_object(&mut files, &spec.name)?;
    let neighbor = registration.neighbor.as_deref();
    source_files::add_prototype(&mut files, &spec.name, &spec.args, neighbor)?;
    Ok((files, registration.number))
}

/// Resolves `tree` to an absolute path, or explains that it is missing.
fn canonical_tree(tree: &Path) -> anyhow::Result<PathBuf> {
    if !tree.is_dir() {
        return Err(Failure::usage(format!(
            "kernel tree {} not found; point kernel.source in kbuild.toml at a kernel tree",
            tree.display()
        )));
    }
    tree.canonicalize()
        .with_context(|| format!("resolving {}", tree.display()))
}

/// Checks that `tree` is a kernel source tree with the files kbuild edits.
fn check_kernel_tree(tree: &Path, driver: &dyn TableDriver) -> anyhow::Result<PathBuf> {
    let tree = canonical_tree(tree)?;
    let not_a_tree = |problem: String| {
        Failure::usage(format!(
            "{} is not a kernel source tree: {problem}; point kernel.source in kbuild.toml at \
             a kernel tree",
            tree.display()
        ))
    };
    let makefile = tree.join("Makefile");
    let Some(bytes) = read_optional(&makefile)? else {
        return Err(not_a_tree(format!("{} not found", makefile.display())));
    };
    let text = String::from_utf8_lossy(&bytes);
    let has = |key: &str| text.lines().any(|line| line.starts_with(key));
    if !has("VERSION") || !has("PATCHLEVEL") {
        let problem = format!("{} has no VERSION and PATCHLEVEL lines", makefile.display());
        return Err(not_a_tree(problem));
    }
    let mut required = driver.files();
    required.push(PathBuf::from(source_files::MAKEFILE));
    required.push(PathBuf::from(source_files::SYSCALLS_H));
    if let Some(missing) = required
        .iter()
        .map(|path| tree.join(path))
        .find(|p| !p.is_file())
    {
        return Err(not_a_tree(format!("{} not found", missing.display())));
    }
    Ok(tree)
}

/// Loads the record, forgetting one whose tree is gone and rejecting one
/// that belongs to another tree that still exists.
fn load_record(store: &Store, tree: &Path) -> anyhow::Result<Option<Manifest>> {
    let Some(manifest) = store.load()? else {
        return Ok(None);
    };
    if manifest.tree == tree {
        return Ok(Some(manifest));
    }
    if !manifest.tree.exists() {
        ui::warn(format!(
            "forgetting the patch record in {}: its kernel tree {} no longer exists",
            store.dir().display(),
            manifest.tree.display()
        ));
        store.clear()?;
        return Ok(None);
    }
    Err(Failure::usage(format!(
        "the patch record in {} belongs to kernel tree {}, not {}; revert it there first (set \
         kernel.source back), or delete {} if that tree is disposable",
        store.dir().display(),
        manifest.tree.display(),
        tree.display(),
        store.dir().display()
    )))
}

/// Loads `paths` plus every file of the previous record, with recorded files
/// based on their pristine copies.
fn load_files(
    store: &Store,
    previous: Option<&Manifest>,
    tree: &Path,
    paths: &[PathBuf],
) -> anyhow::Result<FileSet> {
    let mut files = FileSet::new(tree);
    for record in previous.map_or(&[][..], |manifest| &manifest.files) {
        let current = read_optional(&tree.join(&record.path))?;
        files.insert(&record.path, store.read_pristine(record)?, current);
    }
    for path in paths {
        if files.get(path).is_none() {
            files.insert_from_tree(path)?;
        }
    }
    Ok(files)
}

/// Rejects a `kernel/<name>.c` that kbuild did not create.
fn check_body_free(files: &FileSet, previous: Option<&Manifest>, name: &str) -> anyhow::Result<()> {
    let path = source_files::body_path(name);
    let created_by_kbuild = previous
        .and_then(|manifest| manifest.record(&path))
        .is_some_and(|record| record.created);
    let exists = files
        .get(&path)
        .is_some_and(|state| state.pristine.is_some());
    if exists && !created_by_kbuild {
        return Err(Failure::usage(format!(
            "{} already exists and kbuild did not write it; choose another [syscall] name in \
             kbuild.toml, or move that file out of the tree",
            files.display(&path)
        )));
    }
    Ok(())
}

/// Lists the files whose desired content differs from the pristine one.
fn changed_records(files: &FileSet) -> Vec<FileRecord> {
    files
        .iter()
        .filter(|(_, state)| state.desired != state.pristine)
        .map(|(path, state)| FileRecord {
            path: path.clone(),
            created: state.pristine.is_none(),
            sha256: record::sha256_hex(state.desired.as_deref().unwrap_or_default()),
        })
        .collect()
}

/// Saves pristine copies and the manifest, then writes the tree. If the tree
/// writes fail, the files already written and the old manifest are restored.
///
/// NOTE: nothing locks the record, so two kbuild runs on one project at the
/// same time can interleave their writes.
fn commit(
    store: &Store,
    files: &FileSet,
    manifest: &Manifest,
    previous: Option<&Manifest>,
) -> anyhow::Result<Vec<PathBuf>> {
    for record in manifest.files.iter().filter(|record| !record.created) {
        if let Some(pristine) = files.get(&record.path).and_then(|s| s.pristine.as_deref()) {
            store.save_pristine(&record.path, pristine)?;
        }
    }
    let old_manifest = store.manifest_bytes()?;
    let new_manifest = toml::to_string(manifest).context("serializing the patch manifest")?;
    if old_manifest.as_deref() != Some(new_manifest.as_bytes()) {
        store.put_manifest(Some(new_manifest.as_bytes()))?;
    }

    let written = match files::write_desired(files) {
        Ok(written) => written,
        Err(error) => {
            if let Err(restore) = store.put_manifest(old_manifest.as_deref()) {
                ui::warn(format!("could not restore the patch manifest: {restore:#}"));
            }
            return Err(error.context(format!(
                "writing the patch into {}; the files already written were restored",
                files.tree().display()
            )));
        }
    };

    let stale = previous.map_or(&[][..], |old| &old.files);
    for record in stale
        .iter()
        .filter(|record| manifest.record(&record.path).is_none())
    {
        store.remove_pristine(&record.path)?;
    }
    Ok(written)
}
