//! `kbuild run` end to end on the Debian 12 test image under TCG and
//! Debian's real linux-source-6.1. A first run does every step, and a second
//! run skips every step. After `kbuild down`, a run boots the VM again and
//! reboots it into the new kernel without building anything.

mod support;

#[path = "support/http_server.rs"]
mod http_server;

#[path = "support/test_vm.rs"]
mod test_vm;

use support::{check_reports, step_statuses};
use test_vm::{serve_image, text, vm_project};

const STEPS: [&str; 9] = [
    "image", "vm", "deps", "source", "patch", "build", "install", "reboot", "verify",
];

fn statuses(status: &str) -> Vec<String> {
    STEPS
        .iter()
        .map(|step| format!("{step}={status}"))
        .collect()
}

#[test]
fn run_builds_installs_verifies_and_then_skips_everything() {
    let work = tempfile::tempdir_in(support::cache_dir()).unwrap();
    let server = serve_image(work.path());
    let project = vm_project(work.path(), &server, 6, 1024);
    let kbuild = &project.kbuild;
    let report = work.path().join("report.json");
    let junit = work.path().join("junit.xml");
    let args = [
        "run",
        "--accel",
        "tcg",
        "--report",
        report.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ];

    let first = kbuild.run(&args);
    assert_eq!(first.status.code(), Some(0), "the first run failed");
    let (json, summary) = check_reports(&report, &junit);
    assert_eq!(step_statuses(&json), statuses("passed"));
    assert_eq!(json["mode"], "vm");
    assert_eq!(json["test"]["actual"], 42);
    assert_eq!(json["kernel"]["number"], 451);
    let checks: Vec<String> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|check| {
            format!(
                "{}={}",
                check["name"].as_str().unwrap(),
                check["status"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        checks,
        ["kernel=pass", "symbol=pass", "syscall=pass", "log=pass"]
    );
    let release = json["kernel"]["release"].as_str().unwrap().to_string();
    assert_eq!(json["tools"]["guest"]["kernel"], release.as_str());
    assert!(json["tools"]["guest"]["gcc"]
        .as_str()
        .unwrap()
        .contains("gcc"));
    assert_eq!(summary["tests"], 13, "9 steps and 4 checks: {summary}");
    assert_eq!(summary["failures"], 0, "{summary}");

    let second = kbuild.run(&args);
    assert_eq!(second.status.code(), Some(0), "the second run failed");
    let (json, _) = check_reports(&report, &junit);
    assert_eq!(step_statuses(&json), statuses("skipped"));
    assert_eq!(json["test"]["verdict"], "pass");
    assert_eq!(json["checks"].as_array().unwrap().len(), 4);
    let stderr = text(&second.stderr);
    for work_line in ["Rebooting", "Building", "Installed"] {
        assert!(
            !stderr.contains(work_line),
            "the second run did work: {work_line}"
        );
    }

    // After a shutdown the VM boots its default (old) kernel: the run starts
    // the VM and reboots it into the installed kernel, and nothing else.
    let down = kbuild.run(&["down"]);
    assert_eq!(down.status.code(), Some(0), "down failed");
    let third = kbuild.run(&args);
    assert_eq!(third.status.code(), Some(0), "the run after down failed");
    let (json, _) = check_reports(&report, &junit);
    assert_eq!(
        step_statuses(&json),
        [
            "image=skipped",
            "vm=passed",
            "deps=skipped",
            "source=skipped",
            "patch=skipped",
            "build=skipped",
            "install=skipped",
            "reboot=passed",
            "verify=passed"
        ]
    );
    assert_eq!(json["steps"][1]["reason"], "the VM is not running");
    assert_eq!(json["kernel"]["release"], release.as_str());
}
