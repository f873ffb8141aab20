//! The VM's disk: a qcow2 overlay whose backing file is the cached base
//! image, so that the base image is only ever read.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use super::process::run_tool;
use super::QEMU_IMG;
use crate::exit::Failure;
use crate::profile::DiskFormat;

const GIB: u64 = 1024 * 1024 * 1024;

/// Creates `overlay` on `base`, as large as the base image or `disk_gib`,
/// whichever is larger. `base` must be absolute, because qcow2 stores it.
pub async fn create_overlay(
    base: &Path,
    format: DiskFormat,
    overlay: &Path,
    disk_gib: u32,
) -> anyhow::Result<()> {
    let base_size = virtual_size(base, format).await?;
    let size = base_size.max(u64::from(disk_gib) * GIB);
    let temporary = overlay.with_extension("qcow2.tmp");
    let args: Vec<String> = vec![
        "create".into(),
        "-q".into(),
        "-f".into(),
        "qcow2".into(),
        "-F".into(),
        format.qemu_img_name().into(),
        "-b".into(),
        base.display().to_string(),
        temporary.display().to_string(),
        size.to_string(),
    ];
    if let Err(error) = run_tool(QEMU_IMG, &args).await {
        let _ = std::fs::remove_file(&temporary);
        return Err(error.context(format!("creating the VM disk on {}", base.display())));
    }
    std::fs::rename(&temporary, overlay)
        .with_context(|| format!("renaming {} to {}", temporary.display(), overlay.display()))
}

/// Fails unless `overlay`'s backing file is `base`, so that a VM is never
/// silently kept on an older image.
pub async fn check_backing(overlay: &Path, base: &Path) -> anyhow::Result<()> {
    let info = image_info(overlay, Some(DiskFormat::Qcow2)).await?;
    let backing = info
        .get("full-backing-filename")
        .or_else(|| info.get("backing-filename"))
        .and_then(Value::as_str)
        .map(PathBuf::from);
    match backing {
        Some(backing) if backing == base => Ok(()),
        Some(backing) => Err(Failure::infrastructure(format!(
            "VM disk {} is based on {}, not on {}; destroy the VM first to create it from the new image",
            overlay.display(),
            backing.display(),
            base.display()
        ))),
        None => Err(Failure::infrastructure(format!(
            "VM disk {} has no backing image; destroy the VM first to create it again",
            overlay.display()
        ))),
    }
}

/// Returns the virtual size of the disk image at `path`, in bytes.
pub async fn virtual_size(path: &Path, format: DiskFormat) -> anyhow::Result<u64> {
    let info = image_info(path, Some(format)).await?;
    info.get("virtual-size")
        .and_then(Value::as_u64)
        .with_context(|| format!("qemu-img info {} reported no virtual-size", path.display()))
}

/// Runs `qemu-img info -U` (force share), which also reads an image that a
/// running QEMU has open and locked.
pub async fn image_info(path: &Path, format: Option<DiskFormat>) -> anyhow::Result<Value> {
    let mut args: Vec<String> = vec!["info".into(), "-U".into(), "--output=json".into()];
    if let Some(format) = format {
        args.extend(["-f".into(), format.qemu_img_name().into()]);
    }
    args.push(path.display().to_string());
    let output = run_tool(QEMU_IMG, &args).await?;
    serde_json::from_str(&output)
        .with_context(|| format!("parsing qemu-img info of {}", path.display()))
}
