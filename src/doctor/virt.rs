//! Checks for hardware virtualization: whether KVM runs a guest, and
//! whether VirtualBox is installed and can run beside the loaded KVM modules.

use std::ffi::OsString;
use std::time::Duration;

use super::{Check, HostContext};
use crate::profile::Backend;
use crate::verify::kvm_verdict;
use crate::vm::machine::is_available;
use crate::vm::qemu::QEMU_SYSTEM;
use crate::vm::virtualbox::VBoxManage;

const PROC_MODULES: &str = "/proc/modules";

/// Time allowed for `VBoxManage --version`, which starts no VM.
const VERSION_DEADLINE: Duration = Duration::from_secs(30);

/// The first VirtualBox release that gets a note instead of a warning when
/// a KVM module is loaded.
///
/// NOTE: whether a loaded module blocks VirtualBox depends on the host kernel
/// too. From Linux 6.12 on, KVM takes the CPU's virtualization extensions
/// when its module loads (unless `kvm.enable_virt_at_load=0`), and reports on
/// VirtualBox's issue tracker show 7.1 and 7.2 before 7.2.10 failing there
/// as well. So 7.1 and later still get the unload hint, as a note.
const COEXISTS_FROM: (u32, u32) = (7, 1);

/// A KVM vendor module and the error VirtualBox reports while it is loaded.
const KVM_MODULES: [(&str, &str); 2] = [
    ("kvm_intel", "VERR_VMX_IN_VMX_ROOT_MODE"),
    ("kvm_amd", "VERR_SVM_IN_USE"),
];

/// Checks KVM with the same probe that picks the accelerator, cached per
/// host boot, so doctor's verdict is the one `kbuild run` will use.
pub async fn check_kvm() -> Check {
    match kvm_verdict(QEMU_SYSTEM).await {
        Ok(()) => Check::ok(
            "kvm",
            false,
            "KVM usable: a probe guest ran with -accel kvm",
        ),
        Err(reason) => Check::warn(
            "kvm",
            false,
            format!("KVM unusable ({reason}); kbuild falls back to TCG, which is slower"),
        ),
    }
}

/// Checks VBoxManage and its version, and warns when a loaded KVM module
/// keeps that version from starting VMs. VirtualBox is optional, so every
/// outcome is a note rather than a failure.
pub async fn check_virtualbox(host: &HostContext) -> Check {
    let vboxmanage = VBoxManage::from_env();
    if !is_available(Backend::VirtualBox) {
        let detail = format!(
            "{} not found (optional: QEMU is the default backend)",
            vboxmanage.program().display()
        );
        return Check::absent("virtualbox", false, detail);
    }

    let args = [OsString::from("--version")];
    let output = match vboxmanage.run_within(&args, VERSION_DEADLINE).await {
        Ok(output) => output,
        Err(error) => {
            let detail = format!("VBoxManage found, but `--version` failed: {error:#}");
            return Check::warn("virtualbox", false, detail);
        }
    };
    let Some(version) = version_line(&output) else {
        let detail = format!("VBoxManage printed no version: {}", output.trim());
        return Check::warn("virtualbox", false, detail);
    };

    let modules = match std::fs::read_to_string(PROC_MODULES) {
        Ok(text) => loaded_kvm_modules(&text),
        Err(error) => {
            let detail = format!(
                "VirtualBox {version}; cannot read {PROC_MODULES} to look for KVM: {error}"
            );
            return Check::ok("virtualbox", false, detail);
        }
    };
    let Some((module, error_name)) = modules.first() else {
        return Check::ok("virtualbox", false, format!("VirtualBox {version}"));
    };

    let sudo = if host.as_root { "" } else { "sudo " };
    let unload = format!("{sudo}modprobe -r {module}");
    let blocked = parse_version(version).is_some_and(|found| found < COEXISTS_FROM);
    if blocked {
        Check::warn(
            "virtualbox",
            false,
            format!(
                "VirtualBox {version} cannot start a VM while {module} is loaded \
                 (it fails with {error_name}); unload it with `{unload}` before using \
                 VirtualBox, which leaves QEMU on TCG until it is loaded again"
            ),
        )
    } else {
        Check::ok(
            "virtualbox",
            false,
            format!(
                "VirtualBox {version}; {module} is loaded, so if VirtualBox fails with \
                 {error_name}, unload it with `{unload}`"
            ),
        )
    }
}

/// Returns the loaded KVM vendor modules in /proc/modules text, each with
/// the error VirtualBox reports while it is loaded.
pub fn loaded_kvm_modules(text: &str) -> Vec<(&'static str, &'static str)> {
    let loaded: Vec<&str> = text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    KVM_MODULES
        .into_iter()
        .filter(|(module, _)| loaded.contains(module))
        .collect()
}

/// Picks the version line from VBoxManage output, skipping warnings that
/// it prints first, such as a missing vboxdrv module.
fn version_line(output: &str) -> Option<&str> {
    output
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(|c: char| c.is_ascii_digit()))
}

/// Parses the major and minor number of a version such as `7.0.14r161095`.
fn parse_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor_text = parts.next()?;
    let digits = minor_text
        .find(|c: char| !c.is_ascii_digit())
        .map_or(minor_text, |end| &minor_text[..end]);
    Some((major, digits.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULES: &str = "\
kvm_intel 380928 0 - Live 0x0000000000000000
kvm 1142784 1 kvm_intel, Live 0x0000000000000000
irqbypass 16384 1 kvm, Live 0x0000000000000000
";

    #[test]
    fn modules_finds_kvm_intel() {
        let found = loaded_kvm_modules(MODULES);
        assert_eq!(found, vec![("kvm_intel", "VERR_VMX_IN_VMX_ROOT_MODE")]);
    }

    #[test]
    fn modules_finds_kvm_amd() {
        let found = loaded_kvm_modules("kvm_amd 155648 0 - Live 0x0\nkvm 1 1 kvm_amd, Live 0x0\n");
        assert_eq!(found, vec![("kvm_amd", "VERR_SVM_IN_USE")]);
    }

    #[test]
    fn modules_ignores_plain_kvm_and_prefixes() {
        let text = "kvm 1142784 0 - Live 0x0\nkvm_intel_extra 1 0 - Live 0x0\n";
        assert!(loaded_kvm_modules(text).is_empty());
        assert!(loaded_kvm_modules("").is_empty());
    }

    #[test]
    fn version_line_skips_warnings() {
        let output = "WARNING: The vboxdrv kernel module is not loaded.\n\n7.0.14r161095\n";
        assert_eq!(version_line(output), Some("7.0.14r161095"));
        assert_eq!(version_line("no version here\n"), None);
    }

    #[test]
    fn parse_version_major_minor() {
        assert_eq!(parse_version("7.0.14r161095"), Some((7, 0)));
        assert_eq!(parse_version("7.1.4_Debianr165100"), Some((7, 1)));
        assert_eq!(parse_version("6.1"), Some((6, 1)));
        assert_eq!(parse_version("7"), None);
        assert_eq!(parse_version("x.1"), None);
    }

    #[test]
    fn versions_before_coexistence_blocked() {
        assert!((7, 0) < COEXISTS_FROM);
        assert!((6, 1) < COEXISTS_FROM);
        assert!((7, 1) >= COEXISTS_FROM);
        assert!((8, 0) >= COEXISTS_FROM);
    }
}
