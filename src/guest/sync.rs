//! Sends the kernel tree to the guest: the whole tree on the first run, then
//! only the files that changed since the last sync.
//!
//! The host keeps a manifest of what the guest's copy contains (`manifest`).
//! Each sync packs its files into one tar.gz on the host (`archive`),
//! uploads it over SFTP and applies it with one shell script in the guest
//! (`remote`). The manifest is written only after the guest applied the
//! archive, so a failure at any step leaves the last record in place and
//! the next run retries. A delta removes the guest's sync id before it
//! touches any file and writes it back at the end, so a delta that fails
//! half-way makes the next run send the whole tree.

mod archive;
mod manifest;
mod remote;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::ssh::Session;
use crate::ui;
use manifest::{Files, Manifest, Plan};
use remote::RemotePaths;

/// Name of the manifest in the state folder.
const MANIFEST_FILE: &str = "sync-manifest.json";

const BAR_TEMPLATE: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";

/// Host tree, guest folder and host state folder of a sync.
pub struct SyncTarget<'a> {
    /// Kernel tree on the host; the sync only reads it.
    pub tree: &'a Path,
    /// Folder of the guest's copy, absolute or relative to the login's home folder.
    pub remote_dir: &'a str,
    /// Host folder for the manifest and the temporary archive.
    pub state_dir: &'a Path,
}

/// Outcome of one sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Regular files and symlinks sent.
    pub files: usize,
    /// Paths deleted in the guest.
    pub deleted: usize,
    /// Size of the uploaded archive.
    pub bytes_sent: u64,
    /// True when the guest's copy was replaced as a whole.
    pub full: bool,
    pub elapsed: Duration,
}

/// Brings the guest's copy of `target.tree` up to date and returns what was sent.
///
/// Blocking (call it inside spawn_blocking). The apply script's output is
/// appended to `log`.
pub fn sync_tree(session: &Session, target: &SyncTarget, log: &Path) -> anyhow::Result<SyncReport> {
    let started = Instant::now();
    let paths = RemotePaths::new(target.remote_dir)?;
    let mut files = manifest::scan(target.tree)?;
    tracing::debug!(files = files.len(), elapsed = ?started.elapsed(), "scanned the kernel tree");
    let record_path = target.state_dir.join(MANIFEST_FILE);
    let record = manifest::load(&record_path)?;
    let guest_id = remote::read_sync_id(session, &paths)?;
    let plan = manifest::plan(record.as_ref(), guest_id.as_deref(), &paths.dir, &files);
    announce(session, target, &plan, &files);
    if plan.is_empty() {
        return Ok(report(&plan, 0, started));
    }
    let sync_id = match (&plan.full, record) {
        (None, Some(record)) => record.sync_id,
        _ => manifest::new_sync_id()?,
    };

    let tree_bytes: u64 = files.values().map(|entry| entry.size).sum();
    if plan.full.is_some() {
        let need = format!(
            "at least {} for its files alone",
            crate::ui::bytes(tree_bytes)
        );
        remote::check_free_disk(session, &paths, tree_bytes, &need)?;
    }
    fs::create_dir_all(target.state_dir)
        .with_context(|| format!("creating folder {}", target.state_dir.display()))?;
    let bytes_sent = send_archive(session, target, &paths, &plan, &mut files, tree_bytes)?;
    let applying = Instant::now();
    remote::apply(session, &paths, plan.full.is_some(), &sync_id, log)?;
    tracing::debug!(elapsed = ?applying.elapsed(), "applied the sync archive in the guest");

    let record = Manifest::new(sync_id, &paths.dir, files);
    manifest::save(&record, &record_path)?;
    Ok(report(&plan, bytes_sent, started))
}

