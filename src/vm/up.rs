//! `kbuild up`: image, VM, SSH and build dependencies, each step reusing
//! what an earlier run left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::machine::Machine;
use super::project_vm::{key_dir, vm_dir, ProjectVm};
use super::VmState;
use crate::exit::Failure;
use crate::image::{self, CachedImage, FetchOptions};
use crate::profile::{LoginMethod, Profile};
use crate::project::Project;
use crate::provision::{self, Provisioned};
use crate::ssh::{self, Session, Target};
use crate::verify::Accel;
use crate::{paths, ui};

/// Console lines shown when the guest does not respond.
const CONSOLE_LINES: usize = 40;

/// Seconds a boot may take before SSH accepts a login. The Debian 12 test
/// image under TCG on 2 cores took 39-61 s alone and up to 170 s while other
/// VMs ran beside it (measured here), so the default leaves room for a loaded
/// CI machine.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub allow_unverified: bool,
    pub accel: Option<Accel>,
    pub boot_timeout: Duration,
}

/// A running, reachable, provisioned VM.
pub struct Ready {
    pub vm: ProjectVm,
    pub state: VmState,
    pub session: Session,
    pub provisioned: Provisioned,
    /// Time from starting (or finding) the VM to the first SSH login.
    pub time_to_ssh: Duration,
}

/// A started VM with an SSH session, not yet provisioned.
pub struct Booted {
    pub vm: ProjectVm,
    pub state: VmState,
    pub session: Session,
    /// Time from starting (or finding) the VM to the first SSH login.
    pub time_to_ssh: Duration,
}

/// Brings the project's VM up and makes it ready for kernel builds.
pub async fn up(project: &Project, options: &UpOptions) -> anyhow::Result<Ready> {
    let profile = Profile::load(&project.vm.profile, &project.dir)?;
    let image = fetch(&profile, options.allow_unverified).await?;
    let booted = boot(project, &profile, &image, options).await?;
    let provisioned = provision_vm(project, &profile, &booted.session)?;
    Ok(Ready {
        vm: booted.vm,
        state: booted.state,
        session: booted.session,
        provisioned,
        time_to_ssh: booted.time_to_ssh,
    })
}

/// Downloads the profile's image, or finds it in the cache, and verifies it.
pub async fn fetch(profile: &Profile, allow_unverified: bool) -> anyhow::Result<CachedImage> {
    ui::status(
        "Fetching",
        format!("image of profile {} ({})", profile.name, profile.origin),
    );
    let fetch = FetchOptions {
        allow_unverified,
        ..FetchOptions::default()
    };
    let image =
        image::fetch_image(&profile.image, &paths::cache_dir().join("images"), &fetch).await?;
    ui::detail(format!("{} ({})", image.path.display(), image.digest));
    Ok(image)
}

/// Creates the VM on first use, starts it unless it runs, and logs in over SSH.
pub async fn boot(
    project: &Project,
    profile: &Profile,
    image: &CachedImage,
    options: &UpOptions,
) -> anyhow::Result<Booted> {
    ssh::ensure_key_pair(&key_dir(project))?;
    let dir = vm_dir(project);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let seed = write_seed_once(project, profile, &dir)?;
    let vm = ProjectVm::for_up(
        project,
        profile,
        &image.path,
        image.format,
        seed,
        options.accel,
    )?;

    let started = Instant::now();
    let state = start(&vm).await?;
    let target = vm.target(project, &state);
    let session = connect(&vm, &target, profile, options.boot_timeout).await?;
    let time_to_ssh = started.elapsed();
    ui::status(
        "Connected",
        format!(
            "{}@{} after {}",
            target.user,
            target.address(),
            ui::seconds(time_to_ssh)
        ),
    );
    Ok(Booted {
        vm,
        state,
        session,
        time_to_ssh,
    })
}

/// Checks the guest's resources and installs the profile's build
/// dependencies; the commands' output goes to `provision.log`.
pub fn provision_vm(
    project: &Project,
    profile: &Profile,
    session: &Session,
) -> anyhow::Result<Provisioned> {
    let log = project.log_dir().join("provision.log");
    std::fs::create_dir_all(project.log_dir())
        .with_context(|| format!("creating {}", project.log_dir().display()))?;
    tokio::task::block_in_place(|| provision::provision(session, profile, &log))
}

async fn start(vm: &ProjectVm) -> anyhow::Result<VmState> {
    let backend = vm.machine.backend().name();
    match vm.machine.status().await? {
        super::VmStatus::Running => {
            ui::status("Found", format!("VM {} running ({backend})", vm.name))
        }
        _ => ui::status("Booting", format!("VM {} with {backend}", vm.name)),
    }
    vm.machine.start().await
}

/// Writes the NoCloud seed for cloud images, once per VM.
fn write_seed_once(
    project: &Project,
    profile: &Profile,
    dir: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    if profile.login.method != LoginMethod::CloudInit {
        return Ok(None);
    }
    let path = dir.join("seed.img");
    if !path.exists() {
        let public_key = ssh::read_public_key(&key_dir(project).join("id_ed25519.pub"))?;
        let hostname = super::project_vm::vm_name(project);
        super::seed::write_seed(&path, &profile.login.user, &public_key, &hostname)?;
    }
    Ok(Some(path))
}

/// Logs in with the key; with a password profile, installs the key first, once.
pub async fn connect(
    vm: &ProjectVm,
    target: &Target,
    profile: &Profile,
    boot_timeout: Duration,
) -> anyhow::Result<Session> {
    ui::status(
        "Waiting",
        format!(
            "for SSH on {} (up to {}s)",
            target.address(),
            boot_timeout.as_secs()
        ),
    );
    let deadline = Instant::now() + boot_timeout;
    let machine: Machine = vm.machine.clone();
    let console_tail = move || machine.console_tail(CONSOLE_LINES);
    let marker = vm.dir.join("key-installed");
    let password = match &profile.login.method {
        LoginMethod::Password(password) if !marker.exists() => Some(password.clone()),
        _ => None,
    };
    let target = target.clone();
    tokio::task::spawn_blocking(move || match password {
        Some(password) => {
            let session =
                ssh::install_key_with_password(&target, &password, deadline, console_tail)?;
            std::fs::write(&marker, "").with_context(|| format!("writing {}", marker.display()))?;
            Ok(session)
        }
        None => ssh::wait_for_ssh(&target, deadline, console_tail),
    })
    .await
    .map_err(|error| Failure::infrastructure(format!("the SSH task failed: {error}")))?
}
