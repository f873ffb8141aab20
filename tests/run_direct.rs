//! `kbuild run --direct` end to end on Debian's real linux-source-6.1. First
//! a build fails because `bc` is broken (exit 3, the reproducer, the
//! reports). The same run then resumes at the build once `bc` works again,
//! and a third run skips every step. A wrong expectation reruns only verify,
//! which fails with the console in the JUnit file. Last, a verify timeout
//! shorter than the boot.
//!
//! Builds a tinyconfig kernel (2-4 minutes on 2 cores, less with ccache
//! warm) and boots it under TCG twice.

mod support;

use std::path::Path;
use std::process::Output;

use support::{check_reports, step_statuses, Kbuild};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes a `bc` that fails like a broken install and returns a PATH that finds it first.
fn broken_bc(dir: &Path) -> std::ffi::OsString {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let bc = dir.join("bc");
    std::fs::write(
        &bc,
        "#!/bin/sh\necho 'bc: broken on purpose by the test' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&bc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut path = dir.as_os_str().to_os_string();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

#[test]
fn direct_run_resumes_after_a_fixed_build_failure() {
    let work = tempfile::tempdir_in(support::cache_dir()).expect("creating the work folder");
    let tree = support::work_tree(&work.path().join("linux"));
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let kbuild = Kbuild {
        project: work.path().join("kbuild.toml"),
        home,
    };
    let init = std::process::Command::new(env!("CARGO_BIN_EXE_kbuild"))
        .args(["init", "--name", "kbuild_add", "--dir"])
        .arg(work.path())
        .arg("--source")
        .arg(&tree)
        .output()
        .expect("starting kbuild init");
    assert_eq!(init.status.code(), Some(0), "{}", stderr(&init));
    let reports = work.path().join("reports");
    let report = reports.join("run.json");
    let junit = reports.join("junit.xml");
    let run_args = [
        "run",
        "--direct",
        "--accel",
        "tcg",
        "--report",
        report.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ];

    // 1. bc fails: the build step fails with exit 3 and verify never runs.
    let path = broken_bc(&work.path().join("broken-bin"));
    let broken = kbuild.run_with_env(&run_args, &[("PATH", path.as_os_str())]);
    assert_eq!(broken.status.code(), Some(3), "a make failure must exit 3");
    let (json, summary) = check_reports(&report, &junit);
    assert_eq!(
        step_statuses(&json),
        [
            "source=passed",
            "patch=passed",
            "build=failed",
            "verify=not_run"
        ]
    );
    assert_eq!(json["failed_step"], "build");
    assert_eq!(json["exit_code"], 3);
    assert_eq!(json["kernel"]["number"], 451);
    assert_eq!(json["test"]["verdict"], "not_run");
    let reproducer = json["reproducer"].to_string();
    assert!(
        reproducer.contains("run --direct --accel tcg --from build"),
        "{reproducer}"
    );
    assert!(
        reproducer.contains("patch-and-build --no-vm"),
        "{reproducer}"
    );
    assert!(
        stderr(&broken).contains("reproduce: kbuild"),
        "no reproducer printed"
    );
    assert_eq!(summary["failures"], 1, "{summary}");
    assert_eq!(summary["skipped"], 1, "{summary}");
    let build_case = summary["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|case| case["name"] == "build")
        .expect("a build test case");
    assert_eq!(build_case["result"], "failure", "{build_case}");

    // 2. bc works again: source and patch are still valid, build and verify run.
    let fixed = kbuild.run(&run_args);
    assert_eq!(fixed.status.code(), Some(0), "the resumed run must pass");
    let (json, summary) = check_reports(&report, &junit);
    assert_eq!(
        step_statuses(&json),
        [
            "source=skipped",
            "patch=skipped",
            "build=passed",
            "verify=passed"
        ]
    );
    assert_eq!(json["steps"][2]["reason"], "failed last time");
    assert_eq!(json["test"]["expected"], 42);
    assert_eq!(json["test"]["actual"], 42);
    assert_eq!(json["test"]["verdict"], "pass");
    assert!(
        json["kernel"]["release"]
            .as_str()
            .unwrap()
            .starts_with("6.1."),
        "{}",
        json["kernel"]
    );
    assert!(json["tools"]["host"]["qemu"]
        .as_str()
        .unwrap()
        .contains("QEMU"));
    assert_eq!(json["reproducer"].as_array().unwrap().len(), 0);
    assert_eq!(summary["failures"], 0, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    let checks: Vec<String> = summary["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|case| case["classname"] == "kbuild.checks")
        .map(|case| {
            format!(
                "{}={}",
                case["name"].as_str().unwrap(),
                case["result"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(checks, ["boot=passed", "syscall=passed"]);

    // 3. Nothing changed: every step is skipped and the last verdict is reported.
    let again = kbuild.run(&run_args);
    assert_eq!(again.status.code(), Some(0), "the repeated run must pass");
    let (json, _) = check_reports(&report, &junit);
    assert_eq!(
        step_statuses(&json),
        [
            "source=skipped",
            "patch=skipped",
            "build=skipped",
            "verify=skipped"
        ]
    );
    assert_eq!(json["test"]["actual"], 42);
    assert!(
        !stderr(&again).contains("Building"),
        "a valid build ran again"
    );

    // 4. A wrong expectation changes only verify's inputs: it alone reruns and fails.
    let project = std::fs::read_to_string(&kbuild.project).unwrap();
    let wrong = project.replace("expect = 42", "expect = 43");
    assert_ne!(wrong, project, "kbuild init wrote no `expect = 42`");
    std::fs::write(&kbuild.project, wrong).unwrap();
    let failing = kbuild.run(&run_args);
    assert_eq!(failing.status.code(), Some(1), "a wrong value must exit 1");
    let (json, summary) = check_reports(&report, &junit);
    assert_eq!(
        step_statuses(&json),
        [
            "source=skipped",
            "patch=skipped",
            "build=skipped",
            "verify=failed"
        ]
    );
    assert_eq!(json["test"]["expected"], 43);
    assert_eq!(json["test"]["actual"], 42);
    let syscall_case = summary["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|case| case["classname"] == "kbuild.checks" && case["name"] == "syscall")
        .expect("a syscall test case");
    assert_eq!(syscall_case["result"], "failure", "{syscall_case}");
    let text = syscall_case["text"].as_str().unwrap();
    assert!(text.contains("console:"), "no console tail: {text}");
    assert!(
        text.contains("Linux version") || text.contains("kbuild"),
        "{text}"
    );

    // 5. A verify timeout shorter than the boot: the step times out (exit 69),
    //    QEMU is stopped, and JUnit reports an error rather than a failure.
    let project = std::fs::read_to_string(&kbuild.project).unwrap();
    let short = project.replace("[run.timeouts]\n", "[run.timeouts]\nverify = 1\n");
    assert_ne!(short, project, "kbuild init wrote no [run.timeouts] table");
    std::fs::write(&kbuild.project, short).unwrap();
    let slow = kbuild.run(&run_args);
    assert_eq!(slow.status.code(), Some(69), "a timeout must exit 69");
    assert!(
        stderr(&slow).contains("timed out after 1 s"),
        "no timeout message"
    );
    let (json, summary) = check_reports(&report, &junit);
    assert_eq!(json["steps"][3]["status"], "timed_out");
    assert_eq!(json["steps"][3]["timeout_s"], 1);
    assert_eq!(summary["errors"], 1, "{summary}");
}
