//! Configures and builds the kernel out of tree, in the project's build
//! folder, with make's output in a log file and progress on the terminal.
//!
//! The source tree is only read: every file make writes goes to the `O=`
//! build folder, and kbuild's own files go to the build and state folders.

mod certs;
mod config;
mod fingerprint;
mod fragment;
mod hints;
mod jobs;
mod make;
mod progress;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

pub use hints::failure_message;
pub use jobs::{job_count, PER_JOB_BYTES};
pub use make::read_from as read_log_from;
pub use progress::{track as track_progress, Handle as ProgressHandle, Tracker};

use crate::exit::Failure;
use crate::project::{Ccache, Project};
use make::Make;

/// File in the build folder that stores the object count of the last full build.
const OBJECT_COUNT_FILE: &str = ".kbuild-objects";

/// Settings from the command line that override the project file.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// `make -jN`, which overrides `[build] jobs`.
    pub jobs: Option<u32>,
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct Built {
    /// The bootable kernel image.
    pub image: PathBuf,
    /// The kernel release, such as `6.1.192`.
    pub release: String,
    /// The log file with make's full output.
    pub log: PathBuf,
    /// The `make -j` value used.
    pub jobs: u32,
    /// Wall time of configure and make together.
    pub elapsed: Duration,
    /// Objects compiled, assembled, archived or linked by this build.
    pub compiled: u64,
}

/// Configures (when inputs changed) and builds the kernel in project.build.dir.
pub async fn build(
    project: &Project,
    tree: &Path,
    options: &BuildOptions,
) -> anyhow::Result<Built> {
    let started = Instant::now();
    let make = prepare(project, tree)?;
    let jobs = jobs::resolve(project, options.jobs)?;
    let log = create_log(&project.log_dir(), "build")?;

    let compiler = make.cc.as_deref().unwrap_or("the default compiler");
    crate::ui::status(
        "Building",
        format!(
            "{} in {} with -j{jobs} and {compiler}",
            tree.display(),
            make.build_dir.display()
        ),
    );
    crate::ui::detail(format!("log: {}", log.display()));

    config::configure(project, &make, &log).await?;
    let compiled = run_build(&make, jobs, &log).await?;

    let built = Built {
        image: kernel_image(project),
        release: read_release(&make.build_dir)?,
        log,
        jobs,
        elapsed: started.elapsed(),
        compiled,
    };
    if !built.image.is_file() {
        return Err(Failure::build(format!(
            "make succeeded but the kernel image {} is missing; see {}",
            built.image.display(),
            built.log.display()
        )));
    }
    crate::ui::status(
        "Built",
        format!(
            "linux {} in {} ({compiled} objects)",
            built.release,
            crate::ui::seconds(built.elapsed)
        ),
    );
    Ok(built)
}

/// A `.config` written by [`configure`].
#[derive(Debug, Clone)]
pub struct Configured {
    /// The `O=` folder that holds `.config`.
    pub build_dir: PathBuf,
    /// The log of the config steps.
    pub log: PathBuf,
    /// False when the inputs were unchanged and the old `.config` was kept.
    pub changed: bool,
}

/// Writes `.config` in project.build.dir without building, for a build
/// that runs elsewhere (in the VM).
pub async fn configure(project: &Project, tree: &Path) -> anyhow::Result<Configured> {
    let make = prepare(project, tree)?;
    let log = create_log(&project.log_dir(), "config")?;
    let changed = config::configure(project, &make, &log).await?;
    Ok(Configured {
        build_dir: make.build_dir,
        log,
        changed,
    })
}

/// Runs `make modules_install` into `dest` with the modules stripped, when
/// the build's config has `CONFIG_MODULES=y`; returns whether it did.
pub async fn modules_install(
    project: &Project,
    tree: &Path,
    dest: &Path,
    log: &Path,
) -> anyhow::Result<bool> {
    let make = prepare(project, tree)?;
    if !config_enables(&make.build_dir, "CONFIG_MODULES")? {
        return Ok(false);
    }
    let jobs = jobs::resolve(project, None)?;
    let install_path = format!("INSTALL_MOD_PATH={}", dest.display());
    let command = make.command(&[
        format!("-j{jobs}"),
        install_path,
        "INSTALL_MOD_STRIP=1".to_string(),
        "modules_install".to_string(),
    ]);
    make::run_logged(command, &make.build_dir, log, "make modules_install").await?;
    Ok(true)
}

/// True when the `.config` in `build_dir` sets `option=y`.
pub fn config_enables(build_dir: &Path, option: &str) -> anyhow::Result<bool> {
    let path = build_dir.join(".config");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let wanted = format!("{option}=y");
    Ok(text.lines().any(|line| line.trim_end() == wanted))
}

/// Reads the kernel release that a configured build folder will produce,
/// such as `6.1.158`.
pub fn release_of(build_dir: &Path) -> anyhow::Result<String> {
    read_release(build_dir)
}

/// The kernel image a build produces: build dir + arch.kernel_image().
pub fn kernel_image(project: &Project) -> PathBuf {
    project.build.dir.join(project.kernel.arch.kernel_image())
}

