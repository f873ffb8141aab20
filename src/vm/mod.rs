//! Virtual machines that kbuild creates from a profile's image: the shared
//! configuration and state, and one backend per hypervisor.

pub mod console;
pub mod qemu;
pub mod qmp;
pub mod seed;
pub mod virtualbox;

pub mod machine;
pub mod project_vm;
pub mod up;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::profile::DiskFormat;
use crate::verify::Accel;

/// Settings a backend needs to create and boot one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Unique per project, used for VirtualBox registration and messages.
    pub name: String,
    /// Folder for this VM's disk, logs, sockets and state file.
    pub dir: PathBuf,
    /// The cached, pristine base image. Backends never write to it.
    pub base_image: PathBuf,
    pub base_format: DiskFormat,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_gib: u32,
    /// A NoCloud seed image (`cidata`) to attach as a second disk, for cloud images.
    pub seed: Option<PathBuf>,
    /// QEMU only: the accelerator; `None` probes KVM and falls back to TCG.
    pub accel: Option<Accel>,
    /// QEMU only: no network beyond the SSH forward (QEMU's `restrict=on`).
    pub isolated_network: bool,
}

/// Whether a VM exists and runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmStatus {
    Running,
    Stopped,
    /// No VM was created, or it was destroyed.
    Missing,
}

/// Record of a created VM, in `<dir>/vm.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    pub backend: String,
    pub name: String,
    /// Host port on 127.0.0.1 forwarded to the guest's port 22.
    pub ssh_port: u16,
    /// QEMU's process id while it runs.
    pub pid: Option<u32>,
    pub disk: PathBuf,
    pub console_log: PathBuf,
}

impl VmState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("vm.toml")
    }

    /// Reads the state file; `None` when there is none.
    pub fn load(dir: &Path) -> anyhow::Result<Option<VmState>> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        let state = toml::from_str(&text).with_context(|| {
            format!(
                "parsing {}; remove it (the VM files stay) and run `kbuild up`",
                path.display()
            )
        })?;
        Ok(Some(state))
    }

    /// Writes the state file through a temporary file and a rename.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(dir);
        let text = toml::to_string(self).context("serializing the VM state")?;
        let temporary = dir.join(".vm.toml.tmp");
        std::fs::write(&temporary, text)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, &path)
            .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
    }
}

/// Returns a TCP port on 127.0.0.1 that is free now.
///
/// NOTE: another process can take the port between this check and the
/// backend binding it; backends report the bind failure, and `up` retries.
pub fn free_local_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("finding a free TCP port on 127.0.0.1")?;
    Ok(listener
        .local_addr()
        .context("reading the bound port")?
        .port())
}
