//! Installs a staged kernel in the guest with the distribution's own tools
//! and arms GRUB to boot it once, keeping the old kernel as the default.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::grub::{self, MenuEntry};
use super::install_script::{self, REPORT_PREFIX};
use super::Guest;
use crate::exit::Failure;
use crate::project::Project;
use crate::ssh::{ExecOptions, ExitStatus};
use crate::ui;

/// The record of the kernel kbuild installed in the guest, kept in
/// `.kbuild/guest/installed.toml` for `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub release: String,
    /// The GRUB entry armed for the next boot.
    pub entry: String,
    /// The GRUB default entry, which boots after a reset.
    pub fallback: String,
    /// The release the VM ran when the kernel was installed.
    pub previous_release: String,
    /// The guest's boot id when the kernel was installed.
    pub boot_id: String,
    pub syscall: String,
    pub number: u32,
    /// The machine that built the kernel: `guest` or `host`.
    pub built_on: String,
}

/// Returns the path of the install record.
pub fn record_path(project: &Project) -> PathBuf {
    super::state_dir(project).join("installed.toml")
}

/// Reads the install record; `None` when nothing was installed.
pub fn load(project: &Project) -> anyhow::Result<Option<Installed>> {
    let path = record_path(project);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let record = toml::from_str(&text).with_context(|| {
        format!(
            "parsing {}; delete it and run `kbuild patch-and-build` again",
            path.display()
        )
    })?;
    Ok(Some(record))
}

/// The facts about a staged kernel that `install` records.
pub struct Kernel<'a> {
    pub release: &'a str,
    pub number: u32,
    pub built_on: &'a str,
}

/// Installs the kernel staged in the guest's stage folder, makes its
/// initramfs, updates GRUB and arms a one-time boot of it.
pub fn install(
    guest: &Guest,
    project: &Project,
    kernel: &Kernel,
    log: &Path,
) -> anyhow::Result<Installed> {
    let dirs = guest.dirs();
    let running = guest.capture(&["uname", "-r"])?.trim().to_string();
    let fallback = fallback_entry(guest, kernel.release, &running)?;
    let script =
        install_script::install_script(kernel.release, &dirs.stage, &guest.profile.boot, &fallback);
    let script_path = format!("{}/install.sh", dirs.root);
    guest.upload_text(&script, &script_path)?;
    ui::status(
        "Installing",
        format!("linux {} in VM {}", kernel.release, guest.vm.name),
    );
    run_script(guest, &script_path, log, "installing the kernel")?;

    let entry = new_entry(guest, kernel.release)?;
    let boot_id = tokio::task::block_in_place(|| guest.session.boot_id())?;
    let installed = Installed {
        release: kernel.release.to_string(),
        entry,
        fallback,
        previous_release: running,
        boot_id,
        syscall: project.syscall.name.clone(),
        number: kernel.number,
        built_on: kernel.built_on.to_string(),
    };
    arm(guest, &installed, log)?;
    save(project, &installed)?;
    Ok(installed)
}

/// Arms GRUB to boot the installed kernel's entry once, at the next boot.
pub fn arm(guest: &Guest, installed: &Installed, log: &Path) -> anyhow::Result<()> {
    let script = install_script::boot_once_script(&installed.entry);
    let path = format!("{}/boot-once.sh", guest.dirs().root);
    guest.upload_text(&script, &path)?;
    run_script(guest, &path, log, "arming the one-time boot")?;
    ui::detail(format!(
        "next boot: {}; default after a reset: {}",
        installed.entry, installed.fallback
    ));
    Ok(())
}