/// Checks the host tools and the tree, creates the build folder and returns
/// how to call make.
fn prepare(project: &Project, tree: &Path) -> anyhow::Result<Make> {
    for tool in ["make", "gcc"] {
        if make::find_on_path(tool).is_none() {
            return Err(Failure::build(format!(
                "{tool} not found on PATH; install it with `apt-get install {}` \
                 (build-essential has both make and gcc)",
                make::package_for(tool)
            )));
        }
    }
    let tree = std::path::absolute(tree)
        .with_context(|| format!("resolving kernel tree {}", tree.display()))?;
    if !tree.join("Makefile").is_file() || !tree.join("scripts/kconfig").is_dir() {
        return Err(Failure::usage(format!(
            "{} is not a kernel source tree (no Makefile or scripts/kconfig); \
             set [kernel] source to an unpacked Linux tree",
            tree.display()
        )));
    }
    let build_dir = std::path::absolute(&project.build.dir)
        .with_context(|| format!("resolving build folder {}", project.build.dir.display()))?;
    std::fs::create_dir_all(&build_dir)
        .with_context(|| format!("creating build folder {}", build_dir.display()))?;
    Ok(Make {
        tree,
        build_dir,
        arch: project.kernel.arch.make_arch(),
        cc: compiler(project.build.ccache)?,
    })
}

/// Returns the `CC=` value for the ccache setting.
///
/// Switching ccache on or off changes the compiler command that kbuild
/// records for each object, so the next build recompiles everything once.
fn compiler(setting: Ccache) -> anyhow::Result<Option<String>> {
    let installed = make::find_on_path("ccache").is_some();
    match setting {
        Ccache::Off => Ok(None),
        Ccache::Auto => Ok(installed.then(|| "ccache gcc".to_string())),
        Ccache::On if installed => Ok(Some("ccache gcc".to_string())),
        Ccache::On => Err(Failure::usage(
            "[build] ccache is \"on\" but ccache is not on PATH; install it with \
             `apt-get install ccache`, or set ccache = \"auto\"",
        )),
    }
}

/// Runs `make -jN` for the default target and returns the objects built.
async fn run_build(make: &Make, jobs: u32, log: &Path) -> anyhow::Result<u64> {
    let count_file = make.build_dir.join(OBJECT_COUNT_FILE);
    let expected = std::fs::read_to_string(&count_file)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    // A build folder without vmlinux gets a full build, whose count becomes
    // the expected total of later full builds. An incremental build compiles
    // an unknown share of that, so it shows a count without a total or ETA.
    let full_build = !make.build_dir.join("vmlinux").exists();

    let (mut tracker, handle) = progress::track(expected.filter(|_| full_build));
    let command = make.command(&[format!("-j{jobs}")]);
    let result = make::run(command, &make.build_dir, log, "kernel build", move |line| {
        tracker.on_line(line)
    })
    .await;
    let compiled = handle.finish();
    result?;

    if full_build {
        write_atomically(&count_file, format!("{compiled}\n").as_bytes())?;
    }
    Ok(compiled)
}

fn read_release(build_dir: &Path) -> anyhow::Result<String> {
    let path = build_dir.join("include/config/kernel.release");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// Creates `<prefix>-YYYYmmdd-HHMMSS.log` in `log_dir`, with a numeric
/// suffix when a log of the same second already has that name.
pub fn create_log(log_dir: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("creating log folder {}", log_dir.display()))?;
    let stamp = local_timestamp();
    for attempt in 1..100 {
        let name = match attempt {
            1 => format!("{prefix}-{stamp}.log"),
            n => format!("{prefix}-{stamp}-{n}.log"),
        };
        let path = log_dir.join(name);
        match File::options().write(true).create_new(true).open(&path) {
            Ok(_) => return Ok(path),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("creating {}", path.display()))
            }
        }
    }
    anyhow::bail!(
        "too many logs named {prefix}-{stamp}*.log in {}",
        log_dir.display()
    )
}

/// Formats the local time as `YYYYmmdd-HHMMSS`.
fn local_timestamp() -> String {
    // SAFETY: time(NULL) only returns the clock; localtime_r writes into the
    // zeroed `tm` we own and returns NULL on failure, which is checked.
    let tm = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return "00000000-000000".to_string();
        }
        tm
    };
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Writes `contents` to a temporary file beside `path` and renames it over
/// `path`, so a failed write never leaves a half-written file.
pub fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing a temporary file for {}", path.display()))?;
    file.persist(path)
        .with_context(|| format!("renaming a temporary file to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let first = create_log(dir.path(), "build").unwrap();
        let second = create_log(dir.path(), "build").unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn log_name_has_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let log = create_log(dir.path(), "build").unwrap();
        let name = log.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name.len(), "build-20240101-120000.log".len(), "{name}");
        assert!(name.starts_with("build-20"), "{name}");
    }

    #[test]
    fn write_atomically_replaces_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
    }

    #[test]
    fn ccache_off_uses_default_compiler() {
        assert_eq!(compiler(Ccache::Off).unwrap(), None);
    }
}
