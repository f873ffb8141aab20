//! Shell commands that check and install a profile's packages, one set per
//! package manager. Every package name is quoted before it reaches the guest shell.

use crate::profile::PackageManager;
use crate::ssh::shell_quote;

/// Builds a command that prints the names of the packages that are not installed, one per line.
pub fn missing_command(manager: PackageManager, packages: &[String]) -> String {
    let list = quoted(packages);
    match manager {
        // dpkg-query exits non-zero for unknown names, so test each one.
        PackageManager::Apt => format!(
            "for p in {list}; do dpkg-query -W -f='${{Status}}\\n' \"$p\" 2>/dev/null \
             | grep -q '^install ok installed$' || echo \"$p\"; done"
        ),
        PackageManager::Dnf | PackageManager::Zypper => format!(
            "for p in {list}; do rpm -q --whatprovides \"$p\" >/dev/null 2>&1 || echo \"$p\"; done"
        ),
        // A name counts as installed when it is an installed package or an
        // installed group, so groups such as base-devel pass too.
        PackageManager::Pacman => format!(
            "for p in {list}; do pacman -Qq \"$p\" >/dev/null 2>&1 || \
             pacman -Qqg \"$p\" >/dev/null 2>&1 || echo \"$p\"; done"
        ),
    }
}

/// Builds the commands that install `packages`, in order, each run with `sudo -n`.
pub fn install_commands(manager: PackageManager, packages: &[String]) -> Vec<String> {
    let list = quoted(packages);
    match manager {
        PackageManager::Apt => vec![
            "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -q".to_string(),
            format!(
                "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                 --no-install-recommends {list}"
            ),
        ],
        PackageManager::Dnf => vec![format!("sudo -n dnf install -y {list}")],
        // A cloud image's keyring can be older than the packages' signatures,
        // and Arch supports no partial upgrades, so refresh the keyring and
        // upgrade the whole system before installing.
        PackageManager::Pacman => vec![
            "sudo -n pacman -Sy --noconfirm --needed archlinux-keyring".to_string(),
            "sudo -n pacman -Su --noconfirm".to_string(),
            format!("sudo -n pacman -S --noconfirm --needed {list}"),
        ],
        PackageManager::Zypper => vec![
            "sudo -n zypper --non-interactive refresh".to_string(),
            format!("sudo -n zypper --non-interactive install --no-recommends {list}"),
        ],
    }
}

fn quoted(packages: &[String]) -> String {
    packages
        .iter()
        .map(|name| shell_quote(name))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn apt_install_lists_names() {
        let commands = install_commands(PackageManager::Apt, &names(&["bc", "libelf-dev"]));
        assert_eq!(commands.len(), 2);
        assert!(
            commands[1].ends_with("install -y -q --no-install-recommends bc libelf-dev"),
            "{}",
            commands[1]
        );
    }

    #[test]
    fn pacman_refreshes_keyring_first() {
        let commands = install_commands(PackageManager::Pacman, &names(&["bc"]));
        assert!(commands[0].contains("archlinux-keyring"));
        assert!(commands[1].contains("-Su"));
        assert!(commands[2].ends_with("--needed bc"));
    }

    #[test]
    fn missing_command_quotes_hostile_name() {
        let command = missing_command(PackageManager::Dnf, &names(&["x'; reboot #"]));
        assert!(command.contains("'x'\\''; reboot #'"), "{command}");
    }
}
