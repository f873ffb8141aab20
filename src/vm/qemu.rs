//! The QEMU backend: a qcow2 overlay on the cached base image, booted as a
//! detached QEMU that forwards SSH from 127.0.0.1 and is controlled over QMP.

mod args;
mod disk;
mod lock;
mod process;
mod shutdown;

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

pub use args::{qemu_args, VmFiles};

use super::{console, free_local_port, qmp, VmConfig, VmState, VmStatus};
use crate::exit::Failure;
use crate::verify::{self, Accel};
use process::Launch;
use shutdown::QMP_DEADLINE;

/// The QEMU system emulator kbuild runs.
pub const QEMU_SYSTEM: &str = "qemu-system-x86_64";
/// The QEMU disk image tool.
pub const QEMU_IMG: &str = "qemu-img";
/// The `backend` value of this backend's state file.
pub const BACKEND: &str = "qemu";

/// Time QEMU may take to initialize before it detaches.
const LAUNCH_DEADLINE: Duration = Duration::from_secs(60);
/// Console lines quoted when QEMU fails to start.
const QUOTED_LINES: usize = 20;

/// One VM run by QEMU, with its files in `config.dir`.
#[derive(Debug, Clone)]
pub struct QemuVm {
    config: VmConfig,
    files: VmFiles,
}

