use std::path::Path;
use std::time::Duration;

use super::{CommandResult, Phase};
use crate::cli::VerifyArgs;
use crate::exit::{ExitCode, Failure};
use crate::project::Project;
use crate::verify::{self, DirectOptions, Verdict};
use crate::{build, patch, source, ui};

pub async fn run(project: &Project, args: &VerifyArgs) -> CommandResult {
    if !args.direct {
        if !super::guest::vm_runs(project)
            .await
            .phase(ExitCode::Infrastructure)?
        {
            return Err(Failure::usage(
                "kbuild verify checks inside the project's VM, which is not running; run \
                 `kbuild up` and `kbuild patch-and-build`, or pass --direct to boot the host \
                 build with QEMU and run the test as /init",
            ))
            .phase(ExitCode::Usage);
        }
        return super::guest::verify_in_vm(project, args).await;
    }
    let tree = source::kernel_tree(project).await.phase(ExitCode::Usage)?;
    let image = build::kernel_image(project);
    if !image.is_file() {
        return Err(Failure::usage(format!(
            "no kernel image at {}; run `kbuild patch-and-build` first",
            image.display()
        )))
        .phase(ExitCode::Usage);
    }
    let name = &project.syscall.name;
    let number = patch::syscall_number(&tree, project.kernel.arch, name)
        .phase(ExitCode::Usage)?
        .ok_or_else(|| {
            Failure::usage(format!(
                "syscall {name} is not in the syscall table of {}; run `kbuild patch-and-build` \
                 first",
                tree.display()
            ))
        })
        .phase(ExitCode::Usage)?;
    warn_if_stale(project, &image);

    let options = DirectOptions {
        accel: args.accel,
        timeout: args.timeout.map(Duration::from_secs),
    };
    ui::status("Booting", format!("{} with QEMU", image.display()));
    let report = verify::verify_direct(project, &image, number, &options)
        .await
        .phase(ExitCode::Infrastructure)?;
    let release = report.release.as_deref().unwrap_or("unknown release");
    let summary = format!("{name} (nr {number}) on {release}, {}", report.accel);
    match report.verdict {
        Verdict::Passed { actual } => {
            ui::status(
                "Passed",
                format!("{summary} in {}", ui::seconds(report.elapsed)),
            );
            ui::detail(format!("console: {}", report.console_log.display()));
            ui::result(format!("PASS {name} returned {actual}"));
            Ok(ExitCode::Passed)
        }
        Verdict::Failed { reason, .. } => {
            ui::status("Failed", &summary);
            ui::detail(format!("console: {}", report.console_log.display()));
            ui::result(format!("FAIL {reason}"));
            Ok(ExitCode::VerificationFailed)
        }
    }
}

/// Warns when the kernel image is older than the last patch, which usually
/// means the patch was applied but the kernel not rebuilt.
fn warn_if_stale(project: &Project, image: &Path) {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let diff = project.state_dir().join("patch").join("applied.diff");
    if let (Some(image_time), Some(patch_time)) = (modified(image), modified(&diff)) {
        if image_time < patch_time {
            ui::warn(format!(
                "{} is older than the last patch ({}); run `kbuild build` to boot the patched kernel",
                image.display(),
                diff.display()
            ));
        }
    }
}
