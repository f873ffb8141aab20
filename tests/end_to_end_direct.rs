//! The fast loop end to end on Debian's real linux-source-6.1: init, build,
//! patch, boot the stale unpatched kernel (ENOSYS), rebuild, boot the patched
//! kernel (PASS), a wrong expectation (FAIL), then revert.
//!
//! Builds a tinyconfig kernel (about 2-3 minutes on 2 cores) and boots it
//! under TCG several times. ccache keeps its cache in the test cache folder.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::Kbuild;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

const PATCHED_FILES: &[&str] = &[
    "arch/x86/entry/syscalls/syscall_64.tbl",
    "kernel/Makefile",
    "include/linux/syscalls.h",
];

#[test]
fn fast_loop_on_linux_6_1() {
    let work = tempfile::tempdir_in(support::cache_dir()).expect("creating the work folder");
    let tree = support::work_tree(&work.path().join("linux"));
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let kbuild = Kbuild {
        project: work.path().join("kbuild.toml"),
        home,
    };

    let init = Command::new(env!("CARGO_BIN_EXE_kbuild"))
        .args(["init", "--name", "kbuild_add", "--dir"])
        .arg(work.path())
        .arg("--source")
        .arg(&tree)
        .output()
        .expect("starting kbuild init");
    assert_eq!(init.status.code(), Some(0), "{}", stderr(&init));

    // Build the unpatched kernel, then patch without rebuilding: booting that
    // stale kernel must fail with ENOSYS, which proves the check can fail.
    let build = kbuild.run(&["build"]);
    assert_eq!(build.status.code(), Some(0), "unpatched build failed");

    let patch = kbuild.run(&["patch"]);
    assert_eq!(patch.status.code(), Some(0), "patch failed");
    assert!(
        stderr(&patch).contains("number 451"),
        "patch did not pick 451"
    );

    let stale = kbuild.run(&["verify", "--direct", "--accel", "tcg"]);
    assert_eq!(
        stale.status.code(),
        Some(1),
        "unpatched kernel must fail verification"
    );
    assert!(stdout(&stale).contains("ENOSYS"), "ENOSYS not named");
    assert!(
        stderr(&stale).contains("older than the last patch"),
        "no stale-image warning"
    );

    let rebuild = kbuild.run(&["patch-and-build"]);
    assert_eq!(rebuild.status.code(), Some(0), "patched build failed");

    // No --accel here: kbuild probes KVM and falls back to TCG where KVM runs no guest.
    let pass = kbuild.run(&["verify", "--direct"]);
    assert_eq!(pass.status.code(), Some(0), "patched kernel must pass");
    assert!(
        stdout(&pass).contains("PASS kbuild_add returned 42"),
        "exact value not reported"
    );

    let project_text = std::fs::read_to_string(&kbuild.project).unwrap();
    std::fs::write(
        &kbuild.project,
        project_text.replace("expect = 42", "expect = 41"),
    )
    .unwrap();
    let wrong = kbuild.run(&["verify", "--direct", "--accel", "tcg"]);
    assert_eq!(wrong.status.code(), Some(1), "wrong expectation must fail");
    assert!(
        stdout(&wrong).contains("expected 41, got 42"),
        "values not named"
    );

    let revert = kbuild.run(&["patch", "--revert"]);
    assert_eq!(revert.status.code(), Some(0), "revert failed");
    let pristine = support::pristine_tree();
    for file in PATCHED_FILES {
        assert!(
            read(&tree.join(file)) == read(&pristine.join(file)),
            "{file} not restored"
        );
    }
    assert!(
        !tree.join("kernel/kbuild_add.c").exists(),
        "syscall body left behind"
    );
}
