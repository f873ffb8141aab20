//! One VM behind either backend, chosen from the profile's preferences.

use std::time::Duration;

use super::qemu::{self, QemuVm};
use super::virtualbox::{self, VBoxManage, VirtualBoxVm};
use super::{VmConfig, VmState, VmStatus};
use crate::exit::Failure;
use crate::host::find_program;
use crate::profile::Backend;

/// A VM of either backend. An enum rather than a trait object, because the
/// backends' methods are async.
#[derive(Debug, Clone)]
pub enum Machine {
    Qemu(QemuVm),
    VirtualBox(VirtualBoxVm),
}

impl Machine {
    pub fn open(backend: Backend, config: VmConfig) -> Machine {
        match backend {
            Backend::Qemu => Machine::Qemu(QemuVm::new(config)),
            Backend::VirtualBox => Machine::VirtualBox(VirtualBoxVm::new(config)),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Machine::Qemu(_) => Backend::Qemu,
            Machine::VirtualBox(_) => Backend::VirtualBox,
        }
    }

    pub fn state(&self) -> anyhow::Result<Option<VmState>> {
        match self {
            Machine::Qemu(vm) => vm.state(),
            Machine::VirtualBox(vm) => vm.state(),
        }
    }

    pub async fn create(&self) -> anyhow::Result<()> {
        match self {
            Machine::Qemu(vm) => vm.create().await,
            Machine::VirtualBox(vm) => vm.create().await,
        }
    }

    pub async fn start(&self) -> anyhow::Result<VmState> {
        match self {
            Machine::Qemu(vm) => vm.start().await,
            Machine::VirtualBox(vm) => vm.start().await,
        }
    }

    pub async fn status(&self) -> anyhow::Result<VmStatus> {
        match self {
            Machine::Qemu(vm) => vm.status().await,
            Machine::VirtualBox(vm) => vm.status().await,
        }
    }

    pub async fn stop(&self, timeout: Duration) -> anyhow::Result<()> {
        match self {
            Machine::Qemu(vm) => vm.stop(timeout).await,
            Machine::VirtualBox(vm) => vm.stop(timeout).await,
        }
    }

    pub async fn destroy(&self) -> anyhow::Result<()> {
        match self {
            Machine::Qemu(vm) => vm.destroy().await,
            Machine::VirtualBox(vm) => vm.destroy().await,
        }
    }

    pub async fn reset(&self) -> anyhow::Result<()> {
        match self {
            Machine::Qemu(vm) => vm.reset().await,
            Machine::VirtualBox(vm) => vm.reset().await,
        }
    }

    pub fn console_tail(&self, lines: usize) -> String {
        match self {
            Machine::Qemu(vm) => vm.console_tail(lines),
            Machine::VirtualBox(vm) => vm.console_tail(lines),
        }
    }
}

/// True when the backend's program is installed.
pub fn is_available(backend: Backend) -> bool {
    match backend {
        Backend::Qemu => find_program(qemu::QEMU_SYSTEM).is_some(),
        Backend::VirtualBox => {
            let vboxmanage = VBoxManage::from_env();
            let program = vboxmanage.program();
            if program.components().count() > 1 {
                program.is_file()
            } else {
                find_program(&program.to_string_lossy()).is_some()
            }
        }
    }
}

/// Picks the first available backend in the profile's order. An existing
/// VM keeps its backend, so `up` never starts a second VM beside it.
pub fn choose_backend(preferences: &[Backend], existing: Option<&str>) -> anyhow::Result<Backend> {
    if let Some(name) = existing {
        return match name {
            qemu::BACKEND => Ok(Backend::Qemu),
            virtualbox::BACKEND => Ok(Backend::VirtualBox),
            other => Err(Failure::infrastructure(format!(
                "the VM state names an unknown backend {other:?}; run `kbuild destroy`"
            ))),
        };
    }
    preferences
        .iter()
        .copied()
        .find(|backend| is_available(*backend))
        .ok_or_else(|| {
            let names: Vec<&str> = preferences.iter().map(|b| b.name()).collect();
            Failure::infrastructure(format!(
                "none of the profile's backends ({}) is installed; install QEMU with \
                 `sudo scripts/install-host-tools.sh`, or VirtualBox",
                names.join(", ")
            ))
        })
}
