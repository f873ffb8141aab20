use super::{CommandResult, Phase};
use crate::cli::InitArgs;
use crate::exit::ExitCode;
use crate::project::{write_project_file, InitOptions};
use crate::ui;

pub fn run(args: &InitArgs) -> CommandResult {
    let options = InitOptions {
        dir: args.dir.clone(),
        name: args.name.clone(),
        source: args.source.clone(),
        force: args.force,
    };
    let path = write_project_file(&options).phase(ExitCode::Usage)?;
    ui::status("Created", path.display());
    ui::detail("next: kbuild patch-and-build, then kbuild verify --direct");
    Ok(ExitCode::Passed)
}
