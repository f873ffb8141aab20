//! The one VM a project owns: its folder, name, backend and SSH target.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::machine::{choose_backend, Machine};
use super::{VmConfig, VmState};
use crate::exit::Failure;
use crate::profile::{DiskFormat, Profile};
use crate::project::Project;
use crate::ssh::Target;

/// Record of the VM's origin that `up` writes, in `<vm dir>/origin.toml`, so
/// that `status`, `ssh`, `down` and `destroy` work without the image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Origin {
    pub profile: String,
    pub base_image: PathBuf,
    pub base_format: String,
    pub user: String,
}

/// A project's VM with everything needed to reach it.
#[derive(Debug, Clone)]
pub struct ProjectVm {
    pub machine: Machine,
    pub dir: PathBuf,
    pub name: String,
    pub user: String,
}

/// Returns the folder of the project's VM.
pub fn vm_dir(project: &Project) -> PathBuf {
    project.state_dir().join("vm")
}

/// Returns the folder of the project's SSH key pair, which `destroy` keeps.
pub fn key_dir(project: &Project) -> PathBuf {
    project.state_dir().join("ssh")
}

/// Returns a VM name unique to the project folder, such as `kbuild-3f9a0c12d4`.
pub fn vm_name(project: &Project) -> String {
    let digest = Sha256::digest(project.dir.as_os_str().as_encoded_bytes());
    let hex: String = digest
        .iter()
        .take(5)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("kbuild-{hex}")
}

impl ProjectVm {
    /// Opens the project's VM for `up`: the backend of an existing VM, else
    /// the first available one of the profile.
    pub fn for_up(
        project: &Project,
        profile: &Profile,
        base_image: &Path,
        base_format: DiskFormat,
        seed: Option<PathBuf>,
        accel: Option<crate::verify::Accel>,
    ) -> anyhow::Result<ProjectVm> {
        let dir = vm_dir(project);
        let existing = VmState::load(&dir)?;
        let backend = choose_backend(
            &profile.machine.backends,
            existing.as_ref().map(|state| state.backend.as_str()),
        )?;
        let config = VmConfig {
            name: vm_name(project),
            dir: dir.clone(),
            base_image: base_image.to_path_buf(),
            base_format,
            cpus: profile.machine.cpus,
            memory_mib: profile.machine.memory_mib,
            disk_gib: profile.machine.disk_gib,
            seed,
            accel,
            isolated_network: profile.machine.isolated_network,
        };
        let origin = Origin {
            profile: profile.name.clone(),
            base_image: base_image.to_path_buf(),
            base_format: base_format.qemu_img_name().to_string(),
            user: profile.login.user.clone(),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        write_origin(&dir, &origin)?;
        Ok(ProjectVm {
            machine: Machine::open(backend, config),
            name: vm_name(project),
            user: origin.user,
            dir,
        })
    }

    /// Opens the VM that `up` created; `None` when there is none.
    pub fn existing(project: &Project) -> anyhow::Result<Option<ProjectVm>> {
        let dir = vm_dir(project);
        let Some(state) = VmState::load(&dir)? else {
            return Ok(None);
        };
        let origin = read_origin(&dir)?;
        let backend = choose_backend(&[], Some(&state.backend))?;
        let config = VmConfig {
            name: state.name.clone(),
            dir: dir.clone(),
            base_image: origin.base_image.clone(),
            base_format: parse_format(&origin.base_format)?,
            cpus: 1,
            memory_mib: 512,
            disk_gib: 4,
            seed: None,
            accel: None,
            isolated_network: false,
        };
        Ok(Some(ProjectVm {
            machine: Machine::open(backend, config),
            name: state.name,
            user: origin.user,
            dir,
        }))
    }

    /// Returns the SSH target for a VM state: always 127.0.0.1 and the forwarded port.
    pub fn target(&self, project: &Project, state: &VmState) -> Target {
        Target {
            host: "127.0.0.1".to_string(),
            port: state.ssh_port,
            user: self.user.clone(),
            key: key_dir(project).join("id_ed25519"),
            known_hosts: self.dir.join("known_hosts"),
            name: self.name.clone(),
        }
    }
}

fn origin_path(dir: &Path) -> PathBuf {
    dir.join("origin.toml")
}

fn write_origin(dir: &Path, origin: &Origin) -> anyhow::Result<()> {
    let path = origin_path(dir);
    let text = toml::to_string(origin).context("serializing the VM origin")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

fn read_origin(dir: &Path) -> anyhow::Result<Origin> {
    let path = origin_path(dir);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}; run `kbuild up` to recreate it", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn parse_format(name: &str) -> anyhow::Result<DiskFormat> {
    match name {
        "qcow2" => Ok(DiskFormat::Qcow2),
        "vdi" => Ok(DiskFormat::Vdi),
        "vmdk" => Ok(DiskFormat::Vmdk),
        "raw" => Ok(DiskFormat::Raw),
        other => Err(Failure::infrastructure(format!(
            "unknown disk format {other:?} in the VM origin"
        ))),
    }
}
