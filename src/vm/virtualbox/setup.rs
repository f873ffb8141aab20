//! The steps of `create`, each of which keeps or repairs what an
//! interrupted run left: registration, controller, disk, seed and SSH forward.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::args::{self, Drive, CONTROLLER, DISK_PORT, FORWARD_HOST_IP, FORWARD_RULE, SEED_PORT};
use super::command::COPY_DEADLINE;
use super::info::{self, ForwardRule, MachineInfo};
use super::VirtualBoxVm;
use crate::exit::Failure;
use crate::profile::DiskFormat;
use crate::ui;
use crate::vm::free_local_port;

impl VirtualBoxVm {
    /// Reuses a registered VM, registers a leftover settings file, or
    /// creates and registers a new VM.
    pub(super) async fn ensure_registered(&self) -> anyhow::Result<()> {
        let name = &self.config.name;
        if self.is_registered().await? {
            ui::detail(format!("reusing the registered VirtualBox VM {name}"));
            return Ok(());
        }
        let settings = self.settings_path();
        if settings.is_file() {
            ui::status(
                "Registering",
                format!("leftover settings {}", settings.display()),
            );
            match self.vbox.run(&args::register_vm(&settings)).await {
                Ok(_) => return Ok(()),
                Err(error) => {
                    let folder = self.machine_folder();
                    ui::warn(format!(
                        "{error:#}\nremoving the leftover folder {} and creating the VM anew",
                        folder.display()
                    ));
                    std::fs::remove_dir_all(&folder)
                        .with_context(|| format!("removing {}", folder.display()))?;
                }
            }
        }
        ui::status("Creating", format!("VirtualBox VM {name}"));
        self.vbox
            .run(&args::create_vm(name, &self.config.dir))
            .await?;
        Ok(())
    }

    pub(super) async fn ensure_controller(&self, info: &MachineInfo) -> anyhow::Result<()> {
        if info.controllers.iter().any(|name| name == CONTROLLER) {
            tracing::debug!("VM {} has its {CONTROLLER} controller", self.config.name);
            return Ok(());
        }
        self.vbox
            .run(&args::add_controller(&self.config.name))
            .await?;
        Ok(())
    }

    /// Attaches a VDI copy of the base image, grown to `disk_gib`. The copy
    /// gets a new UUID, so it never collides with the base or another VM.
    pub(super) async fn ensure_disk(&self, info: &MachineInfo) -> anyhow::Result<()> {
        let disk = self.disk_path();
        if self.keep_attached(info, DISK_PORT, &disk).await? {
            ui::detail(format!("reusing the disk {}", disk.display()));
            return Ok(());
        }
        self.discard_medium(&disk, Drive::Disk).await?;
        self.copy_base(&disk).await?;
        self.grow_disk(&disk).await?;
        let name = &self.config.name;
        self.vbox
            .run(&args::attach(name, DISK_PORT, Drive::Disk, &disk))
            .await?;
        Ok(())
    }

    /// Writes a new VDI with the base image's content and a new UUID.
    async fn copy_base(&self, disk: &Path) -> anyhow::Result<()> {
        let base = self.config.base_image.clone();
        ui::status(
            "Copying",
            format!("{} to {}", base.display(), disk.display()),
        );
        let copy = match self.config.base_format {
            DiskFormat::Vdi | DiskFormat::Vmdk => args::clone_disk(&base, disk),
            DiskFormat::Raw => args::convert_raw(&base, disk),
            DiskFormat::Qcow2 => {
                // Cloning qcow2 with VirtualBox is not relied on, so qemu-img
                // converts it. Each VDI that qemu-img writes gets a random
                // UUID (two conversions of one image differ, qemu-img 10.0).
                let target = disk.to_path_buf();
                let convert = move || {
                    crate::image::convert(&base, DiskFormat::Qcow2, DiskFormat::Vdi, &target)
                };
                return tokio::task::spawn_blocking(convert)
                    .await
                    .context("converting the qcow2 base image")?;
            }
        };
        self.vbox.run_within(&copy, COPY_DEADLINE).await?;
        Ok(())
    }

    /// Attaches the NoCloud seed: an ISO as a DVD, a raw FAT image as a VDI disk.
    pub(super) async fn ensure_seed(&self, info: &MachineInfo) -> anyhow::Result<()> {
        let Some(seed) = &self.config.seed else {
            return Ok(());
        };
        let name = &self.config.name;
        if is_iso(seed) {
            if !self.keep_attached(info, SEED_PORT, seed).await? {
                self.vbox
                    .run(&args::attach(name, SEED_PORT, Drive::Dvd, seed))
                    .await?;
            }
            return Ok(());
        }
        let seed_disk = self.seed_disk_path();
        if self.keep_attached(info, SEED_PORT, &seed_disk).await? {
            return Ok(());
        }
        self.discard_medium(&seed_disk, Drive::Disk).await?;
        self.vbox.run(&args::convert_raw(seed, &seed_disk)).await?;
        self.vbox
            .run(&args::attach(name, SEED_PORT, Drive::Disk, &seed_disk))
            .await?;
        Ok(())
    }

