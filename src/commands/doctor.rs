use super::{CommandResult, Phase};
use crate::cli::DoctorArgs;
use crate::doctor;
use crate::exit::ExitCode;
use crate::project::Project;
use crate::ui;

/// Checks the host and prints one line per check, or one JSON object with
/// `--json`. Exits 69 when a required tool is missing, 0 otherwise.
pub async fn run(project: Option<Project>, args: &DoctorArgs) -> CommandResult {
    ui::status(
        "Checking",
        "QEMU, KVM, VirtualBox, free disk and the build tools",
    );
    let report = doctor::check_host(project.as_ref()).await;

    if args.json {
        let text = doctor::render_json(&report).phase(ExitCode::Infrastructure)?;
        ui::result(text);
    } else {
        for line in doctor::render_text(&report) {
            ui::result(line);
        }
    }
    Ok(report.exit_code())
}
