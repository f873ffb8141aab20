//! The kernel source tree a project works on: a folder as it is, or a
//! tarball unpacked once into the project's state folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::exit::Failure;
use crate::image::{self, FetchOptions};
use crate::profile::{Archive, ChecksumSource, Digest, DigestAlgorithm, DiskFormat, ImageSpec};
use crate::project::{Project, SourceDownload};
use crate::ui;

const TARBALL_SUFFIXES: &[&str] = &[".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar.zst", ".tar"];

/// File in an unpacked tree that records which tarball it came from.
const STAMP: &str = ".kbuild-unpacked-from";

/// Returns the kernel tree for `project`, downloading and unpacking a
/// tarball source on first use.
pub async fn kernel_tree(project: &Project) -> anyhow::Result<PathBuf> {
    if let Some(download) = &project.kernel.download {
        let tarball = fetch_tarball(download).await?;
        let stem = tarball_stem(&tarball).ok_or_else(|| {
            Failure::usage(format!(
                "kernel source {} is not a tarball ({}); give the URL of one",
                download.url,
                TARBALL_SUFFIXES.join(", ")
            ))
        })?;
        let tree = project.state_dir().join("source").join(stem);
        unpack_once(&tarball, &tree)?;
        check_kernel_tree(&tree)?;
        return Ok(tree);
    }
    let source = &project.kernel.source;
    if source.is_dir() {
        check_kernel_tree(source)?;
        return Ok(source.clone());
    }
    if !source.exists() {
        return Err(Failure::usage(format!(
            "kernel source {} not found; set kernel.source in {} to a kernel tree or tarball \
             (Debian: apt-get install linux-source-6.1 puts one in /usr/src)",
            source.display(),
            project.path.display()
        )));
    }
    let Some(stem) = tarball_stem(source) else {
        return Err(Failure::usage(format!(
            "kernel source {} is neither a folder nor a tarball ({}); point kernel.source at one",
            source.display(),
            TARBALL_SUFFIXES.join(", ")
        )));
    };
    let tree = project.state_dir().join("source").join(stem);
    unpack_once(source, &tree)?;
    check_kernel_tree(&tree)?;
    Ok(tree)
}

/// Downloads the tarball (or finds it in the cache), checked against its
/// SHA-256, and returns the cached file.
async fn fetch_tarball(download: &SourceDownload) -> anyhow::Result<PathBuf> {
    let spec = ImageSpec {
        urls: vec![download.url.clone()],
        checksum: ChecksumSource::Digest(Digest {
            algorithm: DigestAlgorithm::Sha256,
            hex: download.sha256.clone(),
        }),
        archive: Archive::None,
        format: DiskFormat::Raw,
        file: None,
    };
    let cache = crate::paths::cache_dir().join("sources");
    let fetched = image::fetch_image(&spec, &cache, &FetchOptions::default()).await?;
    Ok(fetched.path)
}

/// Checks that `tree` looks like a Linux source tree: a top Makefile that sets VERSION.
pub fn check_kernel_tree(tree: &Path) -> anyhow::Result<()> {
    let makefile = tree.join("Makefile");
    let text = std::fs::read_to_string(&makefile).unwrap_or_default();
    let has_version = text.lines().any(|line| line.starts_with("VERSION ="));
    if !has_version || !tree.join("kernel").is_dir() {
        return Err(Failure::usage(format!(
            "{} is not a Linux kernel tree: {} is missing or sets no VERSION; point \
             kernel.source at the top folder of a kernel tree",
            tree.display(),
            makefile.display()
        )));
    }
    Ok(())
}

fn tarball_stem(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    TARBALL_SUFFIXES
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .filter(|stem| !stem.is_empty())
        .map(str::to_string)
}

fn stamp_text(tarball: &Path) -> anyhow::Result<String> {
    let metadata = std::fs::metadata(tarball)
        .with_context(|| format!("reading metadata of {}", tarball.display()))?;
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |age| age.as_secs());
    Ok(format!(
        "{}\nsize {}\nmtime {modified}\n",
        tarball.display(),
        metadata.len()
    ))
}

/// Unpacks `tarball` into `tree` unless a matching unpack is already there.
///
/// The tarball is unpacked into a temporary folder beside `tree` and renamed
/// into place, so an interrupted unpack never leaves a half tree behind.
fn unpack_once(tarball: &Path, tree: &Path) -> anyhow::Result<()> {
    let expected = stamp_text(tarball)?;
    if tree.exists() {
        let found = std::fs::read_to_string(tree.join(STAMP)).unwrap_or_default();
        if found == expected {
            return Ok(());
        }
        return Err(Failure::usage(format!(
            "{} was not unpacked from {} as it is now (the tarball changed, or the folder is \
             not kbuild's); remove the folder to unpack again",
            tree.display(),
            tarball.display()
        )));
    }

    let parent = tree.parent().context("unpack folder has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".unpacking-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;

    ui::status(
        "Unpacking",
        format!("{} into {}", tarball.display(), tree.display()),
    );
    let spinner = ui::spinner("{spinner} unpacking kernel source, {elapsed}");
    // GNU tar drops a leading `/` and skips members with `..`, so no entry
    // can land outside the staging folder.
    let output = Command::new("tar")
        .arg("-xf")
        .arg(tarball)
        .arg("-C")
        .arg(staging.path())
        .args([
            "--strip-components=1",
            "--no-same-owner",
            "--no-same-permissions",
        ])
        .output()
        .context("running tar; install it with: apt-get install tar xz-utils")?;
    spinner.finish_and_clear();
    if !output.status.success() {
        return Err(Failure::usage(format!(
            "unpacking {} failed: {}; check that the file is a complete tarball",
            tarball.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }

    std::fs::write(staging.path().join(STAMP), expected)
        .with_context(|| format!("writing {}", staging.path().join(STAMP).display()))?;
    let staged = staging.keep();
    std::fs::rename(&staged, tree)
        .with_context(|| format!("moving {} to {}", staged.display(), tree.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tarball_stem_strips_suffix() {
        let stem = tarball_stem(Path::new("/usr/src/linux-source-6.1.tar.xz"));
        assert_eq!(stem.as_deref(), Some("linux-source-6.1"));
    }

    #[test]
    fn tarball_stem_rejects_other_files() {
        assert_eq!(tarball_stem(Path::new("/tmp/notes.txt")), None);
    }

    #[test]
    fn folder_without_makefile_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let error = check_kernel_tree(dir.path()).unwrap_err().to_string();
        assert!(error.contains("is not a Linux kernel tree"), "{error}");
        assert!(error.contains("Makefile"), "{error}");
    }

    #[test]
    fn tarball_unpacked_once() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("linux-9.9");
        std::fs::create_dir_all(top.join("kernel")).unwrap();
        std::fs::write(top.join("Makefile"), "VERSION = 9\n").unwrap();
        let tarball = dir.path().join("linux-9.9.tar.gz");
        let status = Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir.path())
            .arg("linux-9.9")
            .status()
            .unwrap();
        assert!(status.success());

        let tree = dir.path().join("state/linux-9.9");
        unpack_once(&tarball, &tree).unwrap();
        assert!(tree.join("Makefile").is_file());
        std::fs::write(tree.join("kernel/mark"), "kept").unwrap();
        unpack_once(&tarball, &tree).unwrap();
        assert!(
            tree.join("kernel/mark").is_file(),
            "second unpack replaced the tree"
        );
    }
}
