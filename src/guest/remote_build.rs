//! `--in-guest`: configures on the host, sends the tree and `.config` to the
//! guest, runs make there with the host build's progress display, log and
//! error hints, and stages the result for the install step.
//!
//! The config steps run on the host, because they need the same scripts and
//! checks as the fast loop. Make's `syncconfig` in the guest then adapts
//! `.config` to the guest's compiler.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::sync::{self, SyncReport, SyncTarget};
use super::Guest;
use crate::build::{self, BuildOptions};
use crate::exit::Failure;
use crate::project::Project;
use crate::provision::resources;
use crate::ssh::{ExecOptions, ExitStatus, OutputStream};
use crate::ui;

/// A kernel built in the guest and staged there.
pub struct RemoteBuilt {
    pub release: String,
    pub log: PathBuf,
    pub jobs: u32,
    pub compiled: u64,
    pub sync: SyncReport,
    /// Wall time from configure to the staged kernel.
    pub elapsed: Duration,
}

/// Configures, sends the tree, builds in the guest and stages the kernel.
pub async fn build_in_guest(
    project: &Project,
    tree: &Path,
    guest: &Guest,
    options: &BuildOptions,
) -> anyhow::Result<RemoteBuilt> {
    let started = Instant::now();
    let vm_project = guest.kernel_project(project)?;
    let configured = build::configure(&vm_project, tree).await?;
    let dirs = guest.dirs();
    let state = super::state_dir(project);

    let target = SyncTarget {
        tree,
        remote_dir: &dirs.tree,
        state_dir: &state,
    };
    let sync =
        tokio::task::block_in_place(|| sync::sync_tree(&guest.session, &target, &configured.log))?;
    ui::detail(format!(
        "sent {} changed and {} deleted files ({}) in {}",
        sync.files,
        sync.deleted,
        ui::bytes(sync.bytes_sent),
        ui::seconds(sync.elapsed)
    ));
    send_config(guest, &configured.build_dir.join(".config"))?;

    let jobs = match options.jobs.or(project.build.jobs) {
        Some(jobs) => jobs,
        None => guest_jobs(guest)?,
    };
    let log = build::create_log(&project.log_dir(), "guest-build")?;
    ui::status(
        "Building",
        format!("in VM {} ({}) with -j{jobs}", guest.vm.name, dirs.tree),
    );
    ui::detail(format!("log: {}", log.display()));
    let compiled = run_make(guest, project, &state, jobs, &log)?;
    let release = stage(guest, project, &log)?;
    ui::status(
        "Built",
        format!(
            "linux {release} in VM {} in {} ({compiled} objects)",
            guest.vm.name,
            ui::seconds(started.elapsed())
        ),
    );
    Ok(RemoteBuilt {
        release,
        log,
        jobs,
        compiled,
        sync,
        elapsed: started.elapsed(),
    })
}

/// Sends `.config` to the guest's build folder, replacing the one there
/// only when it differs, so an unchanged config triggers no syncconfig.
fn send_config(guest: &Guest, config: &Path) -> anyhow::Result<()> {
    let dirs = guest.dirs();
    guest.capture(&["mkdir", "-p", &dirs.build])?;
    let incoming = format!("{}/.config.kbuild-new", dirs.build);
    tokio::task::block_in_place(|| guest.session.upload(config, &incoming, |_| {}))?;
    let script = "if cmp -s \"$1\" \"$2\"; then rm -f \"$1\"; else mv -f \"$1\" \"$2\"; fi";
    let current = format!("{}/.config", dirs.build);
    guest.capture(&["sh", "-c", script, "sh", &incoming, &current])?;
    Ok(())
}

/// Picks `make -jN` from the guest's CPUs and memory, as the host build does.
fn guest_jobs(guest: &Guest) -> anyhow::Result<u32> {
    let output = guest.capture(&["sh", "-c", resources::PROBE_COMMAND])?;
    let found = resources::parse(&output).map_err(Failure::infrastructure)?;
    Ok(build::job_count(
        found.cpus,
        found.memory_kib * 1024,
        build::PER_JOB_BYTES,
    ))
}