    /// Returns true when `medium` is attached at `port` and its file exists.
    /// Otherwise empties the port, so that another medium can be attached.
    async fn keep_attached(
        &self,
        info: &MachineInfo,
        port: u32,
        medium: &Path,
    ) -> anyhow::Result<bool> {
        let Some(attached) = info.attachment(CONTROLLER, port) else {
            return Ok(false);
        };
        if Path::new(attached) == medium && medium.is_file() {
            return Ok(true);
        }
        tracing::debug!(
            "port {port} holds {attached}, not {}; detaching it",
            medium.display()
        );
        self.vbox
            .run(&args::detach(&self.config.name, port))
            .await?;
        Ok(false)
    }

    /// Grows the disk to `disk_gib` unless it is that large already;
    /// VirtualBox cannot shrink a disk.
    async fn grow_disk(&self, disk: &Path) -> anyhow::Result<()> {
        let text = self.vbox.run(&args::show_medium_info(disk)).await?;
        let capacity = info::parse_capacity_mib(&text).with_context(|| {
            format!(
                "reading the capacity of {} from showmediuminfo",
                disk.display()
            )
        })?;
        let target_mib = u64::from(self.config.disk_gib) * 1024;
        if capacity < target_mib {
            tracing::debug!(
                "growing {} from {capacity} MiB to {target_mib} MiB",
                disk.display()
            );
            self.vbox.run(&args::resize_disk(disk, target_mib)).await?;
        }
        Ok(())
    }

    /// Removes a leftover medium file: closes it in VirtualBox's media registry
    /// when it is registered, deleting the file too, and deletes an
    /// unregistered file directly.
    pub(super) async fn discard_medium(&self, path: &Path, drive: Drive) -> anyhow::Result<()> {
        if self
            .registered_media(drive)
            .await?
            .iter()
            .any(|medium| medium == path)
        {
            tracing::debug!("closing the leftover medium {}", path.display());
            let delete = path.is_file();
            self.vbox
                .run(&args::close_medium(drive, path, delete))
                .await?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {
                tracing::debug!("deleted the leftover file {}", path.display());
                Ok(())
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error).with_context(|| format!("removing {}", path.display())),
        }
    }

    pub(super) async fn registered_media(&self, drive: Drive) -> anyhow::Result<Vec<PathBuf>> {
        let text = self.vbox.run(&args::list(drive.list_name())).await?;
        Ok(info::parse_medium_locations(&text))
    }

    /// Returns the SSH port, keeping a correct rule whose port is usable and
    /// otherwise replacing the rule with one on a free port of 127.0.0.1.
    pub(super) async fn ensure_forward(&self, info: &MachineInfo) -> anyhow::Result<u16> {
        let running = info.is_running();
        let existing = info.forward(FORWARD_RULE);
        if let Some(port) = existing.and_then(|rule| usable_port(rule, running)) {
            return Ok(port);
        }
        let name = &self.config.name;
        if existing.is_some() {
            self.vbox.run(&args::delete_forward(name, running)).await?;
        }
        let port = free_local_port()?;
        self.vbox
            .run(&args::add_forward(name, port, running))
            .await?;
        Ok(port)
    }
}

/// Returns the host port of kbuild's own SSH rule when it can serve: the VM
/// runs (so VirtualBox has bound the port) or the port is free now.
fn usable_port(rule: &ForwardRule, running: bool) -> Option<u16> {
    let ours =
        rule.protocol == "tcp" && rule.host_ip == FORWARD_HOST_IP && rule.guest_port == Some(22);
    let port = rule.host_port.filter(|_| ours)?;
    (running || TcpListener::bind((FORWARD_HOST_IP, port)).is_ok()).then_some(port)
}

pub(super) fn is_iso(path: &Path) -> bool {
    path.extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("iso"))
}

/// Accepts names that make one plain folder: VirtualBox names the machine
/// folder and settings file after the VM.
pub(super) fn check_name(name: &str) -> anyhow::Result<()> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if name.is_empty() || name.starts_with('.') || !name.chars().all(plain) {
        return Err(Failure::usage(format!(
            "invalid VirtualBox VM name {name:?}: use letters, digits, `-`, `_` and `.`, \
             not starting with `.`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> ForwardRule {
        ForwardRule::parse(text).expect("six fields")
    }

    #[test]
    fn usable_port_needs_loopback() {
        assert_eq!(usable_port(&rule("ssh,tcp,,2222,,22"), true), None);
        assert_eq!(usable_port(&rule("ssh,tcp,0.0.0.0,2222,,22"), true), None);
        assert_eq!(
            usable_port(&rule("ssh,tcp,127.0.0.1,2222,,22"), true),
            Some(2222)
        );
    }

    #[test]
    fn usable_port_needs_guest_ssh() {
        assert_eq!(
            usable_port(&rule("ssh,tcp,127.0.0.1,2222,,2200"), true),
            None
        );
        assert_eq!(usable_port(&rule("ssh,udp,127.0.0.1,2222,,22"), true), None);
    }

    #[test]
    fn usable_port_stopped_needs_free_port() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a port");
        let taken = listener.local_addr().expect("local address").port();
        let text = format!("ssh,tcp,127.0.0.1,{taken},,22");
        assert_eq!(usable_port(&rule(&text), false), None);
        assert_eq!(usable_port(&rule(&text), true), Some(taken));
    }

    #[test]
    fn check_name_cases() {
        assert!(check_name("kbuild-demo_1.0").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("..").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a b").is_err());
    }

    #[test]
    fn is_iso_ignores_case() {
        assert!(is_iso(Path::new("/v/seed.ISO")));
        assert!(!is_iso(Path::new("/v/seed.img")));
    }
}
