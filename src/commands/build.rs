use super::{CommandResult, Phase};
use crate::build::{self, BuildOptions};
use crate::cli::BuildArgs;
use crate::exit::ExitCode;
use crate::project::Project;
use crate::{source, ui};

pub async fn run(project: &Project, args: &BuildArgs) -> CommandResult {
    let tree = source::kernel_tree(project).phase(ExitCode::Usage)?;
    build_tree(project, &tree, args).await
}

pub async fn patch_and_build(project: &Project, args: &BuildArgs) -> CommandResult {
    let tree = source::kernel_tree(project).phase(ExitCode::Usage)?;
    super::patch::apply(project, &tree)?;
    build_tree(project, &tree, args).await
}

async fn build_tree(project: &Project, tree: &std::path::Path, args: &BuildArgs) -> CommandResult {
    let options = BuildOptions { jobs: args.jobs };
    let built = build::build(project, tree, &options)
        .await
        .phase(ExitCode::BuildFailed)?;
    ui::detail(format!(
        "image: {} (-j{})",
        built.image.display(),
        built.jobs
    ));
    ui::detail(format!("log: {}", built.log.display()));
    Ok(ExitCode::Passed)
}
