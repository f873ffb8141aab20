//! Package names and install commands per distribution family.

use crate::profile::PackageManager;

/// A host requirement that one distribution package provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    Qemu,
    QemuImg,
    Gcc,
    Make,
    Flex,
    Bison,
    Bc,
    Perl,
    Cpio,
    Xz,
    LibelfHeaders,
    OpensslHeaders,
    Binutils,
    Ccache,
    SshClient,
}

/// One package to install, with the suite to take it from when not the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: &'static str,
    /// An apt target release such as `bookworm-backports`, passed with `-t`.
    pub suite: Option<&'static str>,
}

impl Package {
    /// Names the package that provides `requirement` under `manager`.
    pub fn for_requirement(requirement: Requirement, manager: PackageManager) -> Package {
        Package {
            name: package_name(requirement, manager),
            suite: None,
        }
    }
}

/// Returns the package that provides `requirement` in the family of `manager`.
pub fn package_name(requirement: Requirement, manager: PackageManager) -> &'static str {
    use PackageManager::{Apt, Dnf, Pacman, Zypper};
    use Requirement::*;
    match (requirement, manager) {
        (Qemu, Zypper) => "qemu-x86",
        (Qemu, _) => "qemu-system-x86",
        (QemuImg, Apt) => "qemu-utils",
        (QemuImg, Dnf | Pacman) => "qemu-img",
        (QemuImg, Zypper) => "qemu-tools",
        (Gcc, _) => "gcc",
        (Make, _) => "make",
        (Flex, _) => "flex",
        (Bison, _) => "bison",
        (Bc, _) => "bc",
        (Perl, _) => "perl",
        (Cpio, _) => "cpio",
        (Xz, Apt) => "xz-utils",
        (Xz, _) => "xz",
        (LibelfHeaders, Apt) => "libelf-dev",
        (LibelfHeaders, Dnf) => "elfutils-libelf-devel",
        (LibelfHeaders, Pacman) => "libelf",
        (LibelfHeaders, Zypper) => "libelf-devel",
        (OpensslHeaders, Apt) => "libssl-dev",
        (OpensslHeaders, Dnf) => "openssl-devel",
        (OpensslHeaders, Pacman) => "openssl",
        (OpensslHeaders, Zypper) => "libopenssl-devel",
        (Binutils, _) => "binutils",
        (Ccache, _) => "ccache",
        (SshClient, Apt) => "openssh-client",
        (SshClient, Pacman) => "openssh",
        (SshClient, Dnf | Zypper) => "openssh-clients",
    }
}

/// Builds the command line that installs `packages`: one call of the
/// package manager per suite, joined with `&&`, each under `sudo` unless
/// kbuild runs as root. Returns `None` for an empty list.
pub fn install_command(
    manager: PackageManager,
    packages: &[Package],
    as_root: bool,
) -> Option<String> {
    let mut suites: Vec<Option<&str>> = Vec::new();
    for package in packages {
        if !suites.contains(&package.suite) {
            suites.push(package.suite);
        }
    }
    // The default suite goes first, so backports only add to a normal install.
    suites.sort_by_key(|suite| suite.is_some());

    let sudo = if as_root { "" } else { "sudo " };
    let commands: Vec<String> = suites
        .into_iter()
        .map(|suite| {
            let mut names: Vec<&str> = Vec::new();
            for package in packages.iter().filter(|package| package.suite == suite) {
                if !names.contains(&package.name) {
                    names.push(package.name);
                }
            }
            let target = suite
                .map(|suite| format!("-t {suite} "))
                .unwrap_or_default();
            format!(
                "{sudo}{}{target}{}",
                manager_command(manager),
                names.join(" ")
            )
        })
        .collect();
    (!commands.is_empty()).then(|| commands.join(" && "))
}

