//! The VirtualBox backend: a VM registered with VirtualBox through
//! VBoxManage, booting a VDI clone of the cached base image, with SSH
//! forwarded from 127.0.0.1 and the serial console written to a file.
//!
//! Every step checks what an interrupted run may have left: a registered VM
//! is reused, a leftover settings file is registered again, an existing
//! controller or attached disk is kept, and the SSH rule is replaced.

mod args;
mod command;
mod info;
mod setup;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

pub use command::{VBoxManage, PROGRAM_VARIABLE};

use super::{VmConfig, VmState, VmStatus};
use crate::exit::Failure;
use crate::ui;
use args::{Control, Drive};
use info::MachineInfo;

/// The `backend` value of this backend's state file.
pub const BACKEND: &str = "virtualbox";

/// Interval between two state checks while a VM shuts down.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Time a VM may take to stop after `controlvm poweroff`.
const POWEROFF_DEADLINE: Duration = Duration::from_secs(30);

/// One VirtualBox VM, with its disk, console log and settings in `config.dir`.
#[derive(Debug, Clone)]
pub struct VirtualBoxVm {
    config: VmConfig,
    vbox: VBoxManage,
}

impl VirtualBoxVm {
    /// Creates the handle, running VBoxManage from `KBUILD_VBOXMANAGE` or PATH.
    /// Paths in `config` are made absolute; nothing is touched on disk.
    pub fn new(config: VmConfig) -> VirtualBoxVm {
        VirtualBoxVm::with_vboxmanage(config, VBoxManage::from_env())
    }