/// Packs the planned changes into a temporary archive in the state folder,
/// checks the guest's disk for a full sync, and uploads the archive. The
/// temporary file is removed whether or not this succeeds.
fn send_archive(
    session: &Session,
    target: &SyncTarget,
    paths: &RemotePaths,
    plan: &Plan,
    files: &mut Files,
    tree_bytes: u64,
) -> anyhow::Result<u64> {
    let mut temporary = tempfile::Builder::new()
        .prefix(".kbuild-sync-")
        .suffix(".tar.gz")
        .tempfile_in(target.state_dir)
        .with_context(|| {
            format!(
                "creating a temporary file in {}",
                target.state_dir.display()
            )
        })?;
    let deleted = plan.full.is_none().then_some(plan.deleted.as_slice());
    let started = Instant::now();
    archive::write_archive(
        target.tree,
        files,
        &plan.changed,
        deleted,
        temporary.as_file_mut(),
    )?;
    let archive_bytes = temporary
        .as_file()
        .metadata()
        .with_context(|| format!("reading metadata of {}", temporary.path().display()))?
        .len();
    tracing::debug!(archive_bytes, elapsed = ?started.elapsed(), "wrote the sync archive");

    if plan.full.is_some() {
        let needed = tree_bytes + archive_bytes;
        let need = format!(
            "{} ({} of files plus the {} archive)",
            crate::ui::bytes(needed),
            crate::ui::bytes(tree_bytes),
            crate::ui::bytes(archive_bytes)
        );
        remote::check_free_disk(session, paths, needed, &need)?;
    }
    let started = Instant::now();
    let sent = upload(session, temporary.path(), &paths.archive, archive_bytes)?;
    tracing::debug!(elapsed = ?started.elapsed(), "uploaded the sync archive");
    temporary
        .close()
        .context("removing the temporary sync archive")?;
    Ok(sent)
}

/// Uploads `local` with a progress bar on a terminal, or one detail line otherwise.
fn upload(session: &Session, local: &Path, remote: &str, bytes: u64) -> anyhow::Result<u64> {
    let vm = &session.target().name;
    if !ui::is_interactive() {
        ui::detail(format!(
            "sending a {} archive to VM {vm}",
            crate::ui::bytes(bytes)
        ));
        return session.upload(local, remote, |_| {});
    }
    let bar = ui::bar(bytes, BAR_TEMPLATE);
    bar.set_message(format!("sending to VM {vm}"));
    let result = session.upload(local, remote, |sent| bar.set_position(sent));
    bar.finish_and_clear();
    result
}

fn announce(session: &Session, target: &SyncTarget, plan: &Plan, files: &Files) {
    let summary = match plan.full {
        Some(reason) => format!("all {} files ({reason})", files.len()),
        None if plan.is_empty() => "already up to date".to_string(),
        None => format!(
            "{} changed, {} deleted",
            plan.changed.len(),
            plan.deleted.len()
        ),
    };
    ui::status(
        "Syncing",
        format!(
            "{} to {} on VM {}: {summary}",
            target.tree.display(),
            target.remote_dir,
            session.target().name
        ),
    );
}

fn report(plan: &Plan, bytes_sent: u64, started: Instant) -> SyncReport {
    SyncReport {
        files: plan.changed.len(),
        deleted: plan.deleted.len(),
        bytes_sent,
        full: plan.full.is_some(),
        elapsed: started.elapsed(),
    }
}

/// Returns a digest of the tree's files (paths, sizes, mtimes, modes, link
/// targets) as the sync scans them, without the folders in `skip`. Any added,
/// removed, resized or touched file changes it; `kbuild run` uses it to
/// notice edits to the tree.
pub fn tree_digest(tree: &Path, skip: &[std::path::PathBuf]) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let prefixes: Vec<String> = skip
        .iter()
        .filter_map(|folder| folder.strip_prefix(tree).ok())
        .filter_map(|relative| relative.to_str())
        .filter(|relative| !relative.is_empty())
        .map(|relative| format!("{relative}/"))
        .collect();
    let files = manifest::scan(tree)?;
    let mut hasher = Sha256::new();
    for (path, entry) in &files {
        if prefixes
            .iter()
            .any(|prefix| path.starts_with(prefix.as_str()))
        {
            continue;
        }
        let line = serde_json::to_string(entry).context("serializing a tree entry")?;
        hasher.update(path.as_bytes());
        hasher.update([0]);
        hasher.update(line.as_bytes());
        hasher.update([b'\n']);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}
