use super::guest::{self, Mode};
use super::{CommandResult, Phase};
use crate::build::{self, BuildOptions};
use crate::cli::BuildArgs;
use crate::exit::ExitCode;
use crate::project::Project;
use crate::{source, ui};

pub async fn run(project: &Project, args: &BuildArgs) -> CommandResult {
    let mode = guest::mode(project, args).await?;
    let tree = source::kernel_tree(project).await.phase(ExitCode::Usage)?;
    build_in_mode(project, &tree, args, mode).await
}

pub async fn patch_and_build(project: &Project, args: &BuildArgs) -> CommandResult {
    let mode = guest::mode(project, args).await?;
    let tree = source::kernel_tree(project).await.phase(ExitCode::Usage)?;
    super::patch::apply(project, &tree)?;
    build_in_mode(project, &tree, args, mode).await
}

async fn build_in_mode(
    project: &Project,
    tree: &std::path::Path,
    args: &BuildArgs,
    mode: Mode,
) -> CommandResult {
    match mode {
        Mode::Host => build_tree(project, tree, args).await,
        Mode::InGuest | Mode::OnHost => guest::build_for_vm(project, tree, args, mode)
            .await
            .map_err(|error| error.map(|error| point_at_template(project, error))),
    }
}

async fn build_tree(project: &Project, tree: &std::path::Path, args: &BuildArgs) -> CommandResult {
    let options = BuildOptions { jobs: args.jobs };
    let built = build::build(project, tree, &options)
        .await
        .map_err(|error| point_at_template(project, error))
        .phase(ExitCode::BuildFailed)?;
    ui::detail(format!(
        "image: {} (-j{})",
        built.image.display(),
        built.jobs
    ));
    ui::detail(format!("log: {}", built.log.display()));
    Ok(ExitCode::Passed)
}

/// Names the template when the compiler's errors are in the syscall body,
/// because kernel/NAME.c is generated and edits to it are overwritten.
pub(super) fn point_at_template(project: &Project, error: anyhow::Error) -> anyhow::Error {
    let generated = format!("kernel/{}.c", project.syscall.name);
    if !format!("{error:#}").contains(&generated) {
        return error;
    }
    let template = crate::template::describe(&project.syscall.template);
    error.context(format!(
        "the errors are in {generated}, which kbuild generates from template {template}; \
         fix the template, then run `kbuild patch-and-build` (or `kbuild run` again)"
    ))
}
