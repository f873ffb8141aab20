//! `kbuild doctor`: checks the host for what kbuild needs and names the
//! command that installs what is missing.
//!
//! Every probe reports its own state in a `Check`. A probe that cannot run
//! becomes a warning or a missing item, not an error of the command.

mod disk;
mod install;
mod os_release;
mod output;
mod tools;
mod virt;

use serde::Serialize;

pub use install::{package_name, Package, Requirement};
pub use os_release::OsRelease;
pub use output::{render_json, render_text};

use crate::exit::ExitCode;
use crate::profile::PackageManager;
use crate::project::Project;

/// The state of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Present but limited, such as low disk space or KVM unusable.
    Warn,
    Missing,
}

impl Status {
    /// Returns the word that starts the check's line in the text output.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Missing => "missing",
        }
    }
}

/// The outcome of one check, as a line of text output or an entry of JSON output.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// Whether kbuild cannot build and boot a kernel without it.
    pub required: bool,
    /// A version line, a path, a free-space figure, or the reason for the status.
    pub detail: String,
    /// The command that installs what is missing, when the distribution is known.
    pub install: Option<String>,
    /// The packages behind `install`, for the combined command.
    #[serde(skip)]
    pub packages: Vec<Package>,
}

impl Check {
    pub fn ok(name: &'static str, required: bool, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, required, detail)
    }

    pub fn warn(name: &'static str, required: bool, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Warn, required, detail)
    }

    /// Creates a missing check with the command that installs `packages`.
    pub fn missing(
        name: &'static str,
        required: bool,
        detail: impl Into<String>,
        packages: Vec<Package>,
        host: &HostContext,
    ) -> Check {
        let mut check = Check::new(name, Status::Missing, required, detail);
        check.install = host.install_command(&packages);
        check.packages = packages;
        check
    }

    /// Creates a missing check that no distribution package installs.
    pub fn absent(name: &'static str, required: bool, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Missing, required, detail)
    }

    fn new(name: &'static str, status: Status, required: bool, detail: impl Into<String>) -> Check {
        Check {
            name,
            status,
            required,
            detail: detail.into(),
            install: None,
            packages: Vec::new(),
        }
    }
}

/// Facts about the host that the checks use to name packages.
#[derive(Debug, Clone)]
pub struct HostContext {
    pub release: Option<OsRelease>,
    pub manager: Option<PackageManager>,
    pub as_root: bool,
}

impl HostContext {
    /// Reads os-release and the effective user id.
    pub fn detect() -> HostContext {
        let release = OsRelease::read();
        HostContext {
            manager: release.as_ref().and_then(OsRelease::package_manager),
            release,
            as_root: install::running_as_root(),
        }
    }

    /// Names the package that provides `requirement` here, or `None` for an
    /// unknown distribution.
    pub fn package(&self, requirement: Requirement) -> Vec<Package> {
        self.manager
            .map(|manager| Package::for_requirement(requirement, manager))
            .into_iter()
            .collect()
    }

    pub fn install_command(&self, packages: &[Package]) -> Option<String> {
        let manager = self.manager?;
        install::install_command(manager, packages, self.as_root)
    }

    /// True on Debian 12 (bookworm) and its derivatives that keep the codename.
    pub fn is_bookworm(&self) -> bool {
        self.release
            .as_ref()
            .and_then(|release| release.codename.as_deref())
            == Some("bookworm")
    }
}

/// The host's distribution, as JSON output shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HostSummary {
    /// `PRETTY_NAME` from os-release, else `ID`; `None` without os-release.
    pub distribution: Option<String>,
    /// `apt`, `dnf`, `pacman` or `zypper`; `None` for an unknown family.
    pub package_manager: Option<&'static str>,
    /// One command that installs every missing package; `None` when nothing
    /// is missing or the family is unknown.
    pub install_command: Option<String>,
}

/// Every check's outcome and whether the host can run kbuild.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub host: HostSummary,
    pub checks: Vec<Check>,
    /// True when no required check is missing; warnings do not count.
    pub ok: bool,
}

impl Report {
    /// Builds the report: the combined install command and the verdict.
    pub fn new(host: &HostContext, checks: Vec<Check>) -> Report {
        let packages: Vec<Package> = checks
            .iter()
            .filter(|check| check.status == Status::Missing)
            .flat_map(|check| check.packages.iter().cloned())
            .collect();
        let ok = checks
            .iter()
            .all(|check| !check.required || check.status != Status::Missing);
        Report {
            host: HostSummary {
                distribution: host
                    .release
                    .as_ref()
                    .map(|release| release.display_name().to_string()),
                package_manager: host.manager.map(install::manager_name),
                install_command: host.install_command(&packages),
            },
            checks,
            ok,
        }
    }

    /// Returns 0 when every required check passed, 69 when one is missing.
    pub fn exit_code(&self) -> ExitCode {
        if self.ok {
            ExitCode::Passed
        } else {
            ExitCode::Infrastructure
        }
    }
}

/// Runs every check: QEMU, KVM, VirtualBox, free disk, then the build tools.
pub async fn check_host(project: Option<&Project>) -> Report {
    let host = HostContext::detect();
    let mut checks = Vec::new();

    checks.push(tools::check_qemu(&host).await);
    checks.push(tools::check_qemu_img(&host).await);
    checks.push(virt::check_kvm().await);
    checks.push(virt::check_virtualbox(&host).await);
    checks.extend(disk::check_disks(project));
    checks.extend(tools::check_build_tools(&host).await);

    Report::new(&host, checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian_host() -> HostContext {
        HostContext {
            release: Some(OsRelease::parse("ID=debian\nVERSION_CODENAME=bookworm\n")),
            manager: Some(PackageManager::Apt),
            as_root: true,
        }
    }

    fn missing_tool(name: &'static str, required: bool, host: &HostContext) -> Check {
        let packages = host.package(Requirement::Bc);
        Check::missing(name, required, "not found on PATH", packages, host)
    }

    #[test]
    fn report_fails_on_required_missing() {
        let host = debian_host();
        let checks = vec![
            Check::ok("gcc", true, "gcc 12"),
            missing_tool("bc", true, &host),
        ];
        let report = Report::new(&host, checks);
        assert!(!report.ok);
        assert_eq!(report.exit_code(), ExitCode::Infrastructure);
        assert_eq!(
            report.host.install_command.as_deref(),
            Some("apt-get install bc")
        );
    }

    #[test]
    fn report_passes_with_warnings() {
        let host = debian_host();
        let checks = vec![
            Check::warn("kvm", false, "KVM unusable"),
            Check::warn("qemu", true, "version unknown"),
            missing_tool("ccache", false, &host),
        ];
        let report = Report::new(&host, checks);
        assert!(report.ok);
        assert_eq!(report.exit_code(), ExitCode::Passed);
    }

    #[test]
    fn unknown_family_has_no_commands() {
        let host = HostContext {
            release: Some(OsRelease::parse("ID=alpine\n")),
            manager: None,
            as_root: true,
        };
        let check = missing_tool("bc", true, &host);
        assert_eq!(check.install, None);
        let report = Report::new(&host, vec![check]);
        assert_eq!(report.host.install_command, None);
        assert_eq!(report.host.package_manager, None);
        assert_eq!(report.host.distribution.as_deref(), Some("alpine"));
    }

    #[test]
    fn bookworm_detected_from_codename() {
        assert!(debian_host().is_bookworm());
        let host = HostContext {
            release: None,
            manager: None,
            as_root: true,
        };
        assert!(!host.is_bookworm());
    }
}
