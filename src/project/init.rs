//! `kbuild init`: writes a commented `kbuild.toml` that works as it is.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::validate::is_c_name;
use super::FILE_NAME;
use crate::exit::Failure;

/// Options of `kbuild init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Folder to write `kbuild.toml` into.
    pub dir: PathBuf,
    pub name: String,
    /// Kernel tree or tarball; `None` picks Debian's linux-source tarball if present.
    pub source: Option<PathBuf>,
    /// Replace an existing project file.
    pub force: bool,
}

/// Writes the project file and returns its path.
pub fn write_project_file(options: &InitOptions) -> anyhow::Result<PathBuf> {
    if !is_c_name(&options.name) {
        return Err(Failure::usage(format!(
            "invalid syscall name {:?}: use a C identifier (letters, digits and underscores, \
             not starting with a digit)",
            options.name
        )));
    }
    let path = options.dir.join(FILE_NAME);
    if path.exists() && !options.force {
        return Err(Failure::usage(format!(
            "{} already exists; edit it, or pass --force to replace it",
            path.display()
        )));
    }
    let source = match &options.source {
        Some(source) => source.clone(),
        None => default_source(Path::new("/usr/src")).unwrap_or_else(|| PathBuf::from("linux")),
    };

    let text = project_text(&options.name, &source);
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Finds the newest `linux-source-*.tar.xz` that Debian's linux-source package installs.
pub fn default_source(dir: &Path) -> Option<PathBuf> {
    let mut tarballs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-source-") && n.ends_with(".tar.xz"))
        })
        .collect();
    tarballs.sort();
    tarballs.pop()
}

fn project_text(name: &str, source: &Path) -> String {
    let source = toml::Value::String(source.display().to_string());
    format!(
        r#"# kbuild project file. Every key is optional unless marked required.

[syscall]
# Required. A C identifier; the entry point becomes sys_{name}.
name = "{name}"
# Up to six arguments, each a C type and a name.
args = [{{ type = "long", name = "a" }}, {{ type = "long", name = "b" }}]
# Body template: "sum" (returns the sum of the arguments), "hello" (takes a
# `const char __user *` and returns its length), or a path to your own file.
template = "sum"
# Fixed syscall number. Default: the next number after the table's last entry.
# number = 451

[test]
# Values passed to syscall(NR, ...): integers, or strings passed as pointers.
args = [20, 22]
# Expected return value as the kernel returns it: an errno is negative (-38 is -ENOSYS).
expect = 42
# Seconds a direct QEMU boot may take before it counts as timed out. Default: 180.
# timeout = 180

[kernel]
# Required. A kernel source tree, or a .tar.xz/.tar.gz tarball that kbuild
# unpacks once into .kbuild/source/ next to this file.
source = {source}
# Target architecture. Supported: "x86_64".
arch = "x86_64"

[build]
# make -jN. Default: the CPU count, capped by available memory.
# jobs = 2
# Config base: "tinyconfig" (default), "defconfig", "running" (this machine's
# kernel config), or a path to a .config file.
config = "tinyconfig"
# Kconfig fragments merged on top of the base: "boot" (what a direct QEMU boot
# needs), or paths to your own fragment files.
fragments = ["boot"]
# "auto" uses ccache when it is installed; "on" requires it; "off" never uses it.
ccache = "auto"
# Out-of-tree build folder (make O=...), reused so rebuilds are incremental.
dir = "build"

[vm]
# VM profile for building and testing inside a VM (`kbuild up`).
profile = "debian-12"
# Config base of the kernel built for the VM: "guest" (the config of the
# kernel the VM runs, the default), "tinyconfig", "defconfig" or a file.
# A tinyconfig or defconfig base gets the built-in "vm" fragment, which has
# what a distribution image needs to boot (virtio, ext4, systemd).
# config = "guest"
# fragments = ["vm"]        # a list replaces the default: keep "vm" in it
# Keep only the modules the VM has loaded (make localmodconfig), so a
# distribution config builds a few hundred modules instead of thousands.
# localmodconfig = false

[run.timeouts]
# Seconds each step of `kbuild run` may take. `kbuild run --help` lists the
# steps and their defaults, which suit QEMU without KVM.
# build = 14400
# reboot = 900
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let options = InitOptions {
            dir: dir.path().to_path_buf(),
            name: "kbuild_add".into(),
            source: Some(PathBuf::from("/src/linux")),
            force: false,
        };
        let path = write_project_file(&options).unwrap();
        let project = crate::project::Project::load(&path).unwrap();
        assert_eq!(project.syscall.name, "kbuild_add");
        assert_eq!(project.kernel.source, PathBuf::from("/src/linux"));
        assert_eq!(project.test.expect, 42);
    }

    #[test]
    fn existing_file_kept_without_force() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "keep").unwrap();
        let options = InitOptions {
            dir: dir.path().to_path_buf(),
            name: "kbuild_add".into(),
            source: None,
            force: false,
        };
        let error = write_project_file(&options).unwrap_err();
        assert!(error.to_string().contains("--force"), "{error}");
        let kept = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(kept, "keep");
    }
}