/// Returns the install command of a package manager, up to the package names.
fn manager_command(manager: PackageManager) -> &'static str {
    match manager {
        PackageManager::Apt => "apt-get install ",
        PackageManager::Dnf => "dnf install ",
        PackageManager::Pacman => "pacman -S ",
        PackageManager::Zypper => "zypper install ",
    }
}

/// Returns the name of a package manager as JSON output shows it.
pub fn manager_name(manager: PackageManager) -> &'static str {
    match manager {
        PackageManager::Apt => "apt",
        PackageManager::Dnf => "dnf",
        PackageManager::Pacman => "pacman",
        PackageManager::Zypper => "zypper",
    }
}

/// True when kbuild runs as root, so install commands need no `sudo`.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid(2) takes no arguments, and its man page lists no errors.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packages(names: &[&'static str]) -> Vec<Package> {
        names
            .iter()
            .map(|name| Package { name, suite: None })
            .collect()
    }

    #[test]
    fn header_packages_per_family() {
        let cases = [
            (PackageManager::Apt, "libelf-dev", "libssl-dev"),
            (
                PackageManager::Dnf,
                "elfutils-libelf-devel",
                "openssl-devel",
            ),
            (PackageManager::Pacman, "libelf", "openssl"),
            (PackageManager::Zypper, "libelf-devel", "libopenssl-devel"),
        ];
        for (manager, libelf, openssl) in cases {
            let found = package_name(Requirement::LibelfHeaders, manager);
            assert_eq!(found, libelf, "{manager:?}");
            let found = package_name(Requirement::OpensslHeaders, manager);
            assert_eq!(found, openssl, "{manager:?}");
        }
    }

    #[test]
    fn qemu_and_tools_per_family() {
        use PackageManager::*;
        assert_eq!(package_name(Requirement::Qemu, Apt), "qemu-system-x86");
        assert_eq!(package_name(Requirement::Qemu, Zypper), "qemu-x86");
        assert_eq!(package_name(Requirement::QemuImg, Apt), "qemu-utils");
        assert_eq!(package_name(Requirement::QemuImg, Dnf), "qemu-img");
        assert_eq!(package_name(Requirement::Xz, Apt), "xz-utils");
        assert_eq!(package_name(Requirement::Xz, Pacman), "xz");
        assert_eq!(package_name(Requirement::SshClient, Dnf), "openssh-clients");
        assert_eq!(package_name(Requirement::SshClient, Pacman), "openssh");
    }

    #[test]
    fn command_per_manager() {
        let list = packages(&["bc", "flex"]);
        let cases = [
            (PackageManager::Apt, "apt-get install bc flex"),
            (PackageManager::Dnf, "dnf install bc flex"),
            (PackageManager::Pacman, "pacman -S bc flex"),
            (PackageManager::Zypper, "zypper install bc flex"),
        ];
        for (manager, expected) in cases {
            let command = install_command(manager, &list, true);
            assert_eq!(command.as_deref(), Some(expected));
        }
    }

    #[test]
    fn command_uses_sudo_when_not_root() {
        let command = install_command(PackageManager::Dnf, &packages(&["bc"]), false);
        assert_eq!(command.as_deref(), Some("sudo dnf install bc"));
    }

    #[test]
    fn command_dedups_names() {
        let command = install_command(PackageManager::Apt, &packages(&["gcc", "gcc"]), true);
        assert_eq!(command.as_deref(), Some("apt-get install gcc"));
    }

    #[test]
    fn backports_get_own_call() {
        let mut list = vec![Package {
            name: "qemu-system-x86",
            suite: Some("bookworm-backports"),
        }];
        list.extend(packages(&["bc"]));
        let command = install_command(PackageManager::Apt, &list, false);
        assert_eq!(
            command.as_deref(),
            Some(
                "sudo apt-get install bc && \
                 sudo apt-get install -t bookworm-backports qemu-system-x86"
            )
        );
    }

    #[test]
    fn empty_list_has_no_command() {
        assert_eq!(install_command(PackageManager::Apt, &[], true), None);
    }
}