impl QemuVm {
    /// Creates the handle; paths in `config` are made absolute, nothing is touched on disk.
    pub fn new(mut config: VmConfig) -> QemuVm {
        config.dir = absolute(&config.dir);
        config.base_image = absolute(&config.base_image);
        config.seed = config.seed.as_deref().map(absolute);
        let files = VmFiles::new(&config.dir);
        QemuVm { config, files }
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    pub fn files(&self) -> &VmFiles {
        &self.files
    }

    /// Reads the state file; `None` before `create`.
    pub fn state(&self) -> anyhow::Result<Option<VmState>> {
        let state = VmState::load(&self.files.dir)?;
        if let Some(state) = &state {
            if state.backend != BACKEND {
                return Err(Failure::infrastructure(format!(
                    "{} contains a {} VM, not a QEMU one; destroy that VM first",
                    self.files.dir.display(),
                    state.backend
                )));
            }
        }
        Ok(state)
    }

    /// Creates the VM folder, the overlay disk and the state file; keeps
    /// whatever already exists.
    pub async fn create(&self) -> anyhow::Result<()> {
        let _lock = self.lock().await?;
        self.create_locked().await
    }

    /// Boots the VM unless its QEMU already runs, creating it first if
    /// needed, and returns the state with the pid and SSH port.
    pub async fn start(&self) -> anyhow::Result<VmState> {
        let _lock = self.lock().await?;
        self.create_locked().await?;
        let mut state = self.loaded_state()?;
        if let Some(pid) = self.running_pid(&state)? {
            tracing::debug!("VM {} already runs as pid {pid}", self.config.name);
            if state.pid != Some(pid) {
                state.pid = Some(pid);
                state.save(&self.files.dir)?;
            }
            return Ok(state);
        }

        process::require_binary(QEMU_SYSTEM)?;
        let accel = verify::choose_accel(self.config.accel, QEMU_SYSTEM).await;
        self.launch_with_retry(&mut state, accel).await?;
        let pid = process::read_pidfile(&self.files.pidfile)?.with_context(|| {
            format!(
                "QEMU started but wrote no pid file {}",
                self.files.pidfile.display()
            )
        })?;
        state.pid = Some(pid);
        state.save(&self.files.dir)?;
        Ok(state)
    }

    /// Reports whether the VM exists and its QEMU runs; clears a stale pid.
    pub async fn status(&self) -> anyhow::Result<VmStatus> {
        if !self.files.dir.is_dir() {
            return Ok(VmStatus::Missing);
        }
        let _lock = self.lock().await?;
        let Some(mut state) = self.state()? else {
            return Ok(VmStatus::Missing);
        };
        if !self.files.disk.exists() {
            return Ok(VmStatus::Missing);
        }
        let Some(pid) = self.running_pid(&state)? else {
            self.clear_runtime(&mut state)?;
            return Ok(VmStatus::Stopped);
        };
        match qmp::Qmp::connect(&self.files.qmp_socket, QMP_DEADLINE).await {
            Ok(mut session) => match session.query_status().await {
                Ok(run_state) => tracing::debug!("VM {} (pid {pid}): {run_state}", state.name),
                Err(error) => tracing::debug!("query-status of VM {}: {error:#}", state.name),
            },
            Err(error) => tracing::debug!("QMP of VM {} (pid {pid}): {error:#}", state.name),
        }
        Ok(VmStatus::Running)
    }

    /// Stops the VM. An ACPI power-off request over QMP comes first, and the
    /// guest gets three quarters of `timeout` to act on it. Then QMP `quit`,
    /// SIGTERM and SIGKILL to the recorded pid follow, each waiting an eighth
    /// of `timeout` (at least 0.5 s). A zero `timeout` skips the ACPI request.
    pub async fn stop(&self, timeout: Duration) -> anyhow::Result<()> {
        if !self.files.dir.is_dir() {
            return Ok(());
        }
        let _lock = self.lock().await?;
        self.stop_locked(timeout).await
    }

    /// Stops QEMU at once and deletes the VM's files. The base image and a
    /// seed image outside the VM folder are left alone.
    pub async fn destroy(&self) -> anyhow::Result<()> {
        if !self.files.dir.is_dir() {
            return Ok(());
        }
        let _lock = self.lock().await?;
        self.stop_locked(Duration::ZERO).await?;
        for file in self.owned_files() {
            remove_if_exists(&file)?;
        }
        match std::fs::remove_dir(&self.files.dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
            Err(error) if error.raw_os_error() == Some(libc::ENOTEMPTY) => {
                tracing::debug!(
                    "not removing {}: it contains other files",
                    self.files.dir.display()
                );
                Ok(())
            }
            Err(error) => {
                Err(error).with_context(|| format!("removing {}", self.files.dir.display()))
            }
        }
    }

    /// Resets the running VM like a hardware reset button.
    pub async fn reset(&self) -> anyhow::Result<()> {
        let state = self.loaded_state()?;
        if self.running_pid(&state)?.is_none() {
            return Err(Failure::infrastructure(format!(
                "cannot reset VM {}: it is not running; start it first",
                state.name
            )));
        }
        qmp::run_command(&self.files.qmp_socket, "system_reset", QMP_DEADLINE)
            .await
            .with_context(|| format!("resetting VM {}", state.name))?;
        Ok(())
    }

    /// Returns the last `lines` lines of the serial console log.
    pub fn console_tail(&self, lines: usize) -> String {
        console::tail(&self.files.console_log, lines)
    }

    /// Locks the VM folder, creating it, against other kbuild processes.
    async fn lock(&self) -> anyhow::Result<File> {
        let dir = &self.files.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        lock::lock_file(&self.files.lock).await
    }

    async fn create_locked(&self) -> anyhow::Result<()> {
        let base = self.base_image()?;
        if self.files.disk.exists() {
            disk::check_backing(&self.files.disk, &base).await?;
        } else {
            process::require_binary(QEMU_IMG)?;
            let format = self.config.base_format;
            disk::create_overlay(&base, format, &self.files.disk, self.config.disk_gib).await?;
            tracing::debug!(
                "created {} on {}",
                self.files.disk.display(),
                base.display()
            );
        }
        if self.state()?.is_none() {
            let state = VmState {
                backend: BACKEND.to_string(),
                name: self.config.name.clone(),
                ssh_port: free_local_port()?,
                pid: None,
                disk: self.files.disk.clone(),
                console_log: self.files.console_log.clone(),
            };
            state.save(&self.files.dir)?;
        }
        Ok(())
    }

    async fn stop_locked(&self, timeout: Duration) -> anyhow::Result<()> {
        let Some(mut state) = self.state()? else {
            return Ok(());
        };
        if let Some(pid) = self.running_pid(&state)? {
            shutdown::shut_down(&self.config.name, &self.files, pid, timeout).await?;
        }
        self.clear_runtime(&mut state)
    }

    /// Lists the files `destroy` deletes, never the base image.
    fn owned_files(&self) -> Vec<PathBuf> {
        let mut files = vec![
            self.files.disk.clone(),
            self.files.disk.with_extension("qcow2.tmp"),
            self.files.console_log.clone(),
            self.files.pidfile.clone(),
            self.files.qmp_socket.clone(),
            VmState::path(&self.files.dir),
            self.files.dir.join(".vm.toml.tmp"),
            self.files.lock.clone(),
        ];
        if let Some(seed) = &self.config.seed {
            if seed.parent() == Some(self.files.dir.as_path()) {
                files.push(seed.clone());
            }
        }
        files.retain(|file| *file != self.config.base_image);
        files
    }

    /// Returns the canonical path of the base image, which must exist.
    fn base_image(&self) -> anyhow::Result<PathBuf> {
        let base = &self.config.base_image;
        std::fs::canonicalize(base).map_err(|error| {
            Failure::infrastructure(format!(
                "base image {} cannot be read ({error}); download the image again",
                base.display()
            ))
        })
    }

    fn loaded_state(&self) -> anyhow::Result<VmState> {
        self.state()?.with_context(|| {
            format!(
                "VM {} has no state file in {}; create it first",
                self.config.name,
                self.files.dir.display()
            )
        })
    }

    /// Returns the pid of this VM's QEMU if it runs, from the state file or the pid file.
    fn running_pid(&self, state: &VmState) -> anyhow::Result<Option<u32>> {
        let recorded = process::read_pidfile(&self.files.pidfile)?;
        let running = [state.pid, recorded]
            .into_iter()
            .flatten()
            .find(|pid| process::is_vm_process(*pid, &self.files.pidfile));
        Ok(running)
    }

    /// Removes the pid file and socket of a QEMU that is gone and records no pid.
    fn clear_runtime(&self, state: &mut VmState) -> anyhow::Result<()> {
        remove_if_exists(&self.files.pidfile)?;
        remove_if_exists(&self.files.qmp_socket)?;
        if state.pid.take().is_some() {
            state.save(&self.files.dir)?;
        }
        Ok(())
    }

    /// Runs QEMU detached once with the state's port.
    async fn launch(&self, state: &VmState, accel: Accel) -> anyhow::Result<Launch> {
        remove_if_exists(&self.files.pidfile)?;
        remove_if_exists(&self.files.qmp_socket)?;
        let marker = format!(
            "starting QEMU ({accel}), SSH on 127.0.0.1:{}",
            state.ssh_port
        );
        console::append_marker(&self.files.console_log, &marker)?;
        let args = qemu_args(&self.config, state, accel);
        process::launch(QEMU_SYSTEM, &args, LAUNCH_DEADLINE).await
    }

    /// Launches QEMU, and once more on a new port when another process took
    /// the SSH port after it was chosen.
    async fn launch_with_retry(&self, state: &mut VmState, accel: Accel) -> anyhow::Result<()> {
        let mut launch = self.launch(state, accel).await?;
        if let Launch::Failed { stderr, .. } = &launch {
            if args::is_port_conflict(stderr) {
                let occupied = state.ssh_port;
                state.ssh_port = free_local_port()?;
                tracing::debug!("port {occupied} is in use; retrying on {}", state.ssh_port);
                state.save(&self.files.dir)?;
                launch = self.launch(state, accel).await?;
            }
        }
        match launch {
            Launch::Started => Ok(()),
            Launch::Failed { status, stderr } => Err(self.start_failure(&status, &stderr)),
        }
    }

    fn start_failure(&self, status: &str, stderr: &str) -> anyhow::Error {
        let stderr = match stderr.trim() {
            "" => "no error output".to_string(),
            text => text.to_string(),
        };
        let console = match self.console_tail(QUOTED_LINES) {
            text if text.is_empty() => "the console log is empty".to_string(),
            text => format!("last console lines:\n{text}"),
        };
        Failure::infrastructure(format!(
            "QEMU failed to start VM {} ({status}): {stderr}\n{console}\nconsole log: {}",
            self.config.name,
            self.files.console_log.display()
        ))
    }
}

/// Makes `path` absolute against the current folder; keeps it as it is if
/// the current folder cannot be read.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("removing {}", path.display())),
    }
}
