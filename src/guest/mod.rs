//! Work inside the project's VM over SSH: the kernel tree sent to the guest,
//! the build there, the install of a kernel built here or there, the boot
//! into it, and the checks that the syscall works.
//!
//! The modules, in the order they run:
//! - `sync` sends the tree to the guest.
//! - `remote_build` runs make in the guest, or `push` builds on the host and
//!   sends the result.
//! - `install` installs kernel, modules and initramfs and arms a one-time
//!   boot entry, with `grub` reading the menu.
//! - `boot` reboots and falls back; `check` tests the syscall, its symbol and
//!   its log line.

pub mod boot;
pub mod check;
pub mod grub;
pub mod install;
pub mod install_script;
pub mod push;
pub mod remote_build;
pub mod sync;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::exit::Failure;
use crate::profile::Profile;
use crate::project::{ConfigBase, Project};
use crate::ssh::{self, Session};
use crate::vm::project_vm::ProjectVm;
use crate::vm::{VmState, VmStatus};

/// Console lines shown when the guest does not come back.
pub const CONSOLE_LINES: usize = 40;

/// Time to wait for SSH on a VM that `status` reports running.
const CONNECT_WAIT: Duration = Duration::from_secs(120);

/// The project's running VM with an open SSH session.
pub struct Guest {
    pub vm: ProjectVm,
    pub state: VmState,
    pub profile: Profile,
    pub session: Session,
    /// The login user's home folder in the guest.
    pub home: String,
    pub is_root: bool,
}

impl Guest {
    /// Connects to the project's VM; fails when there is none or it is stopped.
    pub async fn open(project: &Project) -> anyhow::Result<Guest> {
        let vm = ProjectVm::existing(project)?
            .ok_or_else(|| Failure::usage("this project has no VM; run `kbuild up` first"))?;
        let state = match (vm.machine.status().await?, vm.machine.state()?) {
            (VmStatus::Running, Some(state)) => state,
            _ => {
                return Err(Failure::infrastructure(format!(
                    "VM {} is not running; run `kbuild up` to start it",
                    vm.name
                )))
            }
        };
        let profile = Profile::load(&project.vm.profile, &project.dir)?;
        let target = vm.target(project, &state);
        let machine = vm.machine.clone();
        let deadline = Instant::now() + CONNECT_WAIT;
        let session = tokio::task::block_in_place(|| {
            ssh::wait_for_ssh(&target, deadline, || machine.console_tail(CONSOLE_LINES))
        })?;
        let output = tokio::task::block_in_place(|| {
            session.exec_checked(&["sh", "-c", "id -u; echo $HOME"])
        })?;
        let mut lines = output.stdout.lines();
        let is_root = lines.next().map(str::trim) == Some("0");
        let home = lines.next().unwrap_or("").trim().to_string();
        if !home.starts_with('/') {
            return Err(Failure::infrastructure(format!(
                "VM {} reported no home folder for {} (got {home:?}); check the guest user",
                vm.name, vm.user
            )));
        }
        let root = GuestDirs::under(&home).root;
        tokio::task::block_in_place(|| session.exec_checked(&["mkdir", "-p", &root]))?;
        Ok(Guest {
            vm,
            state,
            profile,
            session,
            home,
            is_root,
        })
    }

    /// Returns `project` as it builds a kernel for this VM: the `[vm]`
    /// config base and fragments, the `build-vm` folder, the guest's own
    /// config when the base is `guest`, and its `lsmod` output for
    /// localmodconfig.
    pub fn kernel_project(&self, project: &Project) -> anyhow::Result<Project> {
        let dir = state_dir(project);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut vm_project = project.clone();
        vm_project.build.dir = project.build.vm_dir();
        vm_project.build.fragments = project.vm.fragments.clone();
        vm_project.build.config = match &project.vm.config {
            ConfigBase::Guest => ConfigBase::File(self.fetch_config(&dir)?),
            other => other.clone(),
        };
        if project.vm.localmodconfig {
            let lsmod = self.capture(&["lsmod"])?;
            let path = dir.join("lsmod.txt");
            crate::build::write_atomically(&path, lsmod.as_bytes())?;
            vm_project.build.lsmod = Some(path);
        }
        Ok(vm_project)
    }

