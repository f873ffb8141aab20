//! The project file, `kbuild.toml`: what to add to which kernel, and how to
//! build and test it.

mod init;
mod raw;
mod validate;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use init::{write_project_file, InitOptions};
pub(crate) use validate::locate;

use crate::exit::Failure;

/// The file name `kbuild` looks for in the current folder and its parents.
pub const FILE_NAME: &str = "kbuild.toml";

/// Maximum number of syscall arguments on every architecture Linux supports.
pub const MAX_ARGS: usize = 6;

/// A validated project file, with every path made absolute.
#[derive(Debug, Clone)]
pub struct Project {
    /// The project file itself.
    pub path: PathBuf,
    /// Folder that contains the project file.
    pub dir: PathBuf,
    pub syscall: SyscallSpec,
    pub test: TestSpec,
    pub kernel: KernelSpec,
    pub build: BuildSpec,
    pub vm: VmSpec,
    pub run: RunSpec,
}

/// The system call to add.
#[derive(Debug, Clone)]
pub struct SyscallSpec {
    /// C identifier; the entry point becomes `sys_<name>`.
    pub name: String,
    pub args: Vec<SyscallArg>,
    pub template: TemplateRef,
    /// A fixed syscall number; `None` takes the next free one.
    pub number: Option<u32>,
}

/// One syscall parameter, for example `long` and `a`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallArg {
    pub c_type: String,
    pub name: String,
}

/// A template: one shipped with kbuild, or a file of the user's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateRef {
    Builtin(String),
    File(PathBuf),
}

/// The test call that proves the syscall works.
#[derive(Debug, Clone)]
pub struct TestSpec {
    pub args: Vec<TestArg>,
    /// Expected return value of `syscall(NR, args...)`.
    pub expect: i64,
    /// Seconds a direct QEMU boot may take before it counts as timed out.
    pub timeout_secs: u64,
}

/// An argument of the test call: an integer, or a string passed as a pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestArg {
    Int(i64),
    Str(String),
}

#[derive(Debug, Clone)]
pub struct KernelSpec {
    /// A kernel source tree, or a `.tar.xz`/`.tar.gz` tarball that kbuild
    /// unpacks. For a download, the file name of the tarball.
    pub source: PathBuf,
    /// A release tarball to download and verify, such as one from kernel.org.
    pub download: Option<SourceDownload>,
    pub arch: Arch,
}

/// A kernel tarball that kbuild downloads, checks and caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDownload {
    pub url: String,
    /// The tarball's SHA-256, lowercase hex.
    pub sha256: String,
}

/// Target architectures with a syscall table driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
}

impl Arch {
    pub const NAMES: &'static [&'static str] = &["x86_64"];

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
        }
    }

    /// The `ARCH=` value for make. `x86_64` rather than `x86`, so that
    /// tinyconfig and allnoconfig produce a 64-bit kernel.
    pub fn make_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
        }
    }

    /// Returns the bootable kernel image's path, relative to the build folder.
    pub fn kernel_image(self) -> &'static str {
        match self {
            Arch::X86_64 => "arch/x86/boot/bzImage",
        }
    }

    /// Returns the QEMU system emulator for this architecture.
    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// `make -jN`; `None` picks from CPUs and available memory.
    pub jobs: Option<u32>,
    pub config: ConfigBase,
    pub fragments: Vec<TemplateRef>,
    pub ccache: Ccache,
    /// The `O=` build folder, reused between builds.
    pub dir: PathBuf,
    /// `lsmod` output of the machine the kernel is for. kbuild sets it (the
    /// project file cannot) to run `make localmodconfig` after the base.
    pub lsmod: Option<PathBuf>,
}

/// Starting point of the kernel configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigBase {
    Defconfig,
    Tinyconfig,
    /// The configuration of the kernel running on the build machine.
    Running,
    /// The configuration of the kernel running in the project's VM; only
    /// for kernels built for the VM.
    Guest,
    File(PathBuf),
}

impl ConfigBase {
    pub const CHOICES: &'static str =
        "\"defconfig\", \"tinyconfig\", \"running\", or a path to a .config file";
    pub const VM_CHOICES: &'static str =
        "\"guest\", \"defconfig\", \"tinyconfig\", or a path to a .config file";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ccache {
    /// Use ccache when it is installed.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone)]
pub struct VmSpec {
    pub profile: String,
    /// Base of the config of a kernel built for the VM; `Guest` by default.
    pub config: ConfigBase,
    /// Fragments merged on top of `config`: the built-in `vm` fragment for a
    /// tinyconfig or defconfig base, none for the guest's own config.
    pub fragments: Vec<TemplateRef>,
    /// Runs `make localmodconfig` with the guest's loaded modules, so that
    /// a distribution config builds only the modules the VM uses.
    pub localmodconfig: bool,
}

/// Settings of `kbuild run`.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// Per-step timeouts from `[run.timeouts]`, by step.
    pub timeouts: std::collections::BTreeMap<crate::run::Step, std::time::Duration>,
}

impl RunSpec {
    /// Returns the step's timeout: the project's, else the default.
    pub fn timeout(&self, step: crate::run::Step) -> std::time::Duration {
        self.timeouts
            .get(&step)
            .copied()
            .unwrap_or_else(|| step.default_timeout())
    }
}

impl BuildSpec {
    /// Returns the `O=` folder of kernels built for the VM, beside the fast
    /// loop's: `build-vm` next to `build`.
    pub fn vm_dir(&self) -> PathBuf {
        let mut name = self
            .dir
            .file_name()
            .map_or_else(|| "build".into(), |name| name.to_os_string());
        name.push("-vm");
        self.dir.with_file_name(name)
    }
}

impl Project {
    /// Reads and validates a project file.
    pub fn load(path: &Path) -> anyhow::Result<Project> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            Failure::usage(format!(
                "cannot read project file {}: {error}; run `kbuild init` to create one",
                path.display()
            ))
        })?;
        let path =
            std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
        validate::parse(&path, &text)
    }

    /// Finds `kbuild.toml` in `start` or the nearest parent folder.
    pub fn find(start: &Path) -> anyhow::Result<PathBuf> {
        let start =
            std::path::absolute(start).with_context(|| format!("resolving {}", start.display()))?;
        for dir in start.ancestors() {
            let candidate = dir.join(FILE_NAME);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        Err(Failure::usage(format!(
            "no {FILE_NAME} in {} or its parent folders; run `kbuild init` to create one, \
             or pass --project PATH",
            start.display()
        )))
    }

    /// kbuild's state folder for this project: patch records, logs, test files.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(".kbuild")
    }

    /// Returns the folder for build and boot logs.
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir().join("logs")
    }
}
