//! Boots a real, unpatched kernel under TCG with `verify_direct`.
//!
//! The kernel is the cached tinyconfig build from tests/support, built from
//! the unpatched tree, so it has no syscall 451 and calling it returns ENOSYS.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kbuild::exit::{exit_code_of, ExitCode};
use kbuild::project::Project;
use kbuild::verify::{verify_direct, Accel, DirectOptions, Verdict};

/// A syscall number that Linux 6.1 on x86_64 does not have.
const UNUSED_NUMBER: u32 = 451;

async fn bzimage() -> PathBuf {
    support::plain_kernel().await
}

/// Writes a project file with the given `[syscall] args` and `[test]` table and loads it.
fn project(dir: &Path, syscall_args: &str, test: &str) -> Project {
    let text = format!(
        "[syscall]\nname = \"kbuild_add\"\nargs = [{syscall_args}]\n\n\
         [test]\n{test}\n\n[kernel]\nsource = \"linux\"\n"
    );
    let path = dir.join("kbuild.toml");
    std::fs::write(&path, text).expect("writing kbuild.toml");
    Project::load(&path).expect("loading kbuild.toml")
}

fn sum_project(dir: &Path, test: &str) -> Project {
    let args = r#"{ type = "long", name = "a" }, { type = "long", name = "b" }"#;
    project(dir, args, test)
}

fn tcg(timeout: Option<Duration>) -> DirectOptions {
    DirectOptions {
        accel: Some(Accel::Tcg),
        timeout,
    }
}

#[tokio::test]
async fn unpatched_kernel_reports_enosys() {
    let dir = tempfile::tempdir().unwrap();
    let project = sum_project(dir.path(), "args = [20, 22]\nexpect = 42");
    let report = verify_direct(&project, &bzimage().await, UNUSED_NUMBER, &tcg(None))
        .await
        .expect("booting the unpatched kernel");

    let Verdict::Failed {
        actual,
        errno_name,
        reason,
    } = &report.verdict
    else {
        panic!("expected a failed verdict, got {:?}", report.verdict);
    };
    assert_eq!(*actual, Some(-38));
    assert_eq!(errno_name.as_deref(), Some("ENOSYS"));
    assert!(reason.contains("-ENOSYS"), "{reason}");
    assert_eq!(report.accel, Accel::Tcg);
    assert!(
        report
            .release
            .as_deref()
            .is_some_and(|r| r.starts_with("6.1")),
        "{report:?}"
    );
    let console = std::fs::read_to_string(&report.console_log).expect("reading the console log");
    assert!(
        console.contains("kbuild-test: start kbuild_add nr=451"),
        "{console}"
    );
}

#[tokio::test]
async fn string_argument_compiles_and_boots() {
    // Expecting -ENOSYS makes the unpatched kernel pass. The kernel never reads
    // the string, so this checks only that the program compiles and boots, and
    // that a real boot can reach Verdict::Passed.
    let dir = tempfile::tempdir().unwrap();
    let args = r#"{ type = "const char __user *", name = "text" }"#;
    let project = project(
        dir.path(),
        args,
        "args = [\"say \\\"hi\\\"\\n\"]\nexpect = -38",
    );
    let report = verify_direct(&project, &bzimage().await, UNUSED_NUMBER, &tcg(None))
        .await
        .expect("booting the unpatched kernel");
    assert_eq!(report.verdict, Verdict::Passed { actual: -38 });
}

#[tokio::test]
async fn short_timeout_is_infrastructure_error() {
    let dir = tempfile::tempdir().unwrap();
    let project = sum_project(dir.path(), "args = [20, 22]\nexpect = 42");
    let options = tcg(Some(Duration::from_secs(1)));
    let error = verify_direct(&project, &bzimage().await, UNUSED_NUMBER, &options)
        .await
        .expect_err("a 1 s boot should time out");
    let message = error.to_string();
    assert_eq!(
        exit_code_of(&error, ExitCode::Usage),
        ExitCode::Infrastructure
    );
    assert!(message.contains("timed out after 1s"), "{message}");
    // TCG needed 1.7 s or more to boot this kernel on a 2-core VM, so /init
    // usually has not run yet, but a faster host may get that far.
    assert!(
        message.contains("/init never ran") || message.contains("/init had started"),
        "{message}"
    );
    assert!(message.contains("console log: "), "{message}");
}

#[tokio::test]
async fn non_kernel_never_reaches_init() {
    let dir = tempfile::tempdir().unwrap();
    let project = sum_project(dir.path(), "args = [20, 22]\nexpect = 42");
    let image = dir.path().join("not-a-kernel");
    std::fs::write(&image, vec![0x5a; 64 * 1024]).unwrap();
    let error = verify_direct(
        &project,
        &image,
        UNUSED_NUMBER,
        &tcg(Some(Duration::from_secs(60))),
    )
    .await
    .expect_err("a file that is not a kernel should not boot");
    let message = error.to_string();
    assert_eq!(
        exit_code_of(&error, ExitCode::Usage),
        ExitCode::Infrastructure
    );
    assert!(
        message.contains("never reached /init") || message.contains("panicked before /init"),
        "{message}"
    );
}