    /// Copies the running kernel's config out of the guest into `dir`.
    fn fetch_config(&self, dir: &std::path::Path) -> anyhow::Result<PathBuf> {
        let script = "c=/boot/config-$(uname -r); if [ -r \"$c\" ]; then cat \"$c\"; \
                      elif [ -r /proc/config.gz ]; then zcat /proc/config.gz; else exit 3; fi";
        let output =
            tokio::task::block_in_place(|| self.session.exec_capture(&["sh", "-c", script]))?;
        if !output.status.success() || !output.stdout.contains("CONFIG_") {
            return Err(Failure::usage(format!(
                "VM {} has neither /boot/config-$(uname -r) nor /proc/config.gz, so [vm] config \
                 \"guest\" has nothing to start from; set [vm] config = \"tinyconfig\" (with the \
                 built-in vm fragment) or a path to a .config file",
                self.vm.name
            )));
        }
        let path = dir.join("guest.config");
        crate::build::write_atomically(&path, output.stdout.as_bytes())?;
        Ok(path)
    }

    /// Returns the folders kbuild uses in the guest.
    pub fn dirs(&self) -> GuestDirs {
        GuestDirs::under(&self.home)
    }

    /// Prefixes `argv` with `sudo -n` unless the guest user is root.
    pub fn as_root<'a>(&self, argv: &[&'a str]) -> Vec<&'a str> {
        let mut command = Vec::with_capacity(argv.len() + 2);
        if !self.is_root {
            command.extend(["sudo", "-n"]);
        }
        command.extend_from_slice(argv);
        command
    }

    /// Writes `text` to `remote` in the guest, through a temporary file on
    /// each side.
    pub fn upload_text(&self, text: &str, remote: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut local = tempfile::NamedTempFile::new().context("creating a temporary file")?;
        local
            .write_all(text.as_bytes())
            .context("writing a temporary file")?;
        tokio::task::block_in_place(|| self.session.upload(local.path(), remote, |_| {}))?;
        Ok(())
    }

    /// Runs `argv` in the guest and returns its standard output; fails with
    /// its standard error on a non-zero exit.
    pub fn capture(&self, argv: &[&str]) -> anyhow::Result<String> {
        let output = tokio::task::block_in_place(|| self.session.exec_checked(argv))?;
        Ok(output.stdout)
    }

    /// Returns the VM's serial console log, which survives reboots.
    pub fn console_log(&self) -> PathBuf {
        self.state.console_log.clone()
    }
}

/// The folders kbuild uses in the guest, all under `~/kbuild`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDirs {
    pub root: String,
    /// The kernel tree, as `sync` sends it.
    pub tree: String,
    /// The `O=` build folder of builds in the guest.
    pub build: String,
    /// Kernel, System.map, config and modules ready for `install`.
    pub stage: String,
    /// The test program.
    pub test: String,
}

impl GuestDirs {
    pub fn under(home: &str) -> GuestDirs {
        let root = format!("{}/kbuild", home.trim_end_matches('/'));
        GuestDirs {
            tree: format!("{root}/linux"),
            build: format!("{root}/build"),
            stage: format!("{root}/stage"),
            test: format!("{root}/test"),
            root,
        }
    }
}

/// Returns the host folder of kbuild's records about the guest.
pub fn state_dir(project: &Project) -> PathBuf {
    project.state_dir().join("guest")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_under_home() {
        let dirs = GuestDirs::under("/home/debian/");
        assert_eq!(dirs.tree, "/home/debian/kbuild/linux");
        assert_eq!(dirs.stage, "/home/debian/kbuild/stage");
    }
}
