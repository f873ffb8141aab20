//! `--on-host`: builds the kernel on the host with the fast loop's build,
//! stages the kernel and its stripped modules, and sends them to the guest's
//! stage folder for the same install step an in-guest build uses.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::Guest;
use crate::build::{self, BuildOptions, Built};
use crate::exit::Failure;
use crate::project::Project;
use crate::ui;

/// A kernel built on the host and staged in the guest.
pub struct Pushed {
    pub built: Built,
    /// Bytes of the compressed stage sent to the guest.
    pub bytes_sent: u64,
    pub elapsed: Duration,
}

/// Builds the kernel for the VM on the host, then stages it in the guest.
pub async fn build_and_push(
    project: &Project,
    tree: &Path,
    guest: &Guest,
    options: &BuildOptions,
) -> anyhow::Result<Pushed> {
    let vm_project = guest.kernel_project(project)?;
    let built = build::build(&vm_project, tree, options).await?;
    let started = Instant::now();
    let stage = super::state_dir(project).join("stage");
    make_stage(&vm_project, tree, &built, &stage).await?;
    let archive = super::state_dir(project).join("stage.tar.gz");
    let result = send_stage(guest, &stage, &archive);
    let _ = std::fs::remove_file(&archive);
    let bytes_sent = result?;
    Ok(Pushed {
        built,
        bytes_sent,
        elapsed: started.elapsed(),
    })
}

/// Fills `stage` with boot/vmlinuz, boot/System.map, boot/config and the
/// stripped modules under lib/modules.
async fn make_stage(
    vm_project: &Project,
    tree: &Path,
    built: &Built,
    stage: &Path,
) -> anyhow::Result<()> {
    if stage.exists() {
        std::fs::remove_dir_all(stage)
            .with_context(|| format!("removing the old stage {}", stage.display()))?;
    }
    let boot = stage.join("boot");
    std::fs::create_dir_all(&boot).with_context(|| format!("creating {}", boot.display()))?;
    let build_dir = &vm_project.build.dir;
    for (from, to) in [
        (built.image.clone(), "vmlinuz"),
        (build_dir.join("System.map"), "System.map"),
        (build_dir.join(".config"), "config"),
    ] {
        std::fs::copy(&from, boot.join(to))
            .with_context(|| format!("copying {} to {}", from.display(), boot.display()))?;
    }
    let installed = build::modules_install(vm_project, tree, stage, &built.log).await?;
    if installed {
        ui::detail(format!(
            "modules stripped into {}",
            stage.join("lib/modules").display()
        ));
    }
    Ok(())
}

/// Packs `stage` into `archive`, sends it and unpacks it as the guest's
/// stage folder; returns the bytes sent.
fn send_stage(guest: &Guest, stage: &Path, archive: &Path) -> anyhow::Result<u64> {
    pack(stage, archive)?;
    let size = std::fs::metadata(archive)
        .with_context(|| format!("reading {}", archive.display()))?
        .len();
    let dirs = guest.dirs();
    let remote_archive = format!("{}/stage.tar.gz", dirs.root);
    ui::status(
        "Sending",
        format!(
            "kernel and modules to VM {} ({})",
            guest.vm.name,
            ui::bytes(size)
        ),
    );
    let bar =
        ui::is_interactive().then(|| ui::bar(size, "{bar:30} {bytes}/{total_bytes} {wide_msg}"));
    tokio::task::block_in_place(|| {
        guest.session.upload(archive, &remote_archive, |sent| {
            if let Some(bar) = &bar {
                bar.set_position(sent);
            }
        })
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let script = "set -e; rm -rf \"$1\"; mkdir -p \"$1\"; tar -xzf \"$2\" -C \"$1\"; rm -f \"$2\"";
    guest
        .capture(&["sh", "-c", script, "sh", &dirs.stage, &remote_archive])
        .map_err(|error| {
            Failure::infrastructure(format!(
                "unpacking the kernel in VM {} failed: {error:#}",
                guest.vm.name
            ))
        })?;
    Ok(size)
}

/// Writes `dir`'s content as a gzip-compressed tar file, keeping symlinks
/// as symlinks.
fn pack(dir: &Path, archive: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(archive)
        .with_context(|| format!("creating {}", archive.display()))?;
    let mut builder = tar::Builder::new(GzEncoder::new(file, Compression::fast()));
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", dir)
        .with_context(|| format!("packing {} into {}", dir.display(), archive.display()))?;
    builder
        .into_inner()
        .and_then(GzEncoder::finish)
        .with_context(|| format!("finishing {}", archive.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_keeps_symlinks_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("stage");
        std::fs::create_dir_all(stage.join("boot")).unwrap();
        std::fs::write(stage.join("boot/vmlinuz"), b"kernel").unwrap();
        std::os::unix::fs::symlink("/nowhere", stage.join("build")).unwrap();
        let archive = dir.path().join("stage.tar.gz");
        pack(&stage, &archive).unwrap();

        let file = std::fs::File::open(&archive).unwrap();
        let mut reader = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut kinds = Vec::new();
        for entry in reader.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            kinds.push((path, entry.header().entry_type().is_symlink()));
        }
        assert!(
            kinds.contains(&("boot/vmlinuz".to_string(), false)),
            "{kinds:?}"
        );
        assert!(kinds.contains(&("build".to_string(), true)), "{kinds:?}");
    }
}
