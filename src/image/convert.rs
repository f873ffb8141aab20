//! Disk format conversion with `qemu-img convert`, and converted copies kept
//! in the cache next to the pristine image.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use super::cache::{self, ImageDir};
use super::checksum::hash_file;
use super::CachedImage;
use crate::exit::Failure;
use crate::profile::DiskFormat;
use crate::ui;

/// Converts `source` from format `from` to `to` with qemu-img, into `dest`.
///
/// qemu-img writes a temporary file next to `dest`, which is renamed over
/// `dest` only on success. qemu-img opens the source read-only, so the
/// source is never modified.
pub fn convert(source: &Path, from: DiskFormat, to: DiskFormat, dest: &Path) -> anyhow::Result<()> {
    let file_name = dest.file_name().unwrap_or_default().to_string_lossy();
    let temporary = dest.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    cache::remove_file_if_present(&temporary)?;
    let mut command = Command::new("qemu-img");
    command
        .args([
            "convert",
            "-q",
            "-f",
            from.qemu_img_name(),
            "-O",
            to.qemu_img_name(),
        ])
        .arg(source)
        .arg(&temporary);
    tracing::debug!("running {command:?}");
    let output = command.output().map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            Failure::infrastructure(
                "qemu-img not found; install it (Debian and Ubuntu: `apt install qemu-utils`, \
                 Fedora: `dnf install qemu-img`) or run scripts/install-host-tools.sh",
            )
        } else {
            anyhow::Error::new(error).context("running qemu-img")
        }
    })?;
    if !output.status.success() {
        cache::remove_file_if_present(&temporary)?;
        return Err(Failure::infrastructure(format!(
            "qemu-img convert of {} from {} to {} failed ({}): {}",
            source.display(),
            from.qemu_img_name(),
            to.qemu_img_name(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    std::fs::rename(&temporary, dest)
        .with_context(|| format!("renaming {} to {}", temporary.display(), dest.display()))
}

/// Returns `image` in format `to`: the image itself, or a converted copy that
/// is made once and kept read-only in the image's cache folder.
///
/// A kept copy is re-hashed against its SHA-256 record before reuse and made
/// again if it changed.
pub fn convert_cached(image: &CachedImage, to: DiskFormat) -> anyhow::Result<PathBuf> {
    if image.format == to {
        return Ok(image.path.clone());
    }
    let dir = ImageDir {
        root: image.cache_dir.clone(),
    };
    let _lock = cache::lock_blocking(&dir)?;
    let target = dir.disk(to);
    if cache::reuse_recorded(&target)?.is_some() {
        return Ok(target);
    }
    ui::status(
        "Converting",
        format!("{} to {}", image.path.display(), to.qemu_img_name()),
    );
    let partial = target.with_extension(format!("{}.partial", to.qemu_img_name()));
    convert(&image.path, image.format, to, &partial)?;
    let digests = hash_file(&partial, None)?;
    cache::write_record(&target, &digests.sha256)?;
    cache::publish(&partial, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(path: &Path) -> String {
        hash_file(path, None).unwrap().sha256
    }

    fn read_raw(qcow_or_vdi: &Path, format: DiskFormat, out: &Path) -> Vec<u8> {
        convert(qcow_or_vdi, format, DiskFormat::Raw, out).unwrap();
        std::fs::read(out).unwrap()
    }

    #[test]
    fn convert_round_trip_keeps_source() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let mut data = vec![0u8; 4 << 20];
        data[..11].copy_from_slice(b"kbuild disk");
        data[(3 << 20) + 7] = 0x5a;
        std::fs::write(&raw, &data).unwrap();
        let before = sha256(&raw);

        let qcow2 = dir.path().join("disk.qcow2");
        convert(&raw, DiskFormat::Raw, DiskFormat::Qcow2, &qcow2).unwrap();
        let vdi = dir.path().join("disk.vdi");
        convert(&qcow2, DiskFormat::Qcow2, DiskFormat::Vdi, &vdi).unwrap();

        assert_eq!(sha256(&raw), before, "the raw source changed");
        let back = read_raw(&vdi, DiskFormat::Vdi, &dir.path().join("back.raw"));
        assert_eq!(back, data);
        let magic = std::fs::read(&qcow2).unwrap();
        assert_eq!(&magic[..4], b"QFI\xfb");
    }

    #[test]
    fn convert_failure_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("not-a.qcow2");
        std::fs::write(&source, b"plain text, not qcow2").unwrap();
        let dest = dir.path().join("out.vdi");
        let error = convert(&source, DiskFormat::Qcow2, DiskFormat::Vdi, &dest).unwrap_err();
        assert!(error.to_string().contains("qemu-img convert"), "{error}");
        assert!(!dest.exists());
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "a temporary file was left behind");
    }

    #[test]
    fn convert_cached_reuses_and_repairs() {
        let dir = tempfile::tempdir().unwrap();
        let image_dir = ImageDir::create(dir.path(), "sha256-test").unwrap();
        let raw = image_dir.disk(DiskFormat::Raw);
        std::fs::write(&raw, vec![1u8; 1 << 20]).unwrap();
        let image = CachedImage {
            path: raw.clone(),
            format: DiskFormat::Raw,
            digest: format!("sha256:{}", sha256(&raw)),
            cache_dir: image_dir.root.clone(),
        };
        let first = convert_cached(&image, DiskFormat::Qcow2).unwrap();
        let modified = std::fs::metadata(&first).unwrap().modified().unwrap();
        let second = convert_cached(&image, DiskFormat::Qcow2).unwrap();
        assert_eq!(first, second);
        let unchanged = std::fs::metadata(&second).unwrap().modified().unwrap();
        assert_eq!(modified, unchanged, "the copy was converted again");

        std::fs::remove_file(&first).unwrap();
        std::fs::write(&first, b"corrupted").unwrap();
        let repaired = convert_cached(&image, DiskFormat::Qcow2).unwrap();
        let back = read_raw(&repaired, DiskFormat::Qcow2, &dir.path().join("back.raw"));
        assert_eq!(back, vec![1u8; 1 << 20]);
    }
}
