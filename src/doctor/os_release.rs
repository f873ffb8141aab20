//! Reads the host's distribution from os-release(5) and maps it to a package manager.

use std::collections::HashMap;
use std::path::Path;

use crate::profile::PackageManager;

/// The files os-release(5) names, in the order to try them.
const OS_RELEASE_FILES: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];

/// The fields of os-release that doctor uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`, such as `debian` or `opensuse-tumbleweed`.
    pub id: String,
    /// `ID_LIKE`, split on spaces, such as `["rhel", "centos", "fedora"]`.
    pub id_like: Vec<String>,
    /// `VERSION_CODENAME`, such as `bookworm`.
    pub codename: Option<String>,
    /// `PRETTY_NAME`, such as `Debian GNU/Linux 12 (bookworm)`.
    pub pretty_name: Option<String>,
}

impl OsRelease {
    /// Reads the first os-release file that exists, or `None` when none can be read.
    pub fn read() -> Option<OsRelease> {
        OS_RELEASE_FILES
            .iter()
            .find_map(|path| std::fs::read_to_string(Path::new(path)).ok())
            .map(|text| OsRelease::parse(&text))
    }

    /// Parses os-release text: `KEY=value` lines, values optionally quoted.
    pub fn parse(text: &str) -> OsRelease {
        let fields: HashMap<&str, String> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.trim(), unquote(value.trim())))
            .collect();
        let non_empty = |key: &str| fields.get(key).filter(|value| !value.is_empty()).cloned();
        OsRelease {
            // os-release(5) gives `linux` as the default ID.
            id: non_empty("ID").unwrap_or_else(|| "linux".to_string()),
            id_like: fields
                .get("ID_LIKE")
                .map(|value| value.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            codename: non_empty("VERSION_CODENAME"),
            pretty_name: non_empty("PRETTY_NAME"),
        }
    }

    /// Returns the package manager of the first of `ID` and `ID_LIKE` that
    /// belongs to a known family.
    pub fn package_manager(&self) -> Option<PackageManager> {
        std::iter::once(&self.id)
            .chain(&self.id_like)
            .find_map(|id| family_of(id))
    }

    /// Returns the name to show for the distribution: `PRETTY_NAME`, else `ID`.
    pub fn display_name(&self) -> &str {
        self.pretty_name.as_deref().unwrap_or(&self.id)
    }
}

/// Maps one os-release ID to its family's package manager.
fn family_of(id: &str) -> Option<PackageManager> {
    match id {
        "debian" | "ubuntu" => Some(PackageManager::Apt),
        "fedora" | "rhel" | "centos" => Some(PackageManager::Dnf),
        "arch" => Some(PackageManager::Pacman),
        "suse" | "sles" => Some(PackageManager::Zypper),
        id if id.starts_with("opensuse") => Some(PackageManager::Zypper),
        _ => None,
    }
}

/// Removes one pair of surrounding quotes and the backslash escapes that
/// os-release allows inside double quotes.
fn unquote(value: &str) -> String {
    let quoted =
        |quote: char| value.len() >= 2 && value.starts_with(quote) && value.ends_with(quote);
    if quoted('\'') {
        return value[1..value.len() - 1].to_string();
    }
    if !quoted('"') {
        return value.to_string();
    }
    let mut text = String::new();
    let mut chars = value[1..value.len() - 1].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => text.extend(chars.next()),
            c => text.push(c),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_12: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION_CODENAME=bookworm
ID=debian
"#;

    #[test]
    fn parse_debian_fields() {
        let release = OsRelease::parse(DEBIAN_12);
        assert_eq!(release.id, "debian");
        assert!(release.id_like.is_empty());
        assert_eq!(release.codename.as_deref(), Some("bookworm"));
        assert_eq!(release.display_name(), "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(release.package_manager(), Some(PackageManager::Apt));
    }

    #[test]
    fn id_like_picks_family() {
        let cases = [
            (
                "ID=linuxmint\nID_LIKE=\"ubuntu debian\"",
                PackageManager::Apt,
            ),
            (
                "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"",
                PackageManager::Dnf,
            ),
            ("ID=fedora", PackageManager::Dnf),
            ("ID=manjaro\nID_LIKE=arch", PackageManager::Pacman),
            ("ID=arch", PackageManager::Pacman),
            (
                "ID=\"opensuse-tumbleweed\"\nID_LIKE=\"opensuse suse\"",
                PackageManager::Zypper,
            ),
            ("ID=sles\nID_LIKE=\"suse\"", PackageManager::Zypper),
        ];
        for (text, expected) in cases {
            let release = OsRelease::parse(text);
            assert_eq!(release.package_manager(), Some(expected), "{text}");
        }
    }

    #[test]
    fn unknown_family_has_no_manager() {
        let release = OsRelease::parse("ID=alpine\n");
        assert_eq!(release.package_manager(), None);
        assert_eq!(release.display_name(), "alpine");
    }

    #[test]
    fn missing_id_defaults_to_linux() {
        assert_eq!(OsRelease::parse("# empty\n").id, "linux");
    }

    #[test]
    fn unquote_handles_escapes() {
        assert_eq!(unquote(r#""a \"b\" \\c""#), r#"a "b" \c"#);
        assert_eq!(unquote("'single'"), "single");
        assert_eq!(unquote("plain"), "plain");
        assert_eq!(unquote("\""), "\"");
    }
}