    /// Creates the handle with the given VBoxManage program.
    pub fn with_vboxmanage(mut config: VmConfig, vbox: VBoxManage) -> VirtualBoxVm {
        config.dir = absolute(&config.dir);
        config.base_image = absolute(&config.base_image);
        config.seed = config.seed.as_deref().map(absolute);
        VirtualBoxVm { config, vbox }
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Reads the state file; `None` before `create`.
    pub fn state(&self) -> anyhow::Result<Option<VmState>> {
        let state = VmState::load(&self.config.dir)?;
        if let Some(state) = &state {
            if state.backend != BACKEND {
                return Err(Failure::infrastructure(format!(
                    "{} holds a {} VM, not a VirtualBox one; destroy that VM first",
                    self.config.dir.display(),
                    state.backend
                )));
            }
        }
        Ok(state)
    }

    /// Registers the VM with its disk, seed, hardware settings and SSH
    /// forward, reusing whatever an earlier run left, and writes the state file.
    pub async fn create(&self) -> anyhow::Result<()> {
        setup::check_name(&self.config.name)?;
        let dir = &self.config.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        self.ensure_registered().await?;
        let info = self.owned_info().await?;
        if info.is_running() {
            ui::warn(format!(
                "VirtualBox VM {} is running, so its disks and hardware stay as they are",
                self.config.name
            ));
        } else {
            self.ensure_controller(&info).await?;
            self.ensure_disk(&info).await?;
            self.ensure_seed(&info).await?;
            let console = self.console_path();
            let name = &self.config.name;
            let (cpus, memory) = (self.config.cpus, self.config.memory_mib);
            self.vbox
                .run(&args::modify_hardware(name, cpus, memory, &console))
                .await?;
        }
        let ssh_port = self.ensure_forward(&info).await?;
        self.save_state(&info, ssh_port)?;
        Ok(())
    }

    /// Boots the VM headless unless it runs already, creating it first if
    /// needed, and returns the state with the SSH port.
    pub async fn start(&self) -> anyhow::Result<VmState> {
        self.create().await?;
        let info = self.owned_info().await?;
        let ssh_port = self.ensure_forward(&info).await?;
        if !info.is_running() {
            ui::status(
                "Starting",
                format!("VirtualBox VM {} (headless)", self.config.name),
            );
            self.vbox.run(&args::start_vm(&self.config.name)).await?;
        }
        self.save_state(&info, ssh_port)
    }

    /// Reports whether the VM is registered and whether it runs.
    pub async fn status(&self) -> anyhow::Result<VmStatus> {
        Ok(match self.info().await? {
            None => VmStatus::Missing,
            Some(info) => info::status_of(&info.state),
        })
    }

    /// Presses the ACPI power button and waits up to `timeout` for the guest
    /// to power off, then powers the VM off.
    pub async fn stop(&self, timeout: Duration) -> anyhow::Result<()> {
        if self.status().await? != VmStatus::Running {
            return Ok(());
        }
        let name = &self.config.name;
        ui::status("Stopping", format!("VirtualBox VM {name}"));
        match self
            .vbox
            .run(&args::control(name, Control::AcpiPowerButton))
            .await
        {
            Ok(_) if self.wait_for_stop(timeout).await? => return Ok(()),
            Ok(_) => ui::warn(format!(
                "VirtualBox VM {name} did not power off within {} after the ACPI power button; \
                 powering it off",
                ui::seconds(timeout)
            )),
            Err(error) => ui::warn(format!("{error:#}\npowering VirtualBox VM {name} off")),
        }
        if self.status().await? != VmStatus::Running {
            return Ok(());
        }
        self.power_off().await
    }

    /// Powers the VM off, unregisters it, deletes its disks and settings, and
    /// removes its folder. The base image and a seed outside the folder are kept.
    pub async fn destroy(&self) -> anyhow::Result<()> {
        // The machine folder `dir/<name>` is removed recursively, so the name
        // must be a plain folder name.
        setup::check_name(&self.config.name)?;
        let name = &self.config.name;
        if let Some(info) = self.info().await? {
            self.check_owner(&info)?;
            if info.is_running() {
                self.power_off().await?;
            }
            ui::status("Removing", format!("VirtualBox VM {name} and its disks"));
            self.vbox.run(&args::unregister_vm(name)).await?;
        }
        self.close_leftover_media().await?;
        self.remove_files()
    }

    /// Resets the running VM like a hardware reset button.
    pub async fn reset(&self) -> anyhow::Result<()> {
        if self.status().await? != VmStatus::Running {
            return Err(Failure::infrastructure(format!(
                "cannot reset VirtualBox VM {}: it is not running; start it first",
                self.config.name
            )));
        }
        self.vbox
            .run(&args::control(&self.config.name, Control::Reset))
            .await?;
        Ok(())
    }

    /// Returns the last `lines` non-empty lines of the serial console log.
    pub fn console_tail(&self, lines: usize) -> String {
        super::console::tail(&self.console_path(), lines)
    }

    fn disk_path(&self) -> PathBuf {
        self.config.dir.join("disk.vdi")
    }

    fn seed_disk_path(&self) -> PathBuf {
        self.config.dir.join("seed.vdi")
    }

    fn console_path(&self) -> PathBuf {
        self.config.dir.join("console.log")
    }

    /// Returns the folder where VirtualBox keeps the settings file and logs.
    fn machine_folder(&self) -> PathBuf {
        self.config.dir.join(&self.config.name)
    }

    fn settings_path(&self) -> PathBuf {
        self.machine_folder()
            .join(format!("{}.vbox", self.config.name))
    }

    async fn is_registered(&self) -> anyhow::Result<bool> {
        let listing = self.vbox.run(&args::list("vms")).await?;
        Ok(info::parse_vm_names(&listing).contains(&self.config.name))
    }

    /// Reads the VM's settings and state; `None` when it is not registered.
    async fn info(&self) -> anyhow::Result<Option<MachineInfo>> {
        if !self.is_registered().await? {
            return Ok(None);
        }
        let text = self
            .vbox
            .run(&args::show_vm_info(&self.config.name))
            .await?;
        MachineInfo::parse(&text).map(Some)
    }

    /// Reads the VM's settings, which must exist and belong to this folder.
    async fn owned_info(&self) -> anyhow::Result<MachineInfo> {
        let info = self.info().await?.ok_or_else(|| {
            Failure::infrastructure(format!(
                "VirtualBox VM {} is not registered; run `kbuild up` to create it",
                self.config.name
            ))
        })?;
        self.check_owner(&info)?;
        Ok(info)
    }

    /// Rejects a VM of the same name whose settings live outside this VM's
    /// folder, so kbuild never changes or deletes a VM it did not create.
    fn check_owner(&self, info: &MachineInfo) -> anyhow::Result<()> {
        let Some(settings) = &info.settings_file else {
            return Ok(());
        };
        let dir = std::fs::canonicalize(&self.config.dir).unwrap_or(self.config.dir.clone());
        let settings = std::fs::canonicalize(settings).unwrap_or(settings.clone());
        if settings.starts_with(&dir) {
            return Ok(());
        }
        Err(Failure::infrastructure(format!(
            "a VirtualBox VM named {} is registered with settings {}, outside kbuild's folder \
             {}; rename or remove that VM, or give the project another VM name",
            self.config.name,
            settings.display(),
            dir.display()
        )))
    }

    /// Waits until the VM no longer runs; returns false on timeout.
    async fn wait_for_stop(&self, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.status().await? != VmStatus::Running {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            tokio::time::sleep(left.min(POLL_INTERVAL)).await;
        }
    }

    async fn power_off(&self) -> anyhow::Result<()> {
        let name = &self.config.name;
        self.vbox
            .run(&args::control(name, Control::PowerOff))
            .await?;
        if self.wait_for_stop(POWEROFF_DEADLINE).await? {
            return Ok(());
        }
        Err(Failure::infrastructure(format!(
            "VirtualBox VM {name} still runs {} after `controlvm poweroff`; check it with \
             `VBoxManage showvminfo {name}`",
            ui::seconds(POWEROFF_DEADLINE)
        )))
    }

    fn save_state(&self, info: &MachineInfo, ssh_port: u16) -> anyhow::Result<VmState> {
        let disk = info
            .attachment(args::CONTROLLER, args::DISK_PORT)
            .map(PathBuf::from)
            .unwrap_or_else(|| self.disk_path());
        let state = VmState {
            backend: BACKEND.to_string(),
            name: self.config.name.clone(),
            ssh_port,
            pid: None,
            disk,
            console_log: self.console_path(),
        };
        state.save(&self.config.dir)?;
        Ok(state)
    }

    /// Closes media of this VM that are still registered after `unregistervm`:
    /// clones that were never attached, and the ISO seed, whose file stays.
    async fn close_leftover_media(&self) -> anyhow::Result<()> {
        for disk in [self.disk_path(), self.seed_disk_path()] {
            self.discard_medium(&disk, Drive::Disk).await?;
        }
        let Some(seed) = self
            .config
            .seed
            .as_deref()
            .filter(|seed| setup::is_iso(seed))
        else {
            return Ok(());
        };
        if self
            .registered_media(Drive::Dvd)
            .await?
            .iter()
            .any(|m| m == seed)
        {
            self.vbox
                .run(&args::close_medium(Drive::Dvd, seed, false))
                .await?;
        }
        Ok(())
    }

    /// Deletes the files this backend writes, then the folder if nothing else is in it.
    fn remove_files(&self) -> anyhow::Result<()> {
        let dir = &self.config.dir;
        let mut files = vec![
            self.disk_path(),
            self.seed_disk_path(),
            self.console_path(),
            VmState::path(dir),
            dir.join(".vm.toml.tmp"),
        ];
        if let Some(seed) = &self.config.seed {
            if seed.parent() == Some(dir.as_path()) {
                files.push(seed.clone());
            }
        }
        for file in files.iter().filter(|file| **file != self.config.base_image) {
            match std::fs::remove_file(file) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(error).with_context(|| format!("removing {}", file.display()))
                }
            }
        }
        let folder = self.machine_folder();
        if folder.is_dir() {
            std::fs::remove_dir_all(&folder)
                .with_context(|| format!("removing {}", folder.display()))?;
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                tracing::debug!("kept {}: it contains other files", dir.display());
                Ok(())
            }
            Err(error) => Err(error).with_context(|| format!("removing {}", dir.display())),
        }
    }
}

/// Makes `path` absolute against the current folder; keeps it as it is if
/// the current folder cannot be read.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
