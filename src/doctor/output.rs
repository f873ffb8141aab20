//! Formats a doctor report as text lines or as one JSON object.

use anyhow::Context;

use super::{Report, Status};

/// Width of the status column: the longest label, `missing`, and a space.
const STATUS_WIDTH: usize = 8;
/// Width of the name column: the longest names, such as `virtualbox`, and two spaces.
const NAME_WIDTH: usize = 12;

/// Formats one line per check, then a line with the combined install command.
pub fn render_text(report: &Report) -> Vec<String> {
    let mut lines: Vec<String> = report
        .checks
        .iter()
        .map(|check| {
            let mut line = format!(
                "{:<STATUS_WIDTH$}{:<NAME_WIDTH$}{}",
                check.status.label(),
                check.name,
                check.detail
            );
            if let Some(install) = &check.install {
                line += &format!("; install: {install}");
            }
            line
        })
        .collect();
    lines.push(summary_line(report));
    lines
}

/// Formats the last line: the one command that installs everything missing,
/// or why there is none.
fn summary_line(report: &Report) -> String {
    if let Some(command) = &report.host.install_command {
        return format!("install everything missing with: {command}");
    }
    let unnamed: Vec<&str> = report
        .checks
        .iter()
        .filter(|check| check.status == Status::Missing && check.packages.is_empty())
        .filter(|check| check.required)
        .map(|check| check.name)
        .collect();
    if unnamed.is_empty() {
        return "nothing to install".to_string();
    }
    let distribution = report
        .host
        .distribution
        .as_deref()
        .unwrap_or("this host (no /etc/os-release)");
    format!(
        "missing {}; kbuild names packages only for the debian, ubuntu, fedora, rhel, arch \
         and opensuse families, so install them with the package manager of {distribution}",
        unnamed.join(", ")
    )
}

/// Serializes the report as one pretty-printed JSON object.
pub fn render_json(report: &Report) -> anyhow::Result<String> {
    serde_json::to_string_pretty(report).context("serializing the doctor report as JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::{Check, HostContext, OsRelease, Requirement};
    use crate::profile::PackageManager;

    fn host(manager: Option<PackageManager>) -> HostContext {
        HostContext {
            release: Some(OsRelease::parse(
                "ID=debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
            )),
            manager,
            as_root: true,
        }
    }

    fn sample(host: &HostContext) -> Report {
        let checks = vec![
            Check::ok("qemu", true, "QEMU emulator version 10.0.2"),
            Check::warn("kvm", false, "KVM unusable (/dev/kvm missing)"),
            Check::missing(
                "bc",
                true,
                "bc not found on PATH",
                host.package(Requirement::Bc),
                host,
            ),
            Check::absent("virtualbox", false, "VBoxManage not found"),
        ];
        Report::new(host, checks)
    }

    #[test]
    fn text_has_columns_and_install() {
        let lines = render_text(&sample(&host(Some(PackageManager::Apt))));
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], "ok      qemu        QEMU emulator version 10.0.2");
        assert_eq!(
            lines[2],
            "missing bc          bc not found on PATH; install: apt-get install bc"
        );
        assert_eq!(
            lines[4],
            "install everything missing with: apt-get install bc"
        );
    }

    #[test]
    fn text_without_family_names_tools() {
        let lines = render_text(&sample(&host(None)));
        let last = lines.last().unwrap();
        assert!(last.starts_with("missing bc;"), "{last}");
        assert!(last.contains("Debian GNU/Linux 12"), "{last}");
    }

    #[test]
    fn text_with_nothing_missing() {
        let host = host(Some(PackageManager::Apt));
        let report = Report::new(&host, vec![Check::ok("gcc", true, "gcc 12")]);
        assert_eq!(render_text(&report).last().unwrap(), "nothing to install");
    }

    fn sorted_keys(value: &serde_json::Value) -> Vec<String> {
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    #[test]
    fn json_shape_is_stable() {
        let text = render_json(&sample(&host(Some(PackageManager::Apt)))).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();

        assert_eq!(sorted_keys(&value), ["checks", "host", "ok"]);
        assert_eq!(value["ok"], false);
        assert_eq!(
            value["host"]["distribution"],
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(
            sorted_keys(&value["host"]),
            ["distribution", "install_command", "package_manager"]
        );
        assert_eq!(value["host"]["package_manager"], "apt");
        assert_eq!(value["host"]["install_command"], "apt-get install bc");

        let checks = value["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 4);
        assert_eq!(
            sorted_keys(&checks[0]),
            ["detail", "install", "name", "required", "status"]
        );
        assert_eq!(checks[0]["status"], "ok");
        assert_eq!(checks[0]["install"], serde_json::Value::Null);
        assert_eq!(checks[1]["status"], "warn");
        assert_eq!(checks[2]["status"], "missing");
        assert_eq!(checks[2]["required"], true);
        assert_eq!(checks[2]["install"], "apt-get install bc");
        assert_eq!(checks[3]["install"], serde_json::Value::Null);
    }

    #[test]
    fn json_nulls_without_family() {
        let text = render_json(&sample(&host(None))).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["host"]["package_manager"], serde_json::Value::Null);
        assert_eq!(value["host"]["install_command"], serde_json::Value::Null);
        assert_eq!(value["checks"][2]["install"], serde_json::Value::Null);
    }
}
