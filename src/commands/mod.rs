//! One function per subcommand; each maps its phases to exit codes.

mod build;
mod doctor;
mod guest;
mod init;
mod patch;
mod run;
mod up;
mod verify;
mod vm;

use std::path::PathBuf;

use crate::cli::{Cli, Command};
use crate::exit::{exit_code_of, ExitCode};
use crate::project::Project;
use crate::ui;

/// An error with the exit code of the phase it came from. A `Failure` in
/// the error's chain overrides that code.
pub struct CommandError {
    error: anyhow::Error,
    phase: ExitCode,
}

impl CommandError {
    /// Changes the error, keeping its phase.
    pub fn map(self, change: impl FnOnce(anyhow::Error) -> anyhow::Error) -> CommandError {
        CommandError {
            error: change(self.error),
            phase: self.phase,
        }
    }
}

impl From<anyhow::Error> for CommandError {
    fn from(error: anyhow::Error) -> Self {
        CommandError {
            error,
            phase: ExitCode::Infrastructure,
        }
    }
}

/// Tags a result with the exit code its phase uses for unclassified errors.
pub trait Phase<T> {
    fn phase(self, code: ExitCode) -> Result<T, CommandError>;
}

impl<T> Phase<T> for anyhow::Result<T> {
    fn phase(self, code: ExitCode) -> Result<T, CommandError> {
        self.map_err(|error| CommandError { error, phase: code })
    }
}

type CommandResult = Result<ExitCode, CommandError>;

/// Runs one command line and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    ui::set_quiet(cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            ui::error(&anyhow::Error::new(error).context("starting the async runtime"));
            return ExitCode::Infrastructure.code();
        }
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(CommandError { error, phase }) => {
            ui::error(&error);
            exit_code_of(&error, phase).code()
        }
    };
    // A blocking reader of a killed build may still be draining its pipe;
    // the exit code is known, so do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

/// Runs the command and returns the process exit status.
async fn dispatch(cli: Cli) -> Result<i32, CommandError> {
    let path = cli.project.clone();
    let code = match cli.command {
        Command::Init(args) => init::run(&args),
        Command::Patch(args) => patch::run(&load(path)?, &args).await,
        Command::Build(args) => build::run(&load(path)?, &args).await,
        Command::PatchAndBuild(args) => build::patch_and_build(&load(path)?, &args).await,
        Command::Verify(args) => verify::run(&load(path)?, &args).await,
        Command::Up(args) => up::run(&load(path)?, &args).await,
        Command::Status => vm::status(&load(path)?).await,
        Command::Ssh(args) => return vm::ssh(&load(path)?, &args).await,
        Command::Down(args) => vm::down(&load(path)?, &args).await,
        Command::Destroy => vm::destroy(&load(path)?).await,
        Command::Run(args) => match load(path.clone()) {
            Ok(project) => run::run(&project, &args).await,
            Err(error) => run::failed_to_load(path.as_deref(), &args, error),
        },
        Command::Doctor(args) => doctor::run(optional_project(path)?, &args).await,
    }?;
    Ok(code.code())
}

fn load(path: Option<PathBuf>) -> Result<Project, CommandError> {
    let path = match path {
        Some(path) if path.is_dir() => path.join(crate::project::FILE_NAME),
        Some(path) => path,
        None => Project::find(&PathBuf::from(".")).phase(ExitCode::Usage)?,
    };
    Project::load(&path).phase(ExitCode::Usage)
}

/// Returns the project for commands that also work without one. A project
/// named with --project must load. A project found in this folder or a
/// parent that does not load gets a warning and is left out.
fn optional_project(path: Option<PathBuf>) -> Result<Option<Project>, CommandError> {
    if path.is_some() {
        return load(path).map(Some);
    }
    let Ok(found) = Project::find(&PathBuf::from(".")) else {
        return Ok(None);
    };
    match Project::load(&found) {
        Ok(project) => Ok(Some(project)),
        Err(error) => {
            ui::warn(format!(
                "{error:#}; checking the host without the project's folders"
            ));
            Ok(None)
        }
    }
}