/// Runs make in the guest, streaming its output into `log` and the progress
/// display; returns the objects built.
fn run_make(
    guest: &Guest,
    project: &Project,
    state: &Path,
    jobs: u32,
    log: &Path,
) -> anyhow::Result<u64> {
    let dirs = guest.dirs();
    let count_file = state.join("guest-objects");
    let full_build = guest
        .capture(&[
            "sh",
            "-c",
            "test -e \"$1\" && echo yes || echo no",
            "sh",
            &format!("{}/vmlinux", dirs.build),
        ])?
        .trim()
        == "no";
    let expected = std::fs::read_to_string(&count_file)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|_| full_build);
    let start_offset = std::fs::metadata(log).map_or(0, |meta| meta.len());

    let output_dir = format!("O={}", dirs.build);
    let arch = format!("ARCH={}", project.kernel.arch.make_arch());
    let jobs_arg = format!("-j{jobs}");
    let argv = [
        "env",
        "LC_ALL=C",
        "make",
        "-C",
        &dirs.tree,
        &output_dir,
        &arch,
        &jobs_arg,
    ];
    let options = ExecOptions {
        log: Some(log.to_path_buf()),
        timeout: None,
    };
    let (mut tracker, handle) = build::track_progress(expected);
    let status = tokio::task::block_in_place(|| {
        guest
            .session
            .exec(&argv, &options, |_, line| tracker.on_line(line.as_bytes()))
    });
    let compiled = handle.finish();
    let status = status?;
    if status != ExitStatus::Code(0) {
        let output = build::read_log_from(log, start_offset)?;
        return Err(Failure::build(build::failure_message(
            &format!("kernel build in VM {}", guest.vm.name),
            &status.to_string(),
            &output,
            log,
        )));
    }
    if full_build {
        build::write_atomically(&count_file, format!("{compiled}\n").as_bytes())?;
    }
    Ok(compiled)
}

/// Copies the kernel, System.map, config and stripped modules into the
/// guest's stage folder; returns the kernel release.
fn stage(guest: &Guest, project: &Project, log: &Path) -> anyhow::Result<String> {
    let dirs = guest.dirs();
    let image = format!("{}/{}", dirs.build, project.kernel.arch.kernel_image());
    let script = r#"set -e
tree=$1 build=$2 stage=$3 image=$4 arch=$5
rm -rf "$stage"
mkdir -p "$stage/boot"
cp "$image" "$stage/boot/vmlinuz"
cp "$build/System.map" "$stage/boot/System.map"
cp "$build/.config" "$stage/boot/config"
if grep -q '^CONFIG_MODULES=y' "$build/.config"; then
  env LC_ALL=C make -C "$tree" O="$build" ARCH="$arch" INSTALL_MOD_PATH="$stage" INSTALL_MOD_STRIP=1 modules_install
fi
cat "$build/include/config/kernel.release""#;
    let argv = [
        "sh",
        "-c",
        script,
        "sh",
        &dirs.tree,
        &dirs.build,
        &dirs.stage,
        &image,
        project.kernel.arch.make_arch(),
    ];
    let options = ExecOptions {
        log: Some(log.to_path_buf()),
        timeout: None,
    };
    let mut last = String::new();
    let status = tokio::task::block_in_place(|| {
        guest.session.exec(&argv, &options, |stream, line| {
            if stream == OutputStream::Stdout && !line.trim().is_empty() {
                last = line.trim().to_string();
            }
        })
    })?;
    if status != ExitStatus::Code(0) {
        return Err(Failure::build(format!(
            "staging the kernel in VM {} failed with {status}: {last}; see {}",
            guest.vm.name,
            log.display()
        )));
    }
    Ok(last)
}