/// Reads the GRUB menu as it is before the install and returns the entry
/// to fall back to: the running kernel's, unless that is the release being
/// installed.
fn fallback_entry(guest: &Guest, release: &str, running: &str) -> anyhow::Result<String> {
    let text = guest.capture(&guest.as_root(&["sh", "-c", install_script::READ_GRUB_CFG]))?;
    let entries = grub::menu_entries(&text);
    if let Some(entry) = grub::fallback_entry(&entries, running, release) {
        return Ok(entry.path());
    }
    let listing = bls_listing(guest)?;
    let bls = (running != release)
        .then(|| grub::bls_entry_id(&listing, running))
        .flatten();
    bls.ok_or_else(|| {
        Failure::infrastructure(format!(
            "the GRUB menu of VM {} has no kernel other than {release} to fall back to \
             (entries: {}); kbuild boots a new kernel only when a reset can bring back a \
             working one",
            guest.vm.name,
            titles(&entries)
        ))
    })
}

/// Finds the new kernel's entry in the regenerated grub.cfg, or among the
/// Boot Loader Specification entries.
fn new_entry(guest: &Guest, release: &str) -> anyhow::Result<String> {
    let text = guest.capture(&guest.as_root(&["sh", "-c", install_script::READ_GRUB_CFG]))?;
    let entries = grub::menu_entries(&text);
    if let Some(entry) = grub::entry_for(&entries, release) {
        return Ok(entry.path());
    }
    grub::bls_entry_id(&bls_listing(guest)?, release).ok_or_else(|| {
        Failure::infrastructure(format!(
            "the GRUB menu of VM {} has no entry for /boot/vmlinuz-{release}, and \
             /boot/loader/entries has none either; entries found: {}. The old kernel stays \
             the default",
            guest.vm.name,
            titles(&entries)
        ))
    })
}

/// Lists /boot/loader/entries as root, because Fedora makes it root-only.
fn bls_listing(guest: &Guest) -> anyhow::Result<String> {
    guest.capture(&guest.as_root(&["sh", "-c", install_script::LIST_BLS_ENTRIES]))
}

fn titles(entries: &[MenuEntry]) -> String {
    if entries.is_empty() {
        return "none".to_string();
    }
    let titles: Vec<&str> = entries.iter().map(|entry| entry.title.as_str()).collect();
    titles.join("; ")
}

/// Runs an uploaded script as root with its output in `log`, showing the
/// lines it reports with [`REPORT_PREFIX`].
fn run_script(guest: &Guest, path: &str, log: &Path, what: &str) -> anyhow::Result<()> {
    let options = ExecOptions {
        log: Some(log.to_path_buf()),
        timeout: None,
    };
    let mut errors = Vec::new();
    let mut last_lines = std::collections::VecDeque::new();
    let argv = guest.as_root(&["sh", path]);
    let status = tokio::task::block_in_place(|| {
        guest.session.exec(&argv, &options, |_, line| {
            if let Some(report) = line.strip_prefix(REPORT_PREFIX) {
                match report.strip_prefix("error: ") {
                    Some(error) => errors.push(error.to_string()),
                    None => ui::detail(report),
                }
            }
            if last_lines.len() == 10 {
                last_lines.pop_front();
            }
            last_lines.push_back(line.to_string());
        })
    })?;
    if status == ExitStatus::Code(0) {
        return Ok(());
    }
    let detail = if errors.is_empty() {
        Vec::from(last_lines).join("\n  ")
    } else {
        errors.join("\n  ")
    };
    Err(Failure::infrastructure(format!(
        "{what} in VM {} failed with {status}:\n  {detail}\nfull output: {}",
        guest.vm.name,
        log.display()
    )))
}

fn save(project: &Project, installed: &Installed) -> anyhow::Result<()> {
    let path = record_path(project);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string(installed).context("serializing the install record")?;
    crate::build::write_atomically(&path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_round_trips_through_toml() {
        let installed = Installed {
            release: "6.1.158".into(),
            entry: "a>b".into(),
            fallback: "a>c".into(),
            previous_release: "6.1.0-50-amd64".into(),
            boot_id: "x".into(),
            syscall: "kbuild_add".into(),
            number: 451,
            built_on: "host".into(),
        };
        let text = toml::to_string(&installed).unwrap();
        assert_eq!(toml::from_str::<Installed>(&text).unwrap(), installed);
    }
}
