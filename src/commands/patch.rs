use super::{CommandResult, Phase};
use crate::cli::PatchArgs;
use crate::exit::ExitCode;
use crate::project::Project;
use crate::{patch, source, ui};

pub async fn run(project: &Project, args: &PatchArgs) -> CommandResult {
    let tree = source::kernel_tree(project).await.phase(ExitCode::Usage)?;
    if args.revert {
        revert(project, &tree)
    } else {
        apply(project, &tree).map(|_| ExitCode::Passed)
    }
}

/// Applies the patch and reports it; returns the syscall number.
pub fn apply(project: &Project, tree: &std::path::Path) -> Result<u32, super::CommandError> {
    let applied = patch::apply(project, tree).phase(ExitCode::Usage)?;
    let name = &project.syscall.name;
    if applied.changed {
        ui::status(
            "Patched",
            format!(
                "{} with syscall {name} as number {}",
                tree.display(),
                applied.number
            ),
        );
        for file in &applied.files {
            ui::detail(file.display());
        }
    } else {
        ui::status(
            "Fresh",
            format!("syscall {name} is already number {}", applied.number),
        );
    }
    ui::detail(format!("diff saved to {}", applied.diff.display()));
    Ok(applied.number)
}

fn revert(project: &Project, tree: &std::path::Path) -> CommandResult {
    let reverted = patch::revert(project, tree).phase(ExitCode::Usage)?;
    if reverted.changed {
        ui::status(
            "Reverted",
            format!("{} files in {}", reverted.files.len(), tree.display()),
        );
        for file in &reverted.files {
            ui::detail(file.display());
        }
    } else {
        ui::status(
            "Clean",
            format!(
                "no kbuild patch is applied to {} (none recorded in {})",
                tree.display(),
                project.state_dir().join("patch").display()
            ),
        );
    }
    Ok(ExitCode::Passed)
}
